"""`RedisStateStore`: the `StateStore` contract on Redis (redis-py, sync client).

Every write goes through one Lua script (``_lua.COMMIT``) that checks first and then
writes, so it applies whole or not at all. ``transaction()`` buffers the writes of
its block (per thread) and sends them in one script call when the block ends;
reads inside the block see the buffered writes of the item they ask about. Design
and limits: the README beside this package.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from treadle_core.errors import (
    LeaseLostError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    UnknownItemError,
)
from treadle_core.events import Event, StoredEvent
from treadle_core.model import (
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
from treadle_core.store.base import StateStore, dumps
from treadle_core.store.base import fence as check_lease

from . import _lua

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "treadle"
#: How long a transaction's item lock lives if its process dies holding it.
DEFAULT_LOCK_TTL = 30.0
#: How long ``lock_item`` waits for another transaction's lock before giving up.
DEFAULT_LOCK_WAIT = 10.0
_PAGE = 500

Op = list[str]


def _ts(value: datetime) -> str:
    """Epoch seconds as the exact text of the float (``repr`` round-trips)."""
    return repr(value.timestamp())


def _now() -> tuple[datetime, str]:
    now = utcnow()
    return now, _ts(now)


@dataclass
class _Tx:
    """One thread's open transaction: the buffered ops and the overlay reads consult."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    depth: int = 1
    ops: list[Op] = field(default_factory=list)
    locks: list[str] = field(default_factory=list)
    fences: dict[str, int] = field(default_factory=dict)
    #: Item hashes as this transaction leaves them (None: deleted or never existed).
    items: dict[str, dict[str, str] | None] = field(default_factory=dict)
    #: The committed state of each item in ``items`` (None: it did not exist).
    orig: dict[str, str | None] = field(default_factory=dict)
    new_ids: list[str] = field(default_factory=list)
    data: dict[str, str] = field(default_factory=dict)
    #: Items deleted in this transaction: their committed stages, attempts, reviews are gone.
    wiped: set[str] = field(default_factory=set)
    stages: dict[str, dict[str, str]] = field(default_factory=dict)
    attempts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    reviews: dict[str, list[str]] = field(default_factory=dict)
    #: Leases claimed inside the block (claims apply at once; released on rollback).
    claimed: list[Lease] = field(default_factory=list)
    #: The definition saved in this block (JSON text).
    definition: str | None = None


