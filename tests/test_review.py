"""Human review: resolve, audit, deadlines, pending reviews, retry_stage (SPEC §4)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from _util import journal, snapshot

from treadle_core import (
    Approve,
    ApproveWithEdits,
    ArtefactNotSerialisableError,
    Complete,
    Failed,
    Item,
    ItemState,
    NeedsReview,
    Reject,
    RetryError,
    ReviewError,
    StageOutput,
    StageStatus,
    UnknownItemError,
    UnknownStageError,
    Workflow,
)


def review_pipeline(seen=None, timeout=None):
    async def draft(item, ctx):
        return StageOutput(Complete(), artefact={"text": "draft"})

    async def approve(item, ctx):
        return StageOutput(
            NeedsReview("is the draft right?", {"words": 1}), artefact=ctx.upstream["draft"]
        )

    async def publish(item, ctx):
        if seen is not None:
            seen.append(dict(ctx.upstream))

    b = (
        Workflow.builder("review")
        .stage("draft", draft)
        .stage("approve", approve, needs=["draft"])
        .stage("publish", publish, needs=["approve"])
    )
    if timeout is not None:
        b.review_timeout("approve", timeout[0], on_timeout=timeout[1])
    return b.build()


async def test_needs_review_pauses_until_approved_then_dependents_run(make_store):
    seen = []
    wf = review_pipeline(seen)
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["approve"]
    assert seen == []
    pending = wf.pending_reviews(store)
    assert [(p.item_id, p.stage, p.prompt, p.context) for p in pending] == [
        ("x", "approve", "is the draft right?", {"words": 1})
    ]
    await wf.approve_review("x", "approve", store, reviewer="ann", comment="fine")
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert seen == [{"draft": {"text": "draft"}, "approve": {"text": "draft"}}]
    [record] = store.get_reviews("x", "approve")
    assert (record.decision, record.reviewer, record.comment) == ("approve", "ann", "fine")
    assert record.at is not None
    assert "ReviewResolved" in journal(store)


async def test_reject_fails_the_stage_with_the_reason(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    status = await wf.reject_review("x", "approve", "wrong tone", store, reviewer="bob")
    assert status.failed_stages == ["approve"]
    assert status.stages["approve"].error == "wrong tone"
    assert store.get_reviews("x")[0].reason == "wrong tone"


async def test_approve_with_edits_hands_the_edited_artefact_downstream(make_store):
    seen = []
    wf = review_pipeline(seen)
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.resolve_review(
        "x", "approve", ApproveWithEdits({"text": "edited"}, note="typo"), store, reviewer="ann"
    )
    await wf.advance(Item("x"), store)
    assert seen[0]["approve"] == {"text": "edited"}
    review = store.get_reviews("x")[0]
    assert (review.decision, review.edited_artefact, review.note) == (
        "approve_with_edits",
        {"text": "edited"},
        "typo",
    )


async def test_resolving_a_stage_not_awaiting_review_raises_and_changes_nothing(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    before = snapshot(store, ["x"], wf.stages)
    events_before = journal(store)
    with pytest.raises(
        ReviewError, match="item 'x' stage 'draft' is complete, not awaiting review"
    ):
        await wf.approve_review("x", "draft", store)
    with pytest.raises(ReviewError, match="stage 'publish' is pending"):
        await wf.reject_review("x", "publish", "no", store)
    assert snapshot(store, ["x"], wf.stages) == before
    assert journal(store) == events_before


async def test_unknown_item_or_stage_raise_specific_errors(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    before = snapshot(store, ["x"], wf.stages)
    with pytest.raises(UnknownItemError):
        await wf.approve_review("ghost", "approve", store)
    with pytest.raises(UnknownStageError, match="did you mean 'approve'"):
        await wf.approve_review("x", "aprove", store)
    with pytest.raises(UnknownStageError):
        await wf.retry_stage("x", "nope", store)
    with pytest.raises(UnknownItemError):
        await wf.retry_stage("ghost", "draft", store)
    assert snapshot(store, ["x"], wf.stages) == before


async def test_unserialisable_edit_is_refused_and_changes_nothing(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    before = snapshot(store, ["x"], wf.stages)
    with pytest.raises(ArtefactNotSerialisableError):
        await wf.resolve_review("x", "approve", ApproveWithEdits({"f": object()}), store)
    assert snapshot(store, ["x"], wf.stages) == before


async def test_two_concurrent_resolutions_exactly_one_wins(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    results = []
    barrier = threading.Barrier(8)

    def resolve(i):
        barrier.wait()
        try:
            asyncio.run(wf.approve_review("x", "approve", store, reviewer=f"r{i}"))
            results.append("ok")
        except ReviewError:
            results.append("refused")

    threads = [threading.Thread(target=resolve, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 7
    assert len(store.get_reviews("x")) == 1


async def test_review_timeout_applies_the_default_decision_as_timeout(make_store):
    wf = review_pipeline(timeout=(0.05, Reject("no answer")))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    deadline = status.stages["approve"].review_deadline
    assert deadline is not None
    assert store.get_item("x").due_at == deadline
    await asyncio.sleep(0.1)
    status = await wf.advance(Item("x"), store)
    assert status.stages["approve"].status == StageStatus.FAILED
    assert status.stages["approve"].error == "no answer"
    [review] = store.get_reviews("x")
    assert review.reviewer == "timeout" and review.decision == "reject"


async def test_review_timeout_approve_lets_dependents_run(make_store):
    seen = []
    wf = review_pipeline(seen, timeout=(0.05, Approve()))
    store = make_store()
    await wf.advance(Item("x"), store)
    await asyncio.sleep(0.1)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete and len(seen) == 1


async def test_a_person_answering_first_means_the_timeout_never_applies(make_store):
    wf = review_pipeline(timeout=(0.05, Reject("no answer")))
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.approve_review("x", "approve", store, reviewer="ann")
    await asyncio.sleep(0.1)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert [r.reviewer for r in store.get_reviews("x")] == ["ann"]


async def test_timeout_and_person_racing_apply_exactly_one_decision(make_store):
    wf = review_pipeline(timeout=(0.05, Reject("no answer")))
    for _ in range(5):
        store = make_store()
        await wf.advance(Item("x"), store)
        await asyncio.sleep(0.06)
        results = await asyncio.gather(
            wf.advance(Item("x"), store),
            wf.approve_review("x", "approve", store, reviewer="ann"),
            return_exceptions=True,
        )
        assert len(store.get_reviews("x")) == 1, results
        decided = store.get_reviews("x")[0].reviewer
        assert decided in ("ann", "timeout")
        if decided == "timeout":
            assert isinstance(results[1], ReviewError)


async def test_pending_reviews_are_oldest_first_and_filter_by_stage(make_store):
    wf = review_pipeline()
    store = make_store()
    for i in ("b", "a", "c"):
        await wf.advance(Item(i), store)
        await asyncio.sleep(0.002)
    assert [p.item_id for p in wf.pending_reviews(store)] == ["b", "a", "c"]
    assert wf.pending_reviews(store, stage="draft") == []
    with pytest.raises(UnknownStageError):
        wf.pending_reviews(store, stage="nope")


async def test_other_branches_keep_running_while_one_waits_for_review(make_store):
    ran = []

    async def ask(item, ctx):
        return NeedsReview("?")

    async def other(item, ctx):
        ran.append("other")

    async def after_other(item, ctx):
        ran.append("after_other")

    wf = (
        Workflow.builder()
        .stage("ask", ask)
        .stage("other", other)
        .stage("after_other", after_other, needs=["other"])
        .build()
    )
    status = await wf.advance(Item("x"), make_store())
    assert ran == ["other", "after_other"]
    assert status.review_stages == ["ask"]


async def test_retry_stage_puts_a_failed_stage_back_to_pending(make_store):
    calls = []

    async def once_bad(item, ctx):
        calls.append(ctx.attempt)
        return Failed("bad") if ctx.attempt == 1 else None

    wf = Workflow.builder().stage("s", once_bad).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    status = await wf.retry_stage("x", "s", store)
    assert status.stages["s"].status == StageStatus.PENDING
    assert status.stages["s"].attempt == 1
    status = await wf.advance(Item("x"), store)
    assert status.is_complete and calls == [1, 2]
    assert "StageRetried" in journal(store)


async def test_retry_stage_on_a_stage_that_has_not_failed_raises_and_changes_nothing(make_store):
    wf = review_pipeline()
    store = make_store()
    await wf.advance(Item("x"), store)
    before = snapshot(store, ["x"], wf.stages)
    with pytest.raises(RetryError, match="item 'x' stage 'approve' is awaiting_review, not failed"):
        await wf.retry_stage("x", "approve", store)
    with pytest.raises(RetryError, match="stage 'draft' is complete"):
        await wf.retry_stage("x", "draft", store)
    assert snapshot(store, ["x"], wf.stages) == before


async def test_review_deadline_is_the_items_due_time(make_store):
    wf = review_pipeline(timeout=(3600, Approve()))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    deadline = status.stages["approve"].review_deadline
    since = wf.pending_reviews(store)[0].since
    assert abs((deadline - since).total_seconds() - 3600) < 1
    assert wf.pending_reviews(store)[0].deadline == deadline
    assert store.get_item("x").due_at == deadline
    assert deadline - since > timedelta(minutes=59)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_review_approved_elsewhere_while_another_branch_runs_is_seen(kind, tmp_path):
    """The worker holding the item sees a decision another process committed meanwhile."""
    from treadle_core import MemoryStateStore, open_store

    url = f"sqlite:///{tmp_path}/s.db"
    store = MemoryStateStore() if kind == "memory" else open_store(url)
    other = store if kind == "memory" else open_store(url)
    release = threading.Event()
    ran = []

    async def ask(item, ctx):
        return NeedsReview("?")

    def slow(item, ctx):
        assert release.wait(5)

    async def after_ask(item, ctx):
        ran.append("after_ask")

    wf = (
        Workflow.builder()
        .stage("ask", ask)
        .stage("slow", slow)
        .stage("after_ask", after_ask, needs=["ask"])
        .build()
    )

    def approve_then_release():
        while other.get_stage_state("x", "ask") is None or (
            other.get_stage_state("x", "ask").status != StageStatus.AWAITING_REVIEW
        ):
            time.sleep(0.01)
        asyncio.run(wf.approve_review("x", "ask", other, reviewer="elsewhere"))
        release.set()

    helper = threading.Thread(target=approve_then_release)
    helper.start()
    status = await wf.advance(Item("x"), store)
    helper.join()
    assert ran == ["after_ask"]
    assert status.is_complete
    assert store.get_item("x").state == ItemState.COMPLETE
    store.close()
    other.close()


async def test_pending_reviews_limit_takes_the_oldest(make_store):
    wf = review_pipeline()
    store = make_store()
    for i in ("b", "a", "c", "d"):
        await wf.advance(Item(i), store)
        await asyncio.sleep(0.002)
    assert [p.item_id for p in wf.pending_reviews(store, limit=2)] == ["b", "a"]
    assert [p.item_id for p in wf.pending_reviews(store, "approve", limit=3)] == ["b", "a", "c"]
