"""Transaction bodies: each function here returns a write ``fn(store)`` that the group-commit
writer (`treadle_core._commit.Committer`) runs inside a transaction.

Every write that changes a stage locks the item's row first (checking the lease's
fencing token when it has one), stores the change with its attempt or review record,
recomputes the item's aggregate state and journals the events, all in one commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .._commit import Write
from ..clock import Clock
from ..errors import RetryError, ReviewError
from ..events import Event, ReviewRequired, WorkflowCompleted
from ..model import (
    REVIEW_DECISION_TYPES,
    Approve,
    ApproveWithEdits,
    AttemptRecord,
    ItemRecord,
    ItemState,
    Lease,
    ReviewDecision,
    ReviewRecord,
    StageState,
    StageStatus,
    WorkItem,
)
from ..store.base import StateStore, normalise_artefact
from . import actions
from .plan import Plan
from .ready import aggregate
from .review import resolve

#: What a write returns: the item's stage states after it, and the events it journalled.
WriteResult = tuple[dict[str, StageState], list[Event]]
StageWrite = Write[WriteResult]
#: Aggregate states that are due now: an item staying in one keeps its ``due_at``.
_DUE_NOW = (ItemState.READY, ItemState.RUNNING)


def _read_back(item_id: str, events: Sequence[Event]) -> Callable[[StateStore], WriteResult]:
    """A stage write's replay: its transaction committed but the reply was lost, so read
    the item's states back and publish the events it journalled."""

    def replay(store: StateStore) -> WriteResult:
        return store.get_all_stage_states(item_id), list(events)

    return replay


def finish(
    store: StateStore,
    plan: Plan,
    rec: ItemRecord,
    events: Sequence[Event],
    now: datetime,
    view: dict[str, StageState] | None = None,
) -> WriteResult:
    """Inside a write: recompute the item's aggregate state, journal the events.

    ``view`` is the writer's idea of the item's stages including what this write
    stored; only stages whose stored status or ``updated_at`` differ from it (changed
    by another process, or by an earlier write still in flight) are read again.
    """
    if view is None:
        states = store.get_all_stage_states(rec.id)
    else:
        states = view
        for name, (status, updated) in store.get_stage_versions(rec.id).items():
            mine = states.get(name)
            if (
                mine is None
                or mine.status != status
                or (None if mine.updated_at is None else mine.updated_at.timestamp()) != updated
            ):
                fresh = store.get_stage_state(rec.id, name)
                if fresh is not None:
                    states[name] = fresh
    state, due_at = aggregate(plan, states, now)
    if state == rec.state and state in _DUE_NOW and rec.due_at is not None and rec.due_at <= now:
        # Still ready (or still running): keep its place in the queue, and a chain of
        # stages under one lease leaves the item's row (and its indexes) alone.
        due_at = rec.due_at
    journal = list(events)
    if state == ItemState.COMPLETE and rec.state != ItemState.COMPLETE:
        journal.append(WorkflowCompleted(item_id=rec.id, at=now))
    if state != rec.state or due_at != rec.due_at:
        store.set_item_state(rec.id, state, due_at)
    if journal:
        store.append_events(journal)
    return states, journal


def transition(
    plan: Plan,
    clock: Clock,
    item_id: str,
    lease: Lease | None,
    stage: str | None,
    state: StageState | None,
    events: Sequence[Event],
    records: Sequence[AttemptRecord],
    view: Mapping[str, StageState],
    *,
    release: bool = False,
    woken: Callable[[str], None] | None = None,
    started: Mapping[str, StageState] | None = None,
) -> StageWrite:
    """One step of a stage under the item's lease: its new state, attempt records, events.
    With ``release``, an attempt of the limited stage ended: the first item waiting for
    its limit is woken (made due now) in the same transaction, and told to ``woken``.
    ``started``: dependents this step made ready, RUNNING in the same commit (their
    StageStarted events are among ``events``), so each starts without a write of its own."""

    def apply(store: StateStore) -> WriteResult:
        if release and stage is not None:
            waiter = _wake_waiter(store, plan, clock, stage, item_id)
            if waiter is not None and woken is not None:
                woken(waiter)
        rec = store.lock_item(item_id, lease)
        # A copy: a batch that rolls back runs this again from the same view.
        mine, journal = dict(view), events
        if stage is not None and state is not None:
            journal = _store_step(store, plan, clock, item_id, stage, state, mine, events)
        for name, running in (started or {}).items():
            mine[name] = running = _versioned(plan, name, running)
            store.save_stage_state(item_id, name, running)
        if stage is not None:
            for record in records:
                store.record_attempt(item_id, stage, record)
        return finish(store, plan, rec, journal, clock.now(), mine)

    return Write(apply, _read_back(item_id, events))


