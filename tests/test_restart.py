"""Resuming from the store alone: close it, open a new one on the same file, continue."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from treadle_core import (
    Accepted,
    Complete,
    ExhaustedAction,
    FanOut,
    Item,
    ItemState,
    NeedsReview,
    QualityFeedback,
    QualityGate,
    Rejected,
    Retry,
    RetryBudget,
    StageOutput,
    StageStatus,
    SubTask,
    Workflow,
    open_store,
)


def pipeline(log):
    """A fresh Workflow object each call, as a restarted process would build."""

    async def fetch(item, ctx):
        log.append(("fetch", item.id))
        return StageOutput(Complete(), artefact={"text": f"body of {item.data['path']}"})

    async def approve(item, ctx):
        log.append(("approve", item.id))
        return NeedsReview("ok?")

    async def export(item, ctx):
        log.append(("export", dict(ctx.upstream)))

    return (
        Workflow.builder("restart")
        .stage("fetch", fetch)
        .stage("approve", approve, needs=["fetch"])
        .stage("export", export, needs=["approve"])
        .build()
    )


async def test_pipeline_resumes_after_restart_with_artefacts_upstream(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    log = []
    store = open_store(url)
    await pipeline(log).run(store, [Item("doc", {"path": "a.txt"})])
    assert store.get_item("doc").state == ItemState.AWAITING_REVIEW
    store.close()

    store = open_store(url)
    wf = pipeline(log)
    assert [r.item_id for r in wf.pending_reviews(store)] == ["doc"]
    await wf.approve_review("doc", "approve", store, reviewer="ann")
    store.close()

    store = open_store(url)
    report = await pipeline(log).run(store)  # items rebuilt from stored data
    assert report.items == 1
    assert log == [
        ("fetch", "doc"),
        ("approve", "doc"),
        ("export", {"fetch": {"text": "body of a.txt"}, "approve": None}),
    ]
    assert pipeline(log).status("doc", store).is_complete
    assert store.get_reviews("doc")[0].reviewer == "ann"
    kinds = [e.event.kind for e in store.read_events("doc")]
    assert kinds[-1] == "WorkflowCompleted" and "ReviewResolved" in kinds
    store.close()


async def test_scheduled_retry_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    calls = []

    def build():
        async def flaky(item, ctx):
            calls.append(ctx.attempt)
            return Retry("later") if ctx.attempt == 1 else None

        return (
            Workflow.builder()
            .stage("s", flaky)
            .retry_budget("s", RetryBudget(max_attempts=2, delay=3600))
            .build()
        )

    store = open_store(url)
    await build().advance(Item("x"), store)
    store.close()

    store = open_store(url)
    wf = build()
    st = store.get_stage_state("x", "s")
    assert st.status == StageStatus.PENDING and st.next_attempt_at is not None
    assert store.get_item("x").state == ItemState.SCHEDULED
    assert store.next_due_at() == st.next_attempt_at
    await wf.run(store, until_idle=False)
    assert calls == [1]  # an hour is an hour, also after a restart
    # pretend the hour passed
    store.save_stage_state(
        "x", "s", st.replace(next_attempt_at=st.next_attempt_at - timedelta(hours=2))
    )
    await wf.advance(Item("x"), store)
    assert calls == [1, 2]
    store.close()


async def test_feedback_reaches_the_next_attempt_after_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    seen = []

    class NeedsTwo(QualityGate):
        async def evaluate(self, item, stage, output, ctx):
            if ctx.attempt >= 2:
                return Accepted()
            return Rejected(QualityFeedback("add a title"))

    def build():
        async def write(item, ctx):
            seen.append(ctx.feedback.summary if ctx.feedback else None)
            return StageOutput(Complete(), artefact="text")

        return (
            Workflow.builder()
            .stage("w", write)
            .quality_gate("w", NeedsTwo())
            .retry_budget("w", RetryBudget(max_attempts=2, delay=3600))
            .build()
        )

    store = open_store(url)
    await build().advance(Item("x"), store)
    st = store.get_stage_state("x", "w")
    store.save_stage_state(
        "x", "w", st.replace(next_attempt_at=st.next_attempt_at - timedelta(hours=2))
    )
    store.close()
    store = open_store(url)
    status = await build().advance(Item("x"), store)
    assert status.is_complete
    assert seen == [None, "add a title"]
    store.close()


async def test_fan_out_progress_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"
    calls = []
    broken = {"b"}

    def build():
        async def enrich(item, ctx):
            if ctx.subtask is None:
                calls.append("fanout")
                return FanOut([SubTask("a"), SubTask("b")])
            calls.append(ctx.subtask)
            if ctx.subtask in broken:
                raise RuntimeError("down")
            return StageOutput(Complete(), artefact=ctx.subtask.upper())

        return Workflow.builder().stage("enrich", enrich).build()

    store = open_store(url)
    await build().advance(Item("x"), store)
    store.close()
    broken.clear()
    store = open_store(url)
    wf = build()
    assert store.get_stage_state("x", "enrich").status == StageStatus.FAILED
    await wf.retry_stage("x", "enrich", store)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert calls == ["fanout", "a", "b", "b"]
    assert status.stages["enrich"].artefact == {"a": "A", "b": "B"}
    store.close()


async def test_escalated_review_and_attempt_history_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/state.db"

    def build():
        async def bad(item, ctx):
            return Retry(f"attempt {ctx.attempt} failed")

        return (
            Workflow.builder()
            .stage("s", bad)
            .retry_budget("s", RetryBudget(max_attempts=2, on_exhausted=ExhaustedAction.ESCALATE))
            .build()
        )

    store = open_store(url)
    await build().advance(Item("x"), store)
    store.close()
    store = open_store(url)
    wf = build()
    [pending] = wf.pending_reviews(store)
    assert pending.prompt.startswith("retry budget exhausted after 2 attempts")
    assert [a.error for a in store.get_attempts("x", "s")] == [
        "attempt 1 failed",
        "attempt 2 failed",
    ]
    await asyncio.wait_for(wf.approve_review("x", "s", store, reviewer="ann"), 5)
    assert wf.status("x", store).is_complete
    store.close()
