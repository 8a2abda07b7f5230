"""What one engine call holds: the writer and reader threads, the execution slots, and the
leases it claimed (renewed by a heartbeat while it works)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from .._commit import Committer, Reader, Write
from ..clock import Clock
from ..events import EventBus
from ..model import ItemState, Lease, StageState
from ..store.base import StateStore
from .plan import Plan

log = logging.getLogger("treadle.engine")

T = TypeVar("T")


def default_worker_id() -> str:
    """``host:pid:random``: names a worker in leases and logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _started(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot, from /proc); 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of the file: starttime
    except (OSError, IndexError, ValueError):
        return 0


def _machine() -> str:
    """This host as a lease names it: its name, this boot, and this PID namespace, so a
    machine with the same name, a reboot, or a container never looks like "here"."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()[:8]
    except OSError:
        boot = "-"
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}+{boot}+{namespace}"


#: This process as a lease names it: machine, pid and start time (a reused pid differs).
PROCESS = f"{_machine()}/{os.getpid()}/{_started(os.getpid())}"
_OWNER = re.compile(r" \[(?P<machine>[^/\]]+)/(?P<pid>\d+)/(?P<start>\d+)\]$")


def lease_owner(worker_id: str) -> str:
    """What a lease records as its holder: the worker's name and its process."""
    return f"{worker_id} [{PROCESS}]"


