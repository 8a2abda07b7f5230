"""Pure decisions about a stage made outside an attempt: recovering it after its process
died, a review decision, ``retry_stage``, ``rerun``, ``cancel``, and a review decision
carried over to the same question asked again. Like `decide`, values in and values out."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import networkx as nx

from ..errors import CancelError, RerunError
from ..events import (
    Event,
    ItemCancelled,
    ReviewResolved,
    StageCompleted,
    StageFailed,
    StageReset,
    StageRetried,
)
from ..model import (
    ApproveWithEdits,
    AttemptRecord,
    Reject,
    ReviewDecision,
    ReviewRecord,
    StageState,
    StageStatus,
    decision_name,
    to_ts,
)
from .decide import Decision
from .plan import Plan

#: Who decides a review whose deadline passed.
TIMEOUT_REVIEWER = "timeout"
#: Who is recorded on a person's decision applied again to the same question.
CARRIED_OVER = "carried-over"
#: Decisions no person made: never carried over.
MACHINE_REVIEWERS = frozenset({TIMEOUT_REVIEWER, CARRIED_OVER})


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
        subject=review_subject(state),
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


# --- decisions carried over ---------------------------------------------------------------


def review_subject(state: StageState) -> str:
    """A digest of the question a stage AWAITING_REVIEW asks: its prompt, context and the
    artefact under review, as canonical JSON."""
    text = json.dumps(
        {
            "prompt": state.review_prompt or "",
            "context": state.review_context or {},
            "artefact": state.artefact,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def carry_over(
    state: StageState,
    reviews: Sequence[ReviewRecord],
    now: datetime,
    *,
    item_id: str,
    stage: str,
) -> tuple[StageState, list[Event], ReviewRecord] | None:
    """A stage about to wait for a person whose question a person already approved (the
    latest decision by a person on that same question): the approval applied again, or
    None. A changed prompt, context or artefact always goes back to a person."""
    subject = review_subject(state)
    asked = [r for r in reviews if r.subject == subject and r.reviewer not in MACHINE_REVIEWERS]
    if not asked or asked[-1].decision not in ("approve", "approve_with_edits"):
        return None
    original = asked[-1]
    edited = original.decision == "approve_with_edits"
    new = state.replace(
        status=StageStatus.COMPLETE,
        artefact=original.edited_artefact if edited else state.artefact,
        error=None,
        completed_at=now,
        updated_at=now,
        review_deadline=None,
        next_attempt_at=None,
    )
    record = ReviewRecord(
        decision=original.decision,
        reviewer=CARRIED_OVER,
        comment=None,
        at=now,
        edited_artefact=original.edited_artefact,
        note=original.note,
        subject=subject,
        carried_from={
            "reviewer": original.reviewer,
            "at": to_ts(original.at),
            "decision": original.decision,
        },
    )
    events: list[Event] = [
        ReviewResolved(
            item_id=item_id, stage=stage, decision=original.decision, reviewer=CARRIED_OVER, at=now
        ),
        StageCompleted(item_id=item_id, stage=stage, at=now),
    ]
    return new, events, record


# --- re-running and cancelling ------------------------------------------------------------

#: Statuses ``rerun`` puts back to PENDING.
RERUNNABLE = frozenset(
    {
        StageStatus.COMPLETE,
        StageStatus.FAILED,
        StageStatus.SKIPPED,
        StageStatus.CANCELLED,
        StageStatus.AWAITING_REVIEW,
    }
)


def downstream(plan: Plan, stage: str) -> list[str]:
    """Every stage that depends on ``stage``, directly or not, in topological order."""
    below = nx.descendants(plan.graph, stage)
    return [n for n in plan.order if n in below]


def reset(state: StageState, now: datetime) -> StageState:
    """A stage back to PENDING to run again from scratch: attempts keep counting, the
    budget is renewed, a fan-out runs every subtask again."""
    return state.replace(
        status=StageStatus.PENDING,
        error=None,
        next_attempt_at=None,
        completed_at=None,
        updated_at=now,
        budget_start=state.attempt,
        recoveries=0,
        subtasks=[],
        artefact=None,
        review_deadline=None,
        review_prompt=None,
        review_context={},
        stale=False,
    )


def rerun(
    plan: Plan,
    states: Mapping[str, StageState],
    stage: str,
    now: datetime,
    *,
    item_id: str,
    cascade: bool,
    reason: str | None,
    by: str | None,
) -> tuple[dict[str, StageState], list[Event]]:
    """``rerun``: the stage (and with ``cascade`` every stage downstream that has run) back
    to PENDING, each journalled as `StageReset`. Without ``cascade``, downstream COMPLETE
    stages become stale instead. A RUNNING stage among them, or a target that has not
    run, is a `RerunError` and changes nothing."""
    below = downstream(plan, stage)
    targets = [stage, *below] if cascade else [stage]
    st = states.get(stage)
    if st is None or st.status not in RERUNNABLE:
        status = "pending" if st is None else st.status.value
        hint = {
            "pending": "it runs with the next 'treadle run' or worker",
            "running": "wait for it to finish, or cancel the item",
        }.get(status, "")
        raise RerunError(
            f"item {item_id!r} stage {stage!r} is {status}, so there is nothing to re-run"
            + (f"; {hint}" if hint else "")
        )
    busy = [
        n for n in targets if (s := states.get(n)) is not None and s.status == StageStatus.RUNNING
    ]
    if busy:
        raise RerunError(
            f"item {item_id!r} stage {busy[0]!r} is running; wait for it to finish, or "
            "cancel the item, then re-run"
        )
    new: dict[str, StageState] = {}
    events: list[Event] = []
    for name in targets:
        s = states.get(name)
        if s is None or s.status not in RERUNNABLE:
            continue
        new[name] = reset(s, now)
        events.append(
            StageReset(
                item_id=item_id,
                stage=name,
                reason=reason,
                by=by,
                previous=s.status.value,
                at=now,
            )
        )
    if not cascade:
        for name in below:
            s = states.get(name)
            if s is not None and s.status == StageStatus.COMPLETE and not s.stale:
                new[name] = s.replace(stale=True)
    return new, events


@dataclass(frozen=True)
class Cancellation:
    """What ``cancel`` writes: the cancelled states, an attempt record for each attempt it
    stopped (stage name -> records), and the journal entry."""

    states: dict[str, StageState]
    records: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def cancel(
    plan: Plan,
    states: Mapping[str, StageState],
    now: datetime,
    *,
    item_id: str,
    reason: str | None,
    by: str | None,
) -> Cancellation:
    """``cancel``: every stage not COMPLETE or SKIPPED becomes CANCELLED; an attempt in
    flight is recorded as cancelled. Nothing left to cancel is a `CancelError`."""
    targets = [
        n
        for n in plan.order
        if (s := states.get(n)) is None
        or s.status not in (StageStatus.COMPLETE, StageStatus.SKIPPED, StageStatus.CANCELLED)
    ]
    if not targets:
        raise CancelError(
            f"item {item_id!r} has nothing to cancel: every stage is complete, skipped "
            "or cancelled already"
        )
    error = "cancelled" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
    new: dict[str, StageState] = {}
    records: dict[str, list[AttemptRecord]] = {}
    for name in targets:
        s = states.get(name) or StageState()
        stopped = _stopped_attempts(s, now, error)
        if stopped:
            records[name] = stopped
        new[name] = s.replace(
            status=StageStatus.CANCELLED,
            error=error,
            completed_at=now if stopped else s.completed_at,
            updated_at=now,
            next_attempt_at=None,
            review_deadline=None,
            subtasks=[
                t if t.status.is_done else dataclasses.replace(t, status=StageStatus.CANCELLED)
                for t in s.subtasks
            ],
        )
    event = ItemCancelled(item_id=item_id, reason=reason, by=by, stages=targets, at=now)
    return Cancellation(new, records, [event])


def _stopped_attempts(state: StageState, now: datetime, error: str) -> list[AttemptRecord]:
    """The attempts a RUNNING stage has in flight (one per running subtask of a fan-out)."""
    if state.status != StageStatus.RUNNING:
        return []
    running = [t for t in state.subtasks if t.status == StageStatus.RUNNING]
    if not running:
        return [AttemptRecord(state.attempt, state.started_at, now, "cancelled", error=error)]
    return [
        AttemptRecord(t.attempt, state.started_at, now, "cancelled", error=error, subtask=t.id)
        for t in running
    ]
