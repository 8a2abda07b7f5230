"""The operator API: what a person does to a pipeline that is running, in one place.

The ``treadle`` CLI and the web console (treadle-ui) both call these functions, so the
two front doors cannot drift apart: adding items (and replacing their data), finding
failed and stale stages, the detail of one review, pruning (with a dry run),
re-running and cancelling, an overview of a store, and loading a workflow from
``--app pkg.module:attr``. Everything here goes through the public `Workflow` and
`StateStore` APIs.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import (
    AppError,
    CancelError,
    RerunError,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
)
from .events import ItemUpdated, StoredEvent
from .model import (
    AttemptRecord,
    Item,
    ItemState,
    PipelineStatus,
    ReviewRecord,
    StageState,
    StageStatus,
)
from .store.base import StateStore
from .workflow import Workflow

__all__ = [
    "AddReport",
    "CancelReport",
    "FailedStage",
    "ItemDetail",
    "Overview",
    "RerunReport",
    "ReviewDetail",
    "add_items",
    "cancel",
    "failed_stages",
    "item_detail",
    "load_app",
    "overview",
    "prune",
    "rerun",
    "rerun_targets",
    "review_detail",
]

#: ``progress(done, total)`` for long operations (total None: not known in advance).
Progress = Callable[[int, int | None], None]

#: Re-run selections of ``treadle rerun --stage S``: every stage that ran, or the stale ones.
ALL = "all"
STALE = "stale"


# --- loading a workflow ---------------------------------------------------------------------


def load_app(ref: str) -> Workflow:
    """The `Workflow` named by ``"pkg.module:attr"`` (``attr`` may be dotted, and may be a
    callable returning a Workflow). Modules are imported from the current directory first.
    Anything else is an `AppError` saying what was found."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or not re.fullmatch(r"[\w.]+", f"{module_name}.{attr}"):
        raise AppError(f"--app {ref!r}: expected 'package.module:attribute'")
    obj: Any = _import(ref, module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AppError(f"--app {ref!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Workflow):
        try:
            obj = obj()
        except TreadleError as exc:
            raise AppError(f"--app {ref!r}: building the workflow failed: {exc}") from None
        except Exception as exc:
            raise AppError(f"--app {ref!r}: calling {attr} failed: {_line(exc)}") from None
    if not isinstance(obj, Workflow):
        raise AppError(
            f"--app {ref!r} is a {type(obj).__name__}, not a Workflow (name the built "
            "workflow, or a function returning one)"
        )
    return obj


def _import(ref: str, module_name: str) -> Any:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppError(
                f"--app {ref!r}: no module named {exc.name!r} (looked in {here} and sys.path)"
            ) from None
        raise AppError(f"--app {ref!r}: importing {module_name!r} failed: {_line(exc)}") from None
    except Exception as exc:
        raise AppError(f"--app {ref!r}: importing {module_name!r} failed: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# --- items -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddReport:
    """What `add_items` did with each id: added; data replaced (``update``); already there
    with the same data; or already there and left alone (no ``update``)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def add_items(
    store: StateStore, items: Iterable[Item], *, update: bool = False, by: str | None = None
) -> AddReport:
    """Add items (one transaction). An id already in the store is skipped, or with
    ``update`` its data is replaced: journalled as `ItemUpdated`, and its COMPLETE stages
    become stale (they ran on the old data; ``rerun --stale`` redoes them)."""
    report = AddReport()
    with store.transaction():
        for item in items:
            if store.get_item(item.id) is None:
                store.save_work_item_data(item.id, item.data)
                priority = getattr(item, "priority", 0)
                if priority:
                    store.set_priority(item.id, priority)
                report.added.append(item.id)
            elif not update:
                report.skipped.append(item.id)
            elif store.get_work_item_data(item.id) == item.data:
                report.unchanged.append(item.id)
            else:
                store.lock_item(item.id)
                store.save_work_item_data(item.id, item.data)
                done = [
                    name
                    for name, st in store.get_all_stage_states(item.id).items()
                    if st.status == StageStatus.COMPLETE
                ]
                if done:
                    store.mark_stale([item.id], done)
                store.append_events([ItemUpdated(item_id=item.id, by=by, stale=done)])
                report.updated.append(item.id)
    return report


@dataclass(frozen=True)
class ItemDetail:
    """One item: its status (stages, and stages removed from the pipeline), data and
    latest journal entries (newest last)."""

    status: PipelineStatus
    data: dict[str, Any] | None
    events: list[StoredEvent]
    events_total: int


def item_detail(wf: Workflow, store: StateStore, item_id: str, *, events: int = 300) -> ItemDetail:
    """`ItemDetail` of an item (`UnknownItemError` if there is none)."""
    status = wf.status(item_id, store)
    journal = store.read_events(item_id=item_id)
    return ItemDetail(status, store.get_work_item_data(item_id), journal[-events:], len(journal))


# --- failures, reviews and staleness ---------------------------------------------------------


@dataclass(frozen=True)
class FailedStage:
    """A FAILED stage of an item, with its error and attempt number."""

    item_id: str
    stage: str
    error: str | None
    attempt: int


def failed_stages(
    wf: Workflow, store: StateStore, *, stage: str | None = None, limit: int | None = None
) -> Iterator[FailedStage]:
    """FAILED stages of items whose aggregate state is FAILED, oldest item first."""
    if stage is not None:
        wf.dependencies(stage)  # UnknownStageError names the closest stage
    n = 0
    for item_id in store.list_work_items(ItemState.FAILED):
        st = wf.status(item_id, store)
        for name in st.failed_stages:
            if stage not in (None, name):
                continue
            s = st.stages[name]
            yield FailedStage(item_id, name, s.error, s.attempt)
            n += 1
            if limit is not None and n >= limit:
                return


@dataclass(frozen=True)
class ReviewDetail:
    """Everything about one stage a reviewer looks at: its state, the question it asks
    (prompt, context, artefact), every attempt, and every decision so far."""

    item_id: str
    stage: str
    state: StageState
    attempts: list[AttemptRecord]
    reviews: list[ReviewRecord]

    @property
    def status(self) -> StageStatus:
        return self.state.status

    @property
    def awaiting(self) -> bool:
        return self.state.status == StageStatus.AWAITING_REVIEW

    def to_dict(self) -> dict[str, Any]:
        st = self.state
        return {
            "item_id": self.item_id,
            "stage": self.stage,
            "status": str(st.status),
            "prompt": st.review_prompt,
            "context": st.review_context,
            "choices": st.review_choices,
            "form": st.review_form,
            "votes": st.votes,
            "artefact": st.artefact,
            "stale": st.stale,
            "attempts": [a.to_dict() for a in self.attempts],
            "reviews": [r.to_dict() for r in self.reviews],
        }


def review_detail(wf: Workflow, store: StateStore, item_id: str, stage: str) -> ReviewDetail:
    """`ReviewDetail` of an item's stage (`UnknownStageError`, `UnknownItemError`)."""
    wf.dependencies(stage)  # UnknownStageError with the closest name
    if store.get_item(item_id) is None:
        raise UnknownItemError(f"unknown item {item_id!r}")
    return ReviewDetail(
        item_id,
        stage,
        store.get_stage_state(item_id, stage) or StageState(),
        store.get_attempts(item_id, stage),
        store.get_reviews(item_id, stage),
    )


@dataclass(frozen=True)
class Overview:
    """A store at a glance: items per aggregate state, stage -> status -> count, stale
    states per stage, counts of stages the pipeline no longer has, the last change."""

    items: dict[str, int]
    stages: dict[str, dict[str, int]]
    stale: dict[str, int]
    removed: dict[str, dict[str, int]]
    last_change: str | None = None

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "stages": self.stages,
            "stale": self.stale,
            "removed_stages": self.removed,
            "last_change": self.last_change,
        }


def overview(wf: Workflow, store: StateStore) -> Overview:
    """The `Overview` of a store, from grouped queries (never one item at a time)."""
    items = {str(k): v for k, v in store.count_items().items() if v}
    stored = store.summary()
    summary = wf.summary(store, total=sum(items.values()), stored=stored)
    removed = {name: counts for name, counts in stored.items() if name not in wf.specs}
    stale = {k: v for k, v in store.count_stale().items() if k in wf.specs and v}
    rec = store.get_definition()
    last = (rec or {}).get("last_change") or {}
    return Overview(items, summary, stale, removed, last.get("note"))


# --- housekeeping ------------------------------------------------------------------------------


def prune(
    store: StateStore, completed_before: datetime, *, dry_run: bool = False, batch: int = 500
) -> list[str]:
    """Delete COMPLETE items last updated before the cut-off, with their attempts, reviews
    and journal, ``batch`` per transaction; with ``dry_run``, only list them."""
    if dry_run:
        out = []
        for item_id in store.list_work_items(ItemState.COMPLETE):
            rec = store.get_item(item_id)
            if rec is not None and rec.updated_at is not None and rec.updated_at < completed_before:
                out.append(item_id)
        return out
    ids: list[str] = []
    while True:
        pruned = store.prune(completed_before, limit=batch)
        ids += pruned
        if len(pruned) < batch:
            return ids


# --- re-running and cancelling -----------------------------------------------------------------


@dataclass(frozen=True)
class RerunReport:
    """What `rerun` did: the ``(item, stage)`` pairs reset, and those refused with why."""

    reset: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reset": [{"item_id": i, "stage": s} for i, s in self.reset],
            "skipped": [{"item_id": i, "stage": s, "reason": r} for i, s, r in self.skipped],
        }


def rerun_targets(
    wf: Workflow, store: StateStore, stage: str, which: str | StageStatus = ALL
) -> Iterator[tuple[str, str]]:
    """``(item_id, stage)`` for every item whose ``stage`` can be re-run: ``"all"`` (it
    ran: COMPLETE, FAILED, SKIPPED, CANCELLED or AWAITING_REVIEW), ``"stale"``, or one
    status. Read a page at a time; a bad stage or status is refused at once."""
    wf.dependencies(stage)  # UnknownStageError with the closest name
    if which == STALE:
        ids = store.list_stage_items(stage, statuses=[StageStatus.COMPLETE], stale=True)
    elif which == ALL:
        ran = [s for s in StageStatus if s not in (StageStatus.PENDING, StageStatus.RUNNING)]
        ids = store.list_stage_items(stage, statuses=ran)
    else:
        try:
            status = StageStatus(which)
        except ValueError:
            known = ", ".join(s.value for s in StageStatus)
            raise ValueError(f"{which!r} is not a stage status (one of {known})") from None
        ids = store.list_stage_items(stage, statuses=[status])
    return ((item_id, stage) for item_id in ids)


async def rerun(
    wf: Workflow,
    store: StateStore,
    targets: Iterable[tuple[str, str]],
    *,
    cascade: bool = True,
    reason: str | None = None,
    by: str | None = None,
    batch: int = 500,
    progress: Progress | None = None,
) -> RerunReport:
    """Re-run ``(item_id, stage)`` pairs (see `Workflow.rerun`), ``batch`` at a time
    (group-committed); a pair that cannot be re-run is reported, not raised."""
    report = RerunReport()
    chunk: list[tuple[str, str]] = []
    done = 0

    async def flush() -> None:
        nonlocal done
        results = await wf.rerun_many(chunk, store, cascade=cascade, reason=reason, by=by)
        for (item_id, stage), refused in zip(chunk, results, strict=True):
            if refused is None:
                report.reset.append((item_id, stage))
            elif isinstance(refused, RerunError | UnknownItemError | UnknownStageError):
                report.skipped.append((item_id, stage, str(refused)))
            else:
                raise refused
        done += len(chunk)
        chunk.clear()
        if progress is not None:
            progress(done, None)

    for target in targets:
        chunk.append(target)
        if len(chunk) >= batch:
            await flush()
    if chunk:
        await flush()
    return report


@dataclass(frozen=True)
class CancelReport:
    """What `cancel` did: the items cancelled, and those with nothing to cancel (and why)."""

    cancelled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cancelled": self.cancelled,
            "skipped": [{"item_id": i, "reason": r} for i, r in self.skipped],
        }


async def cancel(
    wf: Workflow,
    store: StateStore,
    item_ids: Sequence[str],
    *,
    reason: str | None = None,
    by: str | None = None,
) -> CancelReport:
    """Cancel items (see `Workflow.cancel`). Every id is checked first: an unknown one is
    an `UnknownItemError` and nothing is cancelled."""
    ids = list(dict.fromkeys(item_ids))
    missing = [i for i in ids if store.get_item(i) is None]
    if missing:
        raise UnknownItemError(
            f"unknown item{'s' if len(missing) > 1 else ''} "
            + ", ".join(repr(i) for i in missing)
            + "; nothing cancelled"
        )
    report = CancelReport()
    for item_id in ids:
        try:
            await wf.cancel(item_id, store, reason=reason, by=by)
        except CancelError as exc:
            report.skipped.append((item_id, str(exc)))
        else:
            report.cancelled.append(item_id)
    return report
