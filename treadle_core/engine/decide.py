"""Pure decisions: values in, values out, no I/O and no awaits.

`decide` is the quality loop of SPEC §3.4 for one attempt, the same for a stage and
for one subtask of a fan-out: given the stage's spec, the state before, the attempt's
result and ``now``, it returns the new state, the events and the attempt record.
`begin` starts an attempt. A fan-out's own start and end are in `fanout`; decisions
made outside an attempt (crash recovery, a review decision, ``retry_stage``) are in
`actions`.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..events import (
    Escalated,
    Event,
    FanOutStarted,
    QualityCheckFailed,
    QualityCheckPassed,
    RetryAttempt,
    RetryScheduled,
    ReviewRequired,
    StageCompleted,
    StageFailed,
    StageRetried,
    StageSkipped,
    StageStarted,
    SubTaskCompleted,
    SubTaskFailed,
    SubTaskStarted,
)
from ..model import (
    Accepted,
    AttemptRecord,
    Complete,
    Failed,
    FanOut,
    NeedsReview,
    QualityFeedback,
    Rejected,
    Retry,
    Skipped,
    StageState,
    StageStatus,
    SubTask,
    Uncertain,
    outcome_name,
    verdict_name,
)
from ..quality import ReviewPolicy
from .attempt import AttemptResult
from .plan import StageSpec


@dataclass(frozen=True)
class Decision:
    """A stage's new state, the events that describe the change, and the attempt record."""

    state: StageState
    events: list[Event]
    records: list[AttemptRecord] = field(default_factory=list)

    @property
    def record(self) -> AttemptRecord | None:
        """The attempt record, when the decision made exactly one."""
        return self.records[0] if len(self.records) == 1 else None


class Next(enum.Enum):
    """Where one attempt leads (the rows of SPEC §3.4)."""

    COMPLETE = "complete"
    REVIEW = "review"
    RETRY = "retry"
    EXHAUSTED = "exhausted"
    FAIL = "fail"
    SKIP = "skip"
    FAN_OUT = "fan_out"


@dataclass(frozen=True)
class Judgement:
    """What the quality loop makes of one attempt, before it is applied to a state."""

    next: Next
    label: str
    error: str | None = None
    feedback: QualityFeedback | None = None
    prompt: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    #: What the person may answer (``NeedsReview`` choices and form).
    choices: tuple[str, ...] = ()
    form: dict[str, Any] | None = None
    #: True / False: a gate accepted / rejected the output (journalled); None: no verdict.
    passed: bool | None = None
    #: The delay the stage asked for (``Retry(delay=)``), instead of the budget's.
    delay: float | None = None


def max_attempts(spec: StageSpec, budget_start: int) -> int:
    """The attempt number at which the budget (renewed at ``budget_start``) runs out."""
    return budget_start + spec.budget.max_attempts


def judge(
    spec: StageSpec,
    result: AttemptResult,
    attempt: int,
    budget_start: int,
    *,
    subtask: str | None = None,
) -> Judgement:
    """The quality loop for one attempt of a stage (or, with ``subtask``, of a subtask).

    A subtask cannot wait for a person: what would send a stage to review is an error
    on the subtask (``NeedsReview``, ``FanOut``) or a retry (an uncertain gate).
    """
    out = result.output
    may_retry = attempt < max_attempts(spec, budget_start)

    def retry(
        label: str,
        error: str,
        feedback: QualityFeedback,
        passed: bool | None = None,
        retryable: bool = True,
    ) -> Judgement:
        nxt = Next.FAIL if not retryable else Next.RETRY if may_retry else Next.EXHAUSTED
        return Judgement(nxt, label, error, feedback, passed=passed)

    if out is None:
        error = result.error or "attempt failed"
        feedback = QualityFeedback(error.splitlines()[0])
        return retry("error", error, feedback, retryable=result.retryable)
    outcome = out.outcome
    label = outcome_name(outcome)
    match outcome:
        case Complete():
            return _judge_complete(spec, result, subtask, retry)
        case NeedsReview(prompt, context, choices, form) if subtask is None:
            return Judgement(
                Next.REVIEW, label, prompt=prompt, context=dict(context), choices=choices, form=form
            )
        case FanOut() if subtask is None:
            return Judgement(Next.FAN_OUT, label)
        case NeedsReview() | FanOut():
            name = type(outcome).__name__
            error = f"subtask {subtask!r} returned {name}, which a subtask cannot do"
            return Judgement(Next.FAIL, label, error)
        case Failed(error):
            return Judgement(Next.FAIL, label, error)
        case Retry(error, delay):
            return dataclasses.replace(retry(label, error, QualityFeedback(error)), delay=delay)
        case Skipped():
            return Judgement(Next.SKIP, label)
    raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover


