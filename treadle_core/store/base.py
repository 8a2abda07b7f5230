"""The `StateStore` contract every store implements.

All methods are synchronous (peewee is). Writes that must commit together are
grouped with ``with store.transaction():``; a transaction that raises is rolled
back whole. The engine calls the store from a writer thread (group commit) and
reads from the event loop's thread, so stores must be thread-safe.
"""

from __future__ import annotations

import abc
import json
import secrets
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import orjson

from ..errors import (
    ArtefactNotSerialisableError,
    ArtefactTooLargeError,
    LeaseLostError,
    UnknownItemError,
)
from ..events import Event, StoredEvent
from ..model import (
    JSON_TEXT,
    AttemptRecord,
    ItemRecord,
    ItemState,
    Lease,
    PendingReview,
    ReviewRecord,
    StageState,
    StageStatus,
)

DEFAULT_MAX_ARTEFACT_BYTES = 1024 * 1024

#: How long a store must remember commit marks: far longer than any retry of a write.
MARK_MEMORY = 3600.0

#: A queued item asks again after this many seconds, should its wake-up be lost.
LIMIT_RECHECK = 30.0
#: Rate limits wait this fraction of their period longer than the window (jitter).
RATE_MARGIN = 0.05


def admission(
    starts: list[float],
    running: int,
    now: float,
    *,
    concurrency: int | None,
    rate: tuple[int, float] | None,
) -> tuple[list[float], float | None]:
    """The limit rule every store applies, on its own record of one stage: the start
    times to keep, and None (admitted: ``now`` is among them) or when to ask again."""
    kept = [t for t in starts if rate is not None and t > now - rate[1] * (1 + RATE_MARGIN)]
    if concurrency is not None and running >= concurrency:
        return kept, now + LIMIT_RECHECK
    if rate is not None:
        count, period = rate
        if len(kept) >= count:
            # A little past the window: what runs between admission and the call itself
            # (a commit) must not let two starts land within one period.
            return kept, kept[-count] + period * (1 + RATE_MARGIN)
    if rate is None:
        return [], None
    return [*kept, now][-rate[0] :], None


def commit_mark(at: float | None = None) -> str:
    """A new commit mark: 16 hex digits of the time in nanoseconds, then 16 random ones,
    so marks sort by time (``mark < commit_mark(cutoff)`` means older than the cutoff)."""
    ns = time.time_ns() if at is None else int(at * 1e9)
    return f"{ns:016x}{secrets.token_hex(8)}"


