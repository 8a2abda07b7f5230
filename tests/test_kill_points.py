"""Deterministic kill points: a child process SIGKILLs itself right after its Nth commit,
for every N of a pipeline with a gate, a fan-out and a review; a new process finishes.

At no kill point does a stage or subtask that was COMPLETE before the kill run again,
and the journal and attempt records hold each completion exactly once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from kill_points import build

from treadle_core import StageStatus, open_store

HERE = Path(__file__).parent


def child(url: str, markers: Path, kill_at: int) -> tuple[int, int, int]:
    """Run the pipeline in a child; (exit code, commits it reported, its pid)."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "kill_points.py"), url, str(markers), str(kill_at)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -9), err
    commits = int(out.split()[-1]) if proc.returncode == 0 else -1
    return proc.returncode, commits, proc.pid


def executed(markers: Path, pid: int) -> set[tuple[str, str]]:
    return {
        (stage, sub)
        for line in (markers.read_text().splitlines() if markers.exists() else [])
        for p, stage, sub, _ in [line.split()]
        if int(p) == pid
    }


def complete_units(url: str) -> set[tuple[str, str]]:
    """(stage, "-") for every COMPLETE stage and (stage, subtask) for every COMPLETE
    subtask of item x, as the store holds them."""
    with open_store(url) as store:
        done = set()
        for name, st in store.get_all_stage_states("x").items():
            if st.status == StageStatus.COMPLETE:
                done.add((name, "-"))
            done |= {(name, t.id) for t in st.subtasks if t.status == StageStatus.COMPLETE}
        return done


def prepare(directory: Path, phase: str) -> tuple[str, Path]:
    """A store at the start of ``phase``: empty ("draft"), or waiting review approved."""
    directory.mkdir()
    url, markers = f"sqlite:///{directory}/s.db", directory / "markers"
    if phase == "finish":
        assert child(url, markers, 0)[0] == 0
        with open_store(url) as store:
            asyncio.run(build(markers).approve_review("x", "approve", store, reviewer="t"))
    return url, markers


def check_journal(url: str, phase: str) -> None:
    with open_store(url) as store:
        kinds = Counter(
            (e.event.kind, e.event.stage, getattr(e.event, "subtask", None))
            for e in store.read_events("x")
        )
        done = {"draft", "enrich"} | ({"publish", "approve"} if phase == "finish" else set())
        for stage in done:
            assert kinds[("StageCompleted", stage, None)] == 1, (stage, kinds)
        for sub in "abc":
            assert kinds[("SubTaskCompleted", "enrich", sub)] == 1, kinds
        for stage in ("draft", "enrich", "approve", "publish"):
            records = [
                (a.attempt, a.subtask, a.outcome)
                for a in store.get_attempts("x", stage)
                if a.outcome != "crashed"
            ]
            assert len(records) == len(set(records)), (stage, records)
        statuses = {n: s.status for n, s in store.get_all_stage_states("x").items()}
        expected = StageStatus.COMPLETE if phase == "finish" else StageStatus.AWAITING_REVIEW
        assert statuses["approve"] == expected, statuses


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["draft", "finish"])
def test_no_complete_stage_or_subtask_runs_again_at_any_kill_point(tmp_path, phase):
    url, markers = prepare(tmp_path / "clean", phase)
    code, commits, _ = child(url, markers, 0)
    assert code == 0 and commits > 3
    killed = 0
    for k in range(1, commits + 1):
        url, markers = prepare(tmp_path / f"kill-{k}", phase)
        code, _, _ = child(url, markers, k)
        if code == 0:
            continue  # this run needed fewer commits (fewer claims): no kill point k
        killed += 1
        before = complete_units(url)
        # The dead child's lease is taken over at once (same host, its process is gone).
        code, _, pid = child(url, markers, 0)
        assert code == 0
        again = executed(markers, pid) & before
        assert not again, f"kill point {k}: {sorted(again)} ran again after completing"
        check_journal(url, phase)
    assert killed >= commits - 2, (killed, commits)
