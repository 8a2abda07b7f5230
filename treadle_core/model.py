"""Core values: work items, outcomes, stage state, attempts, pipeline status."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

#: Where a frozen state, record or event keeps its JSON text once made (see
#: `treadle_core.store.base.json_text`); never a field, never copied by ``replace``.
JSON_TEXT = "_json_text"


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ts(value: datetime | None) -> float | None:
    """A datetime as epoch seconds (how stores keep time)."""
    return None if value is None else value.timestamp()


def from_ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# --- work items ---------------------------------------------------------------


@runtime_checkable
class WorkItem(Protocol):
    """Anything with an ``id``: a file, a record, a document."""

    @property
    def id(self) -> str: ...


#: Item priorities: higher is claimed first (then earliest due).
MIN_PRIORITY, MAX_PRIORITY = 0, 1_000_000


@dataclass(frozen=True)
class Item:
    """The concrete work item the CLI uses: an id, a JSON object of data, and a priority
    (higher is claimed first, then earliest due; 0 to 1,000,000)."""

    id: str
    data: dict[str, Any] = field(default_factory=dict)
    priority: int = 0

    def __post_init__(self) -> None:
        check_priority(self.priority, f"item {self.id!r}")


def check_priority(priority: Any, where: str) -> int:
    """``priority`` if it is an integer from 0 to 1,000,000, else ValueError naming ``where``."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise ValueError(
            f"{where}: priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY:,} "
            f"(higher is claimed first), not {priority!r}"
        )
    return priority


# --- outcomes -----------------------------------------------------------------


@dataclass(frozen=True)
class Complete:
    """Done; dependents may run."""


@dataclass(frozen=True)
class NeedsReview:
    """Pause for a person: a question (``prompt``), what to look at (``context``), and
    optionally ``choices`` (the person picks one) or a ``form`` (a JSON Schema their
    answer must satisfy)."""

    prompt: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    form: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not all(isinstance(c, str) and c for c in choices) or len(set(choices)) != len(choices):
            raise ValueError(f"NeedsReview choices must be distinct non-empty strings: {choices!r}")
        object.__setattr__(self, "choices", choices)
        if self.form is not None:
            check_form(self.form, "NeedsReview form")


@dataclass(frozen=True)
class Failed:
    """Permanent failure: no automatic retry."""

    error: str


@dataclass(frozen=True)
class Retry:
    """Transient failure: counts an attempt against the retry budget.

    ``delay`` (seconds) is when the stage wants to be tried again (a server's
    ``Retry-After``); it replaces the budget's back-off for this retry.
    """

    error: str
    delay: float | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and (
            isinstance(self.delay, bool)
            or not isinstance(self.delay, int | float)
            or not 0 <= self.delay < float("inf")
        ):
            raise ValueError(f"Retry delay must be a number of seconds >= 0, not {self.delay!r}")


@dataclass(frozen=True)
class Skipped:
    """Not applicable to this item; counts as satisfied for dependents."""

    reason: str = ""


class StageStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    AWAITING_REVIEW = "awaiting_review"
    SKIPPED = "skipped"
    #: Stopped by ``Workflow.cancel``; ``rerun`` revives it.
    CANCELLED = "cancelled"

    @property
    def is_done(self) -> bool:
        """COMPLETE or SKIPPED: satisfies dependents."""
        return self in (StageStatus.COMPLETE, StageStatus.SKIPPED)


@dataclass(frozen=True)
class SubTask:
    """One unit of a fan-out; also the tracked record of that unit."""

    id: str
    status: StageStatus = StageStatus.PENDING
    attempt: int = 0
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    artefact: Any = None
    next_attempt_at: datetime | None = None
    budget_start: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": str(self.status),
            "attempt": self.attempt,
            "error": self.error,
            "metadata": self.metadata,
            "artefact": self.artefact,
            "next_attempt_at": to_ts(self.next_attempt_at),
            "budget_start": self.budget_start,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SubTask:
        return cls(
            id=d["id"],
            status=StageStatus(d.get("status", "pending")),
            attempt=d.get("attempt", 0),
            error=d.get("error"),
            metadata=dict(d.get("metadata") or {}),
            artefact=d.get("artefact"),
            next_attempt_at=from_ts(d.get("next_attempt_at")),
            budget_start=d.get("budget_start", 0),
        )


@dataclass(frozen=True)
class FanOut:
    """Run these subtasks, each tracked on its own."""

    subtasks: list[SubTask]


