"""Advancing items through the DAG (SPEC §2, §3.2, §3.5)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from _util import journal

from treadle_core import (
    Complete,
    Failed,
    Item,
    ItemState,
    NeedsReview,
    Retry,
    RetryBudget,
    Skipped,
    Stage,
    StageContext,
    StageOutput,
    StageStatus,
    UnknownItemError,
    Workflow,
    WorkItem,
)


def chain(*stages):
    b = Workflow.builder("t")
    prev = None
    for name, fn in stages:
        b.stage(name, fn)
        if prev:
            b.dependency(name, prev)
        prev = name
    return b.build()


async def test_advance_runs_stages_in_dependency_order_and_completes(make_store):
    order = []

    async def a(item, ctx):
        order.append("a")

    async def b(item, ctx):
        order.append("b")

    wf = chain(("a", a), ("b", b))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert order == ["a", "b"]
    assert status.is_complete and status.progress == 100.0
    assert store.get_item("x").state == ItemState.COMPLETE
    assert journal(store)[-1] == "WorkflowCompleted"


@pytest.mark.parametrize("limited", [None, "left", "right"])
async def test_independent_ready_stages_run_concurrently(make_store, limited):
    """Also when one of them has a limit to ask (it starts with a write of its own, not
    in the commit that made it ready), whichever it is: the other, started in that
    commit, must not make it wait until it is done."""
    left_started, right_started = asyncio.Event(), asyncio.Event()

    async def root(item, ctx):
        pass

    async def left(item, ctx):
        left_started.set()
        await asyncio.wait_for(right_started.wait(), 2)

    async def right(item, ctx):
        right_started.set()
        await asyncio.wait_for(left_started.wait(), 2)

    wf = (
        Workflow.builder()
        .stage("root", root)
        .stage("left", left, needs=["root"])
        .stage("right", right, needs=["root"])
    )
    if limited:
        wf.limit(limited, concurrency=1)
    status = await wf.build().advance(Item("x"), make_store())
    assert status.is_complete, str(status)


async def test_sync_function_stage_runs_in_a_thread_without_blocking_the_loop(make_store):
    gate = threading.Event()
    seen = {}

    def blocking(item, ctx):
        seen["thread"] = threading.get_ident()
        assert gate.wait(2), "the loop was blocked: the async stage never ran"

    async def releaser(item, ctx):
        await asyncio.sleep(0.01)
        gate.set()

    wf = Workflow.builder().stage("blocking", blocking).stage("releaser", releaser).build()
    status = await wf.advance(Item("x"), make_store())
    assert status.is_complete
    assert seen["thread"] != threading.get_ident()


async def test_run_advances_every_item_in_the_store_within_the_concurrency_limit(make_store):
    live = 0
    peak = 0

    async def work(item, ctx):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1

    wf = chain(("a", work), ("b", work))
    store = make_store()
    for i in range(30):
        store.save_work_item_data(f"i{i}", {"n": i})
    report = await wf.run(store, concurrency=4)
    assert peak == 4
    assert report.executions == 60
    assert store.count_items() == {ItemState.COMPLETE: 30}


async def test_run_with_items_registers_them_and_passes_their_data(make_store):
    seen = []

    def work(item, ctx):
        seen.append((item.id, item.data["n"]))

    wf = chain(("a", work))
    store = make_store()
    await wf.run(store, [Item("p", {"n": 1}), Item("q", {"n": 2})])
    assert sorted(seen) == [("p", 1), ("q", 2)]
    assert store.get_work_item_data("q") == {"n": 2}


async def test_run_without_items_builds_items_from_stored_data(make_store):
    seen = []

    def work(item, ctx):
        seen.append((type(item).__name__, item.id, item.data))

    wf = chain(("a", work))
    store = make_store()
    store.save_work_item_data("doc", {"path": "a.txt"})
    await wf.run(store)
    assert seen == [("Item", "doc", {"path": "a.txt"})]


async def test_upstream_holds_artefacts_of_direct_and_indirect_dependencies(make_store):
    seen = {}

    async def a(item, ctx):
        return StageOutput(Complete(), artefact={"a": 1})

    async def b(item, ctx):
        return StageOutput(Complete(), artefact=[2])

    async def c(item, ctx):
        seen.update(ctx.upstream)

    wf = chain(("a", a), ("b", b), ("c", c))
    await wf.advance(Item("x"), make_store())
    assert seen == {"a": {"a": 1}, "b": [2]}


async def test_none_and_bare_outcomes_are_accepted(make_store):
    async def none(item, ctx):
        return None

    async def bare(item, ctx):
        return Complete()

    wf = chain(("none", none), ("bare", bare))
    assert (await wf.advance(Item("x"), make_store())).is_complete


async def test_skipped_stage_satisfies_dependents(make_store):
    ran = []

    async def skip(item, ctx):
        return Skipped("not a PDF")

    async def after(item, ctx):
        ran.append(True)

    wf = chain(("skip", skip), ("after", after))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["skip"].status == StageStatus.SKIPPED
    assert ran == [True] and status.is_complete
    assert "StageSkipped" in journal(store)


async def test_failed_is_permanent_and_blocks_dependents(make_store):
    calls = []

    async def boom(item, ctx):
        calls.append(ctx.attempt)
        return Failed("bad input")

    async def after(item, ctx):
        calls.append("after")

    wf = (
        Workflow.builder()
        .stage("boom", boom)
        .stage("after", after, needs=["boom"])
        .retry_budget("boom", RetryBudget(max_attempts=3))
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert calls == [1]
    assert status.failed_stages == ["boom"]
    assert status.stages["boom"].error == "bad input"
    assert status.stages["after"].status == StageStatus.PENDING
    assert store.get_item("x").state == ItemState.FAILED


async def test_exception_is_a_retry_with_traceback_recorded(make_store):
    async def flaky(item, ctx):
        if ctx.attempt == 1:
            raise ConnectionError("network down")
        return StageOutput(Complete(), artefact="ok")

    wf = (
        Workflow.builder()
        .stage("flaky", flaky)
        .retry_budget("flaky", RetryBudget(max_attempts=2))
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    first = store.get_attempts("x", "flaky")[0]
    assert first.outcome == "error"
    assert first.error.startswith("ConnectionError: network down")
    assert "Traceback" in first.error
    assert first.feedback.summary == "ConnectionError: network down"


async def test_never_retry_on_makes_an_exception_permanent(make_store):
    calls = []

    async def picky(item, ctx):
        calls.append(1)
        raise KeyError("missing")

    wf = (
        Workflow.builder()
        .stage("picky", picky)
        .retry_budget("picky", RetryBudget(max_attempts=3, never_retry_on=(KeyError,)))
        .build()
    )
    status = await wf.advance(Item("x"), make_store())
    assert calls == [1]
    assert status.failed_stages == ["picky"]


async def test_retry_on_narrows_retryable_exceptions(make_store):
    calls = []

    async def picky(item, ctx):
        calls.append(1)
        raise ValueError("no")

    wf = (
        Workflow.builder()
        .stage("picky", picky)
        .retry_budget("picky", RetryBudget(max_attempts=3, retry_on=(ConnectionError,)))
        .build()
    )
    status = await wf.advance(Item("x"), make_store())
    assert calls == [1] and status.failed_stages == ["picky"]


async def test_wrong_return_type_is_a_failed_attempt_naming_the_stage_and_type(make_store):
    """A stage's mistake is recorded on its attempt, under its budget, like an exception."""

    async def ok(item, ctx):
        return StageOutput(Complete(), artefact=1)

    async def wrong(item, ctx):
        return 42

    wf = chain(("ok", ok), ("wrong", wrong))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["ok"].status == StageStatus.COMPLETE
    st = status.stages["wrong"]
    assert st.status == StageStatus.FAILED
    assert st.error == (
        "StageOutputError: stage 'wrong' returned a value of type int; return a "
        "StageOutput, an outcome (Complete(), Retry(...), ...) or None"
    )
    (record,) = store.get_attempts("x", "wrong")
    assert (record.outcome, record.error) == ("error", st.error)
    assert "Traceback" not in record.error


