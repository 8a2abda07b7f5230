"""Pure decisions about a stage made outside an attempt: recovering it after its process
died, ``retry_stage``, ``rerun``, ``cancel``, and which person's approval carries over to
the same question asked again (a review decision itself is in `review`). Like `decide`,
values in and values out."""

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
from ..events import Event, ItemCancelled, StageFailed, StageReset, StageRetried
from ..model import (
    AttemptRecord,
    ReviewRecord,
    StageState,
    StageStatus,
    to_ts,
)
from .decide import Decision
from .fanout import finish_fanout
from .plan import Plan, StageSpec

#: Who decides a review whose deadline passed.
TIMEOUT_REVIEWER = "timeout"
#: Who is recorded on a person's decision applied again to the same question.
CARRIED_OVER = "carried-over"
#: Decisions no person made: never carried over.
MACHINE_REVIEWERS = frozenset({TIMEOUT_REVIEWER, CARRIED_OVER})


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


# --- decisions carried over ---------------------------------------------------------------


def review_subject(state: StageState) -> str:
    """A digest of the question a stage AWAITING_REVIEW asks: its prompt, context, choices,
    form and the artefact under review, as canonical JSON."""
    text = json.dumps(
        {
            "prompt": state.review_prompt or "",
            "context": state.review_context or {},
            "choices": list(state.review_choices),
            "form": state.review_form,
            "artefact": state.artefact,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def approval_to_carry(state: StageState, reviews: Sequence[ReviewRecord]) -> ReviewRecord | None:
    """The approval to apply again to a stage about to ask a person ``state``'s question:
    the latest decision a person made that settled this same question (prompt, context,
    choices, form and artefact), when it was an approval; else None. Only decisions that
    settled a review carry a subject (a vote among several does not), and a decision the
    timeout or an earlier carry-over made is no person's."""
    subject = review_subject(state)
    asked = [r for r in reviews if r.subject == subject and r.reviewer not in MACHINE_REVIEWERS]
    if not asked or asked[-1].decision not in ("approve", "approve_with_edits"):
        return None
    return asked[-1]


def carried_from(original: ReviewRecord) -> dict[str, Any]:
    """The pointer a carried-over decision keeps to the person's decision it repeats."""
    return {"reviewer": original.reviewer, "at": to_ts(original.at), "decision": original.decision}


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
        review_choices=[],
        review_form=None,
        votes=[],
        approval=None,
        feedback=None,
        stale=False,
        suspect=False,
        run_alone=False,
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
