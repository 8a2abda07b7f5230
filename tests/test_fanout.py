"""Fan-out: concurrent, individually tracked subtasks (SPEC §3.3)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from _util import journal

from treadle_core import (
    Complete,
    ExhaustedAction,
    Failed,
    FanOut,
    Item,
    NeedsReview,
    Retry,
    RetryBudget,
    StageOutput,
    StageStatus,
    SubTask,
    Workflow,
)

SOURCES = ["musicbrainz", "discogs", "lastfm"]


def enrich_pipeline(fn, budget=None):
    seen = []

    async def export(item, ctx):
        seen.append(ctx.upstream["enrich"])

    b = Workflow.builder().stage("enrich", fn).stage("export", export, needs=["enrich"])
    if budget:
        b.retry_budget("enrich", budget)
    return b.build(), seen


async def test_subtasks_run_concurrently_and_their_artefacts_are_collected(make_store):
    started = {s: asyncio.Event() for s in SOURCES}

    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask(s) for s in SOURCES])
        started[ctx.subtask].set()
        # every subtask waits for all the others: only possible when they run together
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 2)
        return StageOutput(Complete(), artefact={"source": ctx.subtask})

    wf, seen = enrich_pipeline(enrich)
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    st = status.stages["enrich"]
    assert [(t.id, t.status, t.attempt) for t in st.subtasks] == [
        (s, StageStatus.COMPLETE, 1) for s in SOURCES
    ]
    assert st.artefact == {s: {"source": s} for s in SOURCES}
    assert seen == [st.artefact]
    kinds = journal(store)
    assert kinds.count("SubTaskStarted") == 3 and kinds.count("SubTaskCompleted") == 3
    assert "FanOutStarted" in kinds


async def test_failed_subtasks_fail_the_stage_and_retry_reruns_only_them(make_store):
    calls = Counter()
    broken = {"discogs"}

    async def enrich(item, ctx):
        if ctx.subtask is None:
            calls["fanout"] += 1
            return FanOut([SubTask(s) for s in SOURCES])
        calls[ctx.subtask] += 1
        if ctx.subtask in broken:
            return Failed("503")
        return StageOutput(Complete(), artefact=ctx.subtask)

    wf, seen = enrich_pipeline(enrich)
    store = make_store()
    status = await wf.advance(Item("x"), store)
    st = status.stages["enrich"]
    assert st.status == StageStatus.FAILED
    assert st.error == "subtasks failed: discogs"
    assert st.subtask("discogs").error == "503"
    assert st.subtask("musicbrainz").status == StageStatus.COMPLETE

    broken.clear()
    await wf.retry_stage("x", "enrich", store)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert calls == Counter({"fanout": 1, "musicbrainz": 1, "discogs": 2, "lastfm": 1})
    assert status.stages["enrich"].subtask("discogs").attempt == 2
    assert seen[0] == {s: s for s in SOURCES}


async def test_subtask_retries_within_the_budget_on_its_own(make_store):
    calls = Counter()

    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask(s) for s in SOURCES])
        calls[ctx.subtask] += 1
        if ctx.subtask == "lastfm" and ctx.attempt < 3:
            return Retry("flaky")
        return StageOutput(Complete(), artefact=ctx.attempt)

    wf, _ = enrich_pipeline(enrich, RetryBudget(max_attempts=3))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert calls == Counter({"musicbrainz": 1, "discogs": 1, "lastfm": 3})
    lastfm = [a for a in store.get_attempts("x", "enrich") if a.subtask == "lastfm"]
    assert [a.attempt for a in lastfm] == [1, 2, 3]
    assert lastfm[1].feedback.summary == "flaky"


async def test_subtask_returning_fanout_or_needs_review_is_an_error_on_that_subtask(make_store):
    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask("a"), SubTask("b"), SubTask("c")])
        if ctx.subtask == "a":
            return FanOut([SubTask("nested")])
        if ctx.subtask == "b":
            return NeedsReview()
        return None

    wf, _ = enrich_pipeline(enrich)
    status = await wf.advance(Item("x"), make_store())
    st = status.stages["enrich"]
    assert st.status == StageStatus.FAILED
    assert "returned FanOut, which a subtask cannot do" in st.subtask("a").error
    assert "returned NeedsReview" in st.subtask("b").error
    assert st.subtask("c").status == StageStatus.COMPLETE


async def test_exhausted_subtasks_escalate_the_stage_when_asked(make_store):
    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask("a"), SubTask("b")])
        if ctx.subtask == "b":
            raise RuntimeError("down")
        return StageOutput(Complete(), artefact="A")

    wf, seen = enrich_pipeline(
        enrich, RetryBudget(max_attempts=2, on_exhausted=ExhaustedAction.ESCALATE)
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["enrich"]
    await wf.approve_review("x", "enrich", store)
    await wf.advance(Item("x"), store)
    assert seen == [{"a": "A"}]


async def test_delayed_subtask_retry_is_scheduled_and_resumed_by_run(make_store):
    calls = Counter()

    async def enrich(item, ctx):
        if ctx.subtask is None:
            calls["fanout"] += 1
            return FanOut([SubTask("a"), SubTask("b")])
        calls[ctx.subtask] += 1
        if ctx.subtask == "b" and ctx.attempt == 1:
            return Retry("later")
        return None

    wf, _ = enrich_pipeline(enrich, RetryBudget(max_attempts=2, delay=0.1))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["enrich"].status == StageStatus.PENDING
    assert status.stages["enrich"].next_attempt_at is not None
    await asyncio.wait_for(wf.run(store), 5)
    assert wf.status("x", store).is_complete
    assert calls == Counter({"fanout": 1, "a": 1, "b": 2})


async def test_a_gate_rejecting_a_subtask_journals_verdict_and_retry_like_a_stage(make_store):
    """The same trail a stage leaves: QualityCheckFailed, StageRetried, RetryScheduled,
    RetryAttempt with the gate's feedback, then QualityCheckPassed, each naming the
    subtask."""
    from treadle_core import Accepted, ManualClock, QualityFeedback, QualityGate, Rejected

    class NeedsTwoTries(QualityGate):
        async def evaluate(self, item, stage, output, ctx):
            if ctx.attempt == 1:
                return Rejected(QualityFeedback("too thin"))
            return Accepted()

    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask("a")])
        return StageOutput(Complete(), artefact={"feedback": ctx.feedback and ctx.feedback.summary})

    clock = ManualClock()
    wf = (
        Workflow.builder()
        .stage("enrich", enrich)
        .quality_gate("enrich", NeedsTwoTries())
        .retry_budget("enrich", RetryBudget(max_attempts=2, delay=60))
        .clock(clock)
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["enrich"].subtask("a").status == StageStatus.PENDING
    clock.advance(60)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert status.stages["enrich"].artefact == {"a": {"feedback": "too thin"}}
    kinds = ("QualityCheckFailed", "StageRetried", "RetryScheduled", "RetryAttempt")
    trail = [
        (e.event.kind, getattr(e.event, "subtask", None))
        for e in store.read_events("x")
        if e.event.kind in (*kinds, "QualityCheckPassed")
    ]
    assert trail == [
        ("QualityCheckFailed", "a"),
        ("StageRetried", "a"),
        ("RetryScheduled", "a"),
        ("RetryAttempt", "a"),
        ("QualityCheckPassed", "a"),
    ]
    events = {e.event.kind: e.event for e in store.read_events("x")}
    assert events["QualityCheckFailed"].feedback_summary == "too thin"
    assert events["RetryAttempt"].feedback_summary == "too thin"
    assert events["RetryScheduled"].retry_at == events["StageRetried"].at + timedelta(seconds=60)
    verdicts = [(a.subtask, a.verdict) for a in store.get_attempts("x", "enrich") if a.subtask]
    assert verdicts == [("a", "rejected"), ("a", "accepted")]