def start(
    plan: Plan,
    clock: Clock,
    item_id: str,
    lease: Lease,
    stage: str,
    running: StageState,
    waiting: StageState,
    events: Sequence[Event],
    view: Mapping[str, StageState],
    *,
    subtask: str | None = None,
) -> Write[tuple[WriteResult, bool]]:
    """The RUNNING write of a limited stage (or subtask): admitted by the stage's limit
    (`StateStore.admit`) it stores ``running``; refused it stores ``waiting`` with its
    next attempt not before the limit says, and the item waits without a slot or lease.
    Returns the write's result and whether it was admitted."""
    limit = plan.specs[stage].limit
    assert limit is not None
    concurrency = None if subtask is not None else limit.concurrency

    def apply(store: StateStore) -> tuple[WriteResult, bool]:
        # The limit row first, then the item: every write takes its locks in that order.
        retry_at = store.admit(stage, item_id, concurrency=concurrency, rate=limit.rate)
        rec = store.lock_item(item_id, lease)
        now = clock.now()
        if retry_at is None:
            store.save_stage_state(item_id, stage, running)
            return finish(store, plan, rec, events, now, {**view, stage: running}), True
        throttled = _not_before(waiting, subtask, retry_at)
        store.save_stage_state(item_id, stage, throttled)
        return finish(store, plan, rec, [], now, {**view, stage: throttled}), False

    def replay(store: StateStore) -> tuple[WriteResult, bool]:
        current = store.get_stage_state(item_id, stage)
        admitted = current is not None and current.status == StageStatus.RUNNING
        return (store.get_all_stage_states(item_id), list(events) if admitted else []), admitted

    return Write(apply, replay)


def _not_before(state: StageState, subtask: str | None, when: datetime) -> StageState:
    """``state`` (or its ``subtask``) waiting for a limit until ``when``."""
    if subtask is None:
        return state.replace(next_attempt_at=when)
    return state.replace(
        subtasks=[
            dataclasses.replace(t, next_attempt_at=when) if t.id == subtask else t
            for t in state.subtasks
        ]
    )


def _wake_waiter(
    store: StateStore, plan: Plan, clock: Clock, stage: str, item_id: str
) -> str | None:
    """The first item waiting for ``stage``'s limit becomes due now (it was waiting with
    its next attempt set a while ahead, in case this wake-up never came); its id."""
    waiter = store.release_limit(stage)
    if waiter is None or waiter == item_id:
        return None
    st = store.get_stage_state(waiter, stage)
    if st is None or st.status != StageStatus.PENDING or st.next_attempt_at is None:
        return None
    rec = store.lock_item(waiter)
    store.save_stage_state(waiter, stage, st.replace(next_attempt_at=None))
    finish(store, plan, rec, [], clock.now())
    store.notify_work()
    return waiter


def _store_step(
    store: StateStore,
    plan: Plan,
    clock: Clock,
    item_id: str,
    stage: str,
    state: StageState,
    view: dict[str, StageState],
    events: Sequence[Event],
) -> Sequence[Event]:
    """Store a stage's new state (with its version; a question a person already answered
    answered again by carry-over), updating ``view``; the events to journal."""
    new = _versioned(plan, stage, state)
    view[stage] = new
    changed: Mapping[str, StageState] = {stage: new}
    if new.status is StageStatus.AWAITING_REVIEW and _asks(events):
        changed, events = _carry_over(store, plan, clock, item_id, stage, view, events)
    for name, st in changed.items():
        store.save_stage_state(item_id, name, st)
    view.update(changed)
    return events


def _versioned(plan: Plan, stage: str, state: StageState) -> StageState:
    """The state with the version of the stage that ran it (SPEC §10: stale states). A
    PENDING state is left as it is: it has not run (or is put back as it was)."""
    spec = plan.specs.get(stage)
    if spec is None or state.version == spec.version or state.status is StageStatus.PENDING:
        return state
    return state.replace(version=spec.version)


