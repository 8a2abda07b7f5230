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
from typing import Any

from .._commit import Committer
from ..clock import Clock
from ..errors import ReviewError, StoreError
from ..events import EventBus
from ..model import (
    ApproveWithEdits,
    AttemptRecord,
    Item,
    ReviewDecision,
    StageState,
    StageStatus,
    WorkItem,
)
from ..store.base import StateStore, normalise_artefact
from . import writes
from .attempt import check_edit
from .plan import Plan, ReviewTimeout, StageLimit, StageSpec
from .review import reviewed_stage
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
        """Apply a review decision to a stage AWAITING_REVIEW (one commit). An edit is
        first checked by the quality gate of the stage whose work it edits (unless
        ``force``); a rejection raises `ReviewError` with the gate's feedback."""
        if isinstance(decision, ApproveWithEdits) and not decision.force:
            await self._check_edit(item_id, stage, decision.artefact, store)
        write = writes.review(
            self.plan, self.clock, item_id, stage, decision, reviewer=reviewer, comment=comment
        )
        await self._write(store, write)

    async def _check_edit(self, item_id: str, stage: str, artefact: Any, store: StateStore) -> None:
        def read() -> tuple[dict[str, Any] | None, StageState | None]:
            return store.get_work_item_data(item_id), store.get_stage_state(item_id, stage)

        data, st = await asyncio.to_thread(read)
        spec = self.plan.specs[stage]
        if (
            st is None
            or st.status != StageStatus.AWAITING_REVIEW
            or st.review_choices
            or st.review_form is not None
            or spec.required > 1
        ):
            return  # no edit is taken here: the write says what is wrong
        judged = reviewed_stage(self.plan, stage, st)
        if spec.gate is None:
            spec = self.plan.specs[judged]
        where = f"item {item_id!r} stage {stage!r}"
        edited = normalise_artefact(
            artefact, where=f"{where} edited artefact", max_bytes=self.plan.max_artefact_bytes
        )

        def judged_attempts() -> tuple[int, list[AttemptRecord]]:
            own = st if spec.name == stage else store.get_stage_state(item_id, spec.name)
            return (own.attempt if own else 0), store.get_attempts(item_id, spec.name)

        attempt, attempts = await asyncio.to_thread(judged_attempts)
        why = await check_edit(Item(item_id, data or {}), spec, edited, attempt, attempts)
        if why is not None:
            raise ReviewError(
                f"{where}: the edit fails the quality gate of stage {spec.name!r}: {why} "
                "(nothing saved; force the approval to skip the gate)"
            )

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