async def test_wrong_return_type_is_retried_under_the_budget(make_store):
    calls = []

    async def sometimes(item, ctx):
        calls.append(ctx.attempt)
        return 42 if ctx.attempt == 1 else None

    wf = (
        Workflow.builder()
        .stage("s", sometimes)
        .retry_budget("s", RetryBudget(max_attempts=2))
        .build()
    )
    status = await wf.advance(Item("x"), make_store())
    assert status.is_complete and calls == [1, 2]


@pytest.mark.parametrize(
    "artefact, error",
    [
        ({"f": object()}, "ArtefactNotSerialisableError: item 'x' stage 'produce': artefact"),
        ("x" * 2000, "ArtefactTooLargeError: item 'x' stage 'produce': artefact is 2002 bytes"),
        (Path("/tmp"), "ArtefactNotSerialisableError: item 'x' stage 'produce': artefact"),
    ],
    ids=["not-serialisable", "too-large", "a-path"],
)
async def test_an_artefact_that_cannot_be_stored_fails_the_attempt(artefact, error, make_store):
    async def produce(item, ctx):
        return StageOutput(Complete(), artefact=artefact)

    wf = Workflow.builder().stage("produce", produce).max_artefact_bytes(1000).build()
    store = make_store()
    status = await wf.advance(Item("x"), store)
    st = status.stages["produce"]
    assert st.status == StageStatus.FAILED and st.error.startswith(error)
    assert st.artefact is None
    (record,) = store.get_attempts("x", "produce")
    assert record.error == st.error and record.artefact is None