Outcome = Complete | NeedsReview | Failed | Retry | FanOut | Skipped
OUTCOME_TYPES = (Complete, NeedsReview, Failed, Retry, FanOut, Skipped)


@dataclass(frozen=True)
class StageOutput:
    """What ``execute`` returns: an outcome plus an optional artefact and summary."""

    outcome: Outcome = field(default_factory=Complete)
    artefact: Any = None
    summary: str | None = None


def outcome_name(outcome: Outcome) -> str:
    return {
        Complete: "complete",
        NeedsReview: "needs_review",
        Failed: "failed",
        Retry: "retry",
        FanOut: "fan_out",
        Skipped: "skipped",
    }[type(outcome)]


# --- verdicts, feedback and review decisions -------------------------------------------


@dataclass(frozen=True)
class CriterionResult:
    """One criterion a gate checked."""

    name: str
    expected: Any = None
    actual: Any = None
    passed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected,
            "actual": self.actual,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class QualityFeedback:
    """Why an output was not good enough, handed to the next attempt as ``ctx.feedback``."""

    summary: str
    failed_criteria: list[CriterionResult] = field(default_factory=list)
    guidance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "failed_criteria": [c.to_dict() for c in self.failed_criteria],
            "guidance": self.guidance,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityFeedback:
        return cls(
            summary=d.get("summary", ""),
            failed_criteria=[
                CriterionResult(
                    c["name"], c.get("expected"), c.get("actual"), c.get("passed", False)
                )
                for c in d.get("failed_criteria") or []
            ],
            guidance=d.get("guidance"),
        )


@dataclass(frozen=True)
class Accepted:
    """The gate is satisfied."""


@dataclass(frozen=True)
class Rejected:
    """The gate is not satisfied; the feedback goes to the next attempt."""

    feedback: QualityFeedback


@dataclass(frozen=True)
class Uncertain:
    """The gate cannot tell; a person may decide (ReviewPolicy.ON_UNCERTAIN)."""

    reason: str


Verdict = Accepted | Rejected | Uncertain


def verdict_name(verdict: Verdict | None) -> str | None:
    if verdict is None:
        return None
    return {Accepted: "accepted", Rejected: "rejected", Uncertain: "uncertain"}[type(verdict)]


@dataclass(frozen=True)
class Approve:
    """The output stands; dependents may run. With choices offered, ``choice`` is one of
    them; with a form, ``values`` are the answers (checked against its schema)."""

    choice: str | None = None
    values: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reject:
    """The stage fails with this reason (a later retry sees it as feedback)."""

    reason: str = "rejected"


@dataclass(frozen=True)
class ApproveWithEdits:
    """The output stands as edited; dependents see the edited artefact. The stage's
    quality gate checks the edit first, unless ``force`` (the audit record says so)."""

    artefact: Any
    note: str | None = None
    force: bool = False


@dataclass(frozen=True)
class RequestChanges:
    """Send the work back: the stage that produced what is under review runs again, with
    ``feedback`` as its ``ctx.feedback.summary``."""

    feedback: str


ReviewDecision = Approve | Reject | ApproveWithEdits | RequestChanges
REVIEW_DECISION_TYPES = (Approve, Reject, ApproveWithEdits, RequestChanges)


def decision_name(decision: ReviewDecision) -> str:
    return {
        Approve: "approve",
        Reject: "reject",
        ApproveWithEdits: "approve_with_edits",
        RequestChanges: "request_changes",
    }[type(decision)]


def check_form(form: Any, where: str) -> dict[str, Any]:
    """``form`` if it is a JSON Schema (an object schema the reviewer's answers must
    satisfy), else ValueError naming ``where`` and what is wrong."""
    import jsonschema  # only when a form is used

    if not isinstance(form, dict):
        raise ValueError(f"{where}: a form is a JSON Schema object, not {type(form).__name__}")
    try:
        jsonschema.validators.validator_for(form).check_schema(form)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(top)"
        raise ValueError(f"{where}: not a valid JSON Schema at {path}: {exc.message}") from None
    return form


# --- state --------------------------------------------------------------------


