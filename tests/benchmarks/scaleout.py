"""W1 on PostgreSQL with 1, 2 and 4 real `treadle worker` processes.

Each run gets a fresh database. The workers start first, idle on the empty store;
the clock starts when the 2,000 items are committed and stops when ``count_items``
says all are COMPLETE; then the workers get SIGTERM. Beside it, the raw limit:
the same state + event rows written with psycopg2 alone, one commit per
transition, from 1 connection and from 4 processes with a connection each.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _pg
from _common import write_project

from treadle_core import ItemState, open_store

STAGES = 4
WORKER_CMD = ["-m", "treadle_core.cli", "worker", "--concurrency", "8", "--poll", "200ms"]

_STATE = json.dumps({"status": "running", "attempt": 1, "metadata": {}, "subtasks": []})
_EVENT = json.dumps({"type": "StageStarted", "item_id": "x", "stage": "s0", "attempt": 1})


def _raw_tables(url: str) -> None:
    conn = _pg.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE stage_states (item_id TEXT, stage TEXT, status TEXT, attempt INT,"
            " updated_at DOUBLE PRECISION, data TEXT, PRIMARY KEY (item_id, stage))"
        )
        cur.execute(
            "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, item_id TEXT, stage TEXT,"
            " type TEXT, at DOUBLE PRECISION, data TEXT)"
        )
    conn.close()


def _raw_writer(url: str, part: int, parts: int, transitions: int, go, done) -> None:
    conn = _pg.connect(url)
    cur = conn.cursor()
    go.wait()
    for n in range(part, transitions, parts):
        item, stage = f"i{n // (2 * STAGES)}", f"s{(n // 2) % STAGES}"
        now = time.time()
        cur.execute(
            "INSERT INTO stage_states VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (item_id, stage)"
            " DO UPDATE SET status=excluded.status, attempt=excluded.attempt,"
            " updated_at=excluded.updated_at, data=excluded.data",
            (item, stage, "running", 1, now, _STATE),
        )
        cur.execute(
            "INSERT INTO events (item_id, stage, type, at, data) VALUES (%s,%s,%s,%s,%s)",
            (item, stage, "StageStarted", now, _EVENT),
        )
        conn.commit()
    conn.close()
    done.put(part)


def raw_pg_limit(transitions: int, processes: int) -> float:
    """Transitions/s writing the same rows with psycopg2 alone, one commit per transition."""
    with _pg.scratch_database("raw") as url:
        _raw_tables(url)
        ctx = multiprocessing.get_context("fork")
        go, done = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_raw_writer, args=(url, k, processes, transitions, go, done))
            for k in range(processes)
        ]
        for p in procs:
            p.start()
        time.sleep(0.5)  # let every process connect before the clock starts
        start = time.perf_counter()
        go.set()
        finished = 0
        while finished < processes:
            try:
                done.get(timeout=1)
                finished += 1
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    for p in procs:
                        p.kill()
                    raise RuntimeError("a raw psycopg2 writer failed") from None
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join()
    return transitions / elapsed


def _wait_started(logs: list[Path], procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for log, proc in zip(logs, procs, strict=True):
        while "pipeline" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {log.read_text()}")
            time.sleep(0.02)


def run_workers(n_workers: int, items: int) -> dict[str, float]:
    """Seconds for ``n_workers`` worker processes to complete ``items`` items, and the
    CPU seconds the workers used in all (imports included)."""
    cpu_before = _children_cpu()
    with _pg.scratch_database(f"w1w{n_workers}") as url, tempfile.TemporaryDirectory() as tmp:
        root = write_project(Path(tmp), url, STAGES)
        store = open_store(url)  # creates the schema before the workers race to
        logs = [root / f"worker{k}.log" for k in range(n_workers)]
        procs = []
        for k, log in enumerate(logs):
            with log.open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *WORKER_CMD, "--id", f"w{k}", "--json"],
                        cwd=root,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        try:
            _wait_started(logs, procs)
            with store.transaction():
                for i in range(items):
                    store.save_work_item_data(f"i{i}", {"n": i})
            start = time.perf_counter()
            deadline = time.monotonic() + 600
            while store.count_items().get(ItemState.COMPLETE, 0) < items:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    tails = "\n".join(log.read_text()[-2000:] for log in logs)
                    raise RuntimeError(f"W1 on {n_workers} workers did not finish:\n{tails}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            outs = [p.communicate(timeout=60)[0] for p in procs]
        executions = [json.loads(out)["executions"] for out in outs]
        summary = {k: v for k, v in store.summary().items()}
        store.close()
    assert sum(executions) == items * STAGES, (executions, summary)
    assert summary == {f"s{i}": {"complete": items} for i in range(STAGES)}, summary
    return {"seconds": elapsed, "executions": executions, "cpu": _children_cpu() - cpu_before}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def w1_pg(items: int = 2000) -> dict[str, object]:
    why = _pg.unavailable()
    if why:
        return {"skipped": why}
    transitions = items * STAGES * 2
    retried = 0

    def measured(fn, *args):
        nonlocal retried
        result, again = _pg.retry_on_restart(lambda: fn(*args), f"w1pg {fn.__name__}{args}")
        retried += again
        return result

    raw1 = measured(raw_pg_limit, transitions, 1)
    raw4 = measured(raw_pg_limit, transitions, 4)
    runs = {n: measured(run_workers, n, items) for n in (1, 2, 4)}
    rates = {n: transitions / r["seconds"] for n, r in runs.items()}
    out: dict[str, object] = {
        "items": items,
        "transitions": transitions,
        "cores": os.cpu_count(),
        "raw_pg_per_s": round(raw1),
        "raw_pg_4proc_per_s": round(raw4),
        "raw_4proc_speedup": round(raw4 / raw1, 2),
    }
    for n, r in runs.items():
        out[f"workers{n}_seconds"] = round(r["seconds"], 3)
        out[f"workers{n}_per_s"] = round(rates[n])
        out[f"workers{n}_ratio_to_raw"] = round(rates[n] / raw1, 3)
        out[f"workers{n}_executions"] = r["executions"]
        out[f"workers{n}_cpu_ms_per_transition"] = round(1000 * r["cpu"] / transitions, 3)
    out["speedup_2"] = round(rates[2] / rates[1], 2)
    out["speedup_4"] = round(rates[4] / rates[1], 2)
    out["reruns_after_server_restart"] = retried
    return out
