"""Crash safety: a process is SIGKILLed mid-stage; a new one finishes; nothing is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from treadle_core import ItemState, StageStatus, open_store

HERE = Path(__file__).parent
N_ITEMS = 200
STAGES = ("extract", "transform", "load")


def start(url: str, markers: Path, lease: float = 1.0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "crash_pipeline.py"),
            url,
            str(markers),
            str(N_ITEMS),
            str(lease),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def executions(markers: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in markers.iterdir())


def completed_stages(url: str) -> set[tuple[str, str]]:
    store = open_store(url)
    try:
        done = set()
        for item_id in store.list_work_items():
            for stage, st in store.get_all_stage_states(item_id).items():
                if st.status == StageStatus.COMPLETE:
                    done.add((item_id, stage))
        return done
    finally:
        store.close()


def run_crash_scenario(url: str, markers: Path, kill_after: int) -> set[tuple[str, str]]:
    """Start, SIGKILL once `kill_after` stage executions happened, restart to the end."""
    proc = start(url, markers)
    deadline = time.monotonic() + 60
    while executions(markers) < kill_after:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the pipeline made no progress"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = completed_stages(url)
    proc = start(url, markers)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    return committed


def check_outcome(url: str, markers: Path, committed: set[tuple[str, str]]) -> None:
    store = open_store(url)
    try:
        assert store.count_items() == {ItemState.COMPLETE: N_ITEMS}
        for item_id in store.list_work_items():
            states = store.get_all_stage_states(item_id)
            assert {s: st.status for s, st in states.items()} == {
                s: StageStatus.COMPLETE for s in STAGES
            }
            # artefacts made it downstream
            assert states["load"].artefact == {"stage": "load", "item": item_id}
    finally:
        store.close()
    for item_id, stage in committed:
        runs = (markers / f"{item_id}.{stage}").read_text().splitlines()
        assert len(runs) == 1, (
            f"{item_id}.{stage} was COMPLETE before the kill but ran {len(runs)} times"
        )
    for i in range(N_ITEMS):
        for stage in STAGES:
            assert (markers / f"item-{i:03d}.{stage}").exists(), "a stage never ran"


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [5, 150, 420])
def test_sigkill_mid_run_on_sqlite_loses_nothing(tmp_path, kill_after):
    markers = tmp_path / "markers"
    markers.mkdir()
    db = tmp_path / "state.db"
    url = f"sqlite:///{db}"
    committed = run_crash_scenario(url, markers, kill_after)
    check_outcome(url, markers, committed)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("kill_after", [40, 300])
def test_sigkill_mid_run_on_postgres_loses_nothing(tmp_path, pg_url, kill_after):
    markers = tmp_path / "markers"
    markers.mkdir()
    committed = run_crash_scenario(pg_url, markers, kill_after)
    check_outcome(pg_url, markers, committed)
