"""Flow control and wake-ups on PostgreSQL, with real `treadle worker` processes.

rate-pg     200 items through a stage limited to ``rate = "20/s"``, run by two workers:
            the achieved rate (starts per second between the first and the last start)
            beside the limit, and the most starts seen in any one-second window.
wakeup-pg   An idle worker with ``--poll 30``: from an item's add committing to its
            first stage starting, p50 and p99 over 40 adds (LISTEN/NOTIFY wakes it; the
            poll alone would take up to 30 s).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import _pg

from treadle_core import ItemState, open_store

WORKER = [sys.executable, "-m", "treadle_core.cli", "worker"]


def _project(root: Path, url: str, stage_options: str) -> Path:
    (root / "stages.py").write_text(
        textwrap.dedent(
            """
            import os, time

            def call(item, ctx):
                with open(os.environ["STARTS"], "a") as fh:
                    fh.write(f"{time.time():.6f} {item.id}\\n")
            """
        )
    )
    (root / "treadle.toml").write_text(
        textwrap.dedent(
            f"""\
            [pipeline]
            name = "flow"
            store = "{url}"
            concurrency = 8

            [stages.call]
            uses = "stages:call"
            {stage_options}
            """
        )
    )
    return root


def _workers(root: Path, n: int, poll: str, starts: Path) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "STARTS": str(starts)}
    procs = []
    for k in range(n):
        log = (root / f"worker{k}.log").open("w")
        procs.append(
            subprocess.Popen(
                [*WORKER, "--poll", poll, "--id", f"w{k}"],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    for k, proc in enumerate(procs):
        while "pipeline" not in (root / f"worker{k}.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / f"worker{k}.log").read_text())
            time.sleep(0.02)
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=60)


def _starts(path: Path) -> list[float]:
    return sorted(float(line.split()[0]) for line in path.read_text().splitlines())


def rate_pg(items: int = 200, per_second: int = 20, workers: int = 2) -> dict[str, object]:
    why = _pg.unavailable()
    if why:
        return {"skipped": why}
    with _pg.scratch_database("rate") as url, tempfile.TemporaryDirectory() as tmp:
        root = _project(Path(tmp), url, f'rate = "{per_second}/s"')
        starts_file = root / "starts.txt"
        starts_file.touch()
        store = open_store(url)
        procs = _workers(root, workers, "200ms", starts_file)
        try:
            with store.transaction():
                for i in range(items):
                    store.save_work_item_data(f"i{i}", {})
            deadline = time.monotonic() + 120
            while store.count_items().get(ItemState.COMPLETE, 0) < items:
                if time.monotonic() > deadline:
                    raise RuntimeError("the rate-limited run did not finish")
                time.sleep(0.05)
        finally:
            _stop(procs)
            store.close()
        starts = _starts(starts_file)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    worst = max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))
    return {
        "items": items,
        "workers": workers,
        "limit_per_s": per_second,
        "achieved_per_s": round(achieved, 2),
        "ratio_to_limit": round(achieved / per_second, 3),
        "most_in_any_1s_window": worst,
    }


def wakeup_pg(adds: int = 40) -> dict[str, object]:
    why = _pg.unavailable()
    if why:
        return {"skipped": why}
    with _pg.scratch_database("wake") as url, tempfile.TemporaryDirectory() as tmp:
        root = _project(Path(tmp), url, "")
        starts_file = root / "starts.txt"
        starts_file.touch()
        store = open_store(url)
        procs = _workers(root, 1, "30s", starts_file)
        added: dict[str, float] = {}
        try:
            for k in range(adds):
                item = f"i{k}"
                store.save_work_item_data(item, {})  # commits: the worker is notified
                added[item] = time.time()
                deadline = time.monotonic() + 60
                while item not in starts_file.read_text():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{item} never started (no wake-up?)")
                    time.sleep(0.002)
                time.sleep(0.2)  # let the worker go idle again
        finally:
            _stop(procs)
            store.close()
        lines = starts_file.read_text().splitlines()
        started = {line.split()[1]: float(line.split()[0]) for line in lines}
    latencies = sorted(1000 * (started[i] - added[i]) for i in added)
    return {
        "adds": adds,
        "poll_s": 30,
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "max_ms": round(latencies[-1], 1),
    }
