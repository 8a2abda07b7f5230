"""The engine asks one clock for "now": retry delays and review deadlines are tested by
moving a `ManualClock`, never by sleeping; and no read that can block runs on the event
loop."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

from treadle_core import (
    Approve,
    Complete,
    Item,
    ManualClock,
    MemoryStateStore,
    NeedsReview,
    Retry,
    RetryBudget,
    StageStatus,
    Workflow,
)
from treadle_core.clock import SystemClock


def test_manual_clock_moves_only_forward():
    clock = ManualClock()
    start = clock.now()
    assert clock.advance(90) == start + timedelta(seconds=90)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


async def test_waiting_on_a_manual_clock_moves_it_at_once():
    clock = ManualClock()
    start = clock.now()
    await asyncio.wait_for(clock.sleep(3600), 1)
    assert clock.now() == start + timedelta(hours=1)


def test_system_clock_is_the_wall_clock():
    from treadle_core.model import utcnow

    before = utcnow()
    assert before <= SystemClock().now() <= utcnow()


def _flaky(attempts: list[int]):
    async def flaky(item, ctx):
        attempts.append(ctx.attempt)
        return Retry("busy") if ctx.attempt == 1 else Complete()

    return flaky


async def test_an_hour_long_retry_delay_runs_when_the_clock_reaches_it(make_store):
    clock = ManualClock()
    attempts: list[int] = []
    wf = (
        Workflow.builder()
        .stage("fetch", _flaky(attempts))
        .retry_budget("fetch", RetryBudget(max_attempts=2, delay=3600))
        .clock(clock)
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    st = status.stages["fetch"]
    assert st.status == StageStatus.PENDING
    assert st.next_attempt_at == clock.now() + timedelta(hours=1)
    clock.advance(3599)
    assert (await wf.advance(Item("x"), store)).stages["fetch"].status == StageStatus.PENDING
    assert attempts == [1]
    clock.advance(1)
    assert (await wf.advance(Item("x"), store)).is_complete
    assert attempts == [1, 2]


async def test_run_until_idle_waits_for_a_retry_on_the_clock_not_the_wall(make_store):
    clock = ManualClock()
    start = clock.now()
    attempts: list[int] = []
    wf = (
        Workflow.builder()
        .stage("fetch", _flaky(attempts))
        .retry_budget("fetch", RetryBudget(max_attempts=2, delay=3600))
        .clock(clock)
        .build()
    )
    store = make_store()
    # An hour of back-off on the engine's clock; on the wall, well under a few seconds.
    await asyncio.wait_for(wf.run(store, [Item("x")]), 10)
    assert attempts == [1, 2]
    assert clock.now() >= start + timedelta(hours=1)
    attempts_at = [a.started_at for a in store.get_attempts("x", "fetch")]
    assert attempts_at[1] - attempts_at[0] >= timedelta(hours=1)


async def test_a_review_deadline_is_decided_when_the_clock_passes_it(make_store):
    clock = ManualClock()

    async def ask(item, ctx):
        return NeedsReview("publish?")

    wf = (
        Workflow.builder()
        .stage("approve", ask)
        .review_timeout("approve", 86400, on_timeout=Approve())
        .clock(clock)
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["approve"].review_deadline == clock.now() + timedelta(days=1)
    clock.advance(86399)
    assert (await wf.advance(Item("x"), store)).review_stages == ["approve"]
    clock.advance(1)
    assert (await wf.advance(Item("x"), store)).is_complete
    (review,) = store.get_reviews("x", "approve")
    assert (review.decision, review.reviewer, review.at) == ("approve", "timeout", clock.now())


async def test_events_and_records_carry_the_clocks_time(make_store):
    clock = ManualClock()

    async def done(item, ctx):
        return None

    wf = Workflow.builder().stage("a", done).clock(clock).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    assert {e.event.at for e in store.read_events("x")} == {clock.now()}
    (record,) = store.get_attempts("x", "a")
    assert record.started_at == record.completed_at == clock.now()


class _LoopWatchingStore(MemoryStateStore):
    """A store that notes every read made on the event loop's thread."""

    READS = (
        "get_item",
        "get_work_item_data",
        "get_stage_state",
        "get_all_stage_states",
        "get_stage_versions",
        "get_attempts",
        "get_reviews",
        "next_due_at",
        "pending_reviews",
        "count_items",
        "summary",
        "read_events",
    )

    def __init__(self) -> None:
        super().__init__()
        self.loop_thread: int | None = None
        self.on_loop: list[str] = []
        for name in self.READS:
            setattr(self, name, self._watch(name, getattr(self, name)))

    def _watch(self, name, method):
        def read(*args, **kwargs):
            if threading.get_ident() == self.loop_thread:
                self.on_loop.append(name)
            return method(*args, **kwargs)

        return read


async def test_no_store_read_blocks_the_event_loop():
    """Reads go to the reader thread, writes to the writer: on PostgreSQL a round trip
    on the loop would stall every item in flight."""
    gate_calls: list[int] = []

    async def draft(item, ctx):
        return Retry("again") if ctx.attempt == 1 else None

    async def ask(item, ctx):
        gate_calls.append(ctx.attempt)
        return NeedsReview("ok?")

    wf = (
        Workflow.builder()
        .stage("draft", draft)
        .stage("ask", ask, needs=["draft"])
        .retry_budget("draft", RetryBudget(max_attempts=2))
        .build()
    )
    store = _LoopWatchingStore()
    store.loop_thread = threading.get_ident()
    await wf.run(store, [Item("a"), Item("b")])
    await wf.run(store)
    await wf.approve_review("a", "ask", store, reviewer="ann")
    await wf.reject_review("b", "ask", "no", store, reviewer="ann")
    await wf.retry_stage("b", "ask", store)
    await wf.advance(Item("b"), store)
    assert gate_calls
    assert store.on_loop == []