def _judge_complete(
    spec: StageSpec,
    result: AttemptResult,
    subtask: str | None,
    retry: Callable[..., Judgement],
) -> Judgement:
    """A ``Complete`` outcome, by the gate's verdict and the review policy."""
    verdict, label = result.verdict, "complete"
    if isinstance(verdict, Rejected):
        error = f"quality gate rejected the output: {verdict.feedback.summary}"
        return retry(label, error, verdict.feedback, passed=False)
    if isinstance(verdict, Uncertain):
        if subtask is None and spec.policy.reviews_uncertain:
            # The reason is the gate's word on this attempt: kept as its feedback, so the
            # attempt history a reviewer reads says why.
            prompt = f"quality gate is uncertain: {verdict.reason}"
            return Judgement(
                Next.REVIEW, label, feedback=QualityFeedback(verdict.reason), prompt=prompt
            )
        error = f"quality gate is uncertain: {verdict.reason}"
        return retry(label, error, QualityFeedback(verdict.reason))
    passed = True if isinstance(verdict, Accepted) else None
    if subtask is None and spec.policy == ReviewPolicy.ALWAYS:
        summary = result.output.summary if result.output is not None else None
        return Judgement(Next.REVIEW, label, prompt=summary or "", passed=passed)
    return Judgement(Next.COMPLETE, label, passed=passed)


