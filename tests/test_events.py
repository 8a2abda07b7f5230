"""Events: subscribers with bounded queues, and the durable journal (SPEC §5)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import pytest

from treadle_core import (
    Complete,
    Event,
    Item,
    Lagged,
    NeedsReview,
    ReviewError,
    StageCompleted,
    StageFailed,
    StageStarted,
    Workflow,
    WorkflowCompleted,
)
from treadle_core.events import EVENT_TYPES, RetryScheduled, UnknownEvent


def two_stage():
    async def a(item, ctx):
        return Complete()

    async def b(item, ctx):
        return Complete()

    return Workflow.builder().stage("a", a).stage("b", b, needs=["a"]).build()


async def test_subscriber_sees_every_event_in_order(make_store):
    wf = two_stage()
    sub = wf.subscribe()
    await wf.advance(Item("x"), make_store())
    got = []
    while (ev := sub.get_nowait()) is not None:
        got.append((type(ev).__name__, ev.stage))
    assert got == [
        ("StageStarted", "a"),
        ("StageCompleted", "a"),
        ("StageStarted", "b"),
        ("StageCompleted", "b"),
        ("WorkflowCompleted", None),
    ]


async def test_async_iteration_receives_events_while_the_engine_runs(make_store):
    wf = two_stage()
    received = []

    async def consume():
        with wf.subscribe() as sub:
            async for ev in sub:
                received.append(ev)
                if isinstance(ev, WorkflowCompleted):
                    return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await wf.advance(Item("x"), make_store())
    await asyncio.wait_for(consumer, 2)
    assert isinstance(received[0], StageStarted) and received[0].item_id == "x"
    assert isinstance(received[-1], WorkflowCompleted)


async def test_slow_subscriber_gets_lagged_marker_and_never_blocks_the_engine(make_store):
    wf = two_stage()
    sub = wf.subscribe(maxsize=2)
    store = make_store()
    await asyncio.wait_for(wf.run(store, [Item(f"i{n}") for n in range(10)]), 5)
    first = await sub.__anext__()
    second = await sub.__anext__()
    lagged = await sub.__anext__()
    assert isinstance(first, Event) and isinstance(second, Event)
    assert lagged == Lagged(missed=10 * 5 - 2)
    assert sub.get_nowait() is None
    assert all(wf.status(f"i{n}", store).is_complete for n in range(10))


async def test_closed_subscription_ends_iteration():
    wf = two_stage()
    sub = wf.subscribe()

    async def drain():
        return [ev async for ev in sub]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0)
    sub.close()
    assert await asyncio.wait_for(task, 1) == []


async def test_journal_records_events_with_their_state_changes(make_store):
    wf = two_stage()
    store = make_store()
    await wf.advance(Item("x"), store)
    stored = store.read_events("x")
    assert [s.event.kind for s in stored][:2] == ["StageStarted", "StageCompleted"]
    assert [s.id for s in stored] == sorted(s.id for s in stored)
    assert store.read_events("x", after=stored[2].id)[0].id == stored[3].id


async def test_a_stage_returning_the_wrong_type_journals_its_failure(make_store):
    async def wrong(item, ctx):
        return "nope"

    wf = Workflow.builder().stage("w", wrong).build()
    store = make_store()
    sub = wf.subscribe()
    await wf.advance(Item("x"), store)
    kinds = ["StageStarted", "StageFailed"]
    assert [s.event.kind for s in store.read_events("x")] == kinds
    assert [type(e).__name__ for e in iter(sub.get_nowait, None)] == kinds
    failed = store.read_events("x")[1].event
    assert failed.error.startswith("StageOutputError: stage 'w' returned a value of type str")


async def test_refused_decision_journals_nothing_new(make_store):
    async def ask(item, ctx):
        return NeedsReview("?")

    wf = Workflow.builder().stage("ask", ask).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.approve_review("x", "ask", store, reviewer="ann")
    before = [s.event.kind for s in store.read_events("x")]
    sub = wf.subscribe()
    with pytest.raises(ReviewError):
        await wf.approve_review("x", "ask", store, reviewer="bob")
    assert [s.event.kind for s in store.read_events("x")] == before
    assert sub.get_nowait() is None


async def test_events_round_trip_through_the_journal_format():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for cls in EVENT_TYPES:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in ("item_id",):
                kwargs[f.name] = "x"
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                kwargs[f.name] = 3 if f.type in ("int",) else "v"
        ev = cls(**kwargs, at=at)
        back = Event.from_dict(ev.to_dict())
        assert back == ev, cls
    ev = RetryScheduled(item_id="x", stage="s", attempt=2, max_attempts=3, retry_at=at, at=at)
    assert Event.from_dict(ev.to_dict()) == ev


def test_unknown_event_type_from_a_newer_version_is_kept():
    ev = Event.from_dict({"type": "FutureEvent", "item_id": "x", "at": 0.0, "extra": 1})
    assert isinstance(ev, UnknownEvent)
    assert ev.type_name == "FutureEvent" and ev.payload == {"extra": 1}


async def test_events_carry_item_stage_and_time(make_store):
    wf = two_stage()
    sub = wf.subscribe()
    before = datetime.now(UTC)
    await wf.advance(Item("x"), make_store())
    ev = sub.get_nowait()
    assert ev.item_id == "x" and ev.stage == "a" and ev.at >= before


async def test_listener_failure_does_not_break_the_engine(make_store):
    wf = two_stage()
    seen = []

    def bad(event):
        raise RuntimeError("sink down")

    wf.bus.add_listener(bad)
    wf.bus.add_listener(seen.append)
    status = await wf.advance(Item("x"), make_store())
    assert status.is_complete and len(seen) == 5


async def test_review_events_describe_the_decision(make_store):
    async def ask(item, ctx):
        return NeedsReview("ok?", {"k": 1})

    wf = Workflow.builder().stage("ask", ask).build()
    store = make_store()
    sub = wf.subscribe()
    await wf.advance(Item("x"), store)
    await wf.reject_review("x", "ask", "no", store, reviewer="ann")
    evs = list(iter(sub.get_nowait, None))
    required = next(e for e in evs if type(e).__name__ == "ReviewRequired")
    resolved = next(e for e in evs if type(e).__name__ == "ReviewResolved")
    assert (required.prompt, required.context) == ("ok?", {"k": 1})
    assert (resolved.decision, resolved.reviewer) == ("reject", "ann")
    assert any(isinstance(e, StageFailed) and e.error == "no" for e in evs)
    assert not any(isinstance(e, StageCompleted) for e in evs)
