"""The per-item loop: one claimed item, advanced until nothing more is ready.

On taking an item it recovers stages left RUNNING by a process that died, applies
review deadlines that passed, then starts every ready stage (independent ones
concurrently). Each stage is: write RUNNING, run one attempt (`attempt`), decide
(`decide`), write the result (`writes`), and only then do dependents start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .._commit import Write
from ..errors import LeaseLostError, ReviewError, StoreError
from ..events import Event, StageFailed
from ..model import (
    AttemptRecord,
    Lease,
    QualityFeedback,
    StageContext,
    StageState,
    StageStatus,
    WorkItem,
)
from . import actions, decide, fanout, writes
from .actions import TIMEOUT_REVIEWER
from .attempt import AttemptResult, run_attempt
from .plan import StageSpec
from .ready import approvals, expired_reviews, is_ready, upstream
from .session import Session
from .subtasks import FanOutRun

log = logging.getLogger("treadle.engine")

T = TypeVar("T")
#: A dependent started in the same commit as the stage before it, for the same task to
#: run next: its name, RUNNING state and the events of its start.
Handoff = tuple[str, tuple[StageState, list[Event]]] | None


class ItemRun:
    """One item being advanced under a lease: the freshest stage states, and its writes."""

    def __init__(
        self, session: Session, item: WorkItem, lease: Lease, states: dict[str, StageState]
    ):
        self.session = session
        self.plan = session.plan
        self.clock = session.clock
        self.item = item
        self.item_id = item.id
        self.lease = lease
        self.states = states
        self._submitted = 0
        self._applied = 0
        #: The stage tasks in flight, by stage (the loop in `advance` waits on them).
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # --- writes --------------------------------------------------------------
    def start_write(
        self,
        stage: str | None,
        state: StageState | None,
        events: list[Event],
        records: Sequence[AttemptRecord] = (),
        *,
        release: bool = False,
        started: dict[str, StageState] | None = None,
    ) -> asyncio.Future[writes.WriteResult]:
        """Queue a transition now (writes apply in queue order); await the result to know
        it committed."""
        view = dict(self.states)
        if stage is not None and state is not None:
            view[stage] = state
        if started:
            view.update(started)
        write = writes.transition(
            self.plan,
            self.clock,
            self.item_id,
            self.lease,
            stage,
            state,
            events,
            records,
            view,
            release=release,
            woken=self.session.woken.add if release else None,
            started=started,
        )
        return self._enqueue(write, lambda result: result)

    def _enqueue(
        self, write: Write[T], result_of: Callable[[T], writes.WriteResult]
    ) -> asyncio.Future[T]:
        self._submitted += 1
        seq = self._submitted
        committed = self.session.committer.enqueue(write)

        def on_commit(fut: asyncio.Future[T]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            states, done = result_of(fut.result())
            if seq > self._applied:  # writes resolve in order; keep the newest view anyway
                self.states, self._applied = states, seq
            self.session.bus.publish(done)

        committed.add_done_callback(on_commit)
        return committed

    async def write(
        self,
        stage: str | None,
        state: StageState | None,
        events: list[Event],
        records: Sequence[AttemptRecord] = (),
        *,
        release: bool = False,
        started: dict[str, StageState] | None = None,
    ) -> None:
        # Not shielded: a cancelled caller gives up waiting; the write still commits in
        # order, and whoever cancelled it puts the stage back afterwards (`abandon`).
        await self.start_write(stage, state, events, records, release=release, started=started)

    async def start(
        self,
        spec: StageSpec,
        running: StageState,
        before: StageState,
        events: list[Event],
        *,
        subtask: str | None = None,
    ) -> bool:
        """Write RUNNING; for a limited stage only if its limit admits it (else it waits,
        as ``before`` with its next attempt put off). Whether it may run now."""
        if spec.limit is None or (subtask is not None and spec.limit.rate is None):
            await self.write(spec.name, running, events)
            return True
        write = writes.start(
            self.plan,
            self.clock,
            self.item_id,
            self.lease,
            spec.name,
            running,
            before,
            events,
            dict(self.states),
            subtask=subtask,
        )
        _, admitted = await self._enqueue(write, lambda result: result[0])
        return admitted

    async def abandon(self, name: str, prev: StageState) -> None:
        """Put a stage back as it was before an attempt that will never finish here."""
        if self.item_id in self.session.lost:
            return
        try:
            await self.write(name, prev, [])
        except LeaseLostError:
            pass
        except StoreError as exc:  # the store itself fails: the run says so, once
            log.debug("could not put item %r stage %r back: %s", self.item_id, name, exc)
        except Exception:
            log.exception("could not put item %r stage %r back", self.item_id, name)

    # --- the loop ------------------------------------------------------------
    async def advance(self) -> None:
        """Recover, then run ready stages until none is ready (or the worker stops)."""
        await self._recover()
        running = self._tasks
        try:
            while True:
                now = self.clock.now()
                await self._apply_review_timeouts()
                if not self.session.stopping:
                    for name in self.plan.order:
                        if name not in running and is_ready(self.plan, self.states, name, now):
                            running[name] = asyncio.create_task(self._execute_stage(name))
                if not running:
                    return
                done, _ = await asyncio.wait(
                    list(running.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for name in [n for n, t in running.items() if t in done]:
                    running.pop(name).result()  # re-raises programming errors and lost leases
        finally:
            if running:
                for task in running.values():
                    task.cancel()
                await asyncio.gather(*running.values(), return_exceptions=True)

    async def _recover(self) -> None:
        """Stages left RUNNING by a process that died (`actions.recover`)."""
        for name, st in list(self.states.items()):
            if name not in self.plan or st.status != StageStatus.RUNNING:
                continue
            spec = self.plan.specs[name]
            d = actions.recover(
                spec,
                st,
                self.clock.now(),
                item_id=self.item_id,
                max_recoveries=self.plan.max_recoveries,
            )
            await self.write(name, d.state, d.events, d.records, release=spec.limit is not None)

    async def _apply_review_timeouts(self) -> None:
        for name, deadline in expired_reviews(self.plan, self.states, self.clock.now()):
            timeout = self.plan.specs[name].review_timeout
            assert timeout is not None
            write = writes.review(
                self.plan,
                self.clock,
                self.item_id,
                name,
                timeout.on_timeout,
                reviewer=TIMEOUT_REVIEWER,
                comment=f"no decision within {timeout.seconds:g} s",
                lease=self.lease,
                deadline=deadline,
            )
            try:
                states, events = await self.session.committer.submit(write)
            except ReviewError:  # a person answered first
                self.states = await self._read_states()
                continue
            self.states = states
            self.session.bus.publish(events)

    # --- reads ---------------------------------------------------------------
    async def _read_states(self) -> dict[str, StageState]:
        item_id = self.item_id
        return await self.session.read(lambda s: s.get_all_stage_states(item_id))

    # --- one stage -----------------------------------------------------------
    async def previous(self, name: str, subtask: str | None) -> list[AttemptRecord]:
        item_id = self.item_id
        records = await self.session.read(lambda s: s.get_attempts(item_id, name))
        return [r for r in records if r.subtask == subtask]

    async def _execute_stage(
        self, name: str, started: tuple[StageState, list[Event]] | None = None
    ) -> None:
        """One stage, then — in this same task, under its new name in ``_tasks`` — the
        dependent it started in its own commit, if any (`_record`)."""
        while True:
            handoff = await self._guarded_stage(name, started)
            if handoff is None:
                return
            task = self._tasks.pop(name, None)
            name, started = handoff
            if task is not None:
                self._tasks[name] = task

    async def _guarded_stage(
        self, name: str, started: tuple[StageState, list[Event]] | None
    ) -> Handoff:
        """One stage, guarded: whatever breaks outside its attempt fails this stage (when
        the store still takes that), never the run. ``started``: it is already RUNNING
        (written with the step that made it ready), with the events of its start."""
        try:
            if started is not None:
                return await self._one_attempt(self.plan.specs[name], StageState(), started)
            return await self._stage(name)
        except (LeaseLostError, StoreError):
            raise
        except Exception as exc:
            log.exception(
                "item %r stage %r: the engine failed; failing the stage", self.item_id, name
            )
            await self._fail_stage(name, exc)
            return None

    async def _fail_stage(self, name: str, exc: Exception) -> None:
        st, now = self.states.get(name) or StageState(), self.clock.now()
        error = f"the engine could not record this stage's attempt: {type(exc).__name__}: {exc}"
        failed = st.replace(
            status=StageStatus.FAILED, error=error, completed_at=now, updated_at=now
        )
        await self.write(
            name, failed, [StageFailed(item_id=self.item_id, stage=name, error=error, at=now)]
        )

    async def _stage(self, name: str) -> Handoff:
        spec = self.plan.specs[name]
        prev = self.states.get(name) or StageState()
        if prev.subtasks and not all(t.status.is_done for t in prev.subtasks):
            state, events = fanout.resume_fanout(spec, prev, self.clock.now(), item_id=self.item_id)
            await self.write(name, state, events)
            await FanOutRun(self, spec, state).run()
            return None
        return await self._one_attempt(spec, prev)

    async def _one_attempt(
        self,
        spec: StageSpec,
        prev: StageState,
        started: tuple[StageState, list[Event]] | None = None,
    ) -> Handoff:
        """One attempt, written; the dependent it started that this task runs next."""
        name = spec.name
        running, events, ctx, previous = await self._prepare(spec, prev, started)
        slots = self.session.slots
        slot = slots.alone() if prev.run_alone else slots.one
        written = False

        async def attempt() -> decide.Decision:
            nonlocal written
            result = await self.attempt(spec, ctx, running.budget_start, previous)
            self.session.executions += 1
            d = decide.decide(spec, running, result, self.clock.now(), item_id=self.item_id)
            if result.timed_out:
                # Its thread runs on: record the timeout now, but keep the slot (and the
                # item's lease) until the thread returned, so concurrency counts it and
                # no next attempt, here or in another worker, overlaps it.
                await self.write(name, d.state, d.events, d.records, release=limited)
                written = True
                await spec.stage.settle(self.item_id, None)
            return d

        # RUNNING is durable before the stage's code runs, so a stage that takes its
        # process down is seen on recovery. Usually it is written before the execution
        # slot is taken (commit latency never idles a slot); a stage already suspected
        # of a crash writes it once it holds the slot, so being found RUNNING again
        # means it was executing, and only that counts towards max_recoveries.
        limited = spec.limit is not None
        # A limited stage is admitted once it holds its slot, so it starts right after
        # (its rate is what the service it calls sees).
        try:
            # ``started``: RUNNING was written with what made it ready.
            if started is not None or prev.suspect or prev.run_alone or limited:
                async with slot:
                    if started is None and not await self.start(spec, running, prev, events):
                        return None  # waiting for its limit: no slot, no lease held meanwhile
                    d = await attempt()
            else:
                if not await self.start(spec, running, prev, events):
                    return None
                async with slot:
                    d = await attempt()
        except BaseException:
            if not written:
                await self.abandon(name, prev)
            raise
        if written:
            return None
        handoff = await self._record(name, d, release=limited)
        if d.state.status == StageStatus.RUNNING and d.state.subtasks:
            await FanOutRun(self, spec, d.state).run()
        return handoff

    async def _prepare(
        self,
        spec: StageSpec,
        prev: StageState,
        started: tuple[StageState, list[Event]] | None,
    ) -> tuple[StageState, list[Event], StageContext, list[AttemptRecord]]:
        """An attempt's RUNNING state and events (``started``: already written), the
        context the stage sees, and its earlier attempts."""
        name = spec.name
        if started is None:
            # A sync attempt that timed out may still run in its thread: never overlap it.
            await spec.stage.settle(self.item_id, None)
        previous = await self.previous(name, None) if prev.attempt > 0 else []
        # A person's feedback (changes asked, a rejection's reason) until an attempt saw it.
        feedback = prev.feedback or decide.last_feedback(previous)
        running, events = started or decide.begin(
            spec, prev, self.clock.now(), item_id=self.item_id, feedback=feedback
        )
        ctx = self.context(name, None, running, running.attempt, prev.metadata, feedback, previous)
        return running, events, ctx, previous

    def context(
        self,
        name: str,
        subtask: str | None,
        running: StageState,
        attempt: int,
        metadata: dict[str, Any],
        feedback: QualityFeedback | None,
        previous: Sequence[AttemptRecord],
    ) -> StageContext:
        """What the stage (or ``subtask``) sees of this attempt."""
        return StageContext(
            item_id=self.item_id,
            stage=name,
            attempt=attempt,
            subtask=subtask,
            feedback=feedback,
            upstream=upstream(self.plan, self.states, name),
            state=running,
            metadata=dict(metadata),
            previous_attempts=tuple(previous),
            reviews=approvals(self.plan, self.states, name),
        )

    async def _record(self, name: str, d: decide.Decision, *, release: bool) -> Handoff:
        """Write an attempt's decision; dependents it makes ready start in the same commit
        where they can (`_dependents_to_start`). The first is handed back for the calling
        task to run next (a chain of stages is one task, not a task and a wake-up of
        `advance` per stage); any others get a task of their own."""
        chained = self._dependents_to_start(name, d.state)
        extra = [e for _, evs in chained.values() for e in evs]
        await self.write(
            name,
            d.state,
            d.events + extra,
            d.records,
            release=release,
            started={n: st for n, (st, _) in chained.items()} or None,
        )
        # Hand one over only when `advance` has nothing to start: no other dependent is
        # ready without having been started here (a limited one, one run before).
        handoff: Handoff = None
        if chained and not self._ready_unstarted(name, chained):
            handoff = chained.popitem()
        for dependent, begun in chained.items():
            self._tasks[dependent] = asyncio.create_task(self._execute_stage(dependent, begun))
        return handoff

    def _ready_unstarted(self, name: str, started: Mapping[str, object]) -> bool:
        """Whether a dependent of ``name`` is ready now but neither started in ``started``
        nor running in a task (so the loop in `advance` must start it)."""
        now = self.clock.now()
        return any(
            dependent not in started
            and dependent not in self._tasks
            and is_ready(self.plan, self.states, dependent, now)
            for dependent in self.plan.dependents[name]
        )

    def _dependents_to_start(
        self, name: str, new: StageState
    ) -> dict[str, tuple[StageState, list[Event]]]:
        """The dependents that ``name`` reaching ``new`` makes ready and that can start in
        the same commit: never run before, with no limit to ask (their RUNNING state and
        StageStarted events, by stage). Any other ready stage starts with a write of its
        own, from the loop in `advance`."""
        if not new.status.is_done or self.session.stopping:
            return {}
        plan, now = self.plan, self.clock.now()
        view = {**self.states, name: new}
        out: dict[str, tuple[StageState, list[Event]]] = {}
        for dependent in plan.dependents[name]:
            spec = plan.specs[dependent]
            prev = view.get(dependent)
            if (
                spec.limit is not None
                or (prev is not None and (prev.attempt or prev.subtasks))
                or dependent in self._tasks
                or not is_ready(plan, view, dependent, now)
            ):
                continue
            base = prev if prev is not None else StageState()
            out[dependent] = decide.begin(spec, base, now, item_id=self.item_id, feedback=None)
        return out

    async def attempt(
        self,
        spec: StageSpec,
        ctx: StageContext,
        budget_start: int,
        previous: Sequence[AttemptRecord],
    ) -> AttemptResult:
        return await run_attempt(
            self.item,
            spec,
            ctx,
            started_at=self.clock.now(),
            max_attempts=decide.max_attempts(spec, budget_start),
            previous=previous,
            max_artefact_bytes=self.plan.max_artefact_bytes,
        )