def _default(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """JSON text of a value; objects with ``to_json()`` are converted through it."""
    return _ENCODER.encode(value)


def json_text(value: StageState | AttemptRecord | ReviewRecord | Event) -> str:
    """``dumps(value.to_dict())`` of a frozen state (`StageState.to_stored`), record or
    event, made once and kept on it (a batch that is re-run, or a state saved twice,
    does not make it again). Stores use this instead of serialising such values
    themselves."""
    d = value.__dict__
    text = d.get(JSON_TEXT)
    if text is None:
        data = value.to_stored() if isinstance(value, StageState) else value.to_dict()
        try:
            # orjson: several times faster than json on the per-transition path. What it
            # does not take (an integer beyond 64 bits, a key that is not a string) goes
            # through json, which every artefact has already passed.
            text = orjson.dumps(data, default=_default).decode()
        except TypeError:
            text = dumps(data)
        d[JSON_TEXT] = text
    return text


def normalise_artefact(
    value: Any, *, where: str, max_bytes: int = DEFAULT_MAX_ARTEFACT_BYTES
) -> Any:
    """The artefact as plain JSON data, or a clear error: not serialisable, or too large."""
    if value is None:
        return None
    try:
        text = dumps(value)
    except (TypeError, ValueError) as exc:
        raise ArtefactNotSerialisableError(
            f"{where}: artefact is not JSON-serialisable ({exc}); return JSON data "
            "or an object with a to_json() method"
        ) from None
    size = len(text.encode())
    if size > max_bytes:
        raise ArtefactTooLargeError(
            f"{where}: artefact is {size} bytes, over the limit of {max_bytes} bytes; "
            "store the payload elsewhere (a file, an object store) and return a reference to it"
        )
    return json.loads(text)


def fence(rec: ItemRecord | None, item_id: str, lease: Lease | None) -> ItemRecord:
    """``lock_item``'s checks: the item exists and, with a lease, that lease is current."""
    if rec is None:
        raise UnknownItemError(f"unknown item {item_id!r}")
    if lease is not None and rec.lease_token != lease.token:
        raise LeaseLostError(
            f"item {item_id!r}: lease {lease.token} held by {lease.worker_id!r} "
            f"was lost (current token {rec.lease_token}, owner {rec.lease_owner!r})"
        )
    return rec


class WorkListener(abc.ABC):
    """A store's wake-up channel: readable (``fileno``) when `notify_work` was called."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """A file descriptor the event loop can watch for reading."""

    @abc.abstractmethod
    def drain(self) -> int:
        """Take the notifications that arrived; how many (raises when the connection is
        gone: listen again)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class StateStore(abc.ABC):
    """Durable state of items, stages, attempts, reviews and the event journal."""

    #: Set by stores whose data outlives the process (used by ``treadle status``).
    durable: bool = False

    # --- items -------------------------------------------------------------
    @abc.abstractmethod
    def save_work_item_data(self, item_id: str, data: dict[str, Any]) -> None:
        """Keep the item's JSON data; a new item is created in state READY, due now."""

    def set_priority(self, item_id: str, priority: int) -> None:
        """Set the item's priority (0 to 1,000,000; higher is claimed first, then earliest
        due). Stores that cannot order claims by priority leave this unimplemented."""
        raise NotImplementedError(f"{type(self).__name__} does not keep item priorities")

    @abc.abstractmethod
    def get_work_item_data(self, item_id: str) -> dict[str, Any] | None:
        """The item's data, or None for an unknown item."""

    @abc.abstractmethod
    def delete_work_item(self, item_id: str) -> None:
        """Remove the item with its stage states, attempts, reviews and journal."""

    @abc.abstractmethod
    def list_work_items(self, state: ItemState | None = None) -> Iterator[str]:
        """Item ids (optionally only those in one aggregate state), oldest first."""

    @abc.abstractmethod
    def get_item(self, item_id: str) -> ItemRecord | None:
        """The item's row: aggregate state, due_at and lease."""

    @abc.abstractmethod
    def set_item_state(self, item_id: str, state: ItemState, due_at: datetime | None) -> None:
        """Record the item's aggregate state and when it next has work (None: nothing to do)."""

    @abc.abstractmethod
    def count_items(self) -> dict[ItemState, int]:
        """Number of items per aggregate state (one grouped query)."""

    @abc.abstractmethod
    def next_due_at(self, states: Collection[ItemState] | None = None) -> datetime | None:
        """When the next item becomes claimable: the earliest ``due_at`` (or, for an item
        under a live lease, its lease expiry), optionally only for items in ``states``;
        None when no item has work coming."""

    # --- stage states ------------------------------------------------------
    @abc.abstractmethod
    def save_stage_state(self, item_id: str, stage: str, state: StageState) -> None: ...

    @abc.abstractmethod
    def get_stage_state(self, item_id: str, stage: str) -> StageState | None: ...

    @abc.abstractmethod
    def get_all_stage_states(self, item_id: str) -> dict[str, StageState]: ...

    def get_stage_versions(self, item_id: str) -> dict[str, tuple[str, float | None]]:
        """Each stored stage's status and ``updated_at`` (epoch seconds): a cheap way to
        see which stages changed. Stores may override it with a query that skips the data."""
        return {
            name: (str(st.status), None if st.updated_at is None else st.updated_at.timestamp())
            for name, st in self.get_all_stage_states(item_id).items()
        }

    @abc.abstractmethod
    def summary(self) -> dict[str, dict[str, int]]:
        """Stage name -> status -> number of items with a stored state (one grouped query)."""

    @abc.abstractmethod
    def pending_reviews(
        self, stage: str | None = None, limit: int | None = None
    ) -> list[PendingReview]:
        """Stages AWAITING_REVIEW, oldest first."""

    # --- attempts, reviews, journal -----------------------------------------
    @abc.abstractmethod
    def record_attempt(self, item_id: str, stage: str, record: AttemptRecord) -> None: ...

    @abc.abstractmethod
    def get_attempts(self, item_id: str, stage: str) -> list[AttemptRecord]:
        """Every attempt of the stage and its subtasks, in the order recorded."""

    @abc.abstractmethod
    def record_review(self, item_id: str, stage: str, record: ReviewRecord) -> None: ...

    @abc.abstractmethod
    def get_reviews(self, item_id: str, stage: str | None = None) -> list[ReviewRecord]: ...

    @abc.abstractmethod
    def append_events(self, events: Sequence[Event]) -> None: ...

    @abc.abstractmethod
    def read_events(
        self, item_id: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Journal entries with id > ``after``, in order."""

    # --- transactions and leases -----------------------------------------------
    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """Group writes into one commit; nested calls join the outer transaction."""

    @abc.abstractmethod
    def lock_item(self, item_id: str, lease: Lease | None = None) -> ItemRecord:
        """Inside a transaction: lock the item's row for the rest of it and return it.

        With ``lease``, refuse (``LeaseLostError``) unless that lease is still the
        item's current one (fencing token). Unknown item: ``UnknownItemError``.
        """

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        item_ids: Sequence[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` due items nobody holds (or whose lease expired), highest
        priority first, then earliest due.

        With ``item_ids``, only those items, and whether due or not.
        """

    @abc.abstractmethod
    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        """Extend leases still held; the ones returned are those renewed."""

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease]) -> None:
        """Give leases back (those no longer held are ignored)."""

    # --- exactly once ------------------------------------------------------------
    @abc.abstractmethod
    def mark_commit(self, mark: str) -> None:
        """Inside a transaction: record ``mark`` (unique, time-ordered: `commit_mark`) with
        it, so that once the transaction committed, `committed` finds it."""

    @abc.abstractmethod
    def committed(self, mark: str) -> bool:
        """Whether a transaction carrying ``mark`` committed. When the connection dies
        during COMMIT the writer cannot tell whether it landed; it asks this before
        trying again, so a transaction is never applied twice. Marks may be forgotten
        an hour after they were made (`MARK_MEMORY`)."""

    # --- stage limits (flow control across every worker sharing the store) ---------
    def admit(
        self,
        stage: str,
        item_id: str,
        *,
        concurrency: int | None,
        rate: tuple[int, float] | None,
    ) -> datetime | None:
        """Inside a transaction: may ``item_id`` start an attempt of ``stage`` now?

        Locks the stage's limit row, so admissions of one stage take turns across every
        process. ``concurrency``: fewer than that many of the stage's states are RUNNING.
        ``rate`` = (starts, seconds): fewer than ``starts`` starts in the last ``seconds``.
        Admitted: the start is recorded, the item leaves the stage's queue, and None is
        returned. Not admitted: the item joins the stage's queue (first come, first
        woken by `release_limit`) and the time to ask again is returned. Stores without
        limits leave this unimplemented; a workflow with limits refuses to run on them.
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep stage limits")

    def release_limit(self, stage: str) -> str | None:
        """Inside a transaction: an attempt of a limited ``stage`` ended; the first item in
        its queue leaves it, and its id is returned (the engine makes it due now)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep stage limits")

    def limit_status(self) -> dict[str, tuple[int, int]]:
        """Each limited stage: (attempts RUNNING, items queued for it)."""
        return {}

    # --- wake-ups -------------------------------------------------------------------
    def notify_work(self) -> None:  # noqa: B027 - optional for stores
        """Inside a transaction: tell idle workers, once it commits, that work appeared (an
        item added, a review decided, a retry). Stores that cannot leave it: workers then
        find the work when they next poll."""

    def listen(self) -> WorkListener | None:
        """A listener idle workers wait on for `notify_work` (None: this store cannot;
        workers poll)."""
        return None

    def live_leases(self, limit: int = 100) -> list[Lease]:
        """Leases not yet expired, soonest to end first (at most ``limit``): who holds
        which item until when. Stores that cannot list them return none; the engine then
        only waits for leases to end instead of taking over from a dead local process."""
        return []

    def expire_leases(self, owners: Sequence[str]) -> int:
        """End now every live lease held by one of ``owners`` (whose processes are known
        to be gone), so their items can be claimed at once; how many ended. Their fencing
        tokens still refuse any late write of the old holder."""
        return 0

    @abc.abstractmethod
    def prune(self, completed_before: datetime, limit: int = 500) -> list[str]:
        """Delete up to ``limit`` COMPLETE items last updated before the cut-off; their ids."""

    def close(self) -> None:  # noqa: B027 - optional for stores
        """Release connections and threads."""

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the recorded definition, and changing it (SPEC §10) -------------------------
    # Reconciling a changed definition works through these in batches of item ids.
    # Stores may override the defaults with set-based queries.

    @abc.abstractmethod
    def get_definition(self) -> dict[str, Any] | None:
        """The pipeline definition last recorded (None: none yet). Inside a transaction a
        store that locks rows keeps it locked until the transaction ends."""

    @abc.abstractmethod
    def save_definition(self, definition: dict[str, Any]) -> None:
        """Record the pipeline definition (JSON data), replacing the previous one."""

    @abc.abstractmethod
    def item_page(self, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """Up to ``limit`` item ids after ``cursor`` (None: from the start) in a stable order,
        and the cursor of the next page (None: there is none)."""

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """The rows of those of ``item_ids`` that exist."""
        found = {}
        for item_id in item_ids:
            rec = self.get_item(item_id)
            if rec is not None:
                found[item_id] = rec
        return found

    def get_stage_states_many(
        self, item_ids: Sequence[str], *, brief: bool = False
    ) -> dict[str, dict[str, StageState]]:
        """Every stored stage state of each of ``item_ids`` (items with none are absent).
        ``brief``: only ``status``, ``next_attempt_at`` and ``review_deadline`` need be
        filled in (what readiness and aggregate states use), so stores may skip the rest."""
        found = {}
        for item_id in item_ids:
            states = self.get_all_stage_states(item_id)
            if states:
                found[item_id] = states
        return found

    def set_item_states(
        self,
        item_ids: Sequence[str],
        state: ItemState,
        due_at: datetime | None,
        *,
        only: Collection[ItemState] | None = None,
    ) -> int:
        """Give those of ``item_ids`` that are in one of the ``only`` states (None: any) this
        aggregate state and due time; how many changed."""
        n = 0
        for rec in self.get_items(item_ids).values():
            if only is None or rec.state in only:
                self.set_item_state(rec.id, state, due_at)
                n += 1
        return n

    @abc.abstractmethod
    def rename_stage(self, item_ids: Sequence[str], old: str, new: str) -> int:
        """Move the state, attempts and reviews of stage ``old`` of ``item_ids`` to ``new``
        (an item that already has a state of ``new`` keeps both as they are); how many
        states moved. The journal keeps the old name: it is history."""

    def mark_stale(self, item_ids: Sequence[str], stages: Collection[str]) -> int:
        """Mark the COMPLETE states of ``stages`` of ``item_ids`` stale; how many changed."""
        n = 0
        for item_id in item_ids:
            for stage in stages:
                st = self.get_stage_state(item_id, stage)
                if st is not None and st.status == StageStatus.COMPLETE and not st.stale:
                    self.save_stage_state(item_id, stage, st.replace(stale=True))
                    n += 1
        return n

    def count_stale(self) -> dict[str, int]:
        """Stage name -> number of stale states (stores override it with a grouped query)."""
        out: dict[str, int] = {}
        for item_id in self.list_work_items():
            for name, st in self.get_all_stage_states(item_id).items():
                if st.stale:
                    out[name] = out.get(name, 0) + 1
        return out

    def list_stage_items(
        self,
        stage: str,
        *,
        statuses: Collection[StageStatus] | None = None,
        stale: bool | None = None,
    ) -> Iterator[str]:
        """Ids of items with a stored state of ``stage`` (in one of ``statuses``; stale or
        not), in a stable order; read a page at a time, so writing to the items met
        while iterating is fine."""
        for item_id in self.list_work_items():
            st = self.get_stage_state(item_id, stage)
            if (
                st is not None
                and (statuses is None or st.status in statuses)
                and (stale is None or st.stale == stale)
            ):
                yield item_id

    @abc.abstractmethod
    def revoke_lease(self, item_id: str) -> None:
        """In a transaction that locked the item: end its lease (a new fencing token), so
        its holder's next write is refused with `LeaseLostError`."""
