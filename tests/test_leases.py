"""Leases: heartbeats, fencing tokens, take-over of dead workers, crash loops (SPEC §6)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from treadle_core import (
    Complete,
    Item,
    ItemState,
    MemoryStateStore,
    StageOutput,
    StageStatus,
    Workflow,
    open_store,
)

HERE = Path(__file__).parent


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = (
        MemoryStateStore()
        if request.param == "memory"
        else open_store(f"sqlite:///{tmp_path}/s.db")
    )
    yield s
    s.close()


async def test_heartbeat_keeps_the_lease_of_a_long_stage(store):
    async def long(item, ctx):
        await asyncio.sleep(1.5)

    wf = Workflow.builder().stage("long", long).build()
    task = asyncio.create_task(wf.run(store, [Item("x")], lease_seconds=0.5))
    await asyncio.sleep(1.1)  # more than two lease periods
    assert store.claim("intruder", 1, 10, ["x"]) == []
    report = await task
    assert report.lost_leases == []
    assert store.get_stage_state("x", "long").status == StageStatus.COMPLETE


async def test_worker_that_lost_its_lease_is_refused_and_stops(store):
    """A paused worker (its loop blocked past the lease) must not write after a take-over."""

    def take_over():
        # Once the lease has lapsed, "other" claims the item (and later dies).
        deadline = time.monotonic() + 10
        while not store.claim("other", 1, 0.3, ["x"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    async def paused(item, ctx):
        if ctx.attempt == 1:
            thief = threading.Thread(target=take_over)
            thief.start()
            thief.join()  # blocks the loop: no heartbeat until "other" has taken over
            return StageOutput(Complete(), artefact="stale")
        return StageOutput(Complete(), artefact="fresh")

    wf = Workflow.builder().stage("paused", paused).build()
    report = await asyncio.wait_for(wf.run(store, [Item("x")], lease_seconds=0.2), 10)
    assert report.lost_leases == ["x"]
    # the stale result was refused; once "other" died too, the stage was re-run
    st = store.get_stage_state("x", "paused")
    assert (st.status, st.artefact, st.attempt) == (StageStatus.COMPLETE, "fresh", 2)
    assert [a.outcome for a in store.get_attempts("x", "paused")] == ["crashed", "complete"]
    assert "stale" not in [a.artefact for a in store.get_attempts("x", "paused")]


async def test_stage_left_running_by_a_dead_worker_is_rerun_as_a_new_attempt(store):
    calls = []

    async def work(item, ctx):
        calls.append(ctx.attempt)

    wf = Workflow.builder().stage("work", work).build()
    store.save_work_item_data("x", {})
    # a worker claimed it, committed RUNNING, then died
    from treadle_core import StageState
    from treadle_core.model import utcnow

    assert len(store.claim("dead", 1, 0.05, ["x"])) == 1
    with store.transaction():
        store.save_stage_state(
            "x", "work", StageState(status=StageStatus.RUNNING, attempt=1, started_at=utcnow())
        )
        store.set_item_state("x", ItemState.RUNNING, utcnow())
    assert await wf.run(store, until_idle=False) is not None
    await asyncio.sleep(0.1)
    await wf.run(store)
    st = store.get_stage_state("x", "work")
    # RUNNING was written before any execution slot: a first crash is not counted, but
    # the stage is now a suspect (written RUNNING only once it holds a slot).
    assert st.status == StageStatus.COMPLETE and st.attempt == 2
    assert (st.recoveries, st.suspect) == (0, True)
    assert calls == [2]
    assert [a.outcome for a in store.get_attempts("x", "work")] == ["crashed", "complete"]


def test_crash_loop_stops_at_the_recovery_limit(tmp_path):
    """The first crash makes the stage a suspect (not counted: it may only have waited for
    a slot); the next three count and reach the limit (3); the fifth attempt runs alone,
    and when the process dies then too the stage is FAILED: it was certainly the culprit."""
    url = f"sqlite:///{tmp_path}/s.db"
    outputs = []
    for _ in range(7):
        proc = subprocess.run(
            [sys.executable, str(HERE / "suicide_pipeline.py"), url],
            capture_output=True,
            timeout=60,
        )
        outputs.append(proc.returncode)
        if proc.returncode == 0:
            assert b"recovery limit reached" in proc.stdout
            break
        time.sleep(0.35)  # let the dead process's lease lapse
    assert outputs == [-9, -9, -9, -9, -9, 0], outputs
    store = open_store(url)
    st = store.get_stage_state("x", "crash")
    assert st.status == StageStatus.FAILED and st.recoveries == 4
    assert st.error.startswith("recovery limit reached")
    assert "the last time with no other stage beside it" in st.error
    retried = [e.event.error for e in store.read_events("x") if e.event.kind == "StageRetried"]
    assert retried[-1] == (
        "recovered after its process died (3 times: it runs once more with no other stage "
        "beside it)"
    )
    assert [a.outcome for a in store.get_attempts("x", "crash")] == ["crashed"] * 5
    store.close()


async def test_two_runners_on_one_sqlite_file_never_run_a_stage_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def make(name):
        async def fn(item, ctx):
            with lock:
                counts[(item.id, name)] += 1
            await asyncio.sleep(0.001)

        return fn

    def build():
        return Workflow.builder().stage("a", make("a")).stage("b", make("b"), needs=["a"]).build()

    seed = open_store(url)
    with seed.transaction():
        for i in range(60):
            seed.save_work_item_data(f"i{i}", {})
    seed.close()

    def runner():
        s = open_store(url)
        asyncio.run(build().run(s, concurrency=4))
        s.close()

    threads = [threading.Thread(target=runner) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(counts) == 120 and set(counts.values()) == {1}
    check = open_store(url)
    assert check.count_items() == {ItemState.COMPLETE: 60}
    check.close()
