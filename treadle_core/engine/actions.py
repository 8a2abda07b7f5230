"""Pure decisions about a stage made outside an attempt: recovering it after its process
died, a review decision, and ``retry_stage``. Like `decide`, values in and values out."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from ..events import Event, ReviewResolved, StageCompleted, StageFailed, StageRetried
from ..model import (
    ApproveWithEdits,
    AttemptRecord,
    Reject,
    ReviewDecision,
    ReviewRecord,
    StageState,
    StageStatus,
    decision_name,
)
from .decide import Decision
from .fanout import finish_fanout
from .plan import StageSpec


def recover(
    spec: StageSpec, state: StageState, now: datetime, *, item_id: str, max_recoveries: int
) -> Decision:
    """A stage found RUNNING after its process died.

    Only a stage whose code was executing counts a recovery. A stage is normally written
    RUNNING before it waits for an execution slot, so the first time it is found RUNNING
    it may only have been waiting: it runs again, not counted, as a *suspect* — written
    RUNNING only once it holds a slot — so that from then on being found RUNNING means
    it was executing. A fan-out counts when one of its subtasks was RUNNING (subtasks
    always hold their slot first; each gets a ``crashed`` record naming it); one none of
    whose subtasks was running is decided at once, running no finished subtask again.
    At the recovery limit the stage runs once more alone; if its process dies then too,
    it is FAILED. A crash never spends the retry budget.
    """
    stage = spec.name
    running = [t for t in state.subtasks if t.status == StageStatus.RUNNING]
    if state.subtasks and not running:
        new, events = finish_fanout(spec, state, now, item_id=item_id)
        if new.status == StageStatus.PENDING:
            events = [_retried(item_id, stage, state, "no subtask was running", now)]
        return Decision(new, events)
    if running:
        records = [_crashed(t.attempt, state.started_at, now, t.id) for t in running]
    else:
        records = [_crashed(state.attempt, state.started_at, now, None)]
    subtasks = [
        dataclasses.replace(t, status=StageStatus.PENDING, budget_start=t.budget_start + 1)
        if t.status == StageStatus.RUNNING
        else t
        for t in state.subtasks
    ]
    back = state.replace(
        status=StageStatus.PENDING,
        updated_at=now,
        budget_start=state.budget_start + (0 if state.subtasks else 1),
        subtasks=subtasks,
    )
    if not (running or state.suspect or state.run_alone):
        uncounted = "not counted: it may only have been waiting for an execution slot"
        new = back.replace(suspect=True)
        return Decision(new, [_retried(item_id, stage, state, uncounted, now)], records)
    recoveries = state.recoveries + 1
    if state.run_alone:
        error = (
            f"recovery limit reached: its process died {recoveries} times while it ran, "
            "the last time with no other stage beside it"
        )
        new = state.replace(
            status=StageStatus.FAILED,
            error=error,
            completed_at=now,
            updated_at=now,
            recoveries=recoveries,
            run_alone=False,
            subtasks=subtasks,
        )
        return Decision(
            new, [StageFailed(item_id=item_id, stage=stage, error=error, at=now)], records
        )
    alone = recoveries >= max_recoveries
    new = back.replace(recoveries=recoveries, run_alone=alone, suspect=True)
    why = f"{recoveries} times: it runs once more with no other stage beside it" if alone else None
    return Decision(new, [_retried(item_id, stage, state, why, now)], records)


def _crashed(
    attempt: int, started_at: datetime | None, now: datetime, subtask: str | None
) -> AttemptRecord:
    return AttemptRecord(
        attempt=attempt,
        started_at=started_at,
        completed_at=now,
        outcome="crashed",
        error="the process running this attempt died",
        subtask=subtask,
    )


def _retried(
    item_id: str, stage: str, state: StageState, why: str | None, now: datetime
) -> StageRetried:
    error = "recovered after its process died" + (f" ({why})" if why else "")
    return StageRetried(item_id=item_id, stage=stage, attempt=state.attempt, error=error, at=now)


def resolve(
    state: StageState,
    decision: ReviewDecision,
    now: datetime,
    *,
    item_id: str,
    stage: str,
    reviewer: str | None,
    comment: str | None,
    edited: Any = None,
) -> tuple[StageState, list[Event], ReviewRecord]:
    """A review decision applied to a stage AWAITING_REVIEW (``edited``: the checked edit)."""
    name = decision_name(decision)
    events: list[Event] = [
        ReviewResolved(item_id=item_id, stage=stage, decision=name, reviewer=reviewer, at=now)
    ]
    common: dict[str, Any] = dict(
        completed_at=now, updated_at=now, review_deadline=None, next_attempt_at=None
    )
    if isinstance(decision, Reject):
        new = state.replace(status=StageStatus.FAILED, error=decision.reason, **common)
        events.append(StageFailed(item_id=item_id, stage=stage, error=decision.reason, at=now))
    else:
        artefact = edited if isinstance(decision, ApproveWithEdits) else state.artefact
        new = state.replace(status=StageStatus.COMPLETE, artefact=artefact, error=None, **common)
        events.append(StageCompleted(item_id=item_id, stage=stage, at=now))
    record = ReviewRecord(
        decision=name,
        reviewer=reviewer,
        comment=comment,
        at=now,
        reason=decision.reason if isinstance(decision, Reject) else None,
        edited_artefact=edited,
        note=decision.note if isinstance(decision, ApproveWithEdits) else None,
    )
    return new, events, record


def reset_failed(
    state: StageState, now: datetime, *, item_id: str, stage: str
) -> tuple[StageState, list[Event]]:
    """``retry_stage``: a FAILED stage back to PENDING with a renewed budget; of a fan-out,
    only the failed subtasks run again."""
    subtasks = [
        t
        if t.status != StageStatus.FAILED
        else dataclasses.replace(
            t, status=StageStatus.PENDING, error=None, next_attempt_at=None, budget_start=t.attempt
        )
        for t in state.subtasks
    ]
    new = state.replace(
        status=StageStatus.PENDING,
        error=None,
        next_attempt_at=None,
        completed_at=None,
        updated_at=now,
        budget_start=state.attempt,
        recoveries=0,
        suspect=False,
        run_alone=False,
        subtasks=subtasks,
    )
    event = StageRetried(
        item_id=item_id, stage=stage, attempt=state.attempt, error=state.error, at=now
    )
    return new, [event]
