"""Execution that never loses its footing: sync timeouts never overlap their retry,
Ctrl-C lets a sync stage finish and keeps its result, a ``kill -9``d run is taken over at
once, and the crash limit never condemns a bystander."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from treadle_core import (
    Complete,
    Item,
    RetryBudget,
    StageOutput,
    StageStatus,
    Workflow,
    open_store,
)

HERE = Path(__file__).parent
ROOT = HERE.parent


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- no overlapping attempts ---------------------------------------------------------------


async def test_a_timed_out_sync_attempt_is_never_overlapped_by_its_retry(make_store):
    """Attempt 1 times out at once but its thread runs on; attempt 2 starts only after
    that thread returned (its result discarded)."""
    release = threading.Event()
    lock = threading.Lock()
    running, most, log = [0], [0], []

    def slow(item, ctx):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            log.append(("start", ctx.attempt))
        try:
            if ctx.attempt == 1:
                assert release.wait(10), "never released"
            return StageOutput(Complete(), artefact={"attempt": ctx.attempt})
        finally:
            with lock:
                running[0] -= 1
                log.append(("end", ctx.attempt))

    wf = (
        Workflow.builder()
        .stage("slow", slow)
        .retry_budget("slow", RetryBudget(max_attempts=3, attempt_timeout=0.05))
        .build()
    )
    store = make_store()
    sub = wf.subscribe()

    async def release_after_the_timeout_is_recorded():
        async for event in sub:
            if getattr(event, "kind", "") == "StageRetried":
                await asyncio.sleep(0.2)  # attempt 2 would have started by now
                release.set()
                return

    releaser = asyncio.create_task(release_after_the_timeout_is_recorded())
    status = await asyncio.wait_for(wf.advance(Item("x"), store), 20)
    await releaser
    assert status.is_complete
    assert most[0] == 1, log
    assert log == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    first, second = store.get_attempts("x", "slow")
    assert first.error == "attempt timed out after 0.05 s"  # recorded at once
    assert status.stages["slow"].artefact == {"attempt": 2}  # attempt 1's result discarded
    assert first.completed_at <= second.started_at


async def test_a_timed_out_thread_keeps_its_execution_slot_until_it_returns(make_store):
    """concurrency=1: while item a's timed-out thread still runs, item b does not start."""
    release = threading.Event()
    started: list[str] = []

    def work(item, ctx):
        started.append(f"{item.id}{ctx.attempt}")
        if item.id == "a" and ctx.attempt == 1:
            assert release.wait(10), "never released"
        return None

    wf = (
        Workflow.builder()
        .stage("work", work)
        .retry_budget("work", RetryBudget(max_attempts=2, attempt_timeout=0.05))
        .build()
    )
    store = make_store()
    sub = wf.subscribe()

    async def release_after_the_timeout():
        async for event in sub:
            if getattr(event, "kind", "") == "StageRetried":
                await asyncio.sleep(0.2)  # b would have started by now if the slot were free
                assert started == ["a1"], started
                release.set()
                return

    releaser = asyncio.create_task(release_after_the_timeout())
    await asyncio.wait_for(wf.run(store, [Item("a"), Item("b")], concurrency=1), 20)
    await releaser
    assert started[0] == "a1" and sorted(started[1:]) == ["a2", "b1"]
    assert wf.status("a", store).is_complete and wf.status("b", store).is_complete


# --- the CLI: interrupts and a killed run ---------------------------------------------------

STAGES = """
import os, time
from pathlib import Path

from treadle_core import Complete, StageOutput

HERE = Path(__file__).parent


def slow(item, ctx):  # a sync stage: it runs in a thread
    (HERE / f"started-{item.id}-{ctx.attempt}").touch()
    while not (HERE / "go").exists():
        time.sleep(0.01)
    (HERE / f"finished-{item.id}-{ctx.attempt}").touch()
    return StageOutput(Complete(), artefact={"done": item.id})


def fast(item, ctx):
    return None
"""