def decide(
    spec: StageSpec,
    running: StageState,
    result: AttemptResult,
    now: datetime,
    *,
    item_id: str,
    subtask: str | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Apply one attempt's result to the RUNNING stage (or its RUNNING ``subtask``)."""
    if subtask is not None:
        return _decide_subtask(spec, running, subtask, result, now, item_id, rng)
    name, attempt = spec.name, running.attempt
    j = judge(spec, result, attempt, running.budget_start)
    events = _quality_events(j, item_id, name, attempt, None, now)
    # An attempt that ended (rather than taking its process down) clears "run alone",
    # and has seen the feedback a person left for it.
    base = running.replace(
        metadata=result.metadata, completed_at=now, updated_at=now, run_alone=False, feedback=None
    )
    if result.output is not None:
        base = base.replace(artefact=result.artefact)
    new: StageState
    match j.next:
        case Next.FAN_OUT:
            assert result.output is not None and isinstance(result.output.outcome, FanOut)
            fresh = [
                SubTask(t.id, metadata=dict(t.metadata)) for t in result.output.outcome.subtasks
            ]
            new = base.replace(status=StageStatus.RUNNING, subtasks=fresh, completed_at=None)
            events.append(
                FanOutStarted(item_id=item_id, stage=name, subtasks=[t.id for t in fresh], at=now)
            )
        case Next.REVIEW:
            new = awaiting(spec, base, j.prompt, j.context, now, j.choices, j.form)
            events.append(review_required(item_id, name, j.prompt, j.context, now))
        case Next.COMPLETE:
            new = base.replace(status=StageStatus.COMPLETE, error=None)
            events.append(StageCompleted(item_id=item_id, stage=name, at=now))
        case Next.SKIP:
            assert result.output is not None and isinstance(result.output.outcome, Skipped)
            new = base.replace(status=StageStatus.SKIPPED, error=None)
            reason = result.output.outcome.reason
            events.append(StageSkipped(item_id=item_id, stage=name, reason=reason, at=now))
        case Next.RETRY:
            assert j.error is not None
            next_at = _next_attempt_at(spec, attempt - running.budget_start, now, rng, j.delay)
            new = base.replace(status=StageStatus.PENDING, error=j.error, next_attempt_at=next_at)
            events += _retry_events(
                spec, item_id, name, None, attempt, running.budget_start, j, next_at, now
            )
        case Next.EXHAUSTED if spec.escalates:
            assert j.error is not None
            used = attempt - running.budget_start
            plural = "attempt" if used == 1 else "attempts"
            reason = f"retry budget exhausted after {used} {plural}: {j.error.splitlines()[0]}"
            new = awaiting(spec, base.replace(error=j.error), reason, {}, now)
            events.append(Escalated(item_id=item_id, stage=name, reason=reason, at=now))
            events.append(review_required(item_id, name, reason, {}, now))
        case Next.EXHAUSTED | Next.FAIL:
            assert j.error is not None
            new = base.replace(status=StageStatus.FAILED, error=j.error)
            events.append(StageFailed(item_id=item_id, stage=name, error=j.error, at=now))
    return Decision(new, events, [_record(j, result, attempt, now, None)])


def _decide_subtask(
    spec: StageSpec,
    running: StageState,
    sub_id: str,
    result: AttemptResult,
    now: datetime,
    item_id: str,
    rng: random.Random | None,
) -> Decision:
    name = spec.name
    sub = running.subtask(sub_id)
    if sub is None:
        raise ValueError(f"stage {name!r} has no subtask {sub_id!r}")
    attempt = sub.attempt
    j = judge(spec, result, attempt, sub.budget_start, subtask=sub_id)
    events = _quality_events(j, item_id, name, attempt, sub_id, now)
    next_at: datetime | None = None
    match j.next:
        case Next.COMPLETE | Next.SKIP:
            status = StageStatus.COMPLETE if j.next == Next.COMPLETE else StageStatus.SKIPPED
            events.append(SubTaskCompleted(item_id=item_id, stage=name, subtask=sub_id, at=now))
        case Next.RETRY:
            status = StageStatus.PENDING
            next_at = _next_attempt_at(spec, attempt - sub.budget_start, now, rng, j.delay)
            events += _retry_events(
                spec, item_id, name, sub_id, attempt, sub.budget_start, j, next_at, now
            )
        case _:
            status = StageStatus.FAILED
            events.append(
                SubTaskFailed(item_id=item_id, stage=name, subtask=sub_id, error=j.error, at=now)
            )
    new_sub = dataclasses.replace(
        sub,
        status=status,
        error=j.error,
        artefact=result.artefact,
        metadata=result.metadata,
        next_attempt_at=next_at,
    )
    state = running.replace(subtasks=[new_sub if t.id == sub_id else t for t in running.subtasks])
    return Decision(state, events, [_record(j, result, attempt, now, sub_id)])


def _quality_events(
    j: Judgement, item_id: str, stage: str, attempt: int, subtask: str | None, now: datetime
) -> list[Event]:
    if j.passed is True:
        return [
            QualityCheckPassed(
                item_id=item_id, stage=stage, attempt=attempt, subtask=subtask, at=now
            )
        ]
    if j.passed is False:
        summary = j.feedback.summary if j.feedback is not None else ""
        return [
            QualityCheckFailed(
                item_id=item_id,
                stage=stage,
                attempt=attempt,
                feedback_summary=summary,
                subtask=subtask,
                at=now,
            )
        ]
    return []


def _retry_events(
    spec: StageSpec,
    item_id: str,
    stage: str,
    subtask: str | None,
    attempt: int,
    budget_start: int,
    j: Judgement,
    next_at: datetime | None,
    now: datetime,
) -> list[Event]:
    events: list[Event] = [
        StageRetried(
            item_id=item_id, stage=stage, attempt=attempt, error=j.error, subtask=subtask, at=now
        )
    ]
    if next_at is not None:
        events.append(
            RetryScheduled(
                item_id=item_id,
                stage=stage,
                attempt=attempt + 1,
                max_attempts=max_attempts(spec, budget_start),
                retry_at=next_at,
                subtask=subtask,
                at=now,
            )
        )
    return events


def _next_attempt_at(
    spec: StageSpec,
    retry: int,
    now: datetime,
    rng: random.Random | None,
    asked: float | None = None,
) -> datetime | None:
    """When retry number ``retry`` is due: the stage's own delay if it asked for one
    (``Retry(delay=)``), else the budget's back-off."""
    delay = spec.budget.delay_for(retry, rng) if asked is None else asked
    return now + timedelta(seconds=delay) if delay > 0 else None


def _record(
    j: Judgement, result: AttemptResult, attempt: int, now: datetime, subtask: str | None
) -> AttemptRecord:
    out = result.output
    return AttemptRecord(
        attempt=attempt,
        started_at=result.started_at,
        completed_at=now,
        outcome=j.label,
        summary=out.summary if out is not None else None,
        artefact=result.artefact,
        verdict=verdict_name(result.verdict),
        feedback=j.feedback,
        error=j.error,
        subtask=subtask,
    )


def last_feedback(previous: Sequence[AttemptRecord]) -> QualityFeedback | None:
    """The feedback the latest earlier attempt left (None: it left none)."""
    return previous[-1].feedback if previous else None


def review_required(
    item_id: str, stage: str, prompt: str, context: dict[str, Any], now: datetime
) -> ReviewRequired:
    return ReviewRequired(item_id=item_id, stage=stage, prompt=prompt, context=context, at=now)


def awaiting(
    spec: StageSpec,
    base: StageState,
    prompt: str,
    context: dict[str, Any],
    now: datetime,
    choices: tuple[str, ...] = (),
    form: dict[str, Any] | None = None,
) -> StageState:
    """``base`` waiting for a person, with the review's deadline when the stage has one.
    A stage that branches by a person's choice offers its branches' choices when the
    review itself names none (an escalation, a review policy)."""
    deadline = None
    if spec.review_timeout is not None:
        deadline = now + timedelta(seconds=spec.review_timeout.seconds)
    return base.replace(
        status=StageStatus.AWAITING_REVIEW,
        review_prompt=prompt,
        review_context=context,
        review_deadline=deadline,
        review_choices=list(choices or spec.branches),
        review_form=form,
        votes=[],
        approval=None,
    )


# --- the moments around attempts -----------------------------------------------------


def begin(
    spec: StageSpec,
    prev: StageState,
    now: datetime,
    *,
    item_id: str,
    feedback: QualityFeedback | None,
    subtask: str | None = None,
) -> tuple[StageState, list[Event]]:
    """The RUNNING state (or RUNNING subtask) an attempt starts from, and its events."""
    name = spec.name
    if subtask is not None:
        sub = prev.subtask(subtask)
        if sub is None:
            raise ValueError(f"stage {name!r} has no subtask {subtask!r}")
        attempt, budget_start = sub.attempt + 1, sub.budget_start
        running_sub = dataclasses.replace(
            sub, status=StageStatus.RUNNING, attempt=attempt, next_attempt_at=None
        )
        state = prev.replace(
            subtasks=[running_sub if t.id == subtask else t for t in prev.subtasks]
        )
        events: list[Event] = [SubTaskStarted(item_id=item_id, stage=name, subtask=subtask, at=now)]
    else:
        attempt, budget_start = prev.attempt + 1, prev.budget_start
        state = prev.replace(
            status=StageStatus.RUNNING,
            attempt=attempt,
            started_at=now,
            completed_at=None,
            next_attempt_at=None,
            updated_at=now,
            subtasks=[],
            approval=None,
        )
        events = [StageStarted(item_id=item_id, stage=name, attempt=attempt, at=now)]
    if attempt - budget_start > 1:
        events.append(
            RetryAttempt(
                item_id=item_id,
                stage=name,
                attempt=attempt,
                max_attempts=max_attempts(spec, budget_start),
                feedback_summary=feedback.summary if feedback else None,
                subtask=subtask,
                at=now,
            )
        )
    return state, events