def _asks(events: Sequence[Event]) -> bool:
    return any(isinstance(e, ReviewRequired) for e in events)


def _settled(record: ReviewRecord, asked: StageState, after: StageState) -> ReviewRecord:
    """A decision that settled the review (not one vote among several) keeps the digest of
    the question it settled: the same question asked again gets the same answer."""
    if after.status == StageStatus.AWAITING_REVIEW:
        return record
    return dataclasses.replace(record, subject=actions.review_subject(asked))


def _carry_over(
    store: StateStore,
    plan: Plan,
    clock: Clock,
    item_id: str,
    stage: str,
    states: Mapping[str, StageState],
    events: Sequence[Event],
) -> tuple[dict[str, StageState], Sequence[Event]]:
    """A stage about to ask a person what a person already approved: that approval (its
    choice, values or edit) applied again at once, recorded with reviewer "carried-over"
    and a pointer to the original, instead of asking. Returns the stages to store and
    the events to journal."""
    asking = states[stage]
    original = actions.approval_to_carry(asking, store.get_reviews(item_id, stage))
    if original is None:
        return {stage: asking}, events
    decision: ReviewDecision
    if original.decision == "approve_with_edits":
        decision = ApproveWithEdits(original.edited_artefact, original.note)
    else:
        decision = Approve(choice=original.choice, values=original.values)
    r = resolve(
        plan,
        dict(states),
        stage,
        decision,
        clock.now(),
        item_id=item_id,
        reviewer=actions.CARRIED_OVER,
        comment=None,
        edited=original.edited_artefact if isinstance(decision, ApproveWithEdits) else None,
        automatic=True,
    )
    record = dataclasses.replace(
        r.record,
        subject=actions.review_subject(asking),
        carried_from=actions.carried_from(original),
    )
    store.record_review(item_id, stage, record)
    kept = [e for e in events if not isinstance(e, ReviewRequired)]
    return r.states, [*kept, *r.events]


def review(
    plan: Plan,
    clock: Clock,
    item_id: str,
    stage: str,
    decision: ReviewDecision,
    *,
    reviewer: str | None,
    comment: str | None,
    lease: Lease | None = None,
    deadline: datetime | None = None,
) -> StageWrite:
    """A review decision (a person's, or the timeout's when ``deadline`` is given).

    A refused decision raises here (a decision that is not one) or inside the write
    (``ReviewError``: the stage is not awaiting review, its review was re-opened, or
    `review.resolve` refused it), and nothing is saved.
    """
    if not isinstance(decision, REVIEW_DECISION_TYPES):
        raise TypeError(
            "a review decision is Approve(), Reject(reason), ApproveWithEdits(artefact) or "
            f"RequestChanges(feedback), not {type(decision).__name__}"
        )
    edited: Any = None
    if isinstance(decision, ApproveWithEdits):
        edited = normalise_artefact(
            decision.artefact,
            where=f"item {item_id!r} stage {stage!r} edited artefact",
            max_bytes=plan.max_artefact_bytes,
        )

    def apply(store: StateStore) -> WriteResult:
        rec = store.lock_item(item_id, lease)
        states = store.get_all_stage_states(item_id)
        st = states.get(stage)
        if st is None or st.status != StageStatus.AWAITING_REVIEW:
            status = "pending" if st is None else st.status.value
            raise ReviewError(f"item {item_id!r} stage {stage!r} is {status}, not awaiting review")
        if deadline is not None and st.review_deadline != deadline:
            raise ReviewError(f"item {item_id!r} stage {stage!r}: the review was re-opened")
        now = clock.now()
        r = resolve(
            plan,
            states,
            stage,
            decision,
            now,
            item_id=item_id,
            reviewer=reviewer,
            comment=comment,
            edited=edited,
            automatic=deadline is not None,
        )
        for name, new in r.states.items():
            store.save_stage_state(item_id, name, new)
        store.record_review(item_id, stage, _settled(r.record, st, r.states.get(stage, st)))
        applied[:] = r.events
        if r.wakes:
            store.notify_work()  # dependents (or the stage sent back) may run: wake workers
        return finish(store, plan, rec, r.events, now, {**states, **r.states})

    applied: list[Event] = []  # the events of the attempt that committed
    return Write(apply, _read_back(item_id, applied))


