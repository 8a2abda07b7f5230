"""One attempt of a stage or subtask: hooks, execute, artefact check and gate, under the
attempt timeout. It returns an `AttemptResult` and decides nothing (that is `decide`).

Whatever goes wrong inside the attempt — an exception, a wrong return type, an
artefact that cannot be stored, a timeout — is the attempt's error, never the run's:
one bad item never stops the others (SPEC §10).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import ArtefactError, LeaseLostError, StageOutputError
from ..model import (
    OUTCOME_TYPES,
    Accepted,
    AttemptRecord,
    Complete,
    FanOut,
    QualityContext,
    Rejected,
    StageContext,
    StageOutput,
    SubTask,
    Uncertain,
    Verdict,
    WorkItem,
)
from ..store.base import normalise_artefact
from .plan import StageSpec


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt produced, before any decision.

    ``output`` is None when the attempt raised or timed out; ``error`` then says why
    and ``retryable`` whether the budget may try again.
    """

    output: StageOutput | None
    started_at: datetime
    artefact: Any = None
    verdict: Verdict | None = None
    error: str | None = None
    retryable: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    #: It ran out of time (its thread, for a sync stage, may still be running).
    timed_out: bool = False


def normalise_output(raw: Any, stage: str, *, subtask: str | None = None) -> StageOutput:
    """What ``execute`` returned as a `StageOutput`, or `StageOutputError` naming the stage."""
    if raw is None:
        return StageOutput(Complete())
    if isinstance(raw, StageOutput):
        if not isinstance(raw.outcome, OUTCOME_TYPES):
            raise StageOutputError(
                f"stage {stage!r} returned StageOutput with outcome of type "
                f"{type(raw.outcome).__name__}; use Complete(), NeedsReview(), Failed(), "
                "Retry(), FanOut() or Skipped()"
            )
        output = raw
    elif isinstance(raw, OUTCOME_TYPES):
        output = StageOutput(raw)
    else:
        raise StageOutputError(
            f"stage {stage!r} returned a value of type {type(raw).__name__}; return a "
            "StageOutput, an outcome (Complete(), Retry(...), ...) or None"
        )
    if subtask is None and isinstance(output.outcome, FanOut):
        _check_fanout(output.outcome, stage)
    return output


def _check_fanout(fanout: FanOut, stage: str) -> None:
    subtasks = list(fanout.subtasks)
    ids = [getattr(t, "id", None) for t in subtasks]
    if not all(isinstance(t, SubTask) for t in subtasks) or len(set(ids)) != len(ids):
        raise StageOutputError(
            f"stage {stage!r} returned FanOut with invalid subtasks: "
            "give a list of SubTask(id) with unique ids"
        )


def error_text(exc: BaseException) -> str:
    """The exception's type, message and traceback, as kept in the attempt record."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb}"


async def _gate(
    item: WorkItem,
    spec: StageSpec,
    output: StageOutput,
    artefact: Any,
    qctx: QualityContext,
) -> Verdict | None:
    """The gate's verdict on a ``Complete`` output; a gate that raises or returns something
    else is ``Uncertain``, so a person sees why."""
    if spec.gate is None or not isinstance(output.outcome, Complete):
        return None
    judged = StageOutput(output.outcome, artefact, output.summary)
    try:
        verdict = await spec.gate.evaluate(item, spec.name, judged, qctx)
    except Exception as exc:
        return Uncertain(f"quality gate raised {type(exc).__name__}: {exc}")
    if not isinstance(verdict, Accepted | Rejected | Uncertain):
        return Uncertain(
            f"quality gate returned {type(verdict).__name__}, not Accepted/Rejected/Uncertain"
        )
    return verdict


async def check_edit(
    item: WorkItem,
    spec: StageSpec,
    artefact: Any,
    attempt: int,
    previous: Sequence[AttemptRecord],
) -> str | None:
    """Why ``spec``'s quality gate refuses a reviewer's edited artefact, or None (no gate,
    or it does not reject it: uncertain is the person's call)."""
    if spec.gate is None:
        return None
    qctx = QualityContext(item.id, spec.name, attempt, attempt, list(previous))
    try:
        verdict = await spec.gate.evaluate(item, spec.name, StageOutput(Complete(), artefact), qctx)
    except Exception as exc:
        return f"the gate could not check it: {type(exc).__name__}: {exc}"
    return verdict.feedback.summary if isinstance(verdict, Rejected) else None


async def run_attempt(
    item: WorkItem,
    spec: StageSpec,
    ctx: StageContext,
    *,
    started_at: datetime,
    max_attempts: int,
    previous: Sequence[AttemptRecord],
    max_artefact_bytes: int,
) -> AttemptResult:
    """Run one attempt; ``previous`` are this stage's (or subtask's) earlier attempts."""
    stage, timeout = spec.stage, spec.budget.attempt_timeout
    where = f"item {ctx.item_id!r} stage {spec.name!r}" + (
        f" subtask {ctx.subtask!r}" if ctx.subtask else ""
    )
    qctx = QualityContext(
        ctx.item_id, spec.name, ctx.attempt, max_attempts, list(previous), ctx.subtask
    )

    async def body() -> AttemptResult:
        await stage.before_execute(item, ctx)
        raw = await stage.execute(item, ctx)
        output = normalise_output(raw, spec.name, subtask=ctx.subtask)
        await stage.after_execute(item, ctx, output)
        artefact = normalise_artefact(output.artefact, where=where, max_bytes=max_artefact_bytes)
        verdict = await _gate(item, spec, output, artefact, qctx)
        return AttemptResult(
            output, started_at, artefact=artefact, verdict=verdict, metadata=ctx.metadata
        )

    try:
        if timeout is None:
            return await body()
        async with asyncio.timeout(timeout) as deadline:
            return await body()
    except LeaseLostError:
        raise
    except TimeoutError as exc:
        if timeout is not None and deadline.expired():
            return AttemptResult(
                None,
                started_at,
                error=f"attempt timed out after {timeout:g} s",
                metadata=ctx.metadata,
                timed_out=True,
            )
        # The stage's own TimeoutError (a client's timeout): an exception like any other.
        error, retryable = error_text(exc), spec.budget.retries(exc)
    except (StageOutputError, ArtefactError) as exc:
        # The stage's mistake, recorded on its attempt like an exception it raised; the
        # message names the stage and says what to return instead, so no traceback.
        error, retryable = f"{type(exc).__name__}: {exc}", spec.budget.retries(exc)
    except Exception as exc:
        error, retryable = error_text(exc), spec.budget.retries(exc)
    return AttemptResult(None, started_at, error=error, retryable=retryable, metadata=ctx.metadata)
