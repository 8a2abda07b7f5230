"""The quality loop: gates, feedback, retry budgets, timeouts, escalation (SPEC §3.4)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from _util import journal

from treadle_core import (
    Accepted,
    Complete,
    CriterionResult,
    ExhaustedAction,
    Item,
    ItemState,
    QualityFeedback,
    QualityGate,
    Rejected,
    Retry,
    RetryBudget,
    ReviewPolicy,
    StageOutput,
    StageStatus,
    Uncertain,
    Workflow,
    all_of,
    any_of,
)


class MinLength(QualityGate):
    def __init__(self, n: int):
        self.n = n
        self.contexts = []

    async def evaluate(self, item, stage, output, ctx):
        self.contexts.append(ctx)
        text = output.artefact or ""
        if len(text) >= self.n:
            return Accepted()
        return Rejected(
            QualityFeedback(
                summary=f"too short: {len(text)} < {self.n}",
                failed_criteria=[CriterionResult("length", self.n, len(text), False)],
                guidance={"min": self.n},
            )
        )


class Always(QualityGate):
    def __init__(self, verdict):
        self.verdict = verdict

    async def evaluate(self, item, stage, output, ctx):
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


def writer(log):
    """A stage that writes longer text when told it was too short."""

    async def write(item, ctx):
        log.append(ctx.feedback)
        size = 3 if ctx.feedback is None else 3 + 5 * (ctx.attempt - 1)
        return StageOutput(Complete(), artefact="x" * size)

    return write


def build(stage_fn, *, gate=None, budget=None, policy=None, timeout=None):
    b = Workflow.builder().stage("s", stage_fn)
    if gate is not None:
        b.quality_gate("s", gate)
    if budget is not None:
        b.retry_budget("s", budget)
    if policy is not None:
        b.review_policy("s", policy)
    return b.build()


async def test_rejected_output_is_retried_with_feedback(make_store):
    seen = []
    gate = MinLength(8)
    wf = build(writer(seen), gate=gate, budget=RetryBudget(max_attempts=3))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert seen[0] is None
    assert seen[1].summary == "too short: 3 < 8"
    assert seen[1].failed_criteria == [CriterionResult("length", 8, 3, False)]
    assert seen[1].guidance == {"min": 8}
    attempts = store.get_attempts("x", "s")
    assert [(a.attempt, a.verdict) for a in attempts] == [(1, "rejected"), (2, "accepted")]
    assert attempts[0].feedback.summary == "too short: 3 < 8"
    assert attempts[0].artefact == "xxx"
    kinds = journal(store)
    assert (
        "QualityCheckFailed" in kinds and "RetryAttempt" in kinds and "QualityCheckPassed" in kinds
    )


async def test_quality_context_has_attempt_budget_and_previous_attempts(make_store):
    gate = MinLength(100)
    wf = build(writer([]), gate=gate, budget=RetryBudget(max_attempts=2))
    await wf.advance(Item("x"), make_store())
    first, second = gate.contexts
    assert (first.attempt, first.max_attempts, len(first.previous_attempts)) == (1, 2, 0)
    assert (second.attempt, second.max_attempts) == (2, 2)
    assert [a.attempt for a in second.previous_attempts] == [1]
    assert first.item_id == "x" and first.stage == "s"


async def test_exhausted_budget_fails_by_default(make_store):
    wf = build(writer([]), gate=MinLength(100), budget=RetryBudget(max_attempts=2))
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.stages["s"].status == StageStatus.FAILED
    assert "too short" in status.stages["s"].error
    assert len(store.get_attempts("x", "s")) == 2


async def test_exhausted_budget_escalates_to_review_when_asked(make_store):
    wf = build(
        writer([]),
        gate=MinLength(100),
        budget=RetryBudget(max_attempts=2, on_exhausted=ExhaustedAction.ESCALATE),
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["s"]
    kinds = journal(store)
    assert "Escalated" in kinds and kinds.index("Escalated") < kinds.index("ReviewRequired")
    pending = wf.pending_reviews(store)
    assert pending[0].prompt.startswith("retry budget exhausted after 2 attempts")
    # the reviewer approves the latest attempt's artefact
    await wf.approve_review("x", "s", store, reviewer="ann")
    assert store.get_stage_state("x", "s").artefact == "x" * 8


@pytest.mark.parametrize(
    "policy", [ReviewPolicy.ON_ESCALATION, ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN]
)
async def test_escalation_policy_escalates_when_budget_runs_out(policy, make_store):
    wf = build(writer([]), gate=MinLength(100), budget=RetryBudget(max_attempts=1), policy=policy)
    status = await wf.advance(Item("x"), make_store())
    assert status.review_stages == ["s"]


@pytest.mark.parametrize(
    "policy", [ReviewPolicy.ON_UNCERTAIN, ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN]
)
async def test_uncertain_verdict_goes_to_a_person_under_on_uncertain(policy, make_store):
    wf = build(
        writer([]),
        gate=Always(Uncertain("cannot tell")),
        budget=RetryBudget(max_attempts=3),
        policy=policy,
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["s"]
    assert len(store.get_attempts("x", "s")) == 1
    assert "cannot tell" in wf.pending_reviews(store)[0].prompt


async def test_uncertain_verdict_without_policy_is_treated_as_rejected_with_reason(make_store):
    seen = []
    wf = build(
        writer(seen), gate=Always(Uncertain("cannot tell")), budget=RetryBudget(max_attempts=2)
    )
    status = await wf.advance(Item("x"), make_store())
    assert status.stages["s"].status == StageStatus.FAILED
    assert seen[1].summary == "cannot tell"


async def test_gate_that_raises_becomes_uncertain_with_the_error(make_store):
    wf = build(
        writer([]), gate=Always(RuntimeError("gate broke")), policy=ReviewPolicy.ON_UNCERTAIN
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["s"]
    assert "quality gate raised RuntimeError: gate broke" in wf.pending_reviews(store)[0].prompt
    (record,) = store.get_attempts("x", "s")
    assert record.verdict == "uncertain"
    # The reason is kept in the attempt history a reviewer reads, not only in the prompt.
    assert record.feedback.summary == "quality gate raised RuntimeError: gate broke"


async def test_accepted_output_under_always_policy_waits_for_review(make_store):
    wf = build(writer([]), gate=MinLength(1), policy=ReviewPolicy.ALWAYS)
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.review_stages == ["s"]
    assert store.get_item("x").state == ItemState.AWAITING_REVIEW


async def test_all_of_merges_feedback_of_every_rejection():
    a = Always(Rejected(QualityFeedback("too short", [CriterionResult("len", 5, 1)])))
    b = Always(Rejected(QualityFeedback("no heading", [CriterionResult("heading", True, False)])))
    verdict = await all_of(a, b, Always(Accepted())).evaluate(Item("x"), "s", StageOutput(), None)
    assert isinstance(verdict, Rejected)
    assert verdict.feedback.summary == "too short; no heading"
    assert [c.name for c in verdict.feedback.failed_criteria] == ["len", "heading"]
    assert isinstance(
        await all_of(Always(Accepted()), Always(Accepted())).evaluate(
            Item("x"), "s", StageOutput(), None
        ),
        Accepted,
    )


async def test_any_of_accepts_when_one_gate_accepts_else_merges():
    rej = Always(Rejected(QualityFeedback("a")))
    assert isinstance(
        await any_of(rej, Always(Accepted())).evaluate(Item("x"), "s", StageOutput(), None),
        Accepted,
    )
    verdict = await any_of(rej, Always(Rejected(QualityFeedback("b")))).evaluate(
        Item("x"), "s", StageOutput(), None
    )
    assert verdict.feedback.summary == "a; b"


async def test_retry_delay_is_persisted_and_advance_does_not_sleep(make_store):
    async def flaky(item, ctx):
        return Retry("later") if ctx.attempt == 1 else None

    wf = build(flaky, budget=RetryBudget(max_attempts=2, delay=30))
    store = make_store()
    status = await asyncio.wait_for(wf.advance(Item("x"), store), 2)
    st = status.stages["s"]
    assert st.status == StageStatus.PENDING
    assert st.next_attempt_at is not None
    delta = (st.next_attempt_at - st.completed_at).total_seconds()
    assert 29 <= delta <= 31
    rec = store.get_item("x")
    assert rec.state == ItemState.SCHEDULED and rec.due_at == st.next_attempt_at
    assert "RetryScheduled" in journal(store)


async def test_run_until_idle_waits_for_a_scheduled_retry(make_store):
    async def flaky(item, ctx):
        return Retry("later") if ctx.attempt == 1 else None

    wf = build(flaky, budget=RetryBudget(max_attempts=2, delay=0.1))
    store = make_store()
    await wf.run(store, [Item("x")], until_idle=False)
    assert store.get_stage_state("x", "s").status == StageStatus.PENDING
    await asyncio.wait_for(wf.run(store, until_idle=True), 5)
    assert store.get_stage_state("x", "s").status == StageStatus.COMPLETE
    assert store.get_stage_state("x", "s").attempt == 2


def test_backoff_delays_grow_and_are_capped():
    budget = RetryBudget(max_attempts=5, delay=1, backoff=2, max_delay=5)
    assert [budget.delay_for(k) for k in (1, 2, 3, 4)] == [1, 2, 4, 5]
    jittered = RetryBudget(delay=10, jitter=1)
    assert all(9 <= jittered.delay_for(1) <= 11 for _ in range(50))


def test_budget_rejects_nonsense():
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryBudget(max_attempts=0)
    with pytest.raises(ValueError, match="attempt_timeout must be positive"):
        RetryBudget(attempt_timeout=0)


async def test_attempt_timeout_cancels_the_attempt_and_records_why(make_store):
    async def slow(item, ctx):
        if ctx.attempt == 1:
            await asyncio.sleep(10)
        return StageOutput(Complete(), artefact=ctx.feedback.summary)

    wf = build(slow, budget=RetryBudget(max_attempts=2, attempt_timeout=0.05))
    store = make_store()
    status = await asyncio.wait_for(wf.advance(Item("x"), store), 5)
    assert status.is_complete
    first = store.get_attempts("x", "s")[0]
    assert first.error == "attempt timed out after 0.05 s"
    assert store.get_stage_state("x", "s").artefact == "attempt timed out after 0.05 s"


async def test_attempt_timeout_covers_the_gate_too(make_store):
    class SlowGate(QualityGate):
        async def evaluate(self, item, stage, output, ctx):
            await asyncio.sleep(10)
            return Accepted()

    wf = build(
        writer([]), gate=SlowGate(), budget=RetryBudget(max_attempts=1, attempt_timeout=0.05)
    )
    status = await asyncio.wait_for(wf.advance(Item("x"), make_store()), 5)
    assert status.stages["s"].error == "attempt timed out after 0.05 s"


async def test_retry_stage_renews_the_budget_and_attempts_keep_counting(make_store):
    async def always_retry(item, ctx):
        return Retry(f"no {ctx.attempt}")

    wf = build(always_retry, budget=RetryBudget(max_attempts=2))
    store = make_store()
    await wf.advance(Item("x"), store)
    assert store.get_stage_state("x", "s").attempt == 2
    await wf.retry_stage("x", "s", store)
    status = await wf.advance(Item("x"), store)
    assert status.stages["s"].attempt == 4
    assert [a.attempt for a in store.get_attempts("x", "s")] == [1, 2, 3, 4]
    assert status.stages["s"].status == StageStatus.FAILED


async def test_next_attempt_waits_until_due_even_across_calls(make_store):
    calls = []

    async def flaky(item, ctx):
        calls.append(ctx.attempt)
        return Retry("later") if ctx.attempt == 1 else None

    wf = build(flaky, budget=RetryBudget(max_attempts=2, delay=60))
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.advance(Item("x"), store)
    assert calls == [1]
    st = store.get_stage_state("x", "s")
    store.save_stage_state(
        "x", "s", st.replace(next_attempt_at=st.next_attempt_at - timedelta(seconds=61))
    )
    await wf.advance(Item("x"), store)
    assert calls == [1, 2]


async def test_a_stage_asking_for_its_own_retry_delay_gets_it(make_store):
    """``Retry(error, delay=)`` replaces the budget's back-off for that retry."""
    from treadle_core import ManualClock, Retry

    clock = ManualClock()
    calls = []

    async def quota(item, ctx):
        calls.append(ctx.attempt)
        return Retry("quota spent", delay=900) if ctx.attempt == 1 else None

    wf = (
        Workflow.builder()
        .stage("s", quota)
        .retry_budget("s", RetryBudget(max_attempts=2, delay=5))
        .clock(clock)
        .build()
    )
    store = make_store()
    st = (await wf.advance(Item("x"), store)).stages["s"]
    assert st.next_attempt_at == clock.now() + timedelta(seconds=900)
    clock.advance(899)
    await wf.advance(Item("x"), store)
    assert calls == [1]
    clock.advance(1)
    assert (await wf.advance(Item("x"), store)).is_complete and calls == [1, 2]


@pytest.mark.parametrize("delay", [-1, float("inf"), float("nan"), "5"])
def test_a_retry_delay_must_be_seconds(delay):
    from treadle_core import Retry

    with pytest.raises(ValueError, match="Retry delay must be a number of seconds"):
        Retry("x", delay=delay)