def retry(plan: Plan, clock: Clock, item_id: str, stage: str) -> StageWrite:
    """``retry_stage``: a FAILED stage back to PENDING (anything else is a `RetryError`)."""

    def apply(store: StateStore) -> WriteResult:
        rec = store.lock_item(item_id)
        st = store.get_stage_state(item_id, stage)
        if st is None or st.status != StageStatus.FAILED:
            status = "pending" if st is None else st.status.value
            raise RetryError(f"item {item_id!r} stage {stage!r} is {status}, not failed")
        now = clock.now()
        new, events = actions.reset_failed(st, now, item_id=item_id, stage=stage)
        store.save_stage_state(item_id, stage, new)
        applied[:] = events
        store.notify_work()
        return finish(store, plan, rec, events, now)

    applied: list[Event] = []  # the events of the attempt that committed
    return Write(apply, _read_back(item_id, applied))


def put_aside(
    clock: Clock, item_id: str, lease: Lease, seconds: float | None
) -> Callable[[StateStore], None]:
    """Put an item whose advance broke aside (its state unchanged), so claims do not spin
    on it while every other item goes on: due again in ``seconds``, or (None) not until
    something else moves it (``treadle run --item``, a rerun, a review)."""

    def apply(store: StateStore) -> None:
        rec = store.lock_item(item_id, lease)
        due = None if seconds is None else clock.now() + timedelta(seconds=seconds)
        store.set_item_state(item_id, rec.state, due)

    return apply


#: Each item's aggregate state and due time, as `register` returns them.
ItemStates = dict[str, tuple[ItemState, datetime | None]]


def register(items: Sequence[WorkItem]) -> Callable[[StateStore], ItemStates]:
    """Give every item that has no row one (keeping the data of `Item`-like objects);
    return each item's aggregate state and due time."""

    def apply(store: StateStore) -> ItemStates:
        out: ItemStates = {}
        for item in items:
            rec = store.get_item(item.id)
            if rec is None:
                data = getattr(item, "data", None)
                store.save_work_item_data(item.id, data if isinstance(data, dict) else {})
                priority = getattr(item, "priority", 0)
                if priority:
                    store.set_priority(item.id, priority)
                rec = store.get_item(item.id)
            if rec is not None:
                out[item.id] = (rec.state, rec.due_at)
        return out

    return apply


def rerun(
    plan: Plan,
    clock: Clock,
    item_id: str,
    stage: str,
    *,
    cascade: bool,
    reason: str | None,
    by: str | None,
) -> StageWrite:
    """``rerun``: the stage (and, with ``cascade``, what is downstream) back to PENDING."""

    def apply(store: StateStore) -> WriteResult:
        rec = store.lock_item(item_id)
        now = clock.now()
        new, events = actions.rerun(
            plan,
            store.get_all_stage_states(item_id),
            stage,
            now,
            item_id=item_id,
            cascade=cascade,
            reason=reason,
            by=by,
        )
        for name, st in new.items():
            store.save_stage_state(item_id, name, st)
        applied[:] = events
        store.notify_work()
        return finish(store, plan, rec, events, now)

    applied: list[Event] = []  # the events of the attempt that committed
    return Write(apply, _read_back(item_id, applied))


def cancel(
    plan: Plan, clock: Clock, item_id: str, *, reason: str | None, by: str | None
) -> StageWrite:
    """``cancel``: the item's unfinished stages CANCELLED, its lease revoked (so a worker
    running it is refused at its next write and stops)."""

    def apply(store: StateStore) -> WriteResult:
        rec = store.lock_item(item_id)
        now = clock.now()
        c = actions.cancel(
            plan, store.get_all_stage_states(item_id), now, item_id=item_id, reason=reason, by=by
        )
        for name, st in c.states.items():
            store.save_stage_state(item_id, name, st)
        for name, records in c.records.items():
            for record in records:
                store.record_attempt(item_id, name, record)
        store.revoke_lease(item_id)
        applied[:] = c.events
        return finish(store, plan, rec, c.events, now)

    applied: list[Event] = []  # the events of the attempt that committed
    return Write(apply, _read_back(item_id, applied))