@dataclass(frozen=True)
class StageState:
    """Where one stage of one item stands. Stores persist it whole."""

    status: StageStatus = StageStatus.PENDING
    attempt: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    subtasks: list[SubTask] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    artefact: Any = None
    #: When it entered its current status (orders the review queue).
    updated_at: datetime | None = None
    #: When an unanswered review is decided by the workflow's review_timeout.
    review_deadline: datetime | None = None
    #: Review prompt and context while AWAITING_REVIEW.
    review_prompt: str | None = None
    review_context: dict[str, Any] = field(default_factory=dict)
    #: The choices offered (one to pick) and the form (a JSON Schema) of that review.
    review_choices: list[str] = field(default_factory=list)
    review_form: dict[str, Any] | None = None
    #: Approvals so far in this review (``{"reviewer", "choice", "values"}``), when it
    #: needs more than one.
    votes: list[dict[str, Any]] = field(default_factory=list)
    #: The approving decision the stage completed with (a `ReviewRecord` as a dict):
    #: what dependents see in ``ctx.reviews``.
    approval: dict[str, Any] | None = None
    #: A person's feedback for the next attempt (a rejection's reason, changes asked).
    feedback: QualityFeedback | None = None
    #: The attempt number from which the retry budget counts (renewed by retry_stage).
    budget_start: int = 0
    #: How many times this stage was found RUNNING after its process died.
    recoveries: int = 0
    #: Its process died while it was RUNNING: from now on it is written RUNNING only once
    #: it holds an execution slot, so being found RUNNING after a crash means it was
    #: executing (and that crash counts towards max_recoveries).
    suspect: bool = False
    #: It reached the recovery limit: its next attempt runs with no other stage executing
    #: in its process, so a crash then is its own (and fails it).
    run_alone: bool = False
    #: The stage's version when it last ran (None: before versions were recorded).
    version: str | None = None
    #: COMPLETE, but its version or an upstream stage changed since (``rerun`` redoes it).
    stale: bool = False

    def replace(self, **changes: Any) -> StageState:
        """A copy with some fields changed (on the per-transition path, so kept cheap)."""
        unknown = changes.keys() - _STAGE_STATE_FIELDS
        if unknown:
            raise TypeError(f"StageState has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(StageState)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)  # frozen, no __post_init__: nothing to re-run
        new.__dict__.pop(JSON_TEXT, None)  # the copy's JSON text is its own
        return new

    def subtask(self, subtask_id: str) -> SubTask | None:
        return next((s for s in self.subtasks if s.id == subtask_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "attempt": self.attempt,
            "started_at": to_ts(self.started_at),
            "completed_at": to_ts(self.completed_at),
            "error": self.error,
            "next_attempt_at": to_ts(self.next_attempt_at),
            "subtasks": [s.to_dict() for s in self.subtasks],
            "metadata": self.metadata,
            "artefact": self.artefact,
            "updated_at": to_ts(self.updated_at),
            "review_deadline": to_ts(self.review_deadline),
            "review_prompt": self.review_prompt,
            "review_context": self.review_context,
            "review_choices": self.review_choices,
            "review_form": self.review_form,
            "votes": self.votes,
            "approval": self.approval,
            "feedback": None if self.feedback is None else self.feedback.to_dict(),
            "budget_start": self.budget_start,
            "recoveries": self.recoveries,
            "suspect": self.suspect,
            "run_alone": self.run_alone,
            "version": self.version,
            "stale": self.stale,
        }

    def to_stored(self) -> dict[str, Any]:
        """`to_dict` without the fields at their defaults (what `from_dict` fills back in):
        what stores keep, a third of the size for most states."""
        d: dict[str, Any] = {"status": self.status.value, "attempt": self.attempt}
        values = self.__dict__
        for name in _STORED_TIMES:
            value = values[name]
            if value is not None:
                d[name] = value.timestamp()
        for name in _STORED_VALUES:
            value = values[name]
            if value:
                d[name] = value
        if self.subtasks:
            d["subtasks"] = [t.to_dict() for t in self.subtasks]
        if self.artefact is not None:
            d["artefact"] = self.artefact
        if self.feedback is not None:
            d["feedback"] = self.feedback.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageState:
        return cls(
            status=StageStatus(d.get("status", "pending")),
            attempt=d.get("attempt", 0),
            started_at=from_ts(d.get("started_at")),
            completed_at=from_ts(d.get("completed_at")),
            error=d.get("error"),
            next_attempt_at=from_ts(d.get("next_attempt_at")),
            subtasks=[SubTask.from_dict(s) for s in d.get("subtasks") or []],
            metadata=dict(d.get("metadata") or {}),
            artefact=d.get("artefact"),
            updated_at=from_ts(d.get("updated_at")),
            review_deadline=from_ts(d.get("review_deadline")),
            review_prompt=d.get("review_prompt"),
            review_context=dict(d.get("review_context") or {}),
            review_choices=list(d.get("review_choices") or []),
            review_form=d.get("review_form"),
            votes=list(d.get("votes") or []),
            approval=d.get("approval"),
            feedback=None
            if d.get("feedback") is None
            else QualityFeedback.from_dict(d["feedback"]),
            budget_start=d.get("budget_start", 0),
            recoveries=d.get("recoveries", 0),
            suspect=d.get("suspect", False),
            run_alone=d.get("run_alone", False),
            version=d.get("version"),
            stale=bool(d.get("stale", False)),
        )


_STAGE_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(StageState))
_STORED_TIMES = ("started_at", "completed_at", "next_attempt_at", "updated_at", "review_deadline")
#: Every other field, kept only when not empty / zero / False / None (its default); a
#: field added later is stored without anyone remembering to list it here.
_STORED_VALUES = tuple(
    f.name
    for f in dataclasses.fields(StageState)
    if f.name not in {"status", "attempt", "subtasks", "artefact", "feedback", *_STORED_TIMES}
)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a stage (or of one subtask), kept for reviewers."""

    attempt: int
    started_at: datetime | None
    completed_at: datetime | None
    outcome: str
    summary: str | None = None
    artefact: Any = None
    verdict: str | None = None
    feedback: QualityFeedback | None = None
    error: str | None = None
    subtask: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": to_ts(self.started_at),
            "completed_at": to_ts(self.completed_at),
            "outcome": self.outcome,
            "summary": self.summary,
            "artefact": self.artefact,
            "verdict": self.verdict,
            "feedback": None if self.feedback is None else self.feedback.to_dict(),
            "error": self.error,
            "subtask": self.subtask,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttemptRecord:
        fb = d.get("feedback")
        return cls(
            attempt=d["attempt"],
            started_at=from_ts(d.get("started_at")),
            completed_at=from_ts(d.get("completed_at")),
            outcome=d.get("outcome", ""),
            summary=d.get("summary"),
            artefact=d.get("artefact"),
            verdict=d.get("verdict"),
            feedback=None if fb is None else QualityFeedback.from_dict(fb),
            error=d.get("error"),
            subtask=d.get("subtask"),
        )


@dataclass(frozen=True)
class ReviewRecord:
    """The audit record of one review decision."""

    decision: str  # "approve" | "reject" | "approve_with_edits" | "request_changes"
    reviewer: str | None
    comment: str | None
    at: datetime
    reason: str | None = None
    edited_artefact: Any = None
    note: str | None = None
    #: The choice picked and the form's answers (an approval).
    choice: str | None = None
    values: dict[str, Any] | None = None
    #: An edit approved without its quality gate's check.
    forced: bool = False
    #: What the reviewer asked to change (``request_changes``).
    feedback: str | None = None
    #: A digest of what was decided on: the prompt, context and artefact under review.
    subject: str | None = None
    #: For a decision applied again to the same question: the original's reviewer and time.
    carried_from: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reviewer": self.reviewer,
            "comment": self.comment,
            "at": to_ts(self.at),
            "reason": self.reason,
            "edited_artefact": self.edited_artefact,
            "note": self.note,
            "choice": self.choice,
            "values": self.values,
            "forced": self.forced,
            "feedback": self.feedback,
            "subject": self.subject,
            "carried_from": self.carried_from,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReviewRecord:
        at = from_ts(d.get("at"))
        assert at is not None
        return cls(
            decision=d["decision"],
            reviewer=d.get("reviewer"),
            comment=d.get("comment"),
            at=at,
            reason=d.get("reason"),
            edited_artefact=d.get("edited_artefact"),
            note=d.get("note"),
            choice=d.get("choice"),
            values=d.get("values"),
            forced=bool(d.get("forced", False)),
            feedback=d.get("feedback"),
            subject=d.get("subject"),
            carried_from=d.get("carried_from"),
        )


class ItemState(enum.StrEnum):
    """An item's aggregate state, kept in the store's ``items`` table."""

    READY = "ready"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    FAILED = "failed"
    #: Cancelled: never claimed again (until ``rerun`` revives a stage of it).
    CANCELLED = "cancelled"
    COMPLETE = "complete"


@dataclass(frozen=True)
class ItemRecord:
    """An item's row: aggregate state, when it next has work, and its lease."""

    id: str
    state: ItemState
    due_at: datetime | None
    lease_owner: str | None = None
    lease_token: int = 0
    lease_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: Higher is claimed first (then earliest due).
    priority: int = 0


@dataclass(frozen=True)
class Lease:
    """A claim on an item: only the holder of the current token may write it."""

    item_id: str
    worker_id: str
    token: int
    expires_at: datetime


@dataclass(frozen=True)
class PendingReview:
    """One stage waiting for a person: the question, what may be answered (choices, a
    form), and the approvals so far."""

    item_id: str
    stage: str
    since: datetime | None
    prompt: str | None
    context: dict[str, Any]
    deadline: datetime | None
    attempt: int
    choices: tuple[str, ...] = ()
    form: dict[str, Any] | None = None
    votes: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, item_id: str, stage: str, st: StageState) -> PendingReview:
        """The review a stage AWAITING_REVIEW holds (how every store builds it)."""
        return cls(
            item_id,
            stage,
            st.updated_at,
            st.review_prompt,
            dict(st.review_context),
            st.review_deadline,
            st.attempt,
            tuple(st.review_choices),
            st.review_form,
            tuple(st.votes),
        )