def parse_url(url: str) -> tuple[str, str, dict[str, float]]:
    """``redis://host:port/db?prefix=p&lock_ttl=30&lock_wait=10`` -> (redis-py URL, prefix,
    options); other query parameters go to redis-py."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise StoreError(f"store URL {url!r}: expected redis://, rediss:// or unix://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    options: dict[str, float] = {}
    rest = []
    for key, value in query:
        if key == "prefix":
            prefix = value.strip(":")
            if not prefix:
                raise StoreError(f"store URL {url!r}: prefix must not be empty")
        elif key in ("lock_ttl", "lock_wait"):
            try:
                options[key] = float(value)
            except ValueError:
                raise StoreError(f"store URL {url!r}: {key} must be seconds") from None
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix, options


class RedisStateStore(StateStore):
    """Items, stage states, attempts, reviews and the journal in Redis, under one key prefix."""

    durable = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str | None = None,
        lock_ttl: float | None = None,
        lock_wait: float | None = None,
        client: redis.Redis | None = None,
    ):
        redis_url, url_prefix, options = parse_url(url)
        self.prefix = (prefix or url_prefix).strip(":")
        self.lock_ttl = lock_ttl or options.get("lock_ttl", DEFAULT_LOCK_TTL)
        self.lock_wait = lock_wait or options.get("lock_wait", DEFAULT_LOCK_WAIT)
        self.url = url
        self.r: redis.Redis = client or redis.Redis.from_url(redis_url, decode_responses=True)
        self._commit_script = self.r.register_script(_lua.COMMIT)
        self._claim_script = self.r.register_script(_lua.CLAIM)
        self._next_due_script = self.r.register_script(_lua.NEXT_DUE)
        self._unlock_script = self.r.register_script(_lua.UNLOCK)
        self._expire_script = self.r.register_script(_lua.EXPIRE_LEASES)
        self._local = threading.local()
        self._check_schema()

    # --- plumbing -------------------------------------------------------------------------
    def k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def att_key(self, item_id: str, stage: str) -> str:
        return self.k("att", str(len(item_id.encode())), f"{item_id}:{stage}")

    def _check_schema(self) -> None:
        try:
            self.r.hsetnx(self.k("meta"), "schema", SCHEMA_VERSION)
            found = int(self.r.hget(self.k("meta"), "schema") or SCHEMA_VERSION)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"Redis store {self.prefix!r} has schema version {found}, newer than this "
                f"treadle-store-redis understands ({SCHEMA_VERSION}); upgrade treadle-store-redis"
            )

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Redis store {_redact(self.url)}: {type(exc).__name__}: {exc} "
            "(is the server running? nothing of this write was applied)"
        )

    @property
    def _tx(self) -> _Tx | None:
        return getattr(self._local, "tx", None)

    def _write(self, *ops: Op) -> list[int]:
        """Apply ``ops`` now, or buffer them in the open transaction (then: no results)."""
        tx = self._tx
        if tx is not None:
            tx.ops.extend(ops)
            return []
        return self._run(list(ops), [], {}, "")

    def _run(
        self, ops: list[Op], locks: list[str], fences: dict[str, int], token: str
    ) -> list[int]:
        args: list[str] = [self.prefix, str(len(locks))]
        for item_id in locks:
            args += [item_id, token]
        args.append(str(len(fences)))
        for item_id, fence in fences.items():
            args += [item_id, str(fence)]
        for op in ops:
            args += op
        try:
            return list(self._commit_script(args=args))
        except redis.ResponseError as exc:
            raise self._refused(exc) from None
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _refused(self, exc: redis.ResponseError) -> Exception:
        text = str(exc)
        if not text.startswith("TREADLE "):
            return StoreError(f"Redis store {_redact(self.url)}: {text}")
        kind, item_id, *rest = json.loads(text[len("TREADLE ") :])
        if kind == "unknown":
            return UnknownItemError(f"unknown item {item_id!r}")
        if kind == "lease_lost":
            token, current, owner = rest
            return LeaseLostError(
                f"item {item_id!r}: lease {token} was lost "
                f"(current token {current}, owner {owner or None!r})"
            )
        if kind == "lock_lost":
            return StoreUnavailableError(
                f"item {item_id!r}: this transaction's lock expired after {self.lock_ttl:g} s "
                "and may have been taken; nothing was applied, try again"
            )
        return StoreError(f"Redis store {_redact(self.url)}: {text}")

    # --- transactions ---------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        tx = self._tx
        if tx is not None:
            tx.depth += 1
            try:
                yield
            finally:
                tx.depth -= 1
            return
        tx = self._local.tx = _Tx()
        try:
            yield
        except BaseException:
            self._local.tx = None
            self._rollback(tx)
            raise
        self._local.tx = None
        if not tx.ops:
            self._unlock(tx)
            return
        try:
            self._run(tx.ops, tx.locks, tx.fences, tx.token)
        except BaseException:
            self._rollback(tx)
            raise

    def _rollback(self, tx: _Tx) -> None:
        if tx.claimed:
            ops = [["release", lease.item_id, str(lease.token)] for lease in tx.claimed]
            with contextlib.suppress(StoreError):  # else the leases simply run out
                self._run(ops, [], {}, "")
        self._unlock(tx)

    def _unlock(self, tx: _Tx) -> None:
        if not tx.locks:
            return
        args = [self.prefix]
        for item_id in tx.locks:
            args += [item_id, tx.token]
        with contextlib.suppress(redis.RedisError):  # else they expire after lock_ttl
            self._unlock_script(args=args)

    def _acquire(self, tx: _Tx, item_id: str) -> None:
        key = self.k("lock", item_id)
        deadline = time.monotonic() + self.lock_wait
        pause = 0.001
        while True:
            try:
                if self.r.set(key, tx.token, nx=True, px=int(self.lock_ttl * 1000)):
                    tx.locks.append(item_id)
                    return
            except redis.RedisError as exc:
                raise self._unavailable(exc) from None
            if time.monotonic() >= deadline:
                raise StoreUnavailableError(
                    f"item {item_id!r} stayed locked by another transaction for "
                    f"{self.lock_wait:g} s; nothing was applied, try again"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _load(self, tx: _Tx, item_id: str) -> dict[str, str] | None:
        """The item's hash as ``tx`` sees it, remembered in ``tx`` for the writes to follow."""
        if item_id not in tx.items:
            fields = self._fields(item_id)
            tx.items[item_id] = fields
            tx.orig[item_id] = fields["state"] if fields else None
        return tx.items[item_id]

    def _fields(self, item_id: str) -> dict[str, str] | None:
        try:
            fields: dict[str, str] = self.r.hgetall(self.k("item", item_id))  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return fields or None

    @staticmethod
    def _record(item_id: str, f: dict[str, str]) -> ItemRecord:
        def when(name: str) -> datetime | None:
            value = f.get(name)
            return from_ts(float(value)) if value else None

        return ItemRecord(
            id=item_id,
            state=ItemState(f["state"]),
            due_at=when("due"),
            lease_owner=f.get("owner") or None,
            lease_token=int(f.get("token") or 0),
            lease_expires_at=when("expires"),
            created_at=when("created"),
            updated_at=when("updated"),
        )

    # --- items ----------------------------------------------------------------------------
    def save_work_item_data(self, item_id: str, data: dict[str, Any]) -> None:
        text = dumps(data)
        _, now = _now()
        tx = self._tx
        if tx is not None and self._load(tx, item_id) is None:
            fields = {"state": "ready", "due": now, "token": "0", "created": now, "updated": now}
            tx.items[item_id] = fields
            tx.new_ids.append(item_id)
        if tx is not None:
            tx.data[item_id] = text
        self._write(["put_data", item_id, text, now])

    def get_work_item_data(self, item_id: str) -> dict[str, Any] | None:
        tx = self._tx
        if tx is not None:
            if item_id in tx.data:
                return json.loads(tx.data[item_id])
            if item_id in tx.items and tx.items[item_id] is None:
                return None
        text = self._read(self.r.get, self.k("data", item_id))
        return None if text is None else json.loads(text)

    def delete_work_item(self, item_id: str) -> None:
        tx = self._tx
        if tx is not None:
            self._load(tx, item_id)
            tx.items[item_id] = None
            tx.data.pop(item_id, None)
            tx.wiped.add(item_id)
            tx.stages.pop(item_id, None)
            tx.reviews.pop(item_id, None)
            for key in [k for k in tx.attempts if k[0] == item_id]:
                del tx.attempts[key]
            if item_id in tx.new_ids:
                tx.new_ids.remove(item_id)
        self._write(["delete", item_id])

    def list_work_items(self, state: ItemState | None = None) -> Iterator[str]:
        key = self.k("items") if state is None else self.k("state", str(state))
        tx = self._tx
        if tx is None or not tx.items:
            return self._scan_ids(key)
        # Inside a transaction: the committed ids, as this transaction leaves them.
        committed = self._read(self.r.zrange, key, 0, -1, withscores=True)
        ids = [i for i, _ in committed if i not in tx.items]
        order = {i: s for i, s in committed}
        touched = []
        for item_id, fields in tx.items.items():
            if fields is None or (state is not None and fields["state"] != state):
                continue
            seq = fields.get("seq") or order.get(item_id)
            if seq is not None:
                touched.append((float(seq), item_id))
        merged = sorted([(order[i], i) for i in ids] + touched)
        out = [i for _, i in merged]
        out += [
            i
            for i in tx.new_ids
            if (f := tx.items.get(i)) and (state is None or f["state"] == state)
        ]
        return iter(out)

    def _scan_ids(self, key: str) -> Iterator[str]:
        """Ids in creation order, a page at a time (a cursor on the score: stable under writes)."""
        low = "-inf"
        while True:
            page = self._read(
                self.r.zrange, key, low, "+inf", byscore=True, offset=0, num=_PAGE, withscores=True
            )
            for item_id, _ in page:
                yield item_id
            if len(page) < _PAGE:
                return
            low = f"({page[-1][1]!r}"

    def get_item(self, item_id: str) -> ItemRecord | None:
        tx = self._tx
        fields = (
            tx.items[item_id] if tx is not None and item_id in tx.items else self._fields(item_id)
        )
        return None if fields is None else self._record(item_id, fields)

    def set_item_state(self, item_id: str, state: ItemState, due_at: datetime | None) -> None:
        due = "" if due_at is None else _ts(due_at)
        _, now = _now()
        tx = self._tx
        if tx is not None:
            fields = self._load(tx, item_id)
            if fields is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            fields.update(state=str(state), updated=now)
            if due:
                fields["due"] = due
            else:
                fields.pop("due", None)
        self._write(["set_state", item_id, str(state), due, now])

    def count_items(self) -> dict[ItemState, int]:
        with self.r.pipeline(transaction=True) as pipe:
            for state in ItemState:
                pipe.zcard(self.k("state", str(state)))
            counts = dict(zip(ItemState, self._read(pipe.execute), strict=True))
        tx = self._tx
        if tx is not None:
            for item_id, orig in tx.orig.items():
                fields = tx.items.get(item_id)
                if orig is not None:
                    counts[ItemState(orig)] -= 1
                if fields is not None:
                    counts[ItemState(fields["state"])] += 1
        return {state: n for state, n in counts.items() if n > 0}

    def next_due_at(self, states: Collection[ItemState] | None = None) -> datetime | None:
        keys = [self.k("due")] if states is None else [self.k("due", str(s)) for s in set(states)]
        if not keys:
            return None
        _, now = _now()
        found = self._read(self._next_due_script, args=[self.prefix, now, *keys])
        return from_ts(float(found)) if found else None

    # --- stage states ---------------------------------------------------------------------
    def save_stage_state(self, item_id: str, stage: str, state: StageState) -> None:
        text = dumps(state.to_dict())
        score = ""
        if state.status == StageStatus.AWAITING_REVIEW:
            score = "+inf" if state.updated_at is None else _ts(state.updated_at)
        tx = self._tx
        if tx is not None:
            if self._load(tx, item_id) is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            tx.stages.setdefault(item_id, {})[stage] = text
        stale = "1" if state.stale else ""
        self._write(["save_stage", item_id, stage, text, str(state.status), score, stale])

    def get_stage_state(self, item_id: str, stage: str) -> StageState | None:
        tx = self._tx
        text: str | None = None
        if tx is not None and stage in tx.stages.get(item_id, {}):
            text = tx.stages[item_id][stage]
        elif tx is None or item_id not in tx.wiped:
            text = self._read(self.r.hget, self.k("stages", item_id), stage)
        return None if text is None else StageState.from_dict(json.loads(text))

    def get_all_stage_states(self, item_id: str) -> dict[str, StageState]:
        tx = self._tx
        texts: dict[str, str] = {}
        if tx is None or item_id not in tx.wiped:
            texts = self._read(self.r.hgetall, self.k("stages", item_id))
        if tx is not None:
            texts.update(tx.stages.get(item_id, {}))
        return {name: StageState.from_dict(json.loads(t)) for name, t in texts.items()}

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, n in self._read(self.r.hgetall, self.k("summary")).items():
            status, _, stage = key.partition(":")
            if int(n) > 0:
                out.setdefault(stage, {})[status] = int(n)
        return out

    def pending_reviews(
        self, stage: str | None = None, limit: int | None = None
    ) -> list[PendingReview]:
        key = self.k("rq") if stage is None else self.k("rq", stage)
        end = -1 if limit is None else limit - 1
        if limit is not None and limit <= 0:
            return []
        members = self._read(self.r.zrange, key, 0, end)
        pairs = [(m, stage) if stage is not None else _split_member(m) for m in members]
        with self.r.pipeline(transaction=False) as pipe:
            for item_id, name in pairs:
                pipe.hget(self.k("stages", item_id), name)
            texts = self._read(pipe.execute)
        found = []
        for (item_id, name), text in zip(pairs, texts, strict=True):
            if text is None:
                continue
            found.append(PendingReview.of(item_id, name, StageState.from_dict(json.loads(text))))
        return found

    # --- attempts, reviews, journal -------------------------------------------------------
    def record_attempt(self, item_id: str, stage: str, record: AttemptRecord) -> None:
        text = dumps(record.to_dict())
        tx = self._tx
        if tx is not None:
            tx.attempts.setdefault((item_id, stage), []).append(text)
        self._write(["attempt", item_id, stage, text])

    def get_attempts(self, item_id: str, stage: str) -> list[AttemptRecord]:
        tx = self._tx
        texts: list[str] = []
        if tx is None or item_id not in tx.wiped:
            texts = self._read(self.r.lrange, self.att_key(item_id, stage), 0, -1)
        if tx is not None:
            texts += tx.attempts.get((item_id, stage), [])
        return [AttemptRecord.from_dict(json.loads(t)) for t in texts]

    def record_review(self, item_id: str, stage: str, record: ReviewRecord) -> None:
        text = dumps({"stage": stage, "record": record.to_dict()})
        tx = self._tx
        if tx is not None:
            tx.reviews.setdefault(item_id, []).append(text)
        self._write(["review", item_id, text])

    def get_reviews(self, item_id: str, stage: str | None = None) -> list[ReviewRecord]:
        tx = self._tx
        texts: list[str] = []
        if tx is None or item_id not in tx.wiped:
            texts = self._read(self.r.lrange, self.k("reviews", item_id), 0, -1)
        if tx is not None:
            texts += tx.reviews.get(item_id, [])
        entries = [json.loads(t) for t in texts]
        return [
            ReviewRecord.from_dict(e["record"])
            for e in entries
            if stage is None or e["stage"] == stage
        ]

    def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        op = ["events", str(len(events))]
        for event in events:
            op += [event.item_id, dumps(event.to_dict())]
        self._write(op)

    def read_events(
        self, item_id: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        journal = self.k("journal")
        if item_id is None:
            start = f"({after}-0" if after > 0 else "-"
            entries = self._read(self.r.xrange, journal, start, "+", count=limit)
        else:
            page = {} if limit is None else {"offset": 0, "num": limit}
            key = self.k("ijournal", item_id)
            ids = self._read(self.r.zrange, key, f"({after}", "+inf", byscore=True, **page)
            with self.r.pipeline(transaction=False) as pipe:
                for eid in ids:
                    pipe.xrange(journal, f"{eid}-0", f"{eid}-0")
                entries = [e for found in self._read(pipe.execute) for e in found]
        return [
            StoredEvent(int(eid.split("-", 1)[0]), Event.from_dict(json.loads(fields["event"])))
            for eid, fields in entries
        ]

    # --- leases ---------------------------------------------------------------------------
    def lock_item(self, item_id: str, lease: Lease | None = None) -> ItemRecord:
        tx = self._tx
        if tx is not None and item_id not in tx.locks:
            self._acquire(tx, item_id)
            if item_id in tx.items and item_id not in tx.new_ids and tx.items[item_id]:
                # Read before the lock: read again now that nobody else can write it.
                fields = self._fields(item_id)
                if fields is not None:
                    for name in ("owner", "token", "expires"):
                        if name in fields:
                            tx.items[item_id][name] = fields[name]  # type: ignore[index]
        rec = check_lease(self.get_item(item_id), item_id, lease)
        if lease is not None and tx is not None:
            tx.fences[item_id] = lease.token
        return rec

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        item_ids: Sequence[str] | None = None,
    ) -> list[Lease]:
        if limit <= 0:
            return []
        now_dt, now = _now()
        expires = _ts(now_dt + timedelta(seconds=lease_seconds))
        if item_ids is not None and not item_ids:
            return []
        args = [self.prefix, worker_id, now, expires, str(limit), *(item_ids or [])]
        out = self._read(self._claim_script, args=args)
        expires_at = from_ts(float(expires))
        assert expires_at is not None
        leases = [
            Lease(out[i], worker_id, int(out[i + 1]), expires_at) for i in range(0, len(out), 2)
        ]
        tx = self._tx
        if tx is not None:
            # Applied at once, like a row lock others skip; given back if the block fails.
            tx.claimed += leases
            for lease in leases:
                fields = tx.items.get(lease.item_id)
                if fields is not None:
                    fields.update(owner=worker_id, token=str(lease.token), expires=expires)
        return leases

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        if not leases:
            return []
        expires_dt = utcnow() + timedelta(seconds=lease_seconds)
        expires = _ts(expires_dt)
        expires_at = from_ts(float(expires))
        assert expires_at is not None
        ops = [["renew", lease.item_id, str(lease.token), expires] for lease in leases]
        tx = self._tx
        if tx is None:
            done = self._write(*ops)
            return [
                Lease(lease.item_id, lease.worker_id, lease.token, expires_at)
                for lease, ok in zip(leases, done, strict=True)
                if ok
            ]
        out = []
        for lease in leases:
            fields = self._load(tx, lease.item_id)
            if fields is not None and int(fields.get("token") or 0) == lease.token:
                fields["expires"] = expires
                out.append(Lease(lease.item_id, lease.worker_id, lease.token, expires_at))
        self._write(*ops)
        return out

    def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        tx = self._tx
        if tx is not None:
            for lease in leases:
                fields = self._load(tx, lease.item_id)
                if fields is not None and int(fields.get("token") or 0) == lease.token:
                    fields.pop("owner", None)
                    fields.pop("expires", None)
        self._write(*[["release", lease.item_id, str(lease.token)] for lease in leases])

    def live_leases(self, limit: int = 100) -> list[Lease]:
        _, now = _now()
        ids = self._read(
            self.r.zrange, self.k("leases"), f"({now}", "+inf", byscore=True, offset=0, num=limit
        )
        with self.r.pipeline(transaction=False) as pipe:
            for item_id in ids:
                pipe.hmget(self.k("item", item_id), "owner", "token", "expires")
            rows = self._read(pipe.execute)
        out = []
        for item_id, (owner, token, expires) in zip(ids, rows, strict=True):
            when = from_ts(float(expires)) if expires else None
            if owner and token and when is not None:
                out.append(Lease(item_id, owner, int(token), when))
        return out

    def expire_leases(self, owners: Sequence[str]) -> int:
        if not owners:
            return 0
        _, now = _now()
        return int(self._read(self._expire_script, args=[self.prefix, now, *owners]))

    def mark_commit(self, mark: str) -> None:
        self._write(["mark", mark])

    def committed(self, mark: str) -> bool:
        return bool(self._read(self.r.exists, self.k("mark", mark)))

    def prune(self, completed_before: datetime, limit: int = 500) -> list[str]:
        cutoff = _ts(completed_before)
        ids = self._read(
            self.r.zrange,
            self.k("complete_at"),
            "-inf",
            f"({cutoff}",
            byscore=True,
            offset=0,
            num=limit,
        )
        if not ids:
            return []
        tx = self._tx
        done = self._write(*[["prune", item_id, cutoff] for item_id in ids])
        if tx is not None:
            for item_id in ids:
                self._load(tx, item_id)
                tx.items[item_id] = None
                tx.wiped.add(item_id)
            return list(ids)
        return [item_id for item_id, ok in zip(ids, done, strict=True) if ok]

    # --- housekeeping ---------------------------------------------------------------------
    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        self.r.close()

    # --- the recorded definition, and changing it ---------------------------------------
    def get_definition(self) -> dict[str, Any] | None:
        tx = self._tx
        text = tx.definition if tx is not None and tx.definition is not None else None
        if text is None:
            text = self._read(self.r.get, self.k("definition"))
        return None if text is None else json.loads(text)

    def save_definition(self, definition: dict[str, Any]) -> None:
        text = dumps(definition)
        tx = self._tx
        if tx is not None:
            tx.definition = text
        self._write(["put_definition", text])

    def item_page(self, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        if limit <= 0:
            return [], None
        low = "-inf" if cursor is None else f"({cursor}"
        page = self._read(
            self.r.zrange,
            self.k("items"),
            low,
            "+inf",
            byscore=True,
            offset=0,
            num=limit,
            withscores=True,
        )
        ids = [item_id for item_id, _ in page]
        return ids, (repr(page[-1][1]) if len(page) == limit else None)

    def rename_stage(self, item_ids: Sequence[str], old: str, new: str) -> int:
        # Read, then one script applies the moves (inside a transaction, with its writes).
        moved = 0
        ops: list[Op] = []
        for item_id in item_ids:
            states = self.get_all_stage_states(item_id)
            if old not in states or new in states:
                continue
            st = states[old]
            score = ""
            if st.status == StageStatus.AWAITING_REVIEW:
                score = "+inf" if st.updated_at is None else _ts(st.updated_at)
            text = dumps(st.to_dict())
            stale = "1" if st.stale else ""
            ops.append(["drop_stage", item_id, old])
            ops.append(["save_stage", item_id, new, text, str(st.status), score, stale])
            ops.append(["move_attempts", item_id, old, new])
            entries = self._read(self.r.lrange, self.k("reviews", item_id), 0, -1)
            if any(json.loads(e)["stage"] == old for e in entries):
                rewritten = [
                    dumps({"stage": new, "record": d["record"]}) if d["stage"] == old else e
                    for e in entries
                    for d in [json.loads(e)]
                ]
                ops.append(["set_reviews", item_id, str(len(rewritten)), *rewritten])
            tx = self._tx
            if tx is not None:
                tx.stages.setdefault(item_id, {})[new] = text
            moved += 1
        if ops:
            self._write(*ops)
        return moved

    def count_stale(self) -> dict[str, int]:
        stages = sorted(self.summary())
        with self.r.pipeline(transaction=False) as pipe:
            for stage in stages:
                pipe.zcard(self.k("stale", stage))
            counts = self._read(pipe.execute)
        return {stage: int(n) for stage, n in zip(stages, counts, strict=True) if n}

    def list_stage_items(
        self,
        stage: str,
        *,
        statuses: Collection[StageStatus] | None = None,
        stale: bool | None = None,
    ) -> Iterator[str]:
        if stale is not True:
            yield from super().list_stage_items(stage, statuses=statuses, stale=stale)
            return
        wanted = None if statuses is None else {StageStatus(s) for s in statuses}
        key, low = self.k("stale", stage), "-"
        while True:
            page = self._read(self.r.zrange, key, low, "+", bylex=True, offset=0, num=_PAGE)
            for item_id in page:
                if wanted is None or StageStatus.COMPLETE in wanted:
                    yield item_id  # only COMPLETE states are ever stale
            if len(page) < _PAGE:
                return
            low = f"({page[-1]}"

    def revoke_lease(self, item_id: str) -> None:
        tx = self._tx
        if tx is not None:
            fields = self._load(tx, item_id)
            if fields is None:
                raise UnknownItemError(f"unknown item {item_id!r}")
            fields["token"] = str(int(fields.get("token") or 0) + 1)
            fields.pop("owner", None)
            fields.pop("expires", None)
        self._write(["revoke", item_id])

    def destroy(self) -> int:
        """Delete every key under this store's prefix (tests, ``treadle`` resets); the count."""
        n = 0
        batch: list[str] = []
        for key in self.r.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += self.r.unlink(*batch)
                batch = []
        if batch:
            n += self.r.unlink(*batch)
        return n


def _split_member(member: str) -> tuple[str, str]:
    """``LEN:IDSTAGE`` (LEN = the id's length in bytes) -> (id, stage)."""
    size, _, rest = member.partition(":")
    raw = rest.encode()
    n = int(size)
    return raw[:n].decode(), raw[n:].decode()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


__all__ = ["RedisStateStore", "parse_url"]