async def test_too_large_artefact_message_says_to_store_it_elsewhere(make_store):
    async def produce(item, ctx):
        return StageOutput(Complete(), artefact="x" * 100)

    wf = Workflow.builder().stage("produce", produce).max_artefact_bytes(10).build()
    status = await wf.advance(Item("x"), make_store())
    assert "store the payload elsewhere" in status.stages["produce"].error


async def test_one_bad_item_never_stops_the_others(make_store):
    """20 items; one stage of one item returns an artefact holding a Path: the run goes
    on with every other item and records the bad one's error on its stage."""

    async def extract(item, ctx):
        if item.id == "i07":
            return StageOutput(Complete(), artefact={"path": Path("/tmp/x")})
        return StageOutput(Complete(), artefact={"n": item.data["n"]})

    async def load(item, ctx):
        return None

    wf = chain(("extract", extract), ("load", load))
    store = make_store()
    items = [Item(f"i{n:02d}", {"n": n}) for n in range(20)]
    report = await wf.run(store, items, concurrency=4)
    assert report.errors == {}
    summary = wf.summary(store)
    assert summary["extract"] == {"complete": 19, "failed": 1}
    assert summary["load"] == {"complete": 19, "pending": 1}
    bad = wf.status("i07", store)
    assert bad.failed_stages == ["extract"]
    assert "ArtefactNotSerialisableError" in bad.stages["extract"].error
    # Later runs and workers do not stop on it either.
    await wf.run(store)
    assert wf.summary(store) == summary


async def test_artefact_with_to_json_is_stored_as_json(make_store):
    class Doc:
        def to_json(self):
            return {"title": "T"}

    async def produce(item, ctx):
        return StageOutput(Complete(), artefact=Doc(), summary="one doc")

    wf = Workflow.builder().stage("produce", produce).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    assert store.get_stage_state("x", "produce").artefact == {"title": "T"}
    assert store.get_attempts("x", "produce")[0].summary == "one doc"


async def test_stage_metadata_is_persisted_with_the_state(make_store):
    async def meta(item, ctx):
        ctx.metadata["pages"] = 3

    wf = Workflow.builder().stage("meta", meta).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    assert store.get_stage_state("x", "meta").metadata == {"pages": 3}


async def test_stage_hooks_run_around_execute(make_store):
    calls = []

    class Hooked(Stage):
        async def before_execute(self, item: WorkItem, ctx: StageContext) -> None:
            calls.append(("before", ctx.attempt))

        async def execute(self, item: WorkItem, ctx: StageContext) -> Complete:
            calls.append(("execute", ctx.attempt))
            return Complete()

        async def after_execute(
            self, item: WorkItem, ctx: StageContext, output: StageOutput
        ) -> None:
            calls.append(("after", type(output.outcome).__name__))

    wf = Workflow.builder().stage("h", Hooked()).build()
    await wf.advance(Item("x"), make_store())
    assert calls == [("before", 1), ("execute", 1), ("after", "Complete")]