@dataclass(frozen=True)
class LimitStatus:
    """A limited stage now: its limits, its attempts RUNNING (across every worker), and
    the items waiting for it."""

    concurrency: int | None
    rate: tuple[int, float] | None
    running: int
    waiting: int


# --- context and status -------------------------------------------------------


@dataclass(frozen=True)
class QualityContext:
    """What a gate knows about the attempt it judges."""

    item_id: str
    stage: str
    attempt: int
    max_attempts: int
    previous_attempts: Sequence[AttemptRecord] = ()
    subtask: str | None = None


@dataclass
class StageContext:
    """What a stage knows about the run it is part of."""

    item_id: str
    stage: str
    attempt: int
    subtask: str | None = None
    feedback: QualityFeedback | None = None
    upstream: Mapping[str, Any] = field(default_factory=dict)
    state: StageState = field(default_factory=StageState)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Every earlier attempt of this stage (or subtask): outcome, verdict, feedback, error.
    previous_attempts: Sequence[AttemptRecord] = ()
    #: For each upstream stage a person approved: that approval (choice, values, who).
    reviews: Mapping[str, ReviewRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineStatus:
    """A snapshot of one item's progress through the workflow."""

    item_id: str
    stages: dict[str, StageState]
    state: ItemState | None = None
    #: States of stages the workflow no longer has (kept, ignored by progress).
    removed: dict[str, StageState] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Percent of stages done (COMPLETE and SKIPPED count as done)."""
        if not self.stages:
            return 100.0
        done = sum(1 for s in self.stages.values() if s.status.is_done)
        return round(100.0 * done / len(self.stages), 1)

    @property
    def is_complete(self) -> bool:
        return all(s.status.is_done for s in self.stages.values())

    @property
    def failed_stages(self) -> list[str]:
        return [n for n, s in self.stages.items() if s.status == StageStatus.FAILED]

    @property
    def review_stages(self) -> list[str]:
        return [n for n, s in self.stages.items() if s.status == StageStatus.AWAITING_REVIEW]

    @property
    def stale_stages(self) -> list[str]:
        """COMPLETE stages whose version or upstream changed since they ran."""
        return [n for n, s in self.stages.items() if s.stale]

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "state": None if self.state is None else str(self.state),
            "progress": self.progress,
            "is_complete": self.is_complete,
            "failed_stages": self.failed_stages,
            "review_stages": self.review_stages,
            "stale_stages": self.stale_stages,
            "stages": {name: s.to_dict() for name, s in self.stages.items()},
            "removed_stages": {name: s.to_dict() for name, s in self.removed.items()},
        }

    def __str__(self) -> str:
        lines = [f"{self.item_id}: {self.progress:.0f}% complete"]
        width = max((len(n) for n in [*self.stages, *self.removed]), default=0)
        rows = [(n, s, "") for n, s in self.stages.items()]
        rows += [(n, s, "  (removed)") for n, s in self.removed.items()]
        for name, s, mark in rows:
            line = f"  {name:<{width}}  {s.status.value:<15}"
            if s.attempt:
                line += f" attempt {s.attempt}"
            if s.started_at and s.completed_at:
                line += f" {(s.completed_at - s.started_at).total_seconds():.2f}s"
            if s.stale:
                line += "  stale"
            if s.error:
                line += f"  error: {s.error.splitlines()[0] if s.error else ''}"
            if s.subtasks:
                done = sum(1 for t in s.subtasks if t.status.is_done)
                line += f"  subtasks {done}/{len(s.subtasks)}"
            lines.append((line + mark).rstrip())
        return "\n".join(lines)
