"""The pure decision (`treadle_core.engine.decide`), row by row of SPEC §3.4, for a stage
and for one subtask of a fan-out: values in, values out, no store and no event loop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from treadle_core import (
    Accepted,
    Complete,
    CriterionResult,
    ExhaustedAction,
    Failed,
    FanOut,
    NeedsReview,
    QualityFeedback,
    Rejected,
    Retry,
    RetryBudget,
    ReviewPolicy,
    Skipped,
    StageOutput,
    StageState,
    StageStatus,
    SubTask,
    Uncertain,
)
from treadle_core.engine import ReviewTimeout, StageSpec
from treadle_core.engine.attempt import AttemptResult
from treadle_core.engine.decide import begin, decide
from treadle_core.model import Approve
from treadle_core.stage import as_stage

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(seconds=3)
FEEDBACK = QualityFeedback("too short", [CriterionResult("words", ">= 100", 12, False)])


def _spec(
    attempts: int = 3,
    *,
    delay: float = 0.0,
    escalate: bool = False,
    policy: ReviewPolicy = ReviewPolicy.NEVER,
    review_timeout: float | None = None,
) -> StageSpec:
    budget = RetryBudget(
        max_attempts=attempts,
        delay=delay,
        on_exhausted=ExhaustedAction.ESCALATE if escalate else ExhaustedAction.FAIL,
    )
    timeout = None if review_timeout is None else ReviewTimeout(review_timeout, Approve())
    return StageSpec(
        "draft", as_stage(lambda item, ctx: None, "draft"), None, budget, policy, timeout
    )


def _result(
    outcome: Any = None,
    *,
    verdict: Any = None,
    error: str | None = None,
    retryable: bool = True,
    artefact: Any = None,
    summary: str | None = None,
) -> AttemptResult:
    output = None if outcome is None else StageOutput(outcome, artefact, summary)
    return AttemptResult(
        output,
        STARTED,
        artefact=artefact,
        verdict=verdict,
        error=error,
        retryable=retryable,
        metadata={"seen": True},
    )


@dataclass
class Row:
    """One row of the table: an attempt's result under a spec, and what must follow."""

    name: str
    result: AttemptResult
    spec: StageSpec = field(default_factory=_spec)
    attempt: int = 1
    status: StageStatus = StageStatus.COMPLETE
    events: list[str] = field(default_factory=list)
    label: str = "complete"
    error: str | None = None
    feedback: str | None = None
    verdict: str | None = None


RETRY_ERROR = "quality gate rejected the output: too short"
UNCERTAIN_ERROR = "quality gate is uncertain: cannot tell"