PIPELINE = """
[pipeline]
name = "robust"
store = "sqlite:///.treadle/state.db"
concurrency = 2

[stages.slow]
uses = "stages:slow"

[stages.after]
uses = "stages:fast"
needs = ["slow"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    return tmp_path


def treadle(project: Path, *args: str, stderr=subprocess.PIPE) -> subprocess.Popen[str]:
    script = shutil.which("treadle", path=str(Path(sys.executable).parent))
    assert script is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    return subprocess.Popen(
        [script, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def state_of(project: Path, item: str, stage: str):
    with open_store(f"sqlite:///{project}/.treadle/state.db") as store:
        return store.get_stage_state(item, stage), store.get_item(item)


@pytest.mark.slow
def test_first_ctrl_c_lets_a_sync_stage_finish_and_keeps_its_result(project):
    assert finish(treadle(project, "add", "--id", "a"))[0] == 0
    proc = treadle(project, "run")
    wait_for(lambda: (project / "started-a-1").exists(), "the stage to start")
    proc.send_signal(signal.SIGINT)
    (project / "go").touch()  # the stage finishes after the interrupt
    code, _, err = finish(proc)
    assert code == 130, err
    assert "claiming nothing more" in err and "Traceback" not in err
    st, rec = state_of(project, "a", "slow")
    assert st.status == StageStatus.COMPLETE and st.artefact == {"done": "a"}
    assert rec.lease_owner is None  # the lease was given back
    # Nothing runs it again: the next run only runs what follows.
    code, _, err = finish(treadle(project, "run"))
    assert code == 0, err
    assert not (project / "started-a-2").exists()
    assert state_of(project, "a", "after")[0].status == StageStatus.COMPLETE


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_gives_the_lease_back(project):
    assert finish(treadle(project, "add", "--id", "a"))[0] == 0
    log = project / "stderr.txt"
    with log.open("w") as stderr:
        proc = treadle(project, "run", stderr=stderr)
        wait_for(lambda: (project / "started-a-1").exists(), "the stage to start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "claiming nothing more" in log.read_text(), "the first interrupt")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)  # the stage never finishes by itself
    err = log.read_text()
    assert code == 130, err
    assert "stopping at once" in err and "Traceback" not in err
    st, rec = state_of(project, "a", "slow")
    assert st.status == StageStatus.PENDING and st.attempt == 0  # put back as it was
    assert rec.lease_owner is None
    (project / "go").touch()
    assert finish(treadle(project, "run"))[0] == 0
    assert state_of(project, "a", "after")[0].status == StageStatus.COMPLETE


@pytest.mark.slow
def test_a_run_after_kill_9_takes_the_dead_run_over_at_once(project):
    """The dead process's leases last 60 s; the next run on this host does not wait."""
    assert finish(treadle(project, "add", "--id", "a"))[0] == 0
    assert finish(treadle(project, "add", "--id", "b"))[0] == 0
    proc = treadle(project, "run")
    wait_for(
        lambda: (project / "started-a-1").exists() and (project / "started-b-1").exists(),
        "both stages to start",
    )
    proc.kill()
    proc.wait()
    (project / "go").touch()
    started = time.monotonic()
    code, _, err = finish(treadle(project, "run"), timeout=60)
    took = time.monotonic() - started
    assert code == 0, err
    assert took < 20, f"the new run waited {took:.1f} s for the dead one's leases"
    assert "took over 2 items" in err and "that process is gone" in err
    for item in "ab":
        st, _ = state_of(project, item, "slow")
        assert st.status == StageStatus.COMPLETE and st.attempt == 2
        assert (st.recoveries, st.suspect) == (0, True)  # a first crash: a suspect


# --- a fair crash limit ----------------------------------------------------------------------

CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from treadle_core import Item, Workflow, open_store

    async def work(item, ctx):
        if item.id == "bad":
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0.05)
        return None

    async def main(url):
        store = open_store(url)
        wf = Workflow.builder().stage("work", work).max_recoveries(2).build()
        items = [Item(n) for n in ("good-1", "good-2", "bad", "good-3", "good-4")]
        await wf.run(store, items, concurrency=int(sys.argv[2]))
        store.close()

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_crash_limit_never_condemns_a_bystander(tmp_path, concurrency):
    """Only a stage that was executing counts a crash; one at the limit runs alone, so the
    stage that kills its process is FAILED and every other item completes."""
    url = f"sqlite:///{tmp_path}/s.db"
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    codes = []
    for _ in range(12):
        proc = subprocess.run(
            [sys.executable, str(script), url, str(concurrency)], capture_output=True, timeout=60
        )
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
    assert codes[-1] == 0, codes
    with open_store(url) as store:
        bad = store.get_stage_state("bad", "work")
        assert bad.status == StageStatus.FAILED
        assert "the last time with no other stage beside it" in bad.error
        for n in range(1, 5):
            good = store.get_stage_state(f"good-{n}", "work")
            assert good.status == StageStatus.COMPLETE, (n, good)
            if concurrency == 1:
                assert good.recoveries == 0  # waiting for a slot is not executing
