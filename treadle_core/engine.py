"""Running a workflow: claim items, execute ready stages, apply the quality loop, commit.

Every transition is one write function run by the group-commit writer
(`_commit.Committer`): it locks the item's row (checking the lease's fencing
token), writes the stage state, the attempt record and the journal events,
recomputes the item's aggregate state from the stored stage states, and commits.
Only then do dependents start and subscribers hear of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._commit import Committer
from .errors import (
    ArtefactError,
    LeaseLostError,
    RetryError,
    ReviewError,
    StageOutputError,
    UnknownItemError,
)
from .events import (
    Escalated,
    Event,
    FanOutStarted,
    QualityCheckFailed,
    QualityCheckPassed,
    RetryAttempt,
    RetryScheduled,
    ReviewRequired,
    ReviewResolved,
    StageCompleted,
    StageFailed,
    StageRetried,
    StageSkipped,
    StageStarted,
    SubTaskCompleted,
    SubTaskFailed,
    SubTaskStarted,
    WorkflowCompleted,
)
from .model import (
    OUTCOME_TYPES,
    AttemptRecord,
    Complete,
    Failed,
    FanOut,
    Item,
    ItemRecord,
    ItemState,
    Lease,
    NeedsReview,
    PipelineStatus,
    Retry,
    ReviewRecord,
    Skipped,
    StageContext,
    StageOutput,
    StageState,
    StageStatus,
    SubTask,
    WorkItem,
    outcome_name,
    utcnow,
)
from .quality import (
    Accepted,
    Approve,
    ApproveWithEdits,
    ExhaustedAction,
    QualityContext,
    QualityFeedback,
    Reject,
    Rejected,
    ReviewDecision,
    ReviewPolicy,
    Uncertain,
    Verdict,
    decision_name,
    verdict_name,
)
from .store.base import StateStore, normalise_artefact

if TYPE_CHECKING:
    from .workflow import StageSpec, Workflow

log = logging.getLogger("treadle.engine")

#: Stage executions one ``advance()`` call may have in flight (fan-outs included).
ADVANCE_CONCURRENCY = 64
TIMEOUT_REVIEWER = "timeout"


@dataclass
class RunReport:
    """What one ``Workflow.run`` call did."""

    items: int = 0
    executions: int = 0
    lost_leases: list[str] = field(default_factory=list)


@dataclass
class _Attempt:
    """The result of one attempt of a stage or subtask, before any decision."""

    output: StageOutput | None
    artefact: Any = None
    verdict: Verdict | None = None
    error: str | None = None
    retryable: bool = True


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _normalise_output(raw: Any, stage: str) -> StageOutput:
    if raw is None:
        return StageOutput(Complete())
    if isinstance(raw, StageOutput):
        if not isinstance(raw.outcome, OUTCOME_TYPES):
            raise StageOutputError(
                f"stage {stage!r} returned StageOutput with outcome of type "
                f"{type(raw.outcome).__name__}; use Complete(), NeedsReview(), Failed(), "
                "Retry(), FanOut() or Skipped()"
            )
        return raw
    if isinstance(raw, OUTCOME_TYPES):
        return StageOutput(raw)
    raise StageOutputError(
        f"stage {stage!r} returned a value of type {type(raw).__name__}; return a "
        "StageOutput, an outcome (Complete(), Retry(...), ...) or None"
    )


def _error_text(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb}"


class _ItemRun:
    """One item being advanced under a lease: the freshest stage states, and its writes."""

    def __init__(self, engine: Engine, session: _Session, item: WorkItem, lease: Lease | None):
        self.engine = engine
        self.session = session
        self.item = item
        self.item_id = item.id
        self.lease = lease
        self.states: dict[str, StageState] = {}
        self._submitted = 0
        self._applied = 0

    def start_write(
        self,
        stage: str | None,
        state: StageState | None,
        events: list[Event],
        attempt: AttemptRecord | None = None,
    ) -> asyncio.Future[None]:
        """Queue a transition now (writes apply in queue order); await the result to know
        it committed."""
        engine, item_id, lease = self.engine, self.item_id, self.lease
        view = dict(self.states)
        if stage is not None and state is not None:
            view[stage] = state

        def apply(store: StateStore) -> tuple[dict[str, StageState], list[Event]]:
            rec = store.lock_item(item_id, lease)
            if stage is not None and state is not None:
                store.save_stage_state(item_id, stage, state)
            if attempt is not None and stage is not None:
                store.record_attempt(item_id, stage, attempt)
            # A copy: a batch that rolls back runs this again from the same view.
            return engine.finish_write(store, rec, events, dict(view))

        self._submitted += 1
        seq = self._submitted
        committed = self.session.committer.enqueue(apply)

        def on_commit(fut: asyncio.Future[tuple[dict[str, StageState], list[Event]]]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            states, done = fut.result()
            if seq > self._applied:  # writes resolve in order; keep the newest view anyway
                self.states, self._applied = states, seq
            self.engine.wf.bus.publish(done)

        committed.add_done_callback(on_commit)
        return committed  # type: ignore[return-value]

    async def write(
        self,
        stage: str | None,
        state: StageState | None,
        events: list[Event],
        attempt: AttemptRecord | None = None,
    ) -> None:
        # Not shielded: a cancelled caller gives up waiting; the write still commits in
        # order, and whoever cancelled it puts the stage back afterwards (`_abandon`).
        await self.start_write(stage, state, events, attempt)


class _Session:
    """Resources of one engine call: the writer thread, the concurrency limit, leases."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        *,
        concurrency: int,
        lease_seconds: float,
        worker_id: str | None,
    ):
        self.engine = engine
        self.store = store
        self.slots = asyncio.Semaphore(concurrency)
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        self.committer = Committer(store)
        self.leases: dict[str, Lease] = {}
        self.lost: set[str] = set()
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.executions = 0
        self.stop: asyncio.Event | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Session:
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            if self.leases:
                leases = list(self.leases.values())
                await self.committer.submit(lambda s: s.release(leases))
        finally:
            await self.committer.close()

    async def _beat(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            held = list(self.leases.values())
            if not held:
                continue
            try:
                renewed = await self.committer.submit(
                    functools.partial(_renew, leases=held, seconds=self.lease_seconds)
                )
            except Exception:
                log.exception("renewing leases failed; will retry")
                continue
            kept = {lease.item_id for lease in renewed}
            for lease in renewed:
                if lease.item_id in self.leases:
                    self.leases[lease.item_id] = lease
            for lease in held:
                if lease.item_id not in kept and lease.item_id in self.leases:
                    log.warning("lease on item %r was lost; stopping work on it", lease.item_id)
                    self.lost.add(lease.item_id)
                    self.leases.pop(lease.item_id, None)
                    task = self.tasks.get(lease.item_id)
                    if task is not None:
                        task.cancel()

    async def claim(self, limit: int, item_ids: Sequence[str] | None = None) -> list[Lease]:
        worker, seconds = self.worker_id, self.lease_seconds
        leases = await self.committer.submit(lambda s: s.claim(worker, limit, seconds, item_ids))
        for lease in leases:
            self.leases[lease.item_id] = lease
        return leases

    async def release(self, lease: Lease) -> None:
        if self.leases.pop(lease.item_id, None) is not None:
            await self.committer.submit(lambda s: s.release([lease]))


class Engine:
    """The machinery behind `Workflow.advance`, `run`, `resolve_review` and `retry_stage`."""

    def __init__(self, wf: Workflow):
        self.wf = wf

    # --- aggregate state -------------------------------------------------------
    def aggregate(
        self, states: dict[str, StageState], now: datetime
    ) -> tuple[ItemState, datetime | None]:
        """The item's aggregate state and when it next has work, from its stage states."""
        wf = self.wf
        running = failed = review = False
        due: list[datetime] = []
        ready_at: list[datetime] = []
        for name in wf.stages:
            st = states.get(name)
            status = st.status if st is not None else StageStatus.PENDING
            if status == StageStatus.PENDING:
                if all(self._done(states, d) for d in wf._deps[name]):
                    when = st.next_attempt_at if st is not None and st.next_attempt_at else now
                    ready_at.append(when)
            elif status == StageStatus.RUNNING:
                running = True
            elif status == StageStatus.AWAITING_REVIEW:
                review = True
                if st is not None and st.review_deadline is not None:
                    due.append(st.review_deadline)
            elif status == StageStatus.FAILED:
                failed = True
        due_at = min(due + ready_at, default=None)
        if running:
            # Due now: once its lease lapses (its process died), anyone may take it over.
            return ItemState.RUNNING, now
        if ready_at:
            first = min(ready_at)
            return (ItemState.READY if first <= now else ItemState.SCHEDULED), due_at
        if review:
            return ItemState.AWAITING_REVIEW, due_at
        if failed:
            return ItemState.FAILED, None
        return ItemState.COMPLETE, None

    @staticmethod
    def _done(states: dict[str, StageState], name: str) -> bool:
        st = states.get(name)
        return st is not None and st.status.is_done

    def finish_write(
        self,
        store: StateStore,
        rec: ItemRecord,
        events: list[Event],
        view: dict[str, StageState] | None = None,
    ) -> tuple[dict[str, StageState], list[Event]]:
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
        now = utcnow()
        state, due_at = self.aggregate(states, now)
        if state == rec.state == ItemState.READY and rec.due_at is not None and rec.due_at <= now:
            due_at = rec.due_at  # still ready: keep its place in the queue
        events = list(events)
        if state == ItemState.COMPLETE and rec.state != ItemState.COMPLETE:
            events.append(WorkflowCompleted(item_id=rec.id))
        if state != rec.state or due_at != rec.due_at:
            store.set_item_state(rec.id, state, due_at)
        if events:
            store.append_events(events)
        return states, events

    def _ready(self, states: dict[str, StageState], name: str, now: datetime) -> bool:
        st = states.get(name)
        if st is not None:
            if st.status != StageStatus.PENDING:
                return False
            if st.next_attempt_at is not None and st.next_attempt_at > now:
                return False
        return all(self._done(states, d) for d in self.wf._deps[name])

    def _upstream(self, states: dict[str, StageState], name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for dep in self.wf.ancestors(name):
            st = states.get(dep)
            if st is not None and st.status == StageStatus.COMPLETE:
                out[dep] = st.artefact
        return out

    # --- public operations -----------------------------------------------------------
    async def advance(self, item: WorkItem, store: StateStore) -> PipelineStatus:
        self._register(store, [item])
        async with _Session(
            self, store, concurrency=ADVANCE_CONCURRENCY, lease_seconds=60.0, worker_id=None
        ) as session:
            leases = await session.claim(1, [item.id])
            if leases:
                await self._advance_claimed(session, item, leases[0])
            else:
                log.info("item %r is leased by another worker; not advancing it", item.id)
        return self.wf.status(item.id, store)

    async def run(
        self,
        store: StateStore,
        items: Sequence[WorkItem] | None,
        *,
        concurrency: int,
        until_idle: bool,
        lease_seconds: float,
        worker_id: str | None,
        stop: asyncio.Event | None = None,
        forever: bool = False,
        poll_interval: float = 1.0,
    ) -> RunReport:
        """Claim and advance items; with ``forever``, until ``stop`` is set (then drain)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        objects: dict[str, WorkItem] = {}
        #: For a run over given items: item id -> (aggregate state, due_at), kept current.
        local: dict[str, tuple[ItemState, datetime | None]] | None = None
        if items is not None:
            self._register(store, items)
            objects = {i.id: i for i in items}
            local = {}
            for item_id in objects:
                rec = store.get_item(item_id)
                if rec is not None:
                    local[item_id] = (rec.state, rec.due_at)
        report = RunReport()
        async with _Session(
            self,
            store,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
        ) as session:
            session.stop = stop
            tasks = session.tasks
            try:
                while True:
                    stopping = stop is not None and stop.is_set()
                    room = 2 * concurrency - len(tasks)
                    leases: list[Lease] = []
                    # Claim in batches: one claim transaction per half window.
                    if (
                        not stopping
                        and room > 0
                        and (room >= max(concurrency // 2, 1) or len(tasks) < concurrency)
                    ):
                        leases = await self._claim(session, room, local, tasks)
                    for lease in leases:
                        obj = objects.get(lease.item_id) or Item(
                            lease.item_id, store.get_work_item_data(lease.item_id) or {}
                        )
                        tasks[lease.item_id] = asyncio.create_task(
                            self._advance_claimed(session, obj, lease)
                        )
                        report.items += 1
                    if leases and len(tasks) < 2 * concurrency:
                        continue
                    wake = None if stopping else self._next_wake(store, local, tasks)
                    if wake is not None or (forever and not stopping):
                        # Look again at least every poll_interval: other processes add
                        # items and release leases without telling us.
                        poll = utcnow() + timedelta(seconds=poll_interval)
                        wake = poll if wake is None else min(wake, poll)
                    if not tasks:
                        if stopping or wake is None or not (until_idle or forever):
                            break
                        await self._sleep_until(wake, stop)
                        continue
                    timeout = None
                    if wake is not None and room > 0:
                        timeout = max((wake - utcnow()).total_seconds(), 0.001)
                    done, _ = await asyncio.wait(
                        list(tasks.values()), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        item_id = next(k for k, t in tasks.items() if t is task)
                        del tasks[item_id]
                        if local is not None:
                            rec = store.get_item(item_id)
                            local[item_id] = (
                                (rec.state, rec.due_at) if rec else (ItemState.COMPLETE, None)
                            )
                        if task.cancelled():
                            if item_id in session.lost:
                                report.lost_leases.append(item_id)
                                continue
                            raise asyncio.CancelledError
                        exc = task.exception()
                        if isinstance(exc, LeaseLostError):
                            log.warning("%s", exc)
                            report.lost_leases.append(item_id)
                        elif exc is not None:
                            raise exc
            finally:
                if tasks:
                    for task in tasks.values():
                        task.cancel()
                    await asyncio.gather(*tasks.values(), return_exceptions=True)
            report.executions = session.executions
        return report

    _WAITING = (ItemState.READY, ItemState.SCHEDULED, ItemState.RUNNING)

    async def _claim(
        self,
        session: _Session,
        room: int,
        local: dict[str, tuple[ItemState, datetime | None]] | None,
        tasks: dict[str, asyncio.Task[None]],
    ) -> list[Lease]:
        if local is None:
            return await session.claim(room)
        now = utcnow()
        wanted = [
            i for i, (_, due) in local.items() if due is not None and due <= now and i not in tasks
        ][:room]
        if not wanted:
            return []
        leases = await session.claim(room, wanted)
        got = {lease.item_id for lease in leases}
        for i in wanted:
            if i not in got:  # another worker holds it: look again when its lease ends
                rec = session.store.get_item(i)
                if rec is None:
                    del local[i]
                else:
                    local[i] = (rec.state, rec.lease_expires_at or rec.due_at)
        return leases

    def _next_wake(
        self,
        store: StateStore,
        local: dict[str, tuple[ItemState, datetime | None]] | None,
        tasks: dict[str, asyncio.Task[None]],
    ) -> datetime | None:
        """When some item next has work that `run` waits for (not review deadlines)."""
        if local is None:
            return store.next_due_at(self._WAITING)
        times = [
            due
            for i, (state, due) in local.items()
            if due is not None and state in self._WAITING and i not in tasks
        ]
        return min(times, default=None)

    @staticmethod
    async def _sleep_until(when: datetime, stop: asyncio.Event | None) -> None:
        delay = max((when - utcnow()).total_seconds(), 0.0)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    def _register(self, store: StateStore, items: Sequence[WorkItem]) -> None:
        """Make sure every item has a row; keep the data of `Item`-like objects."""
        new = []
        for item in items:
            if not isinstance(getattr(item, "id", None), str):
                raise TypeError(f"a work item needs a string id, got {item!r}")
            if store.get_item(item.id) is None:
                new.append(item)
        if not new:
            return
        with store.transaction():
            for item in new:
                data = getattr(item, "data", None)
                store.save_work_item_data(item.id, data if isinstance(data, dict) else {})

    async def resolve_review(
        self,
        item_id: str,
        stage: str,
        decision: ReviewDecision,
        store: StateStore,
        *,
        reviewer: str | None,
        comment: str | None,
    ) -> PipelineStatus:
        self.wf._check(stage)
        if store.get_item(item_id) is None:
            raise UnknownItemError(f"unknown item {item_id!r}")
        write = self._review_write(item_id, stage, decision, reviewer, comment, deadline=None)
        _, events = await asyncio.to_thread(_in_transaction, store, write)
        self.wf.bus.publish(events)
        return self.wf.status(item_id, store)

    def _review_write(
        self,
        item_id: str,
        stage: str,
        decision: ReviewDecision,
        reviewer: str | None,
        comment: str | None,
        *,
        deadline: datetime | None,
    ) -> Callable[[StateStore], tuple[dict[str, StageState], list[Event]]]:
        """The atomic write of a review decision (a person's, or the timeout's)."""
        if not isinstance(decision, Approve | Reject | ApproveWithEdits):
            raise TypeError(
                f"a review decision is Approve(), Reject(reason) or ApproveWithEdits(artefact), "
                f"not {type(decision).__name__}"
            )
        edited: Any = None
        if isinstance(decision, ApproveWithEdits):
            edited = normalise_artefact(
                decision.artefact,
                where=f"item {item_id!r} stage {stage!r} edited artefact",
                max_bytes=self.wf.max_artefact_bytes,
            )

        def write(store: StateStore) -> tuple[dict[str, StageState], list[Event]]:
            rec = store.lock_item(item_id)
            st = store.get_stage_state(item_id, stage)
            if st is None or st.status != StageStatus.AWAITING_REVIEW:
                status = "pending" if st is None else st.status.value
                raise ReviewError(
                    f"item {item_id!r} stage {stage!r} is {status}, not awaiting review"
                )
            if deadline is not None and st.review_deadline != deadline:
                raise ReviewError(f"item {item_id!r} stage {stage!r}: the review was re-opened")
            now = utcnow()
            name = decision_name(decision)
            events: list[Event] = [
                ReviewResolved(item_id=item_id, stage=stage, decision=name, reviewer=reviewer)
            ]
            common = dict(
                completed_at=now,
                updated_at=now,
                review_deadline=None,
                next_attempt_at=None,
            )
            if isinstance(decision, Reject):
                new = st.replace(status=StageStatus.FAILED, error=decision.reason, **common)
                events.append(StageFailed(item_id=item_id, stage=stage, error=decision.reason))
            else:
                artefact = edited if isinstance(decision, ApproveWithEdits) else st.artefact
                new = st.replace(
                    status=StageStatus.COMPLETE, artefact=artefact, error=None, **common
                )
                events.append(StageCompleted(item_id=item_id, stage=stage))
            store.save_stage_state(item_id, stage, new)
            store.record_review(
                item_id,
                stage,
                ReviewRecord(
                    decision=name,
                    reviewer=reviewer,
                    comment=comment,
                    at=now,
                    reason=decision.reason if isinstance(decision, Reject) else None,
                    edited_artefact=edited,
                    note=decision.note if isinstance(decision, ApproveWithEdits) else None,
                ),
            )
            return self.finish_write(store, rec, events)

        return write

    async def retry_stage(self, item_id: str, stage: str, store: StateStore) -> PipelineStatus:
        self.wf._check(stage)
        if store.get_item(item_id) is None:
            raise UnknownItemError(f"unknown item {item_id!r}")

        def write(s: StateStore) -> tuple[dict[str, StageState], list[Event]]:
            rec = s.lock_item(item_id)
            st = s.get_stage_state(item_id, stage)
            if st is None or st.status != StageStatus.FAILED:
                status = "pending" if st is None else st.status.value
                raise RetryError(f"item {item_id!r} stage {stage!r} is {status}, not failed")
            subtasks = [
                t
                if t.status != StageStatus.FAILED
                else _subtask(
                    t,
                    status=StageStatus.PENDING,
                    error=None,
                    next_attempt_at=None,
                    budget_start=t.attempt,
                )
                for t in st.subtasks
            ]
            now = utcnow()
            new = st.replace(
                status=StageStatus.PENDING,
                error=None,
                next_attempt_at=None,
                completed_at=None,
                updated_at=now,
                budget_start=st.attempt,
                recoveries=0,
                subtasks=subtasks,
            )
            s.save_stage_state(item_id, stage, new)
            events: list[Event] = [
                StageRetried(item_id=item_id, stage=stage, attempt=st.attempt, error=st.error)
            ]
            return self.finish_write(s, rec, events)

        _, events = await asyncio.to_thread(_in_transaction, store, write)
        self.wf.bus.publish(events)
        return self.wf.status(item_id, store)

    # --- advancing one claimed item ----------------------------------------------------
    async def _advance_claimed(self, session: _Session, item: WorkItem, lease: Lease) -> None:
        """Advance an item this session claimed; its lease is given back at the end."""
        run = _ItemRun(self, session, item, lease)
        try:
            run.states = session.store.get_all_stage_states(item.id)
            await self._recover(run)
            await self._advance_loop(run)
        finally:
            if item.id not in session.lost:
                await session.release(lease)

    async def _recover(self, run: _ItemRun) -> None:
        """Stages left RUNNING by a process that died: re-run them, or give up after N crashes."""
        for name, st in list(run.states.items()):
            if name not in self.wf.specs or st.status != StageStatus.RUNNING:
                continue
            recoveries = st.recoveries + 1
            now = utcnow()
            subtasks = [
                _subtask(t, status=StageStatus.PENDING) if t.status == StageStatus.RUNNING else t
                for t in st.subtasks
            ]
            crashed = AttemptRecord(
                attempt=st.attempt,
                started_at=st.started_at,
                completed_at=now,
                outcome="crashed",
                error="the process running this attempt died",
            )
            if recoveries >= self.wf.max_recoveries:
                error = (
                    "recovery limit reached: the stage was running when its process died "
                    f"{recoveries} times"
                )
                new = st.replace(
                    status=StageStatus.FAILED,
                    error=error,
                    completed_at=now,
                    updated_at=now,
                    recoveries=recoveries,
                    subtasks=subtasks,
                )
                events: list[Event] = [StageFailed(item_id=run.item_id, stage=name, error=error)]
            else:
                # A crash does not spend the retry budget: the attempt is re-run as a new one.
                new = st.replace(
                    status=StageStatus.PENDING,
                    updated_at=now,
                    recoveries=recoveries,
                    budget_start=st.budget_start + 1,
                    subtasks=subtasks,
                )
                events = [
                    StageRetried(
                        item_id=run.item_id,
                        stage=name,
                        attempt=st.attempt,
                        error="recovered after its process died",
                    )
                ]
            await run.write(name, new, events, crashed)

    async def _advance_loop(self, run: _ItemRun) -> None:
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                now = utcnow()
                await self._apply_review_timeouts(run, now)
                stopping = run.session.stop is not None and run.session.stop.is_set()
                for name in self.wf.stages:
                    if stopping:  # a worker shutting down starts nothing new
                        break
                    if name not in running and self._ready(run.states, name, now):
                        running[name] = asyncio.create_task(self._execute_stage(run, name))
                if not running:
                    return
                done, _ = await asyncio.wait(
                    list(running.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for name in [n for n, t in running.items() if t in done]:
                    task = running.pop(name)
                    task.result()  # re-raises programming errors and lost leases
        finally:
            if running:
                for task in running.values():
                    task.cancel()
                await asyncio.gather(*running.values(), return_exceptions=True)

    async def _apply_review_timeouts(self, run: _ItemRun, now: datetime) -> None:
        for name, st in list(run.states.items()):
            spec = self.wf.specs.get(name)
            if (
                spec is None
                or spec.review_timeout is None
                or st.status != StageStatus.AWAITING_REVIEW
                or st.review_deadline is None
                or st.review_deadline > now
            ):
                continue
            write = self._review_write(
                run.item_id,
                name,
                spec.review_timeout.on_timeout,
                TIMEOUT_REVIEWER,
                f"no decision within {spec.review_timeout.seconds:g} s",
                deadline=st.review_deadline,
            )
            fenced = functools.partial(_fenced, item_id=run.item_id, lease=run.lease, write=write)
            try:
                states, events = await run.session.committer.submit(fenced)
            except ReviewError:  # a person answered first
                run.states = run.session.store.get_all_stage_states(run.item_id)
                continue
            run.states = states
            self.wf.bus.publish(events)

    async def _execute_stage(self, run: _ItemRun, name: str) -> None:
        spec = self.wf.specs[name]
        prev = run.states.get(name) or StageState()
        if prev.subtasks and not all(t.status.is_done for t in prev.subtasks):
            await self._resume_fanout(run, spec, prev)
            return
        attempt = prev.attempt + 1
        now = utcnow()
        running = prev.replace(
            status=StageStatus.RUNNING,
            attempt=attempt,
            started_at=now,
            completed_at=None,
            next_attempt_at=None,
            updated_at=now,
            subtasks=[],
        )
        budget = spec.budget
        max_attempts = prev.budget_start + budget.max_attempts
        feedback = self._last_feedback(run, name, None) if attempt > 1 else None
        events: list[Event] = [StageStarted(item_id=run.item_id, stage=name, attempt=attempt)]
        if attempt - prev.budget_start > 1:
            events.append(
                RetryAttempt(
                    item_id=run.item_id,
                    stage=name,
                    attempt=attempt,
                    max_attempts=max_attempts,
                    feedback_summary=feedback.summary if feedback else None,
                )
            )
        # RUNNING is durable before the stage's code runs: a stage that takes its
        # process down is then seen on recovery (and counted towards max_recoveries).
        await run.write(name, running, events)
        # The slot covers executing the stage, not the commits around it: commit
        # latency never idles an execution slot. A RUNNING stage may briefly wait here.
        ctx = StageContext(
            item_id=run.item_id,
            stage=name,
            attempt=attempt,
            subtask=None,
            feedback=feedback,
            upstream=self._upstream(run.states, name),
            state=running,
            metadata=dict(prev.metadata),
        )
        try:
            async with run.session.slots:
                result = await self._attempt(run, spec, ctx, max_attempts)
        except BaseException:
            await self._abandon(run, name, prev)
            raise
        run.session.executions += 1
        await self._decide(run, spec, running, ctx, result, max_attempts)

    async def _abandon(self, run: _ItemRun, name: str, prev: StageState) -> None:
        """Put a stage back as it was before an attempt that will never finish here."""
        if run.item_id in run.session.lost:
            return
        try:
            await run.write(name, prev, [])
        except LeaseLostError:
            pass
        except Exception:
            log.exception("could not put item %r stage %r back", run.item_id, name)

    def _last_feedback(
        self, run: _ItemRun, name: str, subtask: str | None
    ) -> QualityFeedback | None:
        for rec in reversed(run.session.store.get_attempts(run.item_id, name)):
            if rec.subtask == subtask:
                return rec.feedback
        return None

    async def _attempt(
        self, run: _ItemRun, spec: StageSpec, ctx: StageContext, max_attempts: int
    ) -> _Attempt:
        """One attempt: hooks, execute, artefact check and gate, under the attempt timeout."""
        stage, budget = spec.stage, spec.budget
        where = f"item {run.item_id!r} stage {spec.name!r}" + (
            f" subtask {ctx.subtask!r}" if ctx.subtask else ""
        )

        async def body() -> _Attempt:
            await stage.before_execute(run.item, ctx)
            output = _normalise_output(await stage.execute(run.item, ctx), spec.name)
            await stage.after_execute(run.item, ctx, output)
            artefact = normalise_artefact(
                output.artefact, where=where, max_bytes=self.wf.max_artefact_bytes
            )
            verdict: Verdict | None = None
            if spec.gate is not None and isinstance(output.outcome, Complete):
                previous = [
                    a
                    for a in run.session.store.get_attempts(run.item_id, spec.name)
                    if a.subtask == ctx.subtask
                ]
                qctx = QualityContext(
                    run.item_id, spec.name, ctx.attempt, max_attempts, previous, ctx.subtask
                )
                judged = StageOutput(output.outcome, artefact, output.summary)
                try:
                    verdict = await spec.gate.evaluate(run.item, spec.name, judged, qctx)
                except Exception as exc:
                    verdict = Uncertain(f"quality gate raised {type(exc).__name__}: {exc}")
                if not isinstance(verdict, Accepted | Rejected | Uncertain):
                    verdict = Uncertain(
                        f"quality gate returned {type(verdict).__name__}, "
                        "not Accepted/Rejected/Uncertain"
                    )
            return _Attempt(output, artefact, verdict)

        try:
            if budget.attempt_timeout is None:
                return await body()
            async with asyncio.timeout(budget.attempt_timeout) as cm:
                return await body()
        except (StageOutputError, ArtefactError, LeaseLostError):
            raise
        except TimeoutError:
            if budget.attempt_timeout is not None and cm.expired():
                return _Attempt(None, error=f"attempt timed out after {budget.attempt_timeout:g} s")
            raise
        except Exception as exc:
            return _Attempt(None, error=_error_text(exc), retryable=budget.retries(exc))

    async def _decide(
        self,
        run: _ItemRun,
        spec: StageSpec,
        running: StageState,
        ctx: StageContext,
        result: _Attempt,
        max_attempts: int,
    ) -> None:
        """Apply the quality loop to one attempt's result and commit the transition."""
        item_id, name, attempt = run.item_id, spec.name, ctx.attempt
        now = utcnow()
        out = result.output
        outcome = out.outcome if out is not None else None
        base = running.replace(metadata=ctx.metadata, completed_at=now, updated_at=now)
        if out is not None:
            base = base.replace(artefact=result.artefact)
        events: list[Event] = []
        feedback: QualityFeedback | None = None

        def record(outcome_label: str, error: str | None = None) -> AttemptRecord:
            return AttemptRecord(
                attempt=attempt,
                started_at=running.started_at,
                completed_at=now,
                outcome=outcome_label,
                summary=out.summary if out is not None else None,
                artefact=result.artefact,
                verdict=verdict_name(result.verdict),
                feedback=feedback,
                error=error,
            )

        if isinstance(outcome, FanOut):
            await self._start_fanout(run, spec, base, outcome, record("fan_out"))
            return

        error: str | None = None
        retry = False
        to_review: tuple[str, dict[str, Any]] | None = None
        label = outcome_name(outcome) if outcome is not None else "error"
        match outcome:
            case None:
                error = result.error or "attempt failed"
                feedback = QualityFeedback(summary=error.splitlines()[0])
                retry = result.retryable
                new = base
            case Complete():
                verdict = result.verdict
                if isinstance(verdict, Rejected):
                    feedback = verdict.feedback
                    events.append(
                        QualityCheckFailed(
                            item_id=item_id,
                            stage=name,
                            attempt=attempt,
                            feedback_summary=feedback.summary,
                        )
                    )
                    error = f"quality gate rejected the output: {feedback.summary}"
                    retry = True
                elif isinstance(verdict, Uncertain):
                    if spec.policy.reviews_uncertain:
                        to_review = (f"quality gate is uncertain: {verdict.reason}", {})
                    else:
                        feedback = QualityFeedback(summary=verdict.reason)
                        error = f"quality gate is uncertain: {verdict.reason}"
                        retry = True
                else:
                    if isinstance(verdict, Accepted):
                        events.append(
                            QualityCheckPassed(item_id=item_id, stage=name, attempt=attempt)
                        )
                    if spec.policy == ReviewPolicy.ALWAYS:
                        to_review = ((out.summary if out else None) or "", {})
                new = base
            case NeedsReview(prompt, context):
                to_review = (prompt, dict(context))
                new = base
            case Failed(err):
                error = err
                new = base
            case Retry(err):
                error = err
                feedback = QualityFeedback(summary=err)
                retry = True
                new = base
            case Skipped(reason):
                new = base.replace(status=StageStatus.SKIPPED, error=None)
                events.append(StageSkipped(item_id=item_id, stage=name, reason=reason))
                await run.write(name, new, events, record(label))
                return
            case _:  # pragma: no cover - _normalise_output guarantees the type
                raise StageOutputError(f"stage {name!r} returned {outcome!r}")

        if to_review is not None:
            prompt, context = to_review
            new = self._awaiting(spec, base, prompt, context, now)
            events.append(
                ReviewRequired(item_id=item_id, stage=name, prompt=prompt, context=context)
            )
        elif error is None:
            new = base.replace(status=StageStatus.COMPLETE, error=None)
            events.append(StageCompleted(item_id=item_id, stage=name))
        elif retry and attempt < max_attempts:
            delay = spec.budget.delay_for(attempt - running.budget_start)
            next_at = now + timedelta(seconds=delay) if delay > 0 else None
            new = base.replace(status=StageStatus.PENDING, error=error, next_attempt_at=next_at)
            events.append(StageRetried(item_id=item_id, stage=name, attempt=attempt, error=error))
            if next_at is not None:
                events.append(
                    RetryScheduled(
                        item_id=item_id,
                        stage=name,
                        attempt=attempt + 1,
                        max_attempts=max_attempts,
                        retry_at=next_at,
                    )
                )
        elif retry and self._escalates(spec):
            used = attempt - running.budget_start
            reason = f"retry budget exhausted after {used} attempts: {error.splitlines()[0]}"
            new = self._awaiting(spec, base.replace(error=error), reason, {}, now)
            events.append(Escalated(item_id=item_id, stage=name, reason=reason))
            events.append(ReviewRequired(item_id=item_id, stage=name, prompt=reason, context={}))
        else:
            new = base.replace(status=StageStatus.FAILED, error=error)
            events.append(StageFailed(item_id=item_id, stage=name, error=error))
        await run.write(name, new, events, record(label, error))

    @staticmethod
    def _escalates(spec: StageSpec) -> bool:
        return spec.budget.on_exhausted == ExhaustedAction.ESCALATE or spec.policy.escalates

    @staticmethod
    def _awaiting(
        spec: StageSpec, base: StageState, prompt: str, context: dict[str, Any], now: datetime
    ) -> StageState:
        deadline = None
        if spec.review_timeout is not None:
            deadline = now + timedelta(seconds=spec.review_timeout.seconds)
        return base.replace(
            status=StageStatus.AWAITING_REVIEW,
            review_prompt=prompt,
            review_context=context,
            review_deadline=deadline,
        )

    # --- fan-out ---------------------------------------------------------------
    async def _start_fanout(
        self,
        run: _ItemRun,
        spec: StageSpec,
        base: StageState,
        fanout: FanOut,
        record: AttemptRecord,
    ) -> None:
        subtasks = list(fanout.subtasks)
        ids = [getattr(t, "id", None) for t in subtasks]
        if not all(isinstance(t, SubTask) for t in subtasks) or len(set(ids)) != len(ids):
            raise StageOutputError(
                f"stage {spec.name!r} returned FanOut with invalid subtasks: "
                "give a list of SubTask(id) with unique ids"
            )
        fresh = [SubTask(t.id, metadata=dict(t.metadata)) for t in subtasks]
        state = base.replace(status=StageStatus.RUNNING, subtasks=fresh, completed_at=None)
        events: list[Event] = [
            FanOutStarted(item_id=run.item_id, stage=spec.name, subtasks=[t.id for t in fresh])
        ]
        await run.write(spec.name, state, events, record)
        await self._run_subtasks(run, spec, state)

    async def _resume_fanout(self, run: _ItemRun, spec: StageSpec, prev: StageState) -> None:
        now = utcnow()
        state = prev.replace(
            status=StageStatus.RUNNING,
            attempt=prev.attempt + 1,
            started_at=now,
            completed_at=None,
            next_attempt_at=None,
            updated_at=now,
        )
        events: list[Event] = [
            StageStarted(item_id=run.item_id, stage=spec.name, attempt=state.attempt)
        ]
        await run.write(spec.name, state, events)
        await self._run_subtasks(run, spec, state)

    async def _run_subtasks(self, run: _ItemRun, spec: StageSpec, state: StageState) -> None:
        holder = {"state": state}
        try:
            while True:
                now = utcnow()
                todo = [
                    t
                    for t in holder["state"].subtasks
                    if t.status == StageStatus.PENDING
                    and (t.next_attempt_at is None or t.next_attempt_at <= now)
                ]
                if not todo:
                    break
                await _all_or_cancel([self._run_subtask(run, spec, holder, t.id) for t in todo])
        except BaseException:
            # Abandoned mid-fan-out: the stage goes back to PENDING, finished subtasks stay.
            await self._abandon(run, spec.name, holder["state"].replace(status=StageStatus.PENDING))
            raise
        await self._finish_fanout(run, spec, holder["state"])

    async def _run_subtask(
        self, run: _ItemRun, spec: StageSpec, holder: dict[str, StageState], sub_id: str
    ) -> None:
        name = spec.name

        def update(sub: SubTask) -> StageState:
            st = holder["state"]
            holder["state"] = st.replace(
                subtasks=[sub if t.id == sub_id else t for t in st.subtasks]
            )
            return holder["state"]

        async with run.session.slots:
            sub = holder["state"].subtask(sub_id)
            assert sub is not None
            attempt = sub.attempt + 1
            started = utcnow()
            prev_sub = sub
            sub = _subtask(sub, status=StageStatus.RUNNING, attempt=attempt, next_attempt_at=None)
            await run.write(
                name,
                update(sub),
                [SubTaskStarted(item_id=run.item_id, stage=name, subtask=sub_id)],
            )
            max_attempts = sub.budget_start + spec.budget.max_attempts
            ctx = StageContext(
                item_id=run.item_id,
                stage=name,
                attempt=attempt,
                subtask=sub_id,
                feedback=self._last_feedback(run, name, sub_id) if attempt > 1 else None,
                upstream=self._upstream(run.states, name),
                state=holder["state"],
                metadata=dict(sub.metadata),
            )
            try:
                result = await self._attempt(run, spec, ctx, max_attempts)
            except BaseException:
                await self._abandon(run, name, update(prev_sub))
                raise
        run.session.executions += 1
        now = utcnow()
        out = result.output
        outcome = out.outcome if out is not None else None
        error: str | None = None
        feedback: QualityFeedback | None = None
        retry = False
        status = StageStatus.COMPLETE
        match outcome:
            case None:
                error = result.error or "attempt failed"
                feedback = QualityFeedback(summary=error.splitlines()[0])
                retry = result.retryable
            case Complete():
                if isinstance(result.verdict, Rejected):
                    feedback = result.verdict.feedback
                    error = f"quality gate rejected the output: {feedback.summary}"
                    retry = True
                elif isinstance(result.verdict, Uncertain):
                    feedback = QualityFeedback(summary=result.verdict.reason)
                    error = f"quality gate is uncertain: {result.verdict.reason}"
                    retry = True
            case Skipped():
                status = StageStatus.SKIPPED
            case Failed(err):
                error = err
            case Retry(err):
                error, retry = err, True
                feedback = QualityFeedback(summary=err)
            case FanOut() | NeedsReview():
                error = (
                    f"subtask {sub_id!r} returned {type(outcome).__name__}, "
                    "which a subtask cannot do"
                )
        events: list[Event] = []
        next_at = None
        if error is None:
            events.append(SubTaskCompleted(item_id=run.item_id, stage=name, subtask=sub_id))
        elif retry and attempt < max_attempts:
            status = StageStatus.PENDING
            delay = spec.budget.delay_for(attempt - sub.budget_start)
            next_at = now + timedelta(seconds=delay) if delay > 0 else None
            if next_at is not None:
                events.append(
                    RetryScheduled(
                        item_id=run.item_id,
                        stage=name,
                        attempt=attempt + 1,
                        max_attempts=max_attempts,
                        retry_at=next_at,
                    )
                )
        else:
            status = StageStatus.FAILED
            events.append(
                SubTaskFailed(item_id=run.item_id, stage=name, subtask=sub_id, error=error)
            )
        sub = _subtask(
            sub,
            status=status,
            error=error,
            artefact=result.artefact,
            metadata=ctx.metadata,
            next_attempt_at=next_at,
        )
        record = AttemptRecord(
            attempt=attempt,
            started_at=started,
            completed_at=now,
            outcome=outcome_name(outcome) if outcome is not None else "error",
            summary=out.summary if out is not None else None,
            artefact=result.artefact,
            verdict=verdict_name(result.verdict),
            feedback=feedback,
            error=error,
            subtask=sub_id,
        )
        await run.write(name, update(sub), events, record)

    async def _finish_fanout(self, run: _ItemRun, spec: StageSpec, state: StageState) -> None:
        name, now = spec.name, utcnow()
        subs = state.subtasks
        artefact = {t.id: t.artefact for t in subs if t.status == StageStatus.COMPLETE}
        base = state.replace(completed_at=now, updated_at=now, artefact=artefact)
        events: list[Event] = []
        pending = [t for t in subs if t.status == StageStatus.PENDING]
        failed = [t.id for t in subs if t.status == StageStatus.FAILED]
        if pending:
            times = [t.next_attempt_at for t in pending if t.next_attempt_at is not None]
            new = base.replace(status=StageStatus.PENDING, next_attempt_at=min(times, default=None))
        elif failed:
            error = f"subtasks failed: {', '.join(failed)}"
            if self._escalates(spec):
                new = self._awaiting(spec, base.replace(error=error), error, {}, now)
                events.append(Escalated(item_id=run.item_id, stage=name, reason=error))
                events.append(
                    ReviewRequired(item_id=run.item_id, stage=name, prompt=error, context={})
                )
            else:
                new = base.replace(status=StageStatus.FAILED, error=error)
                events.append(StageFailed(item_id=run.item_id, stage=name, error=error))
        elif spec.policy == ReviewPolicy.ALWAYS:
            new = self._awaiting(spec, base, "", {}, now)
            events.append(ReviewRequired(item_id=run.item_id, stage=name, prompt="", context={}))
        else:
            new = base.replace(status=StageStatus.COMPLETE, error=None)
            events.append(StageCompleted(item_id=run.item_id, stage=name))
        await run.write(name, new, events)


def _subtask(t: SubTask, **changes: Any) -> SubTask:
    return dataclasses.replace(t, **changes)


async def _all_or_cancel(coros: list[Any]) -> None:
    """Run coroutines concurrently; on the first error cancel the rest, then raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc,unused-ignore]


def _renew(store: StateStore, *, leases: list[Lease], seconds: float) -> list[Lease]:
    return store.renew(leases, seconds)


def _fenced(
    store: StateStore,
    *,
    item_id: str,
    lease: Lease | None,
    write: Callable[[StateStore], tuple[dict[str, StageState], list[Event]]],
) -> tuple[dict[str, StageState], list[Event]]:
    store.lock_item(item_id, lease)
    return write(store)


def _in_transaction(store: StateStore, fn: Callable[[StateStore], Any]) -> Any:
    try:
        with store.transaction():
            return fn(store)
    finally:
        release = getattr(store, "release_thread", None)
        if callable(release):
            release()


__all__ = ["Engine", "RunReport", "default_worker_id"]
