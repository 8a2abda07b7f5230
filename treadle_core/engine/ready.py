"""Pure functions of an item's stage states: what is ready, what dependents see, and the
item's aggregate state (the ``items`` row that claims and ``treadle status`` read)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..model import ItemState, ReviewRecord, StageState, StageStatus
from .plan import Plan

States = Mapping[str, StageState]


def is_done(states: States, name: str) -> bool:
    """COMPLETE or SKIPPED: the stage satisfies its dependents."""
    st = states.get(name)
    return st is not None and st.status.is_done


def is_ready(plan: Plan, states: States, name: str, now: datetime) -> bool:
    """PENDING (or never run), due, and every dependency done."""
    st = states.get(name)
    if st is not None:
        if st.status != StageStatus.PENDING:
            return False
        if st.next_attempt_at is not None and st.next_attempt_at > now:
            return False
    return all(is_done(states, d) for d in plan.deps[name])


def upstream(plan: Plan, states: States, name: str) -> dict[str, Any]:
    """The artefacts of the stage's COMPLETE direct and indirect dependencies."""
    out: dict[str, Any] = {}
    for dep in plan.ancestors[name]:
        st = states.get(dep)
        if st is not None and st.status == StageStatus.COMPLETE:
            out[dep] = st.artefact
    return out


def approvals(plan: Plan, states: States, name: str) -> dict[str, ReviewRecord]:
    """For each COMPLETE upstream stage a person approved: the approval it completed with
    (what ``ctx.reviews`` holds)."""
    out: dict[str, ReviewRecord] = {}
    for dep in plan.ancestors[name]:
        st = states.get(dep)
        if st is not None and st.status == StageStatus.COMPLETE and st.approval is not None:
            out[dep] = ReviewRecord.from_dict(st.approval)
    return out


def expired_reviews(plan: Plan, states: States, now: datetime) -> list[tuple[str, datetime]]:
    """Stages AWAITING_REVIEW whose review deadline has passed, with that deadline."""
    out: list[tuple[str, datetime]] = []
    for name, st in states.items():
        spec = plan.specs.get(name)
        if (
            spec is not None
            and spec.review_timeout is not None
            and st.status == StageStatus.AWAITING_REVIEW
            and st.review_deadline is not None
            and st.review_deadline <= now
        ):
            out.append((name, st.review_deadline))
    return out


def aggregate(plan: Plan, states: States, now: datetime) -> tuple[ItemState, datetime | None]:
    """The item's aggregate state and when it next has work, from its stage states.

    RUNNING wins (due now: once its lease lapses, anyone may take it over), then
    ready or scheduled work, then a review waiting, then a failure, then a cancelled
    stage (never claimed again); else COMPLETE.
    """
    seen: set[StageStatus] = set()
    deadlines: list[datetime] = []
    ready_at: list[datetime] = []
    for name in plan.order:
        st = states.get(name)
        status = st.status if st is not None else StageStatus.PENDING
        seen.add(status)
        if st is not None and status == StageStatus.AWAITING_REVIEW and st.review_deadline:
            deadlines.append(st.review_deadline)
        elif status == StageStatus.PENDING and all(is_done(states, d) for d in plan.deps[name]):
            ready_at.append(st.next_attempt_at if st is not None and st.next_attempt_at else now)
    due_at = min(deadlines + ready_at, default=None)
    if StageStatus.RUNNING in seen:
        return ItemState.RUNNING, now
    if ready_at:
        return (ItemState.READY if min(ready_at) <= now else ItemState.SCHEDULED), due_at
    if StageStatus.AWAITING_REVIEW in seen:
        return ItemState.AWAITING_REVIEW, due_at
    if StageStatus.FAILED in seen:
        return ItemState.FAILED, None
    if StageStatus.CANCELLED in seen:
        return ItemState.CANCELLED, None
    return ItemState.COMPLETE, None
