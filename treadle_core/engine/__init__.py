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
import weakref
from collections.abc import Sequence
from typing import Any

from .._commit import Committer, Reader
from ..clock import Clock
from ..errors import ReviewError, StoreError, TreadleError
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
from . import reconcile as _reconcile
from . import writes
from .attempt import check_edit
from .definition import Change, Definition, describe, plan_from, same
from .plan import DEFAULT_VERSION, Plan, ReviewTimeout, StageLimit, StageSpec
from .reconcile import DefinitionChange, Progress
from .review import reviewed_stage
from .session import Session, default_worker_id
from .worker import ClaimLoop, RunReport, advance_one, check_items

#: Stage executions one ``advance()`` call may have in flight (fan-outs included).
ADVANCE_CONCURRENCY = 64


class Engine:
    """Runs a `Plan` against a store, publishing committed events on ``bus``."""

    def __init__(self, plan: Plan, bus: EventBus, clock: Clock, *, runnable: bool = True):
        self.plan = plan
        self.bus = bus
        self.clock = clock
        #: False for a plan built from a store's recorded definition: no stage code.
        self.runnable = runnable
        #: Sessions at work, so ``cancel`` can stop an item one of them holds.
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()

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
        if not self.runnable:
            raise TreadleError(
                f"pipeline {self.plan.name!r} was loaded from the store's recorded definition, "
                "which has no stage code; run it from its treadle.toml or --app"
            )
        self._check_store(store)
        session = Session(
            self.plan,
            self.bus,
            self.clock,
            store,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
        )
        self._sessions.add(session)
        return session

    async def advance(self, item: WorkItem, store: StateStore) -> None:
        """Run every ready stage of ``item`` until none is ready (if no one else holds it)."""
        async with self._session(
            store, concurrency=ADVANCE_CONCURRENCY, lease_seconds=60.0, worker_id=None
        ) as session:
            await _reconcile.reconcile(session.committer, session.reader, self.plan, self.clock)
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
        progress: Progress | None = None,
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
            await _reconcile.reconcile(
                session.committer, session.reader, self.plan, self.clock, progress
            )
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

    # --- a pipeline that lives for months (SPEC §10) -------------------------------------
    async def reconcile(
        self, store: StateStore, progress: Progress | None = None
    ) -> DefinitionChange | None:
        """Bring the store to this plan's definition, in batches; what changed, if anything."""
        async with Committer(store) as committer:
            reader = Reader(store)
            try:
                return await _reconcile.reconcile(
                    committer, reader, self.plan, self.clock, progress
                )
            finally:
                await reader.close()

    async def rerun_many(
        self,
        store: StateStore,
        targets: Sequence[tuple[str, str]],
        *,
        cascade: bool,
        reason: str | None,
        by: str | None,
    ) -> list[BaseException | None]:
        """Re-run ``(item_id, stage)`` pairs, group-committed; per pair, the refusal or None."""
        write = [
            writes.rerun(self.plan, self.clock, i, s, cascade=cascade, reason=reason, by=by)
            for i, s in targets
        ]
        return await self._write_all(store, write)

    async def cancel(
        self, store: StateStore, item_id: str, *, reason: str | None, by: str | None
    ) -> None:
        """Cancel an item (one commit), then stop whatever this process runs of it."""
        await self._write(
            store, writes.cancel(self.plan, self.clock, item_id, reason=reason, by=by)
        )
        for session in list(self._sessions):
            session.cancel_item(item_id)

    async def _write_all(
        self, store: StateStore, batch: Sequence[writes.StageWrite]
    ) -> list[BaseException | None]:
        async with Committer(store) as committer:
            futures = [committer.enqueue(w) for w in batch]
            results = await asyncio.gather(*futures, return_exceptions=True)
        out: list[BaseException | None] = []
        for result in results:
            if isinstance(result, BaseException):
                out.append(result)
            else:
                self.bus.publish(result[1])
                out.append(None)
        return out

    def definition(self) -> Definition:
        """What the store records of this plan."""
        return describe(self.plan)


__all__ = [
    "ADVANCE_CONCURRENCY",
    "DEFAULT_VERSION",
    "Change",
    "Definition",
    "DefinitionChange",
    "Engine",
    "Plan",
    "Progress",
    "ReviewTimeout",
    "RunReport",
    "StageLimit",
    "StageSpec",
    "default_worker_id",
    "plan_from",
    "same",
]
