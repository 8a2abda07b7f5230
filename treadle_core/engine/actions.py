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


def recover(
    state: StageState, now: datetime, *, item_id: str, stage: str, max_recoveries: int
) -> Decision:
    """A stage found RUNNING after its process died: run it again, or give up after
    ``max_recoveries`` crashes. The crash does not spend the retry budget."""
    recoveries = state.recoveries + 1
    subtasks = [
        dataclasses.replace(t, status=StageStatus.PENDING) if t.status == StageStatus.RUNNING else t
        for t in state.subtasks
    ]
    crashed = AttemptRecord(
        attempt=state.attempt,
        started_at=state.started_at,
        completed_at=now,
        outcome="crashed",
        error="the process running this attempt died",
    )
    if recoveries >= max_recoveries:
        error = (
            "recovery limit reached: the stage was running when its process died "
            f"{recoveries} times"
        )
        new = state.replace(
            status=StageStatus.FAILED,
            error=error,
            completed_at=now,
            updated_at=now,
            recoveries=recoveries,
            subtasks=subtasks,
        )
        return Decision(
            new, [StageFailed(item_id=item_id, stage=stage, error=error, at=now)], crashed
        )
    new = state.replace(
        status=StageStatus.PENDING,
        updated_at=now,
        recoveries=recoveries,
        budget_start=state.budget_start + 1,
        subtasks=subtasks,
    )
    event = StageRetried(
        item_id=item_id,
        stage=stage,
        attempt=state.attempt,
        error="recovered after its process died",
        at=now,
    )
    return Decision(new, [event], crashed)


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
        subtasks=subtasks,
    )
    event = StageRetried(
        item_id=item_id, stage=stage, attempt=state.attempt, error=state.error, at=now
    )
    return new, [event]
