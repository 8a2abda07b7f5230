"""Recovering a stage found RUNNING after its process died (`engine.actions.recover`):
pure, so each rule is a plain test; the crash tests run the same rules in real processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from treadle_core import StageState, StageStatus, SubTask
from treadle_core.engine import StageSpec
from treadle_core.engine.actions import recover
from treadle_core.stage import as_stage

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(minutes=1)
SPEC = StageSpec("enrich", as_stage(lambda item, ctx: None, "enrich"))


def _running(**changes) -> StageState:
    base = StageState(status=StageStatus.RUNNING, attempt=2, started_at=STARTED, budget_start=1)
    return base.replace(**changes)


def test_the_first_crash_is_not_counted_but_makes_the_stage_a_suspect():
    """RUNNING was written before it took an execution slot: it may only have waited."""
    d = recover(SPEC, _running(), NOW, item_id="x", max_recoveries=3)
    assert d.state.status == StageStatus.PENDING
    assert (d.state.recoveries, d.state.suspect, d.state.run_alone) == (0, True, False)
    assert d.state.budget_start == 2  # the crash does not spend the retry budget
    (record,) = d.records
    assert (record.attempt, record.outcome, record.subtask) == (2, "crashed", None)
    assert (record.started_at, record.completed_at) == (STARTED, NOW)
    assert [e.kind for e in d.events] == ["StageRetried"]
    assert d.events[0].error == (
        "recovered after its process died (not counted: it may only have been waiting for "
        "an execution slot)"
    )


def test_a_suspect_found_running_was_executing_and_counts_a_recovery():
    """A suspect is written RUNNING only once it holds its slot."""
    d = recover(SPEC, _running(suspect=True), NOW, item_id="x", max_recoveries=3)
    assert d.state.status == StageStatus.PENDING
    assert (d.state.recoveries, d.state.suspect, d.state.run_alone) == (1, True, False)
    assert d.events[0].error == "recovered after its process died"


def test_at_the_limit_it_runs_once_more_alone():
    d = recover(SPEC, _running(recoveries=2, suspect=True), NOW, item_id="x", max_recoveries=3)
    assert d.state.status == StageStatus.PENDING
    assert (d.state.recoveries, d.state.run_alone) == (3, True)
    assert d.events[0].error == (
        "recovered after its process died (3 times: it runs once more with no other stage "
        "beside it)"
    )


def test_a_crash_while_running_alone_fails_it():
    d = recover(
        SPEC,
        _running(recoveries=3, suspect=True, run_alone=True),
        NOW,
        item_id="x",
        max_recoveries=3,
    )
    assert d.state.status == StageStatus.FAILED and not d.state.run_alone
    assert d.state.error == (
        "recovery limit reached: its process died 4 times while it ran, the last time with "
        "no other stage beside it"
    )
    assert [e.kind for e in d.events] == ["StageFailed"]
    assert [r.outcome for r in d.records] == ["crashed"]


@pytest.mark.parametrize(
    "subtasks, status, events",
    [
        (
            [
                SubTask("a", StageStatus.COMPLETE, 1, artefact=1),
                SubTask("b", StageStatus.SKIPPED, 1),
            ],
            StageStatus.COMPLETE,
            ["StageCompleted"],
        ),
        (
            [SubTask("a", StageStatus.COMPLETE, 1), SubTask("b", StageStatus.FAILED, 2, "x")],
            StageStatus.FAILED,
            ["StageFailed"],
        ),
        (
            [SubTask("a", StageStatus.COMPLETE, 1), SubTask("b", StageStatus.PENDING, 1)],
            StageStatus.PENDING,
            ["StageRetried"],
        ),
    ],
    ids=["all-done", "one-failed", "one-waiting"],
)
def test_a_fanout_none_of_whose_subtasks_ran_is_decided_without_running_any(
    subtasks, status, events
):
    """Killed between its last subtask's commit and its own: finish what is finished."""
    d = recover(SPEC, _running(subtasks=subtasks), NOW, item_id="x", max_recoveries=3)
    assert d.state.status == status
    assert [e.kind for e in d.events] == events
    assert d.records == []  # no attempt was cut short
    assert d.state.recoveries == 0  # nothing was executing: nobody to blame
    assert [t.status for t in d.state.subtasks] == [t.status for t in subtasks]
    if status == StageStatus.COMPLETE:
        assert d.state.artefact == {"a": 1}


def test_a_killed_subtask_is_named_and_runs_again_without_spending_its_budget():
    subtasks = [
        SubTask("a", StageStatus.COMPLETE, 1),
        SubTask("b", StageStatus.RUNNING, 2, budget_start=1),
        SubTask("c", StageStatus.RUNNING, 1),
    ]
    d = recover(SPEC, _running(subtasks=subtasks), NOW, item_id="x", max_recoveries=3)
    assert d.state.status == StageStatus.PENDING and d.state.recoveries == 1
    assert [(r.subtask, r.attempt, r.outcome) for r in d.records] == [
        ("b", 2, "crashed"),
        ("c", 1, "crashed"),
    ]
    a, b, c = d.state.subtasks
    assert a.status == StageStatus.COMPLETE  # never runs again
    assert (b.status, b.budget_start, c.status, c.budget_start) == (
        StageStatus.PENDING,
        2,
        StageStatus.PENDING,
        1,
    )
