"""`treadle worker`: claims forever, drains on SIGTERM, exits at once on a second signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from treadle_core import ItemState, StageStatus, open_store

PIPELINE = """
[pipeline]
name = "w"
store = "sqlite:///state.db"
concurrency = 4

[stages.slow]
uses = "stages:slow"

[stages.after]
uses = "stages:after"
needs = ["slow"]
"""

STAGES = """
import asyncio, os, pathlib

async def slow(item, ctx):
    pathlib.Path("started", f"{item.id}.{os.getpid()}").touch()
    await asyncio.sleep(float(item.data.get("sleep", 0)))
    return None

def after(item, ctx):
    pathlib.Path("done", f"{item.id}.{os.getpid()}").touch()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "started").mkdir()
    (tmp_path / "done").mkdir()
    return tmp_path


def treadle(project: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def start_worker(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "treadle_core.cli", "worker", "--poll", "100ms", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def add(project: Path, n: int, sleep: float) -> None:
    lines = "\n".join(json.dumps({"id": f"i{k}", "data": {"sleep": sleep}}) for k in range(n))
    (project / "items.jsonl").write_text(lines + "\n")
    assert treadle(project, "add", "items.jsonl").returncode == 0


def test_worker_picks_up_items_added_while_it_runs_and_stops_cleanly(project):
    proc = start_worker(project, "--id", "w1", "--json")
    time.sleep(0.5)  # idle, polling
    add(project, 5, 0)
    wait_for(lambda: len(list((project / "done").iterdir())) == 5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["worker"] == "w1" and report["executions"] == 10
    store = open_store(f"sqlite:///{project}/state.db")
    assert store.count_items() == {ItemState.COMPLETE: 5}
    store.close()


def test_sigterm_finishes_in_flight_stages_and_releases_leases(project):
    add(project, 2, 1.0)
    proc = start_worker(project)
    wait_for(lambda: len(list((project / "started").iterdir())) == 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "finishing in-flight stages" in err
    store = open_store(f"sqlite:///{project}/state.db")
    for item in ("i0", "i1"):
        assert store.get_stage_state(item, "slow").status == StageStatus.COMPLETE
        rec = store.get_item(item)
        assert rec.lease_owner is None and rec.lease_expires_at is None
    # nothing new was claimed after the signal: the next stage is still to do
    assert store.get_stage_state("i0", "after") is None
    store.close()


def test_second_signal_exits_at_once_and_the_lease_is_taken_over(project):
    add(project, 1, 30)
    proc = start_worker(project, "--lease", "1s")
    wait_for(lambda: len(list((project / "started").iterdir())) == 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGINT
    store = open_store(f"sqlite:///{project}/state.db")
    assert store.get_stage_state("i0", "slow").status == StageStatus.RUNNING
    store.close()
    # another worker takes the item over once the lease lapses and re-runs the stage
    (project / "items.jsonl").write_text("")
    store = open_store(f"sqlite:///{project}/state.db")
    store.save_work_item_data("i0", {"sleep": 0})
    store.close()
    proc = start_worker(project, "--lease", "1s")
    wait_for(lambda: len(list((project / "done").iterdir())) == 1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    store = open_store(f"sqlite:///{project}/state.db")
    st = store.get_stage_state("i0", "slow")
    assert (st.status, st.attempt, st.suspect) == (StageStatus.COMPLETE, 2, True)
    store.close()


def test_bad_lease_option_is_one_line_and_exit_2(project):
    result = treadle(project, "worker", "--lease", "soon")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--lease" in result.stderr and "Traceback" not in result.stderr