STAGE_ROWS = [
    Row("complete, no gate", _result(Complete()), events=["StageCompleted"]),
    Row(
        "complete, no gate, ALWAYS review",
        _result(Complete(), summary="please look"),
        _spec(policy=ReviewPolicy.ALWAYS),
        status=StageStatus.AWAITING_REVIEW,
        events=["ReviewRequired"],
    ),
    Row(
        "gate accepts",
        _result(Complete(), verdict=Accepted()),
        events=["QualityCheckPassed", "StageCompleted"],
        verdict="accepted",
    ),
    Row(
        "gate accepts, ALWAYS review",
        _result(Complete(), verdict=Accepted()),
        _spec(policy=ReviewPolicy.ALWAYS),
        status=StageStatus.AWAITING_REVIEW,
        events=["QualityCheckPassed", "ReviewRequired"],
        verdict="accepted",
    ),
    Row(
        "gate rejects, budget left: retry with its feedback",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        status=StageStatus.PENDING,
        events=["QualityCheckFailed", "StageRetried"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects, budget left, with a delay: retry scheduled",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        _spec(delay=30),
        status=StageStatus.PENDING,
        events=["QualityCheckFailed", "StageRetried", "RetryScheduled"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects the last attempt: fail",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        attempt=3,
        status=StageStatus.FAILED,
        events=["QualityCheckFailed", "StageFailed"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects the last attempt, ESCALATE: a person decides",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        _spec(escalate=True),
        attempt=3,
        status=StageStatus.AWAITING_REVIEW,
        events=["QualityCheckFailed", "Escalated", "ReviewRequired"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects the last attempt, ON_ESCALATION policy: a person decides",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        _spec(policy=ReviewPolicy.ON_ESCALATION),
        attempt=3,
        status=StageStatus.AWAITING_REVIEW,
        events=["QualityCheckFailed", "Escalated", "ReviewRequired"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    *[
        Row(
            f"gate uncertain, {policy.value}: a person decides, the reason kept as feedback",
            _result(Complete(), verdict=Uncertain("cannot tell")),
            _spec(policy=policy),
            status=StageStatus.AWAITING_REVIEW,
            events=["ReviewRequired"],
            feedback="cannot tell",
            verdict="uncertain",
        )
        for policy in (ReviewPolicy.ON_UNCERTAIN, ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN)
    ],
    Row(
        "gate uncertain, no such policy: retried with the reason as feedback",
        _result(Complete(), verdict=Uncertain("cannot tell")),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        error=UNCERTAIN_ERROR,
        feedback="cannot tell",
        verdict="uncertain",
    ),
    Row(
        "gate uncertain on the last attempt, no such policy: fail",
        _result(Complete(), verdict=Uncertain("cannot tell")),
        attempt=3,
        status=StageStatus.FAILED,
        events=["StageFailed"],
        error=UNCERTAIN_ERROR,
        feedback="cannot tell",
        verdict="uncertain",
    ),
    Row(
        "Retry with budget left",
        _result(Retry("busy")),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        label="retry",
        error="busy",
        feedback="busy",
    ),
    Row(
        "Retry on the last attempt: fail",
        _result(Retry("busy")),
        attempt=3,
        status=StageStatus.FAILED,
        events=["StageFailed"],
        label="retry",
        error="busy",
        feedback="busy",
    ),
    Row(
        "Retry on the last attempt, ESCALATE",
        _result(Retry("busy")),
        _spec(escalate=True),
        attempt=3,
        status=StageStatus.AWAITING_REVIEW,
        events=["Escalated", "ReviewRequired"],
        label="retry",
        error="busy",
        feedback="busy",
    ),
    Row(
        "an exception with budget left: retried, first line as feedback",
        _result(error="ValueError: bad\nTraceback ..."),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        label="error",
        error="ValueError: bad\nTraceback ...",
        feedback="ValueError: bad",
    ),
    Row(
        "an exception the budget never retries: fail",
        _result(error="KeyError: 'x'", retryable=False),
        status=StageStatus.FAILED,
        events=["StageFailed"],
        label="error",
        error="KeyError: 'x'",
        feedback="KeyError: 'x'",
    ),
    Row(
        "attempt timed out on the last attempt: fail",
        _result(error="attempt timed out after 5 s"),
        attempt=3,
        status=StageStatus.FAILED,
        events=["StageFailed"],
        label="error",
        error="attempt timed out after 5 s",
        feedback="attempt timed out after 5 s",
    ),
    Row(
        "Failed is permanent even with budget left",
        _result(Failed("no such file")),
        _spec(escalate=True),
        status=StageStatus.FAILED,
        events=["StageFailed"],
        label="failed",
        error="no such file",
    ),
    Row(
        "NeedsReview waits for a person",
        _result(NeedsReview("publish?", {"words": 3})),
        status=StageStatus.AWAITING_REVIEW,
        events=["ReviewRequired"],
        label="needs_review",
    ),
    Row(
        "Skipped satisfies dependents",
        _result(Skipped("not a PDF")),
        status=StageStatus.SKIPPED,
        events=["StageSkipped"],
        label="skipped",
    ),
    Row(
        "FanOut starts its subtasks",
        _result(FanOut([SubTask("a"), SubTask("b")])),
        status=StageStatus.RUNNING,
        events=["FanOutStarted"],
        label="fan_out",
    ),
]


def _running(attempt: int, budget_start: int = 0) -> StageState:
    return StageState(
        status=StageStatus.RUNNING,
        attempt=attempt,
        started_at=STARTED,
        budget_start=budget_start,
        updated_at=STARTED,
    )


@pytest.mark.parametrize("row", STAGE_ROWS, ids=lambda r: r.name)
def test_stage_decision(row: Row) -> None:
    d = decide(row.spec, _running(row.attempt), row.result, NOW, item_id="x")
    assert d.state.status == row.status
    assert [e.kind for e in d.events] == row.events
    assert all(e.item_id == "x" and e.stage == "draft" and e.at == NOW for e in d.events)
    assert d.state.metadata == {"seen": True}
    assert d.state.error == row.error
    rec = d.record
    assert rec is not None
    assert (rec.attempt, rec.outcome, rec.error, rec.verdict, rec.subtask) == (
        row.attempt,
        row.label,
        row.error,
        row.verdict,
        None,
    )
    assert (rec.feedback.summary if rec.feedback else None) == row.feedback
    assert (rec.started_at, rec.completed_at) == (STARTED, NOW)


def test_retry_delay_is_persisted_as_next_attempt_at_with_backoff() -> None:
    spec = StageSpec(
        "draft",
        as_stage(lambda item, ctx: None, "draft"),
        budget=RetryBudget(max_attempts=5, delay=10, backoff=3),
    )
    first = decide(spec, _running(1), _result(Retry("busy")), NOW, item_id="x")
    third = decide(spec, _running(3), _result(Retry("busy")), NOW, item_id="x")
    assert first.state.next_attempt_at == NOW + timedelta(seconds=10)
    assert third.state.next_attempt_at == NOW + timedelta(seconds=90)
    scheduled = third.events[-1]
    assert scheduled.kind == "RetryScheduled"
    assert (scheduled.attempt, scheduled.max_attempts, scheduled.retry_at) == (
        4,
        5,
        NOW + timedelta(seconds=90),
    )


def test_jitter_is_drawn_from_the_given_random_source() -> None:
    spec = StageSpec(
        "draft", as_stage(lambda i, c: None, "draft"), budget=RetryBudget(3, delay=10, jitter=5)
    )
    one = decide(spec, _running(1), _result(Retry("b")), NOW, item_id="x", rng=random.Random(7))
    two = decide(spec, _running(1), _result(Retry("b")), NOW, item_id="x", rng=random.Random(7))
    assert one.state.next_attempt_at == two.state.next_attempt_at
    assert one.state.next_attempt_at is not None
    assert abs((one.state.next_attempt_at - NOW).total_seconds() - 10) <= 5


def test_budget_counts_from_where_it_was_renewed() -> None:
    """After retry_stage at attempt 3, attempts 4..6 are the new budget of three."""
    d = decide(_spec(), _running(5, budget_start=3), _result(Retry("busy")), NOW, item_id="x")
    assert d.state.status == StageStatus.PENDING
    d = decide(_spec(), _running(6, budget_start=3), _result(Retry("busy")), NOW, item_id="x")
    assert d.state.status == StageStatus.FAILED


def test_review_carries_prompt_context_and_deadline() -> None:
    d = decide(
        _spec(review_timeout=3600),
        _running(1),
        _result(NeedsReview("publish?", {"words": 3}), artefact={"t": 1}),
        NOW,
        item_id="x",
    )
    assert (d.state.review_prompt, d.state.review_context) == ("publish?", {"words": 3})
    assert d.state.review_deadline == NOW + timedelta(hours=1)
    assert d.state.artefact == {"t": 1}
    assert d.events[0].prompt == "publish?"


def test_escalation_says_why_the_budget_ran_out() -> None:
    d = decide(_spec(escalate=True), _running(3), _result(Retry("busy\nmore")), NOW, item_id="x")
    assert d.state.review_prompt == "retry budget exhausted after 3 attempts: busy"
    assert d.events[0].reason == d.state.review_prompt


def test_an_exception_keeps_the_artefact_of_the_previous_attempt() -> None:
    running = _running(2).replace(artefact={"old": True})
    d = decide(_spec(), running, _result(error="boom"), NOW, item_id="x")
    assert d.state.artefact == {"old": True}


# --- the same loop for one subtask -----------------------------------------------------

SUB_ROWS = [
    Row("complete", _result(Complete()), events=["SubTaskCompleted"]),
    Row(
        "gate accepts",
        _result(Complete(), verdict=Accepted()),
        events=["QualityCheckPassed", "SubTaskCompleted"],
        verdict="accepted",
    ),
    Row(
        "ALWAYS review applies to the whole stage, not a subtask",
        _result(Complete()),
        _spec(policy=ReviewPolicy.ALWAYS),
        events=["SubTaskCompleted"],
    ),
    Row(
        "gate rejects, budget left: retried with its feedback",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        status=StageStatus.PENDING,
        events=["QualityCheckFailed", "StageRetried"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects, with a delay: retry scheduled",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        _spec(delay=30),
        status=StageStatus.PENDING,
        events=["QualityCheckFailed", "StageRetried", "RetryScheduled"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate rejects the last attempt: the subtask fails (the stage may escalate)",
        _result(Complete(), verdict=Rejected(FEEDBACK)),
        _spec(escalate=True),
        attempt=3,
        status=StageStatus.FAILED,
        events=["QualityCheckFailed", "SubTaskFailed"],
        error=RETRY_ERROR,
        feedback="too short",
        verdict="rejected",
    ),
    Row(
        "gate uncertain, even ON_UNCERTAIN: a subtask cannot wait, so it is retried",
        _result(Complete(), verdict=Uncertain("cannot tell")),
        _spec(policy=ReviewPolicy.ON_UNCERTAIN),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        error=UNCERTAIN_ERROR,
        feedback="cannot tell",
        verdict="uncertain",
    ),
    Row(
        "Retry with budget left",
        _result(Retry("busy")),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        label="retry",
        error="busy",
        feedback="busy",
    ),
    Row(
        "Retry on the last attempt",
        _result(Retry("busy")),
        attempt=3,
        status=StageStatus.FAILED,
        events=["SubTaskFailed"],
        label="retry",
        error="busy",
        feedback="busy",
    ),
    Row(
        "an exception with budget left",
        _result(error="OSError: reset"),
        status=StageStatus.PENDING,
        events=["StageRetried"],
        label="error",
        error="OSError: reset",
        feedback="OSError: reset",
    ),
    Row(
        "Failed is permanent",
        _result(Failed("404")),
        status=StageStatus.FAILED,
        events=["SubTaskFailed"],
        label="failed",
        error="404",
    ),
    Row(
        "NeedsReview is an error on the subtask",
        _result(NeedsReview("?")),
        status=StageStatus.FAILED,
        events=["SubTaskFailed"],
        label="needs_review",
        error="subtask 'a' returned NeedsReview, which a subtask cannot do",
    ),
    Row(
        "FanOut is an error on the subtask",
        _result(FanOut([SubTask("z")])),
        status=StageStatus.FAILED,
        events=["SubTaskFailed"],
        label="fan_out",
        error="subtask 'a' returned FanOut, which a subtask cannot do",
    ),
    Row(
        "Skipped",
        _result(Skipped("n/a")),
        status=StageStatus.SKIPPED,
        events=["SubTaskCompleted"],
        label="skipped",
    ),
]


def _fanning_out(sub_attempt: int) -> StageState:
    running_a = SubTask("a", status=StageStatus.RUNNING, attempt=sub_attempt)
    return _running(1).replace(subtasks=[running_a, SubTask("b")])


@pytest.mark.parametrize("row", SUB_ROWS, ids=lambda r: r.name)
def test_subtask_decision(row: Row) -> None:
    before = _fanning_out(row.attempt)
    d = decide(row.spec, before, row.result, NOW, item_id="x", subtask="a")
    sub = d.state.subtask("a")
    assert sub is not None
    assert sub.status == row.status
    assert sub.error == row.error
    assert sub.metadata == {"seen": True}
    # The stage itself stays RUNNING, its other subtasks untouched.
    assert d.state.status == StageStatus.RUNNING
    assert d.state.subtask("b") == SubTask("b")
    assert [e.kind for e in d.events] == row.events
    for event in d.events:
        assert getattr(event, "subtask", "a") == "a"
    rec = d.record
    assert rec is not None
    assert (rec.attempt, rec.outcome, rec.error, rec.verdict, rec.subtask) == (
        row.attempt,
        row.label,
        row.error,
        row.verdict,
        "a",
    )
    assert (rec.feedback.summary if rec.feedback else None) == row.feedback


def test_subtask_retry_waits_with_its_own_next_attempt_at() -> None:
    d = decide(_spec(delay=30), _fanning_out(1), _result(Retry("x")), NOW, item_id="x", subtask="a")
    sub = d.state.subtask("a")
    assert sub is not None and sub.next_attempt_at == NOW + timedelta(seconds=30)
    assert d.events[-1].kind == "RetryScheduled" and d.events[-1].subtask == "a"


def test_the_stage_and_a_subtask_journal_the_same_retry_events() -> None:
    """The same rejection leaves the same quality and retry trail for both."""
    spec, result = _spec(delay=5), _result(Complete(), verdict=Rejected(FEEDBACK))
    stage = decide(spec, _running(1), result, NOW, item_id="x")
    sub = decide(spec, _fanning_out(1), result, NOW, item_id="x", subtask="a")
    assert [e.kind for e in stage.events] == [e.kind for e in sub.events]
    assert [e.to_dict() | {"subtask": None} for e in stage.events] == [
        e.to_dict() | {"subtask": None} for e in sub.events
    ]


@pytest.mark.parametrize("subtask", [None, "a"])
def test_a_retry_attempt_says_which_attempt_and_why(subtask: str | None) -> None:
    if subtask:
        prev = _running(1).replace(subtasks=[SubTask("a", attempt=1), SubTask("b")])
    else:
        prev = _running(1).replace(status=StageStatus.PENDING)
    state, events = begin(_spec(), prev, NOW, item_id="x", feedback=FEEDBACK, subtask=subtask)
    assert [e.kind for e in events] == [
        "SubTaskStarted" if subtask else "StageStarted",
        "RetryAttempt",
    ]
    retry = events[1]
    assert (retry.attempt, retry.max_attempts, retry.feedback_summary, retry.subtask) == (
        2,
        3,
        "too short",
        subtask,
    )
    running = state.subtask("a") if subtask else state
    assert running is not None and running.status == StageStatus.RUNNING and running.attempt == 2


@pytest.mark.parametrize("subtask", [None, "a"])
def test_a_retry_asking_for_its_own_delay_overrides_the_budgets(subtask: str | None) -> None:
    spec, result = _spec(delay=5), _result(Retry("quota", delay=900))
    running = _fanning_out(1) if subtask else _running(1)
    d = decide(spec, running, result, NOW, item_id="x", subtask=subtask)
    unit = d.state.subtask("a") if subtask else d.state
    assert unit is not None and unit.next_attempt_at == NOW + timedelta(seconds=900)
    assert d.events[-1].kind == "RetryScheduled"
