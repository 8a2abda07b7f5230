"""The claim loop behind ``Workflow.run``, ``serve`` and ``advance``: claim due items in
batches, advance each under its lease (`item.ItemRun`), sleep until the next one is due,
and on ``stop`` claim nothing more and let in-flight stages finish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..errors import LeaseLostError, StoreError
from ..model import Item, ItemState, Lease, WorkItem
from . import writes
from .item import ItemRun
from .session import WAITING, Claimed, Session, process_gone
from .wakeup import WakeUps

log = logging.getLogger("treadle.engine")


#: Items a run holds at once, per execution slot (``concurrency``). Most of a claimed
#: item's time is spent waiting for its commit, not in a slot: more items in flight make
#: larger group commits (measured: about 20 % more W1 transitions/s at synchronous=FULL
#: than with 2, in the same run). Celery's prefetch multiplier has the same default.
PREFETCH = 4

#: How long an item whose advance broke (not a stage's error: those are attempts) waits
#: before a worker claims it again; doubled each time it breaks again, up to an hour.
BROKEN_ITEM_DELAY = 60.0


@dataclass
class RunReport:
    """What one ``Workflow.run`` call did."""

    items: int = 0
    executions: int = 0
    lost_leases: list[str] = field(default_factory=list)
    #: Items whose advance broke outside any attempt (item id -> the error's first line);
    #: each was logged with its traceback and put aside: ``run`` does not wait for it
    #: (``run --item`` tries it again), a worker claims it again later.
    errors: dict[str, str] = field(default_factory=dict)


def check_items(items: Sequence[WorkItem]) -> None:
    for item in items:
        if not isinstance(getattr(item, "id", None), str):
            raise TypeError(f"a work item needs a string id, got {item!r}")


async def advance_claimed(session: Session, item: WorkItem | None, claimed: Claimed) -> None:
    """Advance an item this session claimed (``item`` None: built from its stored data);
    its lease is given back at the end."""
    lease = claimed.lease
    try:
        work = item if item is not None else Item(lease.item_id, dict(claimed.data or {}))
        await ItemRun(session, work, lease, claimed.states).advance()
    except (LeaseLostError, StoreError):
        raise  # the lease is gone, or the whole store is (a full disk, an outage)
    except Exception as exc:
        # Not a stage's error (those are recorded on its attempts): the engine or the
        # store failed on this item. Say so, put it aside, and go on with the others.
        log.exception("item %r: advancing it failed; putting it aside", lease.item_id)
        session.errors[lease.item_id] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        session.broken[lease.item_id] = times = session.broken.get(lease.item_id, 0) + 1
        delay = min(BROKEN_ITEM_DELAY * 2 ** (times - 1), 3600.0) if session.forever else None
        if lease.item_id not in session.lost:
            with contextlib.suppress(Exception):
                await session.committer.submit(
                    writes.put_aside(session.clock, lease.item_id, lease, delay)
                )
    finally:
        if lease.item_id not in session.lost:
            await session.release(lease)


async def advance_one(session: Session, item: WorkItem) -> bool:
    """Register, claim and advance one item; False when another live worker holds it."""
    check_items([item])
    await session.committer.submit(writes.register([item]))
    claim = await session.claim(1, [item.id])
    if not claim.items and (await take_over_dead(session))[0]:
        claim = await session.claim(1, [item.id])
    if not claim.items:
        log.info("item %r is leased by another worker; not advancing it", item.id)
        return False
    # A task of its own, so `Workflow.cancel` can stop it like any claimed item.
    task = asyncio.ensure_future(advance_claimed(session, item, claim.items[0]))
    session.tasks[item.id] = task
    try:
        await asyncio.wait([task])
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        if session.tasks.get(item.id) is task:
            del session.tasks[item.id]
    if task.cancelled():
        if item.id in session.cancelled or await _was_cancelled(session, item.id):
            return True
        if item.id in session.lost:  # the heartbeat found the lease taken over
            raise LeaseLostError(f"item {item.id!r}: the lease was lost while advancing it")
        raise asyncio.CancelledError
    try:
        task.result()
    except LeaseLostError:
        if not await _was_cancelled(session, item.id):
            raise
    return True


async def take_over_dead(session: Session) -> tuple[int, list[Lease]]:
    """End the leases held by processes on this machine that are gone (a ``kill -9``d
    run need not be waited out); how many ended, and the live leases of others."""
    leases = await session.read(lambda s: s.live_leases(100))
    others = [lease for lease in leases if lease.worker_id != session.owner]
    gone = sorted({lease.worker_id for lease in others if process_gone(lease.worker_id)})
    if not gone:
        return 0, others
    n = await session.committer.submit(lambda s: s.expire_leases(gone))
    if n:
        log.warning(
            "took over %d item%s from %s: that process is gone",
            n,
            "" if n == 1 else "s",
            ", ".join(gone),
        )
    return n, [lease for lease in others if lease.worker_id not in gone]


async def _was_cancelled(session: Session, item_id: str) -> bool:
    """Whether a lease lost on this item was taken by ``cancel`` (another process's)."""
    if item_id in session.cancelled:
        return True
    rec = await session.read(lambda s: s.get_item(item_id))
    return rec is not None and rec.state == ItemState.CANCELLED


class ClaimLoop:
    """Claims due items and advances them, at most ``concurrency`` executions in flight."""

    def __init__(
        self,
        session: Session,
        items: Sequence[WorkItem] | None,
        *,
        concurrency: int,
        until_idle: bool,
        forever: bool,
        poll_interval: float,
    ):
        self.session = session
        self.concurrency = concurrency
        self.until_idle = until_idle
        self.forever = forever
        self.poll_interval = poll_interval
        self.objects: dict[str, WorkItem] = {} if items is None else {i.id: i for i in items}
        #: For a run over given items: item id -> (aggregate state, due_at), kept current.
        self.local: dict[str, tuple[ItemState, datetime | None]] | None = (
            None if items is None else {}
        )
        self.report = RunReport()
        #: When the next due item not claimed becomes due, as the last claim saw it.
        self.next_due: datetime | None = None
        #: When we last looked for leases of dead local processes; what we said we wait for.
        self._looked: datetime | None = None
        self._said: set[tuple[str, datetime]] = set()

    async def run(self) -> RunReport:
        session, tasks = self.session, self.session.tasks
        if self.local is not None:
            self.local.update(
                await session.committer.submit(writes.register(list(self.objects.values())))
            )
        await self._take_over()
        # A worker listens for work appearing (PostgreSQL NOTIFY); a run until idle
        # only waits for its own items.
        self.wakeups = WakeUps(session.store, session.clock, session.stop, listen=self.forever)
        try:
            while await self._turn():
                pass
        finally:
            self.wakeups.close()
            if tasks:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
        self.report.executions = session.executions
        self.report.errors = dict(session.errors)
        return self.report

    async def _turn(self) -> bool:
        """Claim what fits, then wait for an item to finish, the next due time or a stop;
        False once there is nothing more to do."""
        session, tasks, concurrency = self.session, self.session.tasks, self.concurrency
        stopping = session.stopping
        room = PREFETCH * concurrency - len(tasks)
        # Claim in batches: only once room for half the slots' worth of items is free
        # (or fewer items than slots are held), not one claim transaction per item.
        if (
            not stopping
            and room > 0
            and (room >= max(concurrency // 2, 1) or len(tasks) < concurrency)
        ):
            claimed = await self._claim(room)
            for c in claimed:
                item_id = c.lease.item_id
                tasks[item_id] = asyncio.create_task(
                    advance_claimed(session, self.objects.get(item_id), c)
                )
                self.report.items += 1
            if claimed and len(tasks) < PREFETCH * concurrency:
                return True
        wake = None if stopping else self._next_wake()
        if wake is not None or (self.forever and not stopping):
            # Look again at least every poll_interval: other processes add
            # items and release leases without telling us.
            poll = session.clock.now() + timedelta(seconds=self.poll_interval)
            wake = poll if wake is None else min(wake, poll)
        if not tasks:
            if stopping or wake is None or not (self.until_idle or self.forever):
                return False
            if await self._take_over():
                return True
            await self.wakeups.wait(max((wake - session.clock.now()).total_seconds(), 0.0), ())
            return True
        timeout = None
        if wake is not None and room > 0:
            timeout = max((wake - session.clock.now()).total_seconds(), 0.001)
        done = await self.wakeups.wait(timeout, list(tasks.values()), work=room > 0)
        for task in done:
            await self._finished(task)
        return True

    async def _take_over(self) -> bool:
        """Take over from dead local processes (at most once per poll interval); whether
        any lease ended. Otherwise say what a run waits for."""
        session = self.session
        now = session.clock.now()
        if self._looked is not None and (now - self._looked).total_seconds() < self.poll_interval:
            return False
        self._looked = now
        n, others = await take_over_dead(session)
        if n:
            return True
        if not self.forever:
            self._say_waiting(others)
        return False

    def _say_waiting(self, leases: list[Lease]) -> None:
        """Once per holder and expiry: which items another live worker holds, until when."""
        by_owner: dict[tuple[str, datetime], list[str]] = {}
        for lease in leases:
            key = (lease.worker_id, lease.expires_at.replace(microsecond=0))
            by_owner.setdefault(key, []).append(lease.item_id)
        for (owner, until), ids in by_owner.items():
            if (owner, until) in self._said:
                continue
            self._said.add((owner, until))
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            log.warning(
                "waiting for %s, leased by %s until %s",
                shown,
                owner,
                until.astimezone().strftime("%H:%M:%S"),
            )

    async def _finished(self, task: asyncio.Task[None]) -> None:
        session, tasks = self.session, self.session.tasks
        item_id = next(k for k, t in tasks.items() if t is task)
        del tasks[item_id]
        if self.local is not None and item_id in session.errors:
            self.local.pop(item_id, None)  # put aside: this run does not wait for it
        elif self.local is not None:
            rec = await session.read(lambda s: s.get_item(item_id))
            self.local[item_id] = (rec.state, rec.due_at) if rec else (ItemState.COMPLETE, None)
        if task.cancelled():
            if item_id in session.lost:
                await self._lost(item_id, None)
                return
            raise asyncio.CancelledError
        exc = task.exception()
        if isinstance(exc, LeaseLostError):
            await self._lost(item_id, exc)
        elif exc is not None:
            raise exc

    async def _lost(self, item_id: str, exc: LeaseLostError | None) -> None:
        """An item taken from this worker: by ``cancel`` (fine), or by another worker."""
        if await _was_cancelled(self.session, item_id):
            log.info("item %r was cancelled; stopped working on it", item_id)
            return
        if exc is not None:
            log.warning("%s", exc)
        self.report.lost_leases.append(item_id)

    async def _claim(self, room: int) -> list[Claimed]:
        session, local = self.session, self.local
        if local is None:
            claim = await session.claim(room)
            self.next_due = claim.next_due
            return claim.items
        now = session.clock.now()
        while session.woken:  # a limited stage ended here: its first waiter is due now
            woken = session.woken.pop()
            if woken in local:
                local[woken] = (ItemState.READY, now)
        due_now = [
            (-getattr(self.objects.get(i), "priority", 0), due, i)
            for i, (_, due) in local.items()
            if due is not None and due <= now and i not in session.tasks
        ]
        wanted = [i for _, _, i in sorted(due_now)[:room]]  # highest priority, earliest due
        if not wanted:
            return []
        claimed = (await session.claim(room, wanted)).items
        got = {c.lease.item_id for c in claimed}
        missed = [i for i in wanted if i not in got]
        if missed:  # another worker holds them: look again when their leases end
            recs = await session.read(lambda s: {i: s.get_item(i) for i in missed})
            for i, rec in recs.items():
                if rec is None:
                    del local[i]
                else:
                    local[i] = (rec.state, rec.lease_expires_at or rec.due_at)
        return claimed

    def _next_wake(self) -> datetime | None:
        """When some item next has work that `run` waits for (not review deadlines)."""
        if self.local is None:
            return self.next_due
        times = [
            due
            for i, (state, due) in self.local.items()
            if due is not None and state in WAITING and i not in self.session.tasks
        ]
        return min(times, default=None)
