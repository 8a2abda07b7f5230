"""A fan-out's subtasks run: the due PENDING ones concurrently, each one attempt decided
like a stage's (`decide`, with ``subtask=``), until none is due; then the stage itself
is decided (`fanout.finish_fanout`). Runs inside an `item.ItemRun`, through its writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from ..clock import Clock
from ..events import Event
from ..model import AttemptRecord, QualityFeedback, StageContext, StageState, StageStatus
from . import decide, fanout
from .attempt import AttemptResult
from .plan import StageSpec
from .session import Session


class ItemSteps(Protocol):
    """What a fan-out uses of the item run it is part of (`item.ItemRun`)."""

    session: Session
    clock: Clock
    item_id: str
    states: dict[str, StageState]

    async def previous(self, name: str, subtask: str | None) -> list[AttemptRecord]: ...

    def context(
        self,
        name: str,
        subtask: str | None,
        running: StageState,
        attempt: int,
        metadata: dict[str, Any],
        feedback: QualityFeedback | None,
        previous: Sequence[AttemptRecord],
    ) -> StageContext: ...

    async def attempt(
        self,
        spec: StageSpec,
        ctx: StageContext,
        budget_start: int,
        previous: Sequence[AttemptRecord],
    ) -> AttemptResult: ...

    async def start(
        self,
        spec: StageSpec,
        running: StageState,
        before: StageState,
        events: list[Event],
        *,
        subtask: str | None = None,
    ) -> bool: ...

    async def write(
        self,
        stage: str | None,
        state: StageState | None,
        events: list[Event],
        records: Sequence[AttemptRecord] = (),
    ) -> None: ...

    async def abandon(self, name: str, prev: StageState) -> None: ...


class FanOutRun:
    """One fan-out stage of an item being advanced; ``state`` is the stage's newest state
    (each subtask's start and decision replace it as they happen)."""

    def __init__(self, run: ItemSteps, spec: StageSpec, state: StageState):
        self.item_run = run
        self.spec = spec
        self.state = state

    async def run(self) -> None:
        """Run the due PENDING subtasks concurrently until none is left to run now, then
        decide the stage. A fan-out at its recovery limit runs alone."""
        slots = self.item_run.session.slots
        if self.state.run_alone:
            # Every slot of the process is this fan-out's: its subtasks share as many.
            async with slots.alone():
                await self._rounds(asyncio.Semaphore(slots.n))
        else:
            await self._rounds(slots.one)

    async def _rounds(self, slots: asyncio.Semaphore) -> None:
        run, spec = self.item_run, self.spec
        try:
            while True:
                now = run.clock.now()
                todo = [
                    t.id
                    for t in self.state.subtasks
                    if t.status == StageStatus.PENDING
                    and (t.next_attempt_at is None or t.next_attempt_at <= now)
                ]
                if not todo:
                    break
                await _all_or_cancel([self._subtask(sub_id, slots) for sub_id in todo])
        except BaseException:
            # Abandoned mid-fan-out: the stage goes back to PENDING, finished subtasks stay.
            await run.abandon(spec.name, self.state.replace(status=StageStatus.PENDING))
            raise
        new, events = fanout.finish_fanout(spec, self.state, run.clock.now(), item_id=run.item_id)
        await run.write(spec.name, new, events)

    async def _subtask(self, sub_id: str, slots: asyncio.Semaphore) -> None:
        run, spec = self.item_run, self.spec
        name = spec.name
        sub = self.state.subtask(sub_id)
        assert sub is not None
        await spec.stage.settle(run.item_id, sub_id)
        previous = await run.previous(name, sub_id) if sub.attempt > 0 else []
        feedback = decide.last_feedback(previous)
        async with slots:
            before = self.state
            running, events = decide.begin(
                spec,
                before,
                run.clock.now(),
                item_id=run.item_id,
                feedback=feedback,
                subtask=sub_id,
            )
            self.state = running
            if not await run.start(spec, running, before, events, subtask=sub_id):
                self.state = run.states.get(name, before)  # waiting for its rate
                return
            running_sub = running.subtask(sub_id)
            assert running_sub is not None
            ctx = run.context(
                name, sub_id, running, running_sub.attempt, running_sub.metadata, feedback, previous
            )
            try:
                result = await run.attempt(spec, ctx, running_sub.budget_start, previous)
            except BaseException:
                self.state = _with_subtask(self.state, before, sub_id)
                await run.abandon(name, self.state)
                raise
            run.session.executions += 1
            d = decide.decide(
                spec, self.state, result, run.clock.now(), item_id=run.item_id, subtask=sub_id
            )
            self.state = d.state
            if result.timed_out:  # keep the slot until its thread returned (see ItemRun)
                await run.write(name, d.state, d.events, d.records)
                await spec.stage.settle(run.item_id, sub_id)
                return
        await run.write(name, d.state, d.events, d.records)


def _with_subtask(state: StageState, source: StageState, sub_id: str) -> StageState:
    """``state`` with subtask ``sub_id`` as it is in ``source``."""
    old = source.subtask(sub_id)
    return state.replace(subtasks=[old if t.id == sub_id and old else t for t in state.subtasks])


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
