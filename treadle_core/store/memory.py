"""`MemoryStateStore`: everything in dicts, for tests and embedding. Thread-safe."""

from __future__ import annotations

import bisect
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from ..errors import UnknownItemError
from ..events import Event, StoredEvent
from ..model import (
    AttemptRecord,
    ItemRecord,
    ItemState,
    Lease,
    PendingReview,
    ReviewRecord,
    StageState,
    StageStatus,
    from_ts,
    utcnow,
)
from .base import MARK_MEMORY, StateStore, admission, commit_mark, dumps, fence, json_text


class MemoryStateStore(StateStore):
    """An in-process store; ``transaction()`` rolls back through an undo log."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: dict[str, ItemRecord] = {}
        self._data: dict[str, dict[str, Any]] = {}
        # Values are kept as JSON text: copies for free, and only JSON is ever stored.
        self._states: dict[str, dict[str, str]] = {}
        self._attempts: dict[tuple[str, str], list[str]] = {}
        self._reviews: dict[str, list[tuple[str, ReviewRecord]]] = {}
        self._events: list[StoredEvent] = []
        self._next_event_id = 1
        self._marks: set[str] = set()
        #: stage -> [start times kept, item ids queued]
        self._limits: dict[str, tuple[list[float], list[str]]] = {}
        self._meta: dict[str, str] = {}
        self._undo: list[Callable[[], None]] | None = None
        self._depth = 0
        self._instance = uuid.uuid4().hex

    # --- transactions --------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._undo = []
            self._depth += 1
            try:
                yield
            except BaseException:
                if outer:
                    assert self._undo is not None
                    for undo in reversed(self._undo):
                        undo()
                raise
            finally:
                self._depth -= 1
                if outer:
                    self._undo = None

    def _remember(self, mapping: dict[Any, Any], key: Any) -> None:
        """Record how to restore ``mapping[key]`` if the transaction rolls back."""
        if self._undo is None:
            return
        if key in mapping:
            old = mapping[key]
            old = copy.copy(old) if isinstance(old, list | dict) else old

            def restore() -> None:
                mapping[key] = old

            self._undo.append(restore)
        else:
            self._undo.append(lambda: mapping.pop(key, None))

    # --- items ---------------------------------------------------------------
    def save_work_item_data(self, item_id: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._remember(self._data, item_id)
            self._data[item_id] = copy.deepcopy(data)
            if item_id not in self._items:
                self._remember(self._items, item_id)
                now = utcnow()
                self._items[item_id] = ItemRecord(
                    item_id, ItemState.READY, now, created_at=now, updated_at=now
                )

    def set_priority(self, item_id: str, priority: int) -> None:
        with self._lock:
            rec = self._items.get(item_id)
            if rec is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            self._remember(self._items, item_id)
            self._items[item_id] = replace(rec, priority=priority)

    def get_work_item_data(self, item_id: str) -> dict[str, Any] | None:
        with self._lock:
            data = self._data.get(item_id)
            return None if data is None else copy.deepcopy(data)

    def delete_work_item(self, item_id: str) -> None:
        with self._lock:
            for mapping in (self._items, self._data, self._states, self._reviews):
                self._remember(mapping, item_id)
                mapping.pop(item_id, None)
            for key in [k for k in self._attempts if k[0] == item_id]:
                self._remember(self._attempts, key)
                del self._attempts[key]
            old_events = self._events
            if self._undo is not None:
                self._undo.append(lambda: setattr(self, "_events", old_events))
            self._events = [e for e in self._events if e.event.item_id != item_id]

    def list_work_items(self, state: ItemState | None = None) -> Iterator[str]:
        with self._lock:
            ids = [i for i, rec in self._items.items() if state is None or rec.state == state]
        return iter(ids)

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._lock:
            return self._items.get(item_id)

    def set_item_state(self, item_id: str, state: ItemState, due_at: datetime | None) -> None:
        with self._lock:
            rec = self._items.get(item_id)
            if rec is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            self._remember(self._items, item_id)
            self._items[item_id] = replace(rec, state=state, due_at=due_at, updated_at=utcnow())

    def count_items(self) -> dict[ItemState, int]:
        with self._lock:
            counts: dict[ItemState, int] = {}
            for rec in self._items.values():
                counts[rec.state] = counts.get(rec.state, 0) + 1
            return counts

    def next_due_at(self, states: Collection[ItemState] | None = None) -> datetime | None:
        now = utcnow()
        with self._lock:
            dues = [
                max(r.due_at, r.lease_expires_at)
                if r.lease_expires_at is not None and r.lease_expires_at > now
                else r.due_at
                for r in self._items.values()
                if r.due_at is not None and (states is None or r.state in states)
            ]
            return min(dues, default=None)

    # --- stage states --------------------------------------------------------
    def save_stage_state(self, item_id: str, stage: str, state: StageState) -> None:
        with self._lock:
            if item_id not in self._items:
                raise UnknownItemError(f"unknown item {item_id!r}")
            states = self._states.get(item_id)
            if states is None:
                self._remember(self._states, item_id)
                states = self._states[item_id] = {}
            self._remember(states, stage)
            states[stage] = json_text(state)

    def get_stage_state(self, item_id: str, stage: str) -> StageState | None:
        with self._lock:
            state = self._states.get(item_id, {}).get(stage)
        return None if state is None else StageState.from_dict(json.loads(state))

    def get_all_stage_states(self, item_id: str) -> dict[str, StageState]:
        with self._lock:
            states = dict(self._states.get(item_id, {}))
        return {k: StageState.from_dict(json.loads(v)) for k, v in states.items()}

    def summary(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for states in self._states.values():
                for stage, text in states.items():
                    status = json.loads(text)["status"]
                    per = out.setdefault(stage, {})
                    per[status] = per.get(status, 0) + 1
            return out

    def pending_reviews(
        self, stage: str | None = None, limit: int | None = None
    ) -> list[PendingReview]:
        with self._lock:
            waiting = [
                (item_id, name, StageState.from_dict(json.loads(text)))
                for item_id, states in self._states.items()
                for name, text in states.items()
                if (stage is None or name == stage) and '"status":"awaiting_review"' in text
            ]
            found = [
                PendingReview.of(item_id, name, st)
                for item_id, name, st in waiting
                if st.status == StageStatus.AWAITING_REVIEW
            ]
        found.sort(key=lambda r: (r.since is None, r.since, r.item_id, r.stage))
        return found if limit is None else found[:limit]

    # --- attempts, reviews, journal ----------------------------------------------
    def record_attempt(self, item_id: str, stage: str, record: AttemptRecord) -> None:
        with self._lock:
            key = (item_id, stage)
            self._remember(self._attempts, key)
            self._attempts.setdefault(key, []).append(json_text(record))

    def get_attempts(self, item_id: str, stage: str) -> list[AttemptRecord]:
        with self._lock:
            texts = list(self._attempts.get((item_id, stage), []))
        return [AttemptRecord.from_dict(json.loads(t)) for t in texts]

    def record_review(self, item_id: str, stage: str, record: ReviewRecord) -> None:
        with self._lock:
            self._remember(self._reviews, item_id)
            self._reviews.setdefault(item_id, []).append((stage, copy.deepcopy(record)))

    def get_reviews(self, item_id: str, stage: str | None = None) -> list[ReviewRecord]:
        with self._lock:
            return [
                copy.deepcopy(r)
                for s, r in self._reviews.get(item_id, [])
                if stage is None or s == stage
            ]

    def append_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            if not events:
                return
            n = len(self._events)
            first_id = self._next_event_id
            if self._undo is not None:

                def undo() -> None:
                    del self._events[n:]
                    self._next_event_id = first_id

                self._undo.append(undo)
            for ev in events:
                self._events.append(StoredEvent(self._next_event_id, ev))
                self._next_event_id += 1

    def read_events(
        self, item_id: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        with self._lock:
            out = [
                e
                for e in self._events
                if e.id > after and (item_id is None or e.event.item_id == item_id)
            ]
        return out if limit is None else out[:limit]

    # --- leases ----------------------------------------------------------------
    def lock_item(self, item_id: str, lease: Lease | None = None) -> ItemRecord:
        with self._lock:
            return fence(self._items.get(item_id), item_id, lease)

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        item_ids: Sequence[str] | None = None,
    ) -> list[Lease]:
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        with self._lock:
            if item_ids is not None:
                candidates = [self._items[i] for i in item_ids if i in self._items]
            else:
                candidates = sorted(
                    (r for r in self._items.values() if r.due_at is not None and r.due_at <= now),
                    key=lambda r: (-r.priority, r.due_at or now),
                )
            leases: list[Lease] = []
            for rec in candidates:
                if len(leases) >= limit:
                    break
                if rec.lease_expires_at is not None and rec.lease_expires_at > now:
                    continue
                token = rec.lease_token + 1
                self._remember(self._items, rec.id)
                self._items[rec.id] = replace(
                    rec, lease_owner=worker_id, lease_token=token, lease_expires_at=expires
                )
                leases.append(Lease(rec.id, worker_id, token, expires))
            return leases

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        expires = utcnow() + timedelta(seconds=lease_seconds)
        out: list[Lease] = []
        with self._lock:
            for lease in leases:
                rec = self._items.get(lease.item_id)
                if rec is None or rec.lease_token != lease.token:
                    continue
                self._remember(self._items, rec.id)
                self._items[rec.id] = replace(rec, lease_expires_at=expires)
                out.append(replace(lease, expires_at=expires))
        return out

    def release(self, leases: Sequence[Lease]) -> None:
        with self._lock:
            for lease in leases:
                rec = self._items.get(lease.item_id)
                if rec is None or rec.lease_token != lease.token:
                    continue
                self._remember(self._items, rec.id)
                self._items[rec.id] = replace(rec, lease_owner=None, lease_expires_at=None)

    def mark_commit(self, mark: str) -> None:
        with self._lock:
            self._marks.add(mark)
            if self._undo is not None:
                self._undo.append(lambda: self._marks.discard(mark))
            if len(self._marks) > 10_000:  # forget marks older than MARK_MEMORY
                cutoff = commit_mark(time.time() - MARK_MEMORY)
                self._marks = {m for m in self._marks if m >= cutoff}

    def committed(self, mark: str) -> bool:
        with self._lock:
            return mark in self._marks

    def admit(
        self,
        stage: str,
        item_id: str,
        *,
        concurrency: int | None,
        rate: tuple[int, float] | None,
    ) -> datetime | None:
        with self._lock:
            starts, waiting = self._limits.get(stage, ([], []))
            running = sum(
                1
                for states in self._states.values()
                if states.get(stage, "").startswith('{"status":"running"')
            )
            now = time.time()
            kept, retry = admission(starts, running, now, concurrency=concurrency, rate=rate)
            if retry is None:
                queue = [i for i in waiting if i != item_id]
            else:
                queue = waiting if item_id in waiting else [*waiting, item_id]
            self._remember(self._limits, stage)
            self._limits[stage] = (kept, queue)
            return None if retry is None else from_ts(retry)

    def release_limit(self, stage: str) -> str | None:
        with self._lock:
            starts, waiting = self._limits.get(stage, ([], []))
            if not waiting:
                return None
            self._remember(self._limits, stage)
            self._limits[stage] = (starts, waiting[1:])
            return waiting[0]

    def limit_status(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {
                stage: (
                    sum(
                        1
                        for states in self._states.values()
                        if states.get(stage, "").startswith('{"status":"running"')
                    ),
                    len(waiting),
                )
                for stage, (_, waiting) in self._limits.items()
            }

    def live_leases(self, limit: int = 100) -> list[Lease]:
        now = utcnow()
        with self._lock:
            live = [
                Lease(r.id, r.lease_owner or "", r.lease_token, r.lease_expires_at)
                for r in self._items.values()
                if r.lease_expires_at is not None and r.lease_expires_at > now
            ]
        return sorted(live, key=lambda lease: (lease.expires_at, lease.item_id))[:limit]

    def expire_leases(self, owners: Sequence[str]) -> int:
        wanted, now, n = set(owners), utcnow(), 0
        with self._lock:
            for rec in list(self._items.values()):
                live = rec.lease_expires_at is not None and rec.lease_expires_at > now
                if live and rec.lease_owner in wanted:
                    self._remember(self._items, rec.id)
                    self._items[rec.id] = replace(rec, lease_expires_at=now)
                    n += 1
        return n

    def prune(self, completed_before: datetime, limit: int = 500) -> list[str]:
        with self._lock:
            ids = [
                r.id
                for r in self._items.values()
                if r.state == ItemState.COMPLETE
                and r.updated_at is not None
                and r.updated_at < completed_before
            ][:limit]
            with self.transaction():
                for item_id in ids:
                    self.delete_work_item(item_id)
            return ids

    # --- the recorded definition, and changing it ----------------------------------------
    def get_definition(self) -> dict[str, Any] | None:
        with self._lock:
            text = self._meta.get("definition")
        return None if text is None else json.loads(text)

    def save_definition(self, definition: dict[str, Any]) -> None:
        with self._lock:
            self._remember(self._meta, "definition")
            self._meta["definition"] = dumps(definition)

    def item_page(self, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        with self._lock:
            ids = sorted(self._items)
        start = 0 if cursor is None else bisect.bisect_right(ids, cursor)
        page = ids[start : start + limit]
        more = start + limit < len(ids)
        return page, (page[-1] if page and more else None)

    def rename_stage(self, item_ids: Sequence[str], old: str, new: str) -> int:
        moved = 0
        with self._lock:
            for item_id in item_ids:
                states = self._states.get(item_id)
                if not states or old not in states or new in states:
                    continue
                self._remember(self._states, item_id)
                self._states[item_id] = {
                    (new if name == old else name): text for name, text in states.items()
                }
                before = self._attempts.get((item_id, old))
                if before is not None:
                    self._remember(self._attempts, (item_id, old))
                    self._remember(self._attempts, (item_id, new))
                    del self._attempts[(item_id, old)]
                    self._attempts[(item_id, new)] = before + self._attempts.get((item_id, new), [])
                reviews = self._reviews.get(item_id)
                if reviews:
                    self._remember(self._reviews, item_id)
                    self._reviews[item_id] = [(new if s == old else s, r) for s, r in reviews]
                moved += 1
        return moved

    def mark_stale(self, item_ids: Sequence[str], stages: Collection[str]) -> int:
        n = 0
        with self._lock:
            for item_id in item_ids:
                states = self._states.get(item_id, {})
                for stage in stages:
                    text = states.get(stage)
                    if text is None:
                        continue
                    d = json.loads(text)
                    if d["status"] != StageStatus.COMPLETE.value or d.get("stale"):
                        continue
                    d["stale"] = True
                    self._remember(states, stage)
                    states[stage] = dumps(d)
                    n += 1
        return n

    def count_stale(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for states in self._states.values():
                for stage, text in states.items():
                    if json.loads(text).get("stale"):
                        out[stage] = out.get(stage, 0) + 1
        return out

    def list_stage_items(
        self,
        stage: str,
        *,
        statuses: Collection[StageStatus] | None = None,
        stale: bool | None = None,
    ) -> Iterator[str]:
        wanted = None if statuses is None else {str(s) for s in statuses}
        cursor: str | None = None
        while True:
            page, cursor = self.item_page(cursor, 500)
            for item_id in page:
                with self._lock:
                    text = self._states.get(item_id, {}).get(stage)
                if text is None:
                    continue
                d = json.loads(text)
                if (wanted is None or d["status"] in wanted) and (
                    stale is None or bool(d.get("stale")) == stale
                ):
                    yield item_id
            if cursor is None:
                return

    def revoke_lease(self, item_id: str) -> None:
        with self._lock:
            rec = self._items.get(item_id)
            if rec is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            self._remember(self._items, item_id)
            self._items[item_id] = replace(
                rec, lease_owner=None, lease_expires_at=None, lease_token=rec.lease_token + 1
            )
