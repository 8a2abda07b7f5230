"""The engine's two I/O paths: every write through one group-commit writer thread
(`Committer`), every read that can block through one reader thread (`Reader`), so a
round trip to a database server never stalls the event loop.

Group commit: each write function runs against the store inside a transaction; when several are
queued they share one transaction (one commit, one fsync). If a shared
transaction fails, every function of the batch is re-run in a transaction of its
own, so one refused write (``LeaseLostError``, ``ReviewError``) never takes its
neighbours down with it. A caller's ``await`` returns only after its write is
committed, so nothing depends on a transition before it is durable. Every
transaction carries a commit mark, so one whose COMMIT landed while its reply was
lost is never applied twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import StoreUnavailableError
from .store.base import StateStore, commit_mark

log = logging.getLogger("treadle.commit")

T = TypeVar("T")
_Job = tuple[Callable[[StateStore], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]

MAX_BATCH = 256


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _resolve_all(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in done:
        _resolve(fut, ok, value)


class Committer:
    """A writer thread for one store, alive for the duration of an engine call."""

    def __init__(self, store: StateStore, outage_seconds: float = 600.0):
        self.store = store
        #: How long a write waits for an unavailable store before failing.
        self.outage_seconds = outage_seconds
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        #: Writes queued during this turn of each event loop, handed over at its end.
        self._pending: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread = threading.Thread(target=self._loop, name="treadle-writer", daemon=True)
        self._thread.start()

    def enqueue(self, fn: Callable[[StateStore], T]) -> asyncio.Future[T]:
        """Queue ``fn(store)``; the future resolves once its transaction committed.

        The writer gets it when this turn of the event loop ends, with the turn's other
        writes; one loop's writes are applied in the order they were queued.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            # Handed to the writer once the callbacks ready now have run: the writes
            # this turn of the loop makes go in one batch, and the writer wakes once
            # per turn, not once per write while the loop still holds the GIL.
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((fn, fut, loop))
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = self._pending.pop(loop, None)
        if jobs:
            self._queue.put(jobs)

    async def submit(self, fn: Callable[[StateStore], T]) -> T:
        """Run ``fn(store)`` in a transaction on the writer thread; return once committed."""
        # Shielded: a cancelled caller must not forget a write that may still commit.
        return await asyncio.shield(self.enqueue(fn))

    async def close(self) -> None:
        for loop in list(self._pending):
            self._hand_over(loop)
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> Committer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _loop(self) -> None:
        try:
            while True:
                jobs = self._queue.get()
                if jobs is None:
                    return
                stop = False
                while len(jobs) < MAX_BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    jobs += more
                for start in range(0, len(jobs), MAX_BATCH):
                    self._commit(jobs[start : start + MAX_BATCH])
                if stop:
                    return
        finally:
            release = getattr(self.store, "release_thread", None)
            if callable(release):
                release()

    def _commit(self, batch: list[_Job]) -> None:
        """Apply one batch; one wake-up per event loop for all of it, not one per write."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
        for (_, fut, loop), (ok, value) in zip(batch, self._apply(batch), strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                loop.call_soon_threadsafe(_resolve_all, done)

    def _apply(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        if len(batch) > 1:
            try:
                return self._exactly_once([fn for fn, _, _ in batch])
            except StoreUnavailableError as exc:  # still unavailable after the deadline
                return [(False, exc)] * len(batch)
            except Exception:
                pass  # fall back to one transaction each, below
        results: list[tuple[bool, Any]] = []
        for fn, _, _ in batch:
            try:
                results += self._exactly_once([fn])
            except BaseException as exc:
                results.append((False, exc))
        return results

    def _exactly_once(self, fns: list[Callable[[StateStore], Any]]) -> list[tuple[bool, Any]]:
        """Apply ``fns`` in one transaction, once.

        While the store is unavailable (nothing applied), wait and try again. The
        transaction carries a commit mark: when the connection dies during COMMIT, the
        mark says whether it landed, and a transaction that did is not applied again;
        its writes are read back instead (`Write.replay`), or re-run if they are
        idempotent (no replay).
        """
        store, mark = self.store, commit_mark()
        delay, deadline = 0.05, time.monotonic() + self.outage_seconds
        while True:
            try:
                with store.transaction():
                    store.mark_commit(mark)
                    return [(True, fn(store)) for fn in fns]
            except StoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            if self._landed(mark, deadline):
                log.warning("a commit whose reply was lost had landed; not applying it again")
                return [(True, self._replay(fn)) for fn in fns]

    def _landed(self, mark: str, deadline: float) -> bool:
        """Whether the transaction carrying ``mark`` committed (asked until the store
        answers or the deadline passes)."""
        delay = 0.05
        while True:
            try:
                return self.store.committed(mark)
            except StoreUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _replay(self, fn: Callable[[StateStore], Any]) -> Any:
        replay = getattr(fn, "replay", None)
        if replay is None:
            return self._exactly_once([fn])[0][1]  # idempotent: apply it again
        return replay(self.store)


@dataclass(frozen=True)
class Write(Generic[T]):
    """A write for the `Committer`, with what to return instead of applying it again
    when its transaction committed but the reply was lost (``replay`` reads it back)."""

    apply: Callable[[StateStore], T]
    replay: Callable[[StateStore], T] | None = None

    def __call__(self, store: StateStore) -> T:
        return self.apply(store)


class Reader:
    """A reader thread for one store: ``await reader.read(fn)`` runs ``fn(store)`` there."""

    def __init__(self, store: StateStore):
        self.store = store
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="treadle-reader")

    async def read(self, fn: Callable[[StateStore], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.store)

    async def close(self) -> None:
        release = getattr(self.store, "release_thread", None)
        if callable(release):
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(self._pool, release)
        await asyncio.to_thread(self._pool.shutdown)
