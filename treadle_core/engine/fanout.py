"""Pure decisions framing a fan-out: running it again, and the stage once none of its
subtasks can run now (each subtask's attempts are decided by `decide`)."""

from __future__ import annotations

from datetime import datetime

from ..events import Escalated, Event, StageCompleted, StageFailed, StageStarted
from ..model import StageState, StageStatus
from ..quality import ReviewPolicy
from .decide import awaiting, review_required
from .plan import StageSpec


def resume_fanout(
    spec: StageSpec, prev: StageState, now: datetime, *, item_id: str
) -> tuple[StageState, list[Event]]:
    """A fan-out with unfinished subtasks running again: a new attempt of the stage."""
    state = prev.replace(
        status=StageStatus.RUNNING,
        attempt=prev.attempt + 1,
        started_at=now,
        completed_at=None,
        next_attempt_at=None,
        updated_at=now,
    )
    return state, [StageStarted(item_id=item_id, stage=spec.name, attempt=state.attempt, at=now)]


def finish_fanout(
    spec: StageSpec, state: StageState, now: datetime, *, item_id: str
) -> tuple[StageState, list[Event]]:
    """The stage once no subtask can run now: waiting for a retry, failed, or complete
    (a fan-out that ran alone at its recovery limit is done with that once it ends)."""
    name, subs = spec.name, state.subtasks
    artefact = {t.id: t.artefact for t in subs if t.status == StageStatus.COMPLETE}
    pending = [t for t in subs if t.status == StageStatus.PENDING]
    base = state.replace(
        completed_at=now,
        updated_at=now,
        artefact=artefact,
        run_alone=state.run_alone and bool(pending),
    )
    failed = [t.id for t in subs if t.status == StageStatus.FAILED]
    if pending:
        times = [t.next_attempt_at for t in pending if t.next_attempt_at is not None]
        return base.replace(
            status=StageStatus.PENDING, next_attempt_at=min(times, default=None)
        ), []
    if failed:
        error = f"subtasks failed: {', '.join(failed)}"
        if spec.escalates:
            return awaiting(spec, base.replace(error=error), error, {}, now), [
                Escalated(item_id=item_id, stage=name, reason=error, at=now),
                review_required(item_id, name, error, {}, now),
            ]
        new = base.replace(status=StageStatus.FAILED, error=error)
        return new, [StageFailed(item_id=item_id, stage=name, error=error, at=now)]
    if spec.policy == ReviewPolicy.ALWAYS:
        return awaiting(spec, base, "", {}, now), [review_required(item_id, name, "", {}, now)]
    new = base.replace(status=StageStatus.COMPLETE, error=None)
    return new, [StageCompleted(item_id=item_id, stage=name, at=now)]
