"""Running a workflow: the engine behind `Workflow.advance`, `run`, `serve`,
`resolve_review` and `retry_stage`.

One transition reads top to bottom through these modules:
`worker` claims an item → `item` runs its loop → `attempt` runs one attempt →
`decide` turns the result into a new state, events and a record (pure) →
`writes` is the transaction the group-commit writer applies → the event bus
publishes what committed. `plan` is what the engine knows of the workflow,
`ready` the pure readiness and aggregate-state rules, `session` the threads,
slots and leases of one call. See docs/design/engine.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .._commit import Committer
from ..clock import Clock
from ..errors import StoreError
from ..events import EventBus
from ..model import ReviewDecision, WorkItem
from ..store.base import StateStore
from . import writes
from .plan import Plan, ReviewTimeout, StageLimit, StageSpec
from .session import Session, default_worker_id
from .worker import ClaimLoop, RunReport, advance_one, check_items

#: Stage executions one ``advance()`` call may have in flight (fan-outs included).
ADVANCE_CONCURRENCY = 64


class Engine:
    """Runs a `Plan` against a store, publishing committed events on ``bus``."""

    def __init__(self, plan: Plan, bus: EventBus, clock: Clock):
        self.plan = plan
        self.bus = bus
        self.clock = clock

    def _check_store(self, store: StateStore) -> None:
        limited = [name for name, spec in self.plan.specs.items() if spec.limit is not None]
        if limited and type(store).admit is StateStore.admit:
            raise StoreError(
                f"stage {limited[0]!r} has a limit, which {type(store).__name__} cannot keep "
                "across workers; use a SQLite, PostgreSQL or MySQL store (or the memory "
                "store in one process)"
            )

    def _session(
        self,
        store: StateStore,
        *,
        concurrency: int,
        lease_seconds: float,
        worker_id: str | None,
    ) -> Session:
        self._check_store(store)
        return Session(
            self.plan,
            self.bus,
            self.clock,
            store,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
        )

    async def advance(self, item: WorkItem, store: StateStore) -> None:
        """Run every ready stage of ``item`` until none is ready (if no one else holds it)."""
        async with self._session(
            store, concurrency=ADVANCE_CONCURRENCY, lease_seconds=60.0, worker_id=None
        ) as session:
            await advance_one(session, item)

    async def run(
        self,
        store: StateStore,
        items: Sequence[WorkItem] | None,
        *,
        concurrency: int,
        until_idle: bool,
        lease_seconds: float,
        worker_id: str | None,
        stop: asyncio.Event | None = None,
        forever: bool = False,
        poll_interval: float = 1.0,
    ) -> RunReport:
        """Claim and advance items; with ``forever``, until ``stop`` is set (then drain)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if items is not None:
            check_items(items)
        async with self._session(
            store, concurrency=concurrency, lease_seconds=lease_seconds, worker_id=worker_id
        ) as session:
            session.stop = stop
            session.forever = forever
            loop = ClaimLoop(
                session,
                items,
                concurrency=concurrency,
                until_idle=until_idle,
                forever=forever,
                poll_interval=poll_interval,
            )
            return await loop.run()

    async def _write(self, store: StateStore, write: writes.StageWrite) -> None:
        async with Committer(store) as committer:
            _, events = await committer.submit(write)
        self.bus.publish(events)

    async def resolve_review(
        self,
        item_id: str,
        stage: str,
        decision: ReviewDecision,
        store: StateStore,
        *,
        reviewer: str | None,
        comment: str | None,
    ) -> None:
        """Apply a review decision to a stage AWAITING_REVIEW (one commit)."""
        write = writes.review(
            self.plan, self.clock, item_id, stage, decision, reviewer=reviewer, comment=comment
        )
        await self._write(store, write)

    async def retry_stage(self, item_id: str, stage: str, store: StateStore) -> None:
        """Put a FAILED stage back to PENDING (one commit)."""
        await self._write(store, writes.retry(self.plan, self.clock, item_id, stage))


__all__ = [
    "ADVANCE_CONCURRENCY",
    "Engine",
    "Plan",
    "ReviewTimeout",
    "RunReport",
    "StageLimit",
    "StageSpec",
    "default_worker_id",
]
