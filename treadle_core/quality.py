"""The quality loop: gates and how they compose, retry budgets, review policies.

The values a gate returns and a reviewer decides (verdicts, feedback, review
decisions) are frozen values in `treadle_core.model`; they are imported here too,
so ``from treadle_core.quality import QualityFeedback`` keeps working.
"""

from __future__ import annotations

import abc
import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import (
    Accepted,
    Approve,
    ApproveWithEdits,
    CriterionResult,
    QualityContext,
    QualityFeedback,
    Reject,
    Rejected,
    ReviewDecision,
    Uncertain,
    Verdict,
    decision_name,
    verdict_name,
)

if TYPE_CHECKING:
    from .model import StageOutput, WorkItem


class QualityGate(abc.ABC):
    """Judges a stage's output. ``evaluate`` is a coroutine."""

    @abc.abstractmethod
    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Verdict: ...


class _AllOf(QualityGate):
    def __init__(self, gates: Sequence[QualityGate]):
        self.gates = list(gates)

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Verdict:
        rejected: list[QualityFeedback] = []
        for gate in self.gates:
            verdict = await gate.evaluate(item, stage, output, ctx)
            match verdict:
                case Uncertain():
                    return verdict
                case Rejected(feedback):
                    rejected.append(feedback)
        if rejected:
            return Rejected(merge_feedback(rejected))
        return Accepted()


class _AnyOf(QualityGate):
    def __init__(self, gates: Sequence[QualityGate]):
        self.gates = list(gates)

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Verdict:
        rejected: list[QualityFeedback] = []
        uncertain: Uncertain | None = None
        for gate in self.gates:
            verdict = await gate.evaluate(item, stage, output, ctx)
            match verdict:
                case Accepted():
                    return verdict
                case Rejected(feedback):
                    rejected.append(feedback)
                case Uncertain():
                    uncertain = uncertain or verdict
        if uncertain is not None:
            return uncertain
        return Rejected(merge_feedback(rejected))


def all_of(*gates: QualityGate) -> QualityGate:
    """Accepted only when every gate accepts; feedback of all rejections merged."""
    return _AllOf(gates)


def any_of(*gates: QualityGate) -> QualityGate:
    """Accepted when any gate accepts; otherwise the rejections' feedback merged."""
    return _AnyOf(gates)


def merge_feedback(items: Sequence[QualityFeedback]) -> QualityFeedback:
    if len(items) == 1:
        return items[0]
    guidance: dict[str, Any] = {}
    for fb in items:
        guidance.update(fb.guidance or {})
    return QualityFeedback(
        summary="; ".join(fb.summary for fb in items if fb.summary),
        failed_criteria=[c for fb in items for c in fb.failed_criteria],
        guidance=guidance or None,
    )


class ExhaustedAction(enum.StrEnum):
    """What happens when a stage's retry budget runs out."""

    FAIL = "fail"
    ESCALATE = "escalate"


class ReviewPolicy(enum.StrEnum):
    """When a stage's output goes to a person."""

    NEVER = "never"
    ALWAYS = "always"
    ON_ESCALATION = "on_escalation"
    ON_UNCERTAIN = "on_uncertain"
    ON_ESCALATION_OR_UNCERTAIN = "on_escalation_or_uncertain"

    @property
    def reviews_uncertain(self) -> bool:
        return self in (ReviewPolicy.ON_UNCERTAIN, ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN)

    @property
    def escalates(self) -> bool:
        return self in (ReviewPolicy.ON_ESCALATION, ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN)


@dataclass(frozen=True)
class RetryBudget:
    """How many attempts a stage gets, how long to wait between them, and what then."""

    max_attempts: int = 1
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    attempt_timeout: float | None = None
    on_exhausted: ExhaustedAction = ExhaustedAction.FAIL
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    never_retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryBudget.max_attempts must be at least 1, not {self.max_attempts}"
            )
        if self.delay < 0 or self.backoff <= 0 or self.jitter < 0:
            raise ValueError("RetryBudget delay and jitter must be >= 0 and backoff > 0")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError("RetryBudget.attempt_timeout must be positive")

    def delay_for(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); ``rng`` draws the jitter."""
        d = self.delay * self.backoff ** (retry - 1)
        if self.max_delay is not None:
            d = min(d, self.max_delay)
        if self.jitter:
            d += (rng or random).uniform(-self.jitter, self.jitter)
        return max(d, 0.0)

    def retries(self, exc: BaseException) -> bool:
        """Whether an exception raised by the stage is worth another attempt."""
        if self.never_retry_on and isinstance(exc, self.never_retry_on):
            return False
        return isinstance(exc, self.retry_on)


__all__ = [
    "Accepted",
    "Approve",
    "ApproveWithEdits",
    "CriterionResult",
    "ExhaustedAction",
    "QualityContext",
    "QualityFeedback",
    "QualityGate",
    "Reject",
    "Rejected",
    "RetryBudget",
    "ReviewDecision",
    "ReviewPolicy",
    "Uncertain",
    "Verdict",
    "all_of",
    "any_of",
    "decision_name",
    "merge_feedback",
    "verdict_name",
]
