"""A pipeline that changes, re-runs and cancels (SPEC §10) on the Redis store, end to end."""

from __future__ import annotations

from typing import Any

from treadle_core import (
    ItemState,
    NeedsReview,
    StageOutput,
    StageStatus,
    Workflow,
    ops,
)


def ok(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(artefact={"n": 1})


def ask(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(NeedsReview("fine?"), artefact=ctx.upstream["a"])


def wf(*extra: tuple[str, Any, dict[str, Any]]) -> Workflow:
    b = Workflow.builder("docs").stage("a", ok).stage("b", ask, needs=["a"])
    for name, fn, kw in extra:
        b.stage(name, fn, **kw)
    return b.build()


async def test_change_rerun_and_cancel_on_redis(open_redis: Any) -> None:
    store = open_redis()
    for n in range(5):
        store.save_work_item_data(f"i{n}", {})
    v1 = wf()
    await v1.run(store)
    for n in range(5):
        await v1.approve_review(f"i{n}", "b", store, reviewer="ann")
    # Renamed, bumped and added: history carried over, stale marked, new work found.
    v2 = (
        Workflow.builder("docs")
        .stage("a", ok, version="2")
        .stage("check", ask, needs=["a"], renamed_from="b")
        .stage("c", ok, needs=["check"])
        .build()
    )
    change = await v2.reconcile(store)
    assert change is not None and (change.moved, change.stale, change.work) == (5, 10, 5)
    assert [r.reviewer for r in store.get_reviews("i0", "check")] == ["ann"]
    assert store.count_stale() == {"a": 5, "check": 5}
    assert sorted(v2.stale(store, "check")) == [(f"i{n}", "check") for n in range(5)]
    await v2.run(store)
    assert store.count_items() == {ItemState.COMPLETE: 5}
    # Re-run: the approval carries over; cancel: the item stops.
    report = await ops.rerun(v2, store, ops.rerun_targets(v2, store, "a", ops.STALE))
    assert len(report.reset) == 5
    await v2.run(store)
    assert v2.pending_reviews(store) == []
    assert store.get_reviews("i0", "check")[-1].reviewer == "carried-over"
    await v2.rerun("i1", "check", store)
    await v2.cancel("i1", store, reason="stop")
    assert store.get_item("i1").state == ItemState.CANCELLED
    assert store.get_stage_state("i1", "c").status == StageStatus.CANCELLED
    assert Workflow.from_store(store).stages == ["a", "check", "c"]
