"""Scale-out: several `treadle worker` processes share one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from treadle_core import (
    Item,
    ItemState,
    NeedsReview,
    StageStatus,
    Workflow,
    open_store,
)
from treadle_core.engine.worker import PREFETCH

N_ITEMS = 1000
STAGES = ("extract", "transform", "load")

STAGE_MODULE = """
import asyncio, os

MARKERS = os.environ["MARKERS"]

def _make(name):
    async def run(item, ctx):
        with open(os.path.join(MARKERS, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{item.id} {name} {ctx.attempt}\\n")
        await asyncio.sleep(0.002)
    return run

extract, transform, load = _make("extract"), _make("transform"), _make("load")
"""


def write_project(root: Path, url: str) -> None:
    (root / "stages.py").write_text(textwrap.dedent(STAGE_MODULE))
    (root / "treadle.toml").write_text(
        textwrap.dedent(
            f"""
            [pipeline]
            name = "scale"
            store = "{url}"
            concurrency = 8

            [stages.extract]
            uses = "stages:extract"

            [stages.transform]
            uses = "stages:transform"
            needs = ["extract"]

            [stages.load]
            uses = "stages:load"
            needs = ["transform"]
            """
        )
    )


def executions(markers: Path) -> list[tuple[str, str, str]]:
    """(pid, item, stage) for every stage execution so far."""
    out = []
    for log in markers.glob("*.log"):
        for line in log.read_text().splitlines():
            item, stage, _ = line.split()
            out.append((log.stem, item, stage))
    return out


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_share_the_work_and_survive_one_being_killed(tmp_path, pg_url):
    markers = tmp_path / "markers"
    markers.mkdir()
    write_project(tmp_path, pg_url)
    store = open_store(pg_url)
    with store.transaction():
        for i in range(N_ITEMS):
            store.save_work_item_data(f"i{i:04d}", {"n": i})
    store.close()

    env = {**os.environ, "MARKERS": str(markers)}
    cmd = [sys.executable, "-m", "treadle_core.cli", "worker", "--lease", "2s", "--poll", "200ms"]
    workers = [
        subprocess.Popen(
            [*cmd, "--id", f"w{k}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    victim = workers[0]
    deadline = time.monotonic() + 120
    while len(executions(markers)) < N_ITEMS * len(STAGES) // 3:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    # what was durably COMPLETE when the worker died must never run again
    check = open_store(pg_url)
    committed = {
        (item_id, stage)
        for item_id in check.list_work_items()
        for stage, st in check.get_all_stage_states(item_id).items()
        if st.status == StageStatus.COMPLETE
    }
    while check.count_items().get(ItemState.COMPLETE, 0) < N_ITEMS:
        assert time.monotonic() < deadline + 120, check.count_items()
        time.sleep(0.1)
    for proc in workers[1:]:
        proc.send_signal(signal.SIGTERM)
    for proc in workers[1:]:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err

    runs = executions(markers)
    per_stage = Counter((item, stage) for _, item, stage in runs)
    assert len(per_stage) == N_ITEMS * len(STAGES)
    twice = {key for key, n in per_stage.items() if n > 1}
    assert not (twice & committed), f"completed stages ran again: {sorted(twice & committed)[:5]}"
    # only stages in flight in the killed worker may have run twice: at most one per
    # item it held (PREFETCH items per execution slot, concurrency 8)
    assert len(twice) <= 8 * PREFETCH, twice
    per_worker = Counter(pid for pid, _, _ in runs)
    assert len(per_worker) == 4
    assert min(per_worker.values()) >= 0.05 * len(runs), per_worker
    for item_id in check.list_work_items():
        states = check.get_all_stage_states(item_id)
        assert all(states[s].status == StageStatus.COMPLETE for s in STAGES)
    check.close()


def _review_workflow() -> Workflow:
    async def ask(item, ctx):
        return NeedsReview("ok?")

    return Workflow.builder().stage("ask", ask).build()


def _resolve_in_process(url: str, item_id: str, who: str, barrier_file: str) -> str:
    """Run in a child process: wait for the go signal, then approve."""
    code = textwrap.dedent(
        f"""
        import asyncio, os, time, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_scale_out import _review_workflow
        from treadle_core import open_store, ReviewError
        store = open_store({url!r})
        wf = _review_workflow()
        while not os.path.exists({barrier_file!r}):
            time.sleep(0.001)
        try:
            asyncio.run(wf.approve_review({item_id!r}, "ask", store, reviewer={who!r}))
            print("won")
        except ReviewError:
            print("refused")
        """
    )
    return code


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_concurrent_review_resolution_across_processes_exactly_one_wins(tmp_path, backend, request):
    url = (
        request.getfixturevalue("pg_url") if backend == "postgres" else f"sqlite:///{tmp_path}/s.db"
    )
    store = open_store(url)
    wf = _review_workflow()
    for i in range(3):
        asyncio.run(wf.advance(Item(f"r{i}"), store))
    store.close()
    for i in range(3):
        go = tmp_path / f"go{i}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _resolve_in_process(url, f"r{i}", f"p{k}", str(go))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(4)
        ]
        time.sleep(0.8)  # let them all connect and wait
        go.touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            results.append(out.strip())
        assert sorted(results) == ["refused"] * 3 + ["won"], results
        check = open_store(url)
        assert len(check.get_reviews(f"r{i}")) == 1
        assert check.get_stage_state(f"r{i}", "ask").status == StageStatus.COMPLETE
        check.close()


def _restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(
    not (shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql")),
    reason="restarting the server needs the local cluster's pg_ctlcluster",
)
def test_worker_survives_a_postgres_restart_mid_run(tmp_path, pg_url):
    markers = tmp_path / "markers"
    markers.mkdir()
    write_project(tmp_path, pg_url)
    store = open_store(pg_url)
    with store.transaction():
        for i in range(300):
            store.save_work_item_data(f"i{i:04d}", {"n": i})
    store.close()
    env = {**os.environ, "MARKERS": str(markers)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadle_core.cli", "worker", "--poll", "200ms"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(executions(markers)) < 150:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = len(executions(markers))
        _restart_postgres()
        assert proc.poll() is None, "the worker died with the server: " + proc.stderr.read()[-3000:]
        deadline = time.monotonic() + 120
        while True:
            try:
                check = open_store(pg_url)
                done = check.count_items().get(ItemState.COMPLETE, 0)
                check.close()
            except Exception:
                done = 0
            if done == 300:
                break
            assert proc.poll() is None, proc.stderr.read()
            if time.monotonic() > deadline:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
                with open_store(pg_url) as check:
                    stuck = [
                        (i, rec.state.value, rec.due_at, rec.lease_owner)
                        for i in check.list_work_items()
                        if (rec := check.get_item(i)).state != ItemState.COMPLETE
                    ]
                raise AssertionError(f"{done} of 300 complete; stuck {stuck}; log {err[-4000:]}")
            time.sleep(0.2)
        assert len(executions(markers)) > before
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "unavailable" in err  # it noticed, waited and carried on
    runs = Counter((item, stage) for _, item, stage in executions(markers))
    assert len(runs) == 300 * len(STAGES)
