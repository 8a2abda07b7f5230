"""Pipelines that live for months (SPEC §10), through the library: a changed definition is
reconciled, stages re-run and items cancelled, on the memory store, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _util import journal, snapshot

from treadle_core import (
    CancelError,
    Complete,
    DefinitionError,
    Item,
    ItemCancelled,
    ItemState,
    ManualClock,
    MemoryStateStore,
    NeedsReview,
    RerunError,
    StageOutput,
    StageReset,
    StageStatus,
    StateStore,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
    Workflow,
    open_store,
    ops,
)
from treadle_core.engine import reconcile as reconcile_module

# --- stores -------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[StateStore]:
    if request.param == "memory":
        s: StateStore = MemoryStateStore()
    elif request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/state.db")
    else:
        s = open_store(request.getfixturevalue("pg_url"))
    yield s
    s.close()


# --- workflows ----------------------------------------------------------------------------

RAN: list[tuple[str, str]] = []


def stage(name: str) -> Callable[[Any, Any], StageOutput]:
    def run(item: Any, ctx: Any) -> StageOutput:
        RAN.append((item.id, name))
        return StageOutput(Complete(), artefact={name: item.data.get("n", 0)})

    return run


def build(*stages: tuple[str, list[str]] | tuple[str, list[str], dict[str, Any]]) -> Workflow:
    b = Workflow.builder("docs")
    for entry in stages:
        name, needs = entry[0], entry[1]
        extra: dict[str, Any] = entry[2] if len(entry) > 2 else {}  # type: ignore[misc]
        b.stage(name, stage(name), needs=needs, **extra)
    return b.build()


V1 = build(("a", []), ("b", ["a"]))


async def filled(store: StateStore, n: int = 3, wf: Workflow = V1) -> list[str]:
    ids = [f"i{k}" for k in range(n)]
    with store.transaction():
        for item_id in ids:
            store.save_work_item_data(item_id, {"n": int(item_id[1:])})
    await wf.run(store)
    RAN.clear()
    return ids


def statuses(wf: Workflow, store: StateStore, item_id: str) -> dict[str, str]:
    return {n: s.status.value for n, s in wf.status(item_id, store).stages.items()}


# --- the recorded definition ----------------------------------------------------------------


async def test_a_run_records_the_definition(store: StateStore) -> None:
    await filled(store, 1)
    rec = store.get_definition()
    assert rec is not None and rec["change"] is None
    assert rec["definition"]["name"] == "docs"
    assert [(s["name"], s["version"], s["needs"]) for s in rec["definition"]["stages"]] == [
        ("a", "1", []),
        ("b", "1", ["a"]),
    ]


async def test_an_added_stage_is_pending_and_run_finds_it(store: StateStore) -> None:
    ids = await filled(store)
    v2 = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    assert statuses(v2, store, "i0") == {"a": "complete", "b": "complete", "c": "pending"}
    report = await v2.run(store)
    assert report.items == 3
    assert sorted(RAN) == [(i, "c") for i in ids]
    assert all(v2.status(i, store).is_complete for i in ids)
    last = store.get_definition()["last_change"]  # type: ignore[index]
    assert last["note"] == (
        "pipeline 'docs' changed: added c; 3 items checked; 3 items have new work"
    )


async def test_advance_reconciles_too(store: StateStore) -> None:
    await filled(store, 2)
    v2 = build(("a", []), ("b", ["a"]), ("c", ["a"]))
    status = await v2.advance(Item("i0", {}), store)
    assert status.is_complete and RAN == [("i0", "c")]
    assert store.get_item("i1").state == ItemState.READY  # type: ignore[union-attr]


async def test_a_removed_stage_keeps_its_history_and_stops_counting(store: StateStore) -> None:
    await filled(store, 2, wf=V1)
    store.save_stage_state(
        "i1",
        "b",
        store.get_stage_state("i1", "b").replace(  # type: ignore[union-attr]
            status=StageStatus.FAILED, error="boom"
        ),
    )
    store.set_item_state("i1", ItemState.FAILED, None)
    attempts = store.get_attempts("i1", "b")
    v2 = build(("a", []))
    change = await v2.reconcile(store)
    assert change is not None and change.change.removed == ("b",)
    st = v2.status("i1", store)
    assert st.is_complete and st.progress == 100.0 and st.state == ItemState.COMPLETE
    assert st.removed["b"].status == StageStatus.FAILED
    assert store.get_attempts("i1", "b") == attempts
    assert ops.overview(v2, store).removed == {"b": {"complete": 1, "failed": 1}}


async def test_a_renamed_stage_carries_its_states_attempts_and_reviews(store: StateStore) -> None:
    review = (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage("ok", lambda item, ctx: NeedsReview("fine?"), needs=["a"])
        .build()
    )
    await filled(store, 1, wf=review)
    await review.approve_review("i0", "ok", store, reviewer="ann")
    before = store.get_stage_state("i0", "ok")
    attempts = store.get_attempts("i0", "ok")
    renamed = (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage("check", lambda item, ctx: NeedsReview("fine?"), needs=["a"], renamed_from="ok")
        .build()
    )
    change = await renamed.reconcile(store)
    assert change is not None and change.moved == 1
    assert store.get_stage_state("i0", "check") == before
    assert store.get_attempts("i0", "check") == attempts
    assert [r.reviewer for r in store.get_reviews("i0", "check")] == ["ann"]
    assert store.get_stage_state("i0", "ok") is None
    await renamed.run(store)
    assert RAN == []  # nothing ran again


async def test_a_renamed_from_naming_no_stage_is_refused_and_changes_nothing(
    store: StateStore,
) -> None:
    ids = await filled(store)
    before = snapshot(store, ids, ["a", "b", "b2"])
    definition = store.get_definition()
    bad = build(("a", []), ("b2", ["a"], {"renamed_from": "bb"}))
    with pytest.raises(DefinitionError, match="renamed_from 'bb', which the store never had"):
        await bad.run(store)
    assert snapshot(store, ids, ["a", "b", "b2"]) == before
    assert store.get_definition() == definition


async def test_a_version_bump_marks_it_and_downstream_stale(store: StateStore) -> None:
    ids = await filled(store)
    v2 = build(("a", [], {"version": "2"}), ("b", ["a"]))
    change = await v2.reconcile(store)
    assert change is not None and change.stale == 6
    assert "a version 1 -> 2" in change.note and "6 stage states now stale (a, b)" in change.note
    assert sorted(v2.stale(store)) == sorted((i, s) for i in ids for s in ("a", "b"))
    assert list(v2.stale(store, "b")) == [(i, "b") for i in ids]
    st = v2.status("i0", store)
    assert st.stale_stages == ["a", "b"] and st.to_dict()["stages"]["a"]["stale"] is True
    assert ops.overview(v2, store).stale == {"a": 3, "b": 3}
    await v2.run(store)
    assert RAN == []  # stale stages are not re-run by themselves
    await v2.rerun("i0", "a", store)
    await v2.run(store)
    assert RAN == [("i0", "a"), ("i0", "b")]
    assert v2.status("i0", store).stale_stages == []
    assert store.get_stage_state("i0", "a").version == "2"  # type: ignore[union-attr]
    assert store.get_stage_state("i1", "a").version == "1"  # type: ignore[union-attr]


async def test_changed_dependencies_mark_stale(store: StateStore) -> None:
    await filled(store, 1, wf=build(("a", []), ("b", []), ("c", ["a"])))
    rewired = build(("a", []), ("b", []), ("c", ["a", "b"]))
    change = await rewired.reconcile(store)
    assert change is not None and change.change.rewired == ("c",)
    assert list(rewired.stale(store)) == [("i0", "c")]


async def test_an_item_failed_meanwhile_gets_new_work(store: StateStore) -> None:
    wf = build(("a", []), ("b", []))
    await filled(store, 2, wf=wf)
    store.save_stage_state(
        "i0",
        "b",
        store.get_stage_state("i0", "b").replace(  # type: ignore[union-attr]
            status=StageStatus.FAILED
        ),
    )
    store.set_item_state("i0", ItemState.FAILED, None)
    v2 = build(("a", []), ("b", []), ("c", ["a"]))
    await v2.run(store)
    assert sorted(RAN) == [("i0", "c"), ("i1", "c")]
    assert store.get_item("i0").state == ItemState.FAILED  # type: ignore[union-attr]


async def test_reconciling_resumes_where_a_dead_process_stopped(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await filled(store, 7)
    monkeypatch.setattr(reconcile_module, "BATCH", 3)
    v2 = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    # A process starts the change and applies one batch, then dies.
    with store.transaction():
        started = reconcile_module.begin(v2.plan, v2.clock)(store)
    assert started.record is not None
    with store.transaction():
        reconcile_module.step(v2.plan, started.record["change"]["to"], v2.clock)(store)
    rec = store.get_definition()
    assert rec["change"]["counts"]["items"] == 3  # type: ignore[index]
    # The next process finishes it, from the cursor.
    seen: list[tuple[int, int]] = []
    change = await v2.reconcile(store, progress=lambda done, total: seen.append((done, total)))
    assert change is not None and change.items == 7 and change.work == 7
    assert seen[-1] == (4, 7)
    assert store.get_definition()["change"] is None  # type: ignore[index]
    await v2.run(store)
    assert sorted(RAN) == [(i, "c") for i in ids]


async def test_two_processes_reconcile_one_change_together(store: StateStore) -> None:
    if isinstance(store, MemoryStateStore):
        pytest.skip("one process")
    ids = await filled(store, 20)
    url = getattr(store, "url")  # noqa: B009
    v2 = build(("a", []), ("b", ["a"], {"version": "2"}), ("c", ["b"]))
    other = open_store(url)
    try:
        first, second = await asyncio.gather(v2.reconcile(store), v2.reconcile(other))
    finally:
        other.close()
    done = [c for c in (first, second) if c is not None]
    assert done and all(c.change == done[0].change for c in done)
    assert sorted(v2.stale(store)) == sorted((i, "b") for i in ids)
    assert store.count_items() == {ItemState.READY: 20}


async def test_another_pipelines_store_is_refused(store: StateStore) -> None:
    await filled(store, 1)
    other = Workflow.builder("invoices").stage("x", stage("x")).build()
    with pytest.raises(DefinitionError, match="the store holds pipeline 'docs'"):
        await other.run(store)


# --- re-running -------------------------------------------------------------------------------


async def test_rerun_cascades_and_keeps_counting(store: StateStore) -> None:
    wf = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    await filled(store, 2, wf=wf)
    status = await wf.rerun("i0", "b", store, reason="fixed b", by="ann")
    assert {n: s.status for n, s in status.stages.items()} == {
        "a": StageStatus.COMPLETE,
        "b": StageStatus.PENDING,
        "c": StageStatus.PENDING,
    }
    assert status.state == ItemState.READY
    resets = [e.event for e in store.read_events("i0") if isinstance(e.event, StageReset)]
    assert [(e.stage, e.by, e.reason, e.previous) for e in resets] == [
        ("b", "ann", "fixed b", "complete"),
        ("c", "ann", "fixed b", "complete"),
    ]
    await wf.run(store)
    assert RAN == [("i0", "b"), ("i0", "c")]
    assert [a.attempt for a in store.get_attempts("i0", "b")] == [1, 2]
    assert wf.status("i0", store).is_complete


async def test_rerun_without_cascade_leaves_downstream_complete_and_stale(
    store: StateStore,
) -> None:
    wf = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    await filled(store, 1, wf=wf)
    status = await wf.rerun("i0", "a", store, cascade=False)
    assert statuses(wf, store, "i0") == {"a": "pending", "b": "complete", "c": "complete"}
    assert status.stale_stages == ["b", "c"]
    await wf.run(store)
    assert RAN == [("i0", "a")]


@pytest.mark.parametrize("target", ["a", "b"])
async def test_rerun_of_a_running_stage_is_refused_and_changes_nothing(
    store: StateStore, target: str
) -> None:
    await filled(store, 1)
    st = store.get_stage_state("i0", "b")
    store.save_stage_state("i0", "b", st.replace(status=StageStatus.RUNNING))  # type: ignore[union-attr]
    before = snapshot(store, ["i0"], ["a", "b"])
    with pytest.raises(RerunError, match="stage 'b' is running"):
        await V1.rerun("i0", target, store)
    assert snapshot(store, ["i0"], ["a", "b"]) == before


async def test_rerun_refusals(store: StateStore) -> None:
    await filled(store, 1)
    v2 = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    await v2.reconcile(store)
    before = snapshot(store, ["i0"], ["a", "b", "c"])
    with pytest.raises(RerunError, match="stage 'c' is pending, so there is nothing to re-run"):
        await v2.rerun("i0", "c", store)
    with pytest.raises(UnknownStageError, match="has no stage 'bb'"):
        await v2.rerun("i0", "bb", store)
    with pytest.raises(UnknownItemError, match="unknown item 'nope'"):
        await v2.rerun("nope", "a", store)
    assert snapshot(store, ["i0"], ["a", "b", "c"]) == before


async def test_a_thousand_items_rerun_with_cascade(store: StateStore) -> None:
    wf = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    ids = await filled(store, 1000, wf=wf)
    targets = ops.rerun_targets(wf, store, "a", ops.ALL)
    report = await ops.rerun(wf, store, targets, reason="new model", by="ann")
    assert sorted(report.reset) == sorted((i, "a") for i in ids) and report.skipped == []
    assert store.count_items() == {ItemState.READY: 1000}
    assert wf.summary(store) == {
        "a": {"pending": 1000},
        "b": {"pending": 1000},
        "c": {"pending": 1000},
    }
    resets = [e for e in store.read_events() if isinstance(e.event, StageReset)]
    assert len(resets) == 3000
    await wf.run(store, concurrency=50)
    assert len(RAN) == 3000
    assert all(a.attempt == 2 for a in [store.get_attempts("i999", "c")[-1]])
    assert wf.summary(store) == {s: {"complete": 1000} for s in ("a", "b", "c")}


# --- decisions carried over --------------------------------------------------------------------


def reviewed(artefact: Callable[[Any], Any]) -> Workflow:
    def ask(item: Any, ctx: Any) -> StageOutput:
        return StageOutput(NeedsReview("Publish?", {"lang": "en"}), artefact=artefact(item))

    return (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage("approve", ask, needs=["a"])
        .stage("publish", stage("publish"), needs=["approve"])
        .build()
    )


async def test_an_approval_carries_over_to_the_same_question(store: StateStore) -> None:
    wf = reviewed(lambda item: {"text": "same"})
    await filled(store, 1, wf=wf)
    await wf.approve_review("i0", "approve", store, reviewer="ann", comment="lgtm")
    await wf.run(store)
    await wf.rerun("i0", "a", store, by="bob")
    await wf.run(store)
    assert wf.status("i0", store).is_complete
    assert wf.pending_reviews(store) == []
    first, again = store.get_reviews("i0", "approve")
    assert again.reviewer == "carried-over" and again.decision == "approve"
    assert again.carried_from == {
        "reviewer": "ann",
        "at": first.at.timestamp(),
        "decision": "approve",
    }
    assert again.subject == first.subject is not None
    kinds = journal(store, "i0")
    assert kinds.count("ReviewRequired") == 1 and kinds.count("ReviewResolved") == 2


async def test_a_changed_artefact_goes_back_to_a_person(store: StateStore) -> None:
    counter = iter(range(100))
    wf = reviewed(lambda item: {"text": f"v{next(counter)}"})
    await filled(store, 1, wf=wf)
    await wf.approve_review("i0", "approve", store, reviewer="ann")
    await wf.run(store)
    await wf.rerun("i0", "a", store)
    await wf.run(store)
    assert [r.item_id for r in wf.pending_reviews(store)] == ["i0"]


async def test_a_rejection_is_not_carried_over(store: StateStore) -> None:
    wf = reviewed(lambda item: {"text": "same"})
    await filled(store, 1, wf=wf)
    await wf.reject_review("i0", "approve", "no", store, reviewer="ann")
    await wf.rerun("i0", "approve", store)
    await wf.run(store)
    assert [r.item_id for r in wf.pending_reviews(store)] == ["i0"]


async def test_an_approval_with_edits_carries_its_edits(store: StateStore) -> None:
    from treadle_core import ApproveWithEdits

    wf = reviewed(lambda item: {"text": "same"})
    await filled(store, 1, wf=wf)
    await wf.resolve_review("i0", "approve", ApproveWithEdits({"text": "edited"}), store, "ann")
    await wf.run(store)
    await wf.rerun("i0", "approve", store)
    await wf.run(store)
    st = store.get_stage_state("i0", "approve")
    assert st.status == StageStatus.COMPLETE and st.artefact == {"text": "edited"}  # type: ignore[union-attr]


async def test_a_choice_carries_over_with_its_branches(store: StateStore) -> None:
    from treadle_core import Approve

    def ask(item: Any, ctx: Any) -> StageOutput:
        return StageOutput(NeedsReview("Which way?", choices=("print", "web")), artefact={"x": 1})

    wf = (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage("pick", ask, needs=["a"])
        .stage("print", stage("print"), needs=["pick"])
        .stage("web", stage("web"), needs=["pick"])
        .branch("pick", {"print": ["print"], "web": ["web"]})
        .build()
    )
    await filled(store, 1, wf=wf)
    await wf.resolve_review("i0", "pick", Approve(choice="web"), store, reviewer="ann")
    await wf.run(store)
    await wf.rerun("i0", "a", store)
    RAN.clear()
    await wf.run(store)
    status = wf.status("i0", store)
    assert status.is_complete and sorted(RAN) == [("i0", "a"), ("i0", "web")]
    assert status.stages["print"].status == StageStatus.SKIPPED
    again = store.get_reviews("i0", "pick")[-1]
    assert (again.reviewer, again.choice) == ("carried-over", "web")


async def test_only_a_settled_review_carries_over(store: StateStore) -> None:
    wf = (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage(
            "ok",
            lambda item, ctx: StageOutput(NeedsReview("fine?"), artefact={"x": 1}),
            needs=["a"],
        )
        .approvers("ok", required=2)
        .build()
    )
    await filled(store, 1, wf=wf)
    await wf.approve_review("i0", "ok", store, reviewer="ann")  # one vote of two
    await wf.rerun("i0", "a", store)
    await wf.run(store)
    assert [r.item_id for r in wf.pending_reviews(store)] == ["i0"]  # asked again
    await wf.approve_review("i0", "ok", store, reviewer="ann")
    await wf.approve_review("i0", "ok", store, reviewer="bob")  # settled
    await wf.rerun("i0", "a", store)
    await wf.run(store)
    assert wf.pending_reviews(store) == [] and wf.status("i0", store).is_complete
    carried = store.get_reviews("i0", "ok")[-1]
    assert carried.reviewer == "carried-over" and carried.carried_from["reviewer"] == "bob"


# --- cancelling ----------------------------------------------------------------------------------


async def test_cancel_an_item_that_waits(store: StateStore) -> None:
    wf = reviewed(lambda item: {"text": "x"})
    await filled(store, 2, wf=wf)
    status = await wf.cancel("i0", store, reason="withdrawn", by="ann")
    assert {n: s.status for n, s in status.stages.items()} == {
        "a": StageStatus.COMPLETE,
        "approve": StageStatus.CANCELLED,
        "publish": StageStatus.CANCELLED,
    }
    assert status.state == ItemState.CANCELLED
    assert status.stages["approve"].error == "cancelled by ann: withdrawn"
    assert [r.item_id for r in wf.pending_reviews(store)] == ["i1"]
    (event,) = [e.event for e in store.read_events("i0") if isinstance(e.event, ItemCancelled)]
    assert (event.by, event.reason, event.stages) == ("ann", "withdrawn", ["approve", "publish"])
    # Never claimed again, also after the pipeline changes.
    v2 = (
        Workflow.builder("docs")
        .stage("a", stage("a"))
        .stage("approve", lambda item, ctx: NeedsReview("Publish?"), needs=["a"])
        .stage("publish", stage("publish"), needs=["approve"])
        .stage("archive", stage("archive"), needs=["a"])
        .build()
    )
    await v2.run(store)
    assert ("i0", "archive") not in RAN and ("i1", "archive") in RAN
    assert v2.status("i0", store).stages["archive"].status == StageStatus.CANCELLED
    # rerun revives it.
    await v2.rerun("i0", "approve", store)
    assert store.get_item("i0").state == ItemState.READY  # type: ignore[union-attr]


async def test_cancel_with_nothing_left_is_refused_and_changes_nothing(store: StateStore) -> None:
    await filled(store, 1)
    before = snapshot(store, ["i0"], ["a", "b"])
    with pytest.raises(CancelError, match="item 'i0' has nothing to cancel"):
        await V1.cancel("i0", store)
    with pytest.raises(UnknownItemError):
        await V1.cancel("nope", store)
    with pytest.raises(UnknownItemError, match="unknown items 'x', 'y'; nothing cancelled"):
        await ops.cancel(V1, store, ["i0", "x", "y"])
    assert snapshot(store, ["i0"], ["a", "b"]) == before


async def test_cancel_stops_async_and_sync_stages_in_flight(store: StateStore) -> None:
    started = {"async": asyncio.Event(), "sync": threading.Event()}
    release_sync, sync_returned = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    async def slow_async(item: Any, ctx: Any) -> StageOutput:
        if item.id != "i0":
            return StageOutput(Complete())
        started["async"].set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["async"] = "cancelled"
            raise
        return StageOutput(Complete())

    def slow_sync(item: Any, ctx: Any) -> StageOutput:
        if item.id != "i0":
            return StageOutput(Complete())
        started["sync"].set()
        assert release_sync.wait(30)
        seen["sync"] = "returned"
        sync_returned.set()
        return StageOutput(Complete(), artefact={"late": True})

    wf = (
        Workflow.builder("docs")
        .stage("fast", stage("fast"))
        .stage("aio", slow_async, needs=["fast"])
        .stage("thread", slow_sync, needs=["fast"])
        .stage("after", stage("after"), needs=["aio", "thread"])
        .build()
    )
    store.save_work_item_data("i0", {})
    store.save_work_item_data("i1", {})
    running = asyncio.create_task(wf.run(store, [Item("i0", {})], concurrency=4))
    await started["async"].wait()
    assert await asyncio.to_thread(started["sync"].wait, 30)
    status = await wf.cancel("i0", store, reason="stop", by="ann")
    assert status.state == ItemState.CANCELLED
    release_sync.set()
    report = await asyncio.wait_for(running, 30)
    assert await asyncio.to_thread(sync_returned.wait, 30)  # its thread ran to the end
    assert seen == {"async": "cancelled", "sync": "returned"}
    assert report.lost_leases == []
    final = wf.status("i0", store)
    assert {n: s.status for n, s in final.stages.items()} == {
        "fast": StageStatus.COMPLETE,
        "aio": StageStatus.CANCELLED,
        "thread": StageStatus.CANCELLED,
        "after": StageStatus.CANCELLED,
    }
    assert final.stages["thread"].artefact is None  # the sync result was dropped
    for name in ("aio", "thread"):
        (record,) = store.get_attempts("i0", name)
        assert (record.outcome, record.error) == ("cancelled", "cancelled by ann: stop")
    kinds = journal(store, "i0")
    assert (
        kinds[-1] == "ItemCancelled"
        and "StageCompleted" not in kinds[kinds.index("ItemCancelled") :]
    )
    # The other item is untouched, and runs.
    await wf.run(store, [Item("i1", {})])
    assert store.get_item("i1").state == ItemState.COMPLETE  # type: ignore[union-attr]


async def test_advance_returns_quietly_when_its_item_is_cancelled(store: StateStore) -> None:
    gate = asyncio.Event()

    async def wait(item: Any, ctx: Any) -> None:
        gate.set()
        await asyncio.sleep(3600)

    wf = Workflow.builder("docs").stage("w", wait).build()
    task = asyncio.create_task(wf.advance(Item("i0", {}), store))
    await gate.wait()
    await wf.cancel("i0", store)
    status = await asyncio.wait_for(task, 30)
    assert status.state == ItemState.CANCELLED


# --- new data, and the store's own workflow ---------------------------------------------------


async def test_add_update_replaces_data_journals_and_marks_stale(store: StateStore) -> None:
    await filled(store, 2)
    report = ops.add_items(
        store,
        [Item("i0", {"n": 100}), Item("i1", {"n": 1}), Item("new", {})],
        update=True,
        by="ann",
    )
    assert (report.added, report.updated, report.unchanged) == (["new"], ["i0"], ["i1"])
    assert store.get_work_item_data("i0") == {"n": 100}
    assert V1.status("i0", store).stale_stages == ["a", "b"]
    (event,) = [e.event for e in store.read_events("i0") if e.event.kind == "ItemUpdated"]
    assert (event.by, event.stale) == ("ann", ["a", "b"])
    skipped = ops.add_items(store, [Item("i0", {"n": 5})])
    assert skipped.skipped == ["i0"] and store.get_work_item_data("i0") == {"n": 100}


async def test_the_store_alone_gives_a_workflow_that_operates_but_never_runs(
    store: StateStore,
) -> None:
    await filled(store, 2)
    wf = Workflow.from_store(store)
    assert wf.stages == ["a", "b"] and not wf.runnable
    assert wf.status("i0", store).is_complete
    await wf.rerun("i0", "b", store, by="ann")
    assert statuses(wf, store, "i0") == {"a": "complete", "b": "pending"}
    with pytest.raises(TreadleError, match="recorded definition, which has no stage code"):
        await wf.run(store)
    # It follows the store when the pipeline changes.
    v2 = build(("a", []), ("b", ["a"]), ("c", ["b"]))
    await v2.reconcile(store)
    await wf.cancel("i1", store)
    assert "c" in wf.stages and statuses(wf, store, "i1")["c"] == "cancelled"


def test_a_store_with_no_recorded_pipeline_says_so() -> None:
    with pytest.raises(TreadleError, match="has no recorded pipeline yet"):
        Workflow.from_store(MemoryStateStore())


async def test_a_manual_clock_drives_reconcile_times() -> None:
    clock = ManualClock()
    store = MemoryStateStore()
    wf = Workflow.builder("docs").stage("a", stage("a")).clock(clock).build()
    store.save_work_item_data("i0", {})
    await wf.run(store)
    v2 = Workflow.builder("docs").stage("a", stage("a"), version="2").clock(clock).build()
    change = await v2.reconcile(store)
    assert change is not None and change.at == clock.now()