def process_gone(owner: str) -> bool:
    """Whether ``owner`` names a process on this machine (same host, boot and PID
    namespace) that no longer exists, so its leases can be taken over at once instead
    of waiting for them to expire."""
    found = _OWNER.search(owner)
    if found is None or found["machine"] != PROCESS.split("/", 1)[0] or sys.platform == "win32":
        return False
    pid, started = int(found["pid"]), int(found["start"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    now = _started(pid)
    return bool(started and now and now != started)  # the pid was reused


#: Item states whose items have work that ``run`` waits for (review deadlines aside).
WAITING = (ItemState.READY, ItemState.SCHEDULED, ItemState.RUNNING)


@dataclass(frozen=True)
class Claimed:
    """An item this session leased, with what it needs to start: its stage states and
    (when it was claimed for being due) its data."""

    lease: Lease
    data: dict[str, Any] | None
    states: dict[str, StageState]


@dataclass(frozen=True)
class Claim:
    """What one claim took, and when the next due item not taken becomes due (None:
    none is coming, or the claim named its items)."""

    items: list[Claimed]
    next_due: datetime | None


class Slots:
    """Execution slots: at most ``n`` attempts in flight in one engine call.

    ``slots.one`` is the plain semaphore (the hot path). ``slots.alone()`` takes every
    slot, so the attempt it guards runs with no other stage executing in this process
    (a stage that reached its recovery limit); waiters queue fairly, so it gets them.
    """

    def __init__(self, n: int):
        self.n = n
        self.one = asyncio.Semaphore(n)
        self._alone = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self._alone:
            taken = 0
            try:
                for _ in range(self.n):
                    await self.one.acquire()
                    taken += 1
                yield
            finally:
                for _ in range(taken):
                    self.one.release()


class Session:
    """Resources of one engine call; ``async with`` starts and stops them."""

    def __init__(
        self,
        plan: Plan,
        bus: EventBus,
        clock: Clock,
        store: StateStore,
        *,
        concurrency: int,
        lease_seconds: float,
        worker_id: str | None,
    ):
        self.plan = plan
        self.bus = bus
        self.clock = clock
        self.store = store
        self.slots = Slots(concurrency)
        self.lease_seconds = lease_seconds
        self.worker_id = worker_id or default_worker_id()
        #: The holder named in this session's leases.
        self.owner = lease_owner(self.worker_id)
        self.committer = Committer(store)
        self.reader = Reader(store)
        self.leases: dict[str, Lease] = {}
        self.lost: set[str] = set()
        #: Items cancelled (``Workflow.cancel``) while this session held them.
        self.cancelled: set[str] = set()
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.executions = 0
        #: Items whose advance broke outside any attempt: item id -> what broke, and how
        #: many times it did in this call.
        self.errors: dict[str, str] = {}
        self.broken: dict[str, int] = {}
        #: A worker (``serve``) rather than a run until idle.
        self.forever = False
        #: Items this session woke from waiting for a stage's limit (due now).
        self.woken: set[str] = set()
        self.stop: asyncio.Event | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Session:
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        try:
            if self.leases:
                leases = list(self.leases.values())
                await self.committer.submit(lambda s: s.release(leases))
        finally:
            await self.reader.close()
            await self.committer.close()

    @property
    def stopping(self) -> bool:
        """A worker shutting down starts nothing new."""
        return self.stop is not None and self.stop.is_set()

    async def read(self, fn: Callable[[StateStore], T]) -> T:
        """Run a read off the event loop."""
        return await self.reader.read(fn)

    async def _beat(self) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            held = list(self.leases.values())
            if not held:
                continue
            seconds = self.lease_seconds
            try:
                renewed = await self.committer.submit(lambda s: s.renew(held, seconds))  # noqa: B023
            except Exception:
                log.exception("renewing leases failed; will retry")
                continue
            kept = {lease.item_id for lease in renewed}
            for lease in renewed:
                if lease.item_id in self.leases:
                    self.leases[lease.item_id] = lease
            for lease in held:
                if lease.item_id not in kept and lease.item_id in self.leases:
                    log.warning("lease on item %r was lost; stopping work on it", lease.item_id)
                    self.lost.add(lease.item_id)
                    self.leases.pop(lease.item_id, None)
                    task = self.tasks.get(lease.item_id)
                    if task is not None:
                        task.cancel()

    async def claim(self, limit: int, item_ids: Sequence[str] | None = None) -> Claim:
        """Lease up to ``limit`` due items (or those of ``item_ids``) and load them.

        One transaction on the writer thread: the leases, each claimed item's stage
        states (and, for items claimed because they were due, their data), and when
        the next item not claimed becomes due. No read of its own per item.
        """
        worker, seconds = self.owner, self.lease_seconds
        known = set(self.leases)

        def load(store: StateStore, leases: list[Lease]) -> Claim:
            items = [
                Claimed(
                    lease,
                    store.get_work_item_data(lease.item_id) if item_ids is None else None,
                    store.get_all_stage_states(lease.item_id),
                )
                for lease in leases
            ]
            return Claim(items, store.next_due_at(WAITING) if item_ids is None else None)

        def apply(store: StateStore) -> Claim:
            return load(store, store.claim(worker, limit, seconds, item_ids))

        def replay(store: StateStore) -> Claim:
            # The claim committed but its reply was lost: the leases it took are ours.
            mine = [
                lease
                for lease in store.live_leases(10_000)
                if lease.worker_id == worker and lease.item_id not in known
            ]
            return load(store, mine[:limit])

        claim = await self.committer.submit(Write(apply, replay))
        for claimed in claim.items:
            self.leases[claimed.lease.item_id] = claimed.lease
        return claim

    # --- cancel (SPEC §10): stop an item's attempts in flight -----------------------------
    def cancel_item(self, item_id: str) -> bool:
        """The item was cancelled (its lease revoked): stop working on it. Its task is
        cancelled, so an async stage is cancelled and a sync stage's result is dropped.
        Safe to call from any thread; False when this session does not hold the item."""
        if item_id not in self.leases:
            return False
        self.cancelled.add(item_id)
        self.lost.add(item_id)
        self.leases.pop(item_id, None)
        task = self.tasks.get(item_id)
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
        return True

    async def release(self, lease: Lease) -> None:
        if self.leases.pop(lease.item_id, None) is not None:
            await self.committer.submit(lambda s: s.release([lease]))