async def test_context_carries_item_stage_attempt_and_state(make_store):
    seen = {}

    async def look(item, ctx):
        seen.update(
            item_id=ctx.item_id,
            stage=ctx.stage,
            attempt=ctx.attempt,
            status=ctx.state.status,
            subtask=ctx.subtask,
            feedback=ctx.feedback,
        )

    wf = Workflow.builder().stage("look", look).build()
    await wf.advance(Item("doc-1"), make_store())
    assert seen == {
        "item_id": "doc-1",
        "stage": "look",
        "attempt": 1,
        "status": StageStatus.RUNNING,
        "subtask": None,
        "feedback": None,
    }


async def test_work_item_protocol_object_is_accepted(make_store):
    class Doc:
        def __init__(self, id):
            self.id = id

    seen = []

    async def look(item, ctx):
        seen.append(item)

    wf = Workflow.builder().stage("look", look).build()
    doc = Doc("d1")
    store = make_store()
    await wf.advance(doc, store)
    assert seen == [doc]
    assert store.get_work_item_data("d1") == {}


async def test_status_reports_progress_failed_and_review_stages(make_store):
    async def ok(item, ctx):
        pass

    async def review(item, ctx):
        return NeedsReview("look")

    async def bad(item, ctx):
        return Failed("nope")

    wf = (
        Workflow.builder()
        .stage("ok", ok)
        .stage("review", review)
        .stage("bad", bad)
        .stage("later", ok, needs=["ok"])
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    status = wf.status("x", store)
    assert status.progress == 50.0
    assert status.failed_stages == ["bad"]
    assert status.review_stages == ["review"]
    assert not status.is_complete
    d = status.to_dict()
    assert d["stages"]["bad"]["error"] == "nope" and d["progress"] == 50.0
    text = str(status)
    assert "x: 50% complete" in text and "error: nope" in text and "awaiting_review" in text


async def test_status_of_unknown_item_raises(make_store):
    wf = chain(("a", lambda item, ctx: None))
    with pytest.raises(UnknownItemError, match="unknown item 'ghost'"):
        wf.status("ghost", make_store())


async def test_summary_counts_items_per_stage_and_status(make_store):
    async def review(item, ctx):
        if item.id == "b":
            return NeedsReview()

    wf = chain(("first", review), ("second", lambda item, ctx: None))
    store = make_store()
    for i in "abc":
        store.save_work_item_data(i, {})
    await wf.run(store)
    store.save_work_item_data("d", {})
    assert wf.summary(store) == {
        "first": {"complete": 2, "awaiting_review": 1, "pending": 1},
        "second": {"complete": 2, "pending": 2},
    }


async def test_item_leased_elsewhere_is_not_advanced(make_store):
    calls = []

    async def a(item, ctx):
        calls.append(1)

    wf = chain(("a", a))
    store = make_store()
    store.save_work_item_data("x", {})
    store.claim("other-worker", 1, 60, ["x"])
    status = await wf.advance(Item("x"), store)
    assert calls == [] and status.stages["a"].status == StageStatus.PENDING


async def test_retry_outcome_uses_the_budget_then_fails(make_store):
    async def again(item, ctx):
        return Retry(f"try {ctx.attempt}")

    wf = (
        Workflow.builder()
        .stage("again", again)
        .retry_budget("again", RetryBudget(max_attempts=3))
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["again"].attempt == 3
    assert status.stages["again"].status == StageStatus.FAILED
    assert status.stages["again"].error == "try 3"
    assert [a.error for a in store.get_attempts("x", "again")] == ["try 1", "try 2", "try 3"]


class _Refusing:
    """A memory store that refuses to save some stage states (a store-side failure that
    is about one item, not the whole store)."""

    @staticmethod
    def make(refuse):
        from treadle_core import MemoryStateStore

        class Refusing(MemoryStateStore):
            def save_stage_state(self, item_id, stage, state):
                if refuse(item_id, stage, state):
                    raise ValueError("the store says no")
                super().save_stage_state(item_id, stage, state)

        return Refusing()


async def test_a_result_the_store_refuses_fails_that_stage_and_the_run_goes_on(caplog):
    """The engine cannot record one stage's result: that stage is FAILED with why (one
    line); its item's other stages and every other item go on."""

    async def work(item, ctx):
        return StageOutput(Complete(), artefact={"big": item.id == "bad"})

    def refuse(item_id, stage, state):
        return state.status == StageStatus.COMPLETE and state.artefact == {"big": True}

    wf = chain(("a", work), ("b", work))
    store = _Refusing.make(refuse)
    items = [Item(f"ok{n}") for n in range(3)] + [Item("bad")]
    report = await wf.run(store, items, concurrency=2)
    assert report.errors == {}
    assert all(wf.status(f"ok{n}", store).is_complete for n in range(3))
    bad = wf.status("bad", store).stages["a"]
    assert bad.status == StageStatus.FAILED
    assert bad.error == (
        "the engine could not record this stage's attempt: ValueError: the store says no"
    )
    assert "the engine failed; failing the stage" in caplog.text


async def test_an_item_the_store_refuses_entirely_is_put_aside_and_the_run_ends():
    """Not even a FAILED state can be stored for it: the item is reported and put aside
    (not due, so the run does not wait for it); every other item completes."""

    async def work(item, ctx):
        return None

    wf = chain(("a", work), ("b", work))
    store = _Refusing.make(lambda item_id, stage, state: item_id == "bad")
    items = [Item(f"ok{n}") for n in range(5)] + [Item("bad")]
    report = await asyncio.wait_for(wf.run(store, items, concurrency=2), 10)
    assert report.errors == {"bad": "ValueError: the store says no"}
    assert all(wf.status(f"ok{n}", store).is_complete for n in range(5))
    assert store.get_item("bad").due_at is None
    # A run over every item does not spin on it either.
    report = await asyncio.wait_for(wf.run(store), 10)
    assert report.items == 0


async def test_a_worker_claims_a_broken_item_again_later_with_growing_delays():
    from treadle_core.engine.worker import BROKEN_ITEM_DELAY
    from treadle_core.model import utcnow

    async def work(item, ctx):
        return None

    wf = chain(("a", work))
    store = _Refusing.make(lambda item_id, stage, state: item_id == "bad")
    store.save_work_item_data("bad", {})
    stop = asyncio.Event()
    serving = asyncio.create_task(wf.serve(store, stop=stop, poll_interval=0.05))
    deadline = asyncio.get_running_loop().time() + 10
    while store.get_item("bad").due_at is None or store.get_item("bad").due_at <= utcnow():
        assert asyncio.get_running_loop().time() < deadline, "the worker never put it aside"
        await asyncio.sleep(0.01)
    stop.set()
    report = await asyncio.wait_for(serving, 10)
    assert report.errors == {"bad": "ValueError: the store says no"}
    wait = (store.get_item("bad").due_at - utcnow()).total_seconds()
    assert BROKEN_ITEM_DELAY - 5 < wait <= BROKEN_ITEM_DELAY


@pytest.mark.parametrize("given", [True, False], ids=["run-items", "run-store"])
async def test_higher_priority_items_are_claimed_first(make_store, given):
    order = []

    async def work(item, ctx):
        order.append(item.id)

    wf = chain(("work", work))
    store = make_store()
    items = [Item("low-1"), Item("urgent", priority=100), Item("low-2"), Item("mid", priority=5)]
    if given:
        await wf.run(store, items, concurrency=1)
    else:
        from treadle_core.engine.writes import register

        with store.transaction():
            register(items)(store)
        await wf.run(store, concurrency=1)
    assert order == ["urgent", "mid", "low-1", "low-2"]
    assert store.get_item("urgent").priority == 100


@pytest.mark.parametrize("priority", [-1, 1_000_001, 1.5, True, "9"])
def test_a_priority_must_be_an_integer_in_range(priority):
    with pytest.raises(ValueError, match="priority must be an integer from 0 to 1,000,000"):
        Item("x", priority=priority)
