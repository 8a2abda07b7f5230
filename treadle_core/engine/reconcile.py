"""Reconciling a store with a changed definition, in batches of items.

When `run`, `advance` or a worker meets a store whose recorded definition differs
from its workflow's, `reconcile` records the new one together with the change in
progress (`definition.Change`, a cursor and counts), then applies the change a batch
of item ids at a time, each batch one transaction that also moves the cursor on:

- a renamed stage's states, attempts and reviews move to the new name;
- the COMPLETE states of changed stages, and of every stage downstream, become stale;
- when readiness may differ (stages added, removed, restored or rewired), items'
  aggregate states are computed again; when stages were only added, every COMPLETE
  item has new work, and one ``UPDATE`` per batch says so.

Several processes meeting the same change share it: each batch takes the recorded
definition's row lock and continues from its cursor, and every step is idempotent,
so a process that dies mid-way leaves the rest to the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._commit import Committer, Reader
from ..clock import Clock
from ..model import ItemState, StageState, StageStatus, from_ts, to_ts
from ..store.base import StateStore
from .definition import Change, Definition, describe, diff, plan_from, removed_after, same
from .plan import Plan
from .ready import aggregate

log = logging.getLogger("treadle.engine")

#: Items per reconciling transaction.
BATCH = 1000

#: ``progress(items_done, items_total)``, called after each batch.
Progress = Callable[[int, int], None]

_COUNTS = ("items", "moved", "stale", "work")


@dataclass(frozen=True)
class DefinitionChange:
    """What reconciling a changed definition did: the change, and how many items it
    visited, states it moved (renames) and marked stale, and items given new work."""

    pipeline: str
    change: Change
    items: int = 0
    moved: int = 0
    stale: int = 0
    work: int = 0
    at: datetime | None = None

    @property
    def note(self) -> str:
        """One line: what changed and what that did to the items."""
        parts = [f"pipeline {self.pipeline!r} changed: {self.change.describe()}"]
        if self.change.touches_items:
            parts.append(f"{self.items:,} item{'s' if self.items != 1 else ''} checked")
        if self.moved:
            parts.append(f"{self.moved:,} stage states renamed")
        if self.stale:
            stages = ", ".join(self.change.stale)
            parts.append(f"{self.stale:,} stage states now stale ({stages})")
        if self.work:
            parts.append(f"{self.work:,} items have new work")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.note

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "change": self.change.to_dict(),
            "items": self.items,
            "moved": self.moved,
            "stale": self.stale,
            "work": self.work,
            "at": to_ts(self.at),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DefinitionChange:
        return cls(
            str(d.get("pipeline", "")),
            Change.from_dict(d.get("change", {})),
            **{k: int(d.get(k, 0)) for k in _COUNTS},
            at=from_ts(d.get("at")),
        )


@dataclass
class _Started:
    """What `begin` found: a change to work through, or one that needed no batches."""

    record: dict[str, Any] | None = None
    done: DefinitionChange | None = None


@dataclass
class _Step:
    """One batch: how many items it visited; ``over`` once the change is complete (with
    what it did, when known)."""

    items: int = 0
    done: DefinitionChange | None = None
    over: bool = False


def _record(store: StateStore) -> dict[str, Any] | None:
    return store.get_definition()


def begin(plan: Plan, clock: Clock) -> Callable[[StateStore], _Started]:
    """The write that records ``plan``'s definition and the change from the recorded
    one (or finds a change already in progress)."""
    target = describe(plan)

    def apply(store: StateStore) -> _Started:
        rec = _record(store)
        if rec is not None and rec.get("change") is not None:
            return _Started(rec)
        if rec is not None and same(rec.get("definition"), target):
            return _Started()
        seen = () if rec is not None else tuple(store.summary())
        if rec is None and not seen:
            store.save_definition({"definition": target, "removed": {}, "change": None})
            return _Started()
        recorded: Definition | None = None if rec is None else rec.get("definition")
        removed = {} if rec is None else dict(rec.get("removed") or {})
        change = diff(recorded, removed, plan, seen=seen)  # DefinitionError: nothing saved
        now = clock.now()
        new: dict[str, Any] = {
            "definition": target,
            "removed": removed_after(recorded, removed, change),
            "change": None,
            "last_change": None if rec is None else rec.get("last_change"),
        }
        if change.empty:
            store.save_definition(new)  # recorded for the first time, as it was
            return _Started()
        if not change.touches_items:
            done = DefinitionChange(plan.name, change, at=now)
            new["last_change"] = done.to_dict()
            store.save_definition(new)
            return _Started(done=done)
        new["change"] = {
            "change": change.to_dict(),
            "to": target,
            "cursor": None,
            "counts": dict.fromkeys(_COUNTS, 0),
            "started_at": to_ts(now),
        }
        store.save_definition(new)
        return _Started(new)

    return apply


def step(plan: Plan, target: Definition, clock: Clock) -> Callable[[StateStore], _Step]:
    """The write that applies the change in progress to the next batch of items."""

    def apply(store: StateStore) -> _Step:
        rec = _record(store)
        progress = None if rec is None else rec.get("change")
        if rec is None or progress is None or not same(progress.get("to"), target):
            last = None if rec is None else rec.get("last_change")
            return _Step(over=True, done=None if last is None else DefinitionChange.from_dict(last))
        change = Change.from_dict(progress["change"])
        now = clock.now()
        ids, cursor = store.item_page(progress.get("cursor"), BATCH)
        counts = apply_batch(store, plan, change, ids, now)
        if counts["work"]:
            store.notify_work()  # idle workers (LISTEN/NOTIFY) start on the new work
        total = {k: int(progress["counts"].get(k, 0)) + counts[k] for k in _COUNTS}
        progress["counts"], progress["cursor"] = total, cursor
        done = None
        if cursor is None:
            done = DefinitionChange(plan.name, change, at=now, **total)
            rec["change"], rec["last_change"] = None, done.to_dict()
        store.save_definition(rec)
        return _Step(len(ids), done, over=done is not None)

    return apply


def apply_batch(
    store: StateStore, plan: Plan, change: Change, ids: list[str], now: datetime
) -> dict[str, int]:
    """Apply ``change`` to these items (inside the batch's transaction); the counts."""
    counts = dict.fromkeys(_COUNTS, 0)
    counts["items"] = len(ids)
    if not ids:
        return counts
    for old, new in change.renamed.items():
        counts["moved"] += store.rename_stage(ids, old, new)
    if change.stale:
        counts["stale"] += store.mark_stale(ids, change.stale)
    if change.reshaped:
        counts["work"] += _reshape(store, plan, change, ids, now)
    return counts


#: Item states whose aggregate may change when readiness does (RUNNING items are
#: recomputed by their worker's next write; CANCELLED ones stay cancelled).
_RECOMPUTE = frozenset(
    {
        ItemState.READY,
        ItemState.SCHEDULED,
        ItemState.AWAITING_REVIEW,
        ItemState.FAILED,
        ItemState.COMPLETE,
    }
)
_HAS_WORK = (ItemState.READY, ItemState.SCHEDULED)


def _reshape(store: StateStore, plan: Plan, change: Change, ids: list[str], now: datetime) -> int:
    """Aggregate states computed again for the new stages and dependencies; how many
    items now have work they did not have."""
    work = 0
    recompute = _RECOMPUTE
    if change.only_added:
        # A COMPLETE item had every old stage done, so a new stage whose dependencies
        # are all old is ready: no need to read its states.
        work += store.set_item_states(ids, ItemState.READY, now, only=[ItemState.COMPLETE])
        recompute = _RECOMPUTE - {ItemState.READY, ItemState.COMPLETE}
    recs = store.get_items(ids)
    todo = [i for i, r in recs.items() if r.state in recompute]
    cancelled = [i for i, r in recs.items() if r.state == ItemState.CANCELLED]
    states = store.get_stage_states_many(todo + cancelled, brief=True) if todo or cancelled else {}
    for item_id in todo:
        rec = recs[item_id]
        state, due_at = aggregate(plan, states.get(item_id, {}), now)
        if state != rec.state:
            store.set_item_state(item_id, state, due_at)
            work += state in _HAS_WORK and rec.state not in _HAS_WORK
    new_stages = (*change.added, *change.restored)
    for item_id in cancelled:
        # A cancelled item stays cancelled: its new stages are cancelled too.
        have = states.get(item_id, {})
        for name in new_stages:
            if name not in have:
                store.save_stage_state(
                    item_id, name, StageState(StageStatus.CANCELLED, updated_at=now)
                )
    return work


async def reconcile(
    committer: Committer,
    reader: Reader,
    plan: Plan,
    clock: Clock,
    progress: Progress | None = None,
) -> DefinitionChange | None:
    """Bring the store to ``plan``'s definition (finishing first a change another process
    left half done); what changed, or None when nothing did."""
    target = describe(plan)
    rec = await reader.read(_record)
    if rec is not None and rec.get("change") is None and same(rec.get("definition"), target):
        return None
    total: int | None = None
    while True:
        started = await committer.submit(begin(plan, clock))
        if started.record is None:
            if started.done is not None:
                log.info("%s", started.done.note)
            return started.done
        to = started.record["change"]["to"]
        ours = same(to, target)
        if total is None:
            total = await reader.read(lambda s: sum(s.count_items().values()))
        done = await _work_through(
            committer, plan if ours else plan_from(to), to, clock, total, progress
        )
        if ours:
            if done is not None:
                log.info("%s", done.note)
            return done
        log.info("finished a change another process started: %s", done.note if done else "")


async def _work_through(
    committer: Committer,
    plan: Plan,
    target: Definition,
    clock: Clock,
    total: int,
    progress: Progress | None,
) -> DefinitionChange | None:
    done_items = 0
    while True:
        result = await committer.submit(step(plan, target, clock))
        done_items += result.items
        if progress is not None:
            progress(min(done_items, max(total, done_items)), max(total, done_items))
        if result.over:
            return result.done


__all__ = ["BATCH", "DefinitionChange", "Progress", "apply_batch", "begin", "reconcile", "step"]
