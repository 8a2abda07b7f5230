"""Building and validating the DAG of stages (networkx), and the `Workflow` API."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Sequence
from typing import Any

import networkx as nx

from .clock import SYSTEM_CLOCK, Clock
from .engine import Engine, Plan, ReviewTimeout, RunReport, StageLimit, StageSpec
from .errors import (
    CycleError,
    DuplicateStageError,
    SelfDependencyError,
    UnknownDependencyError,
    UnknownItemError,
    UnknownStageError,
    UnknownTargetError,
    WorkflowError,
)
from .events import EventBus, Subscription
from .model import (
    REVIEW_DECISION_TYPES,
    Approve,
    LimitStatus,
    PendingReview,
    PipelineStatus,
    Reject,
    ReviewDecision,
    StageState,
    WorkItem,
)
from .quality import QualityGate, RetryBudget, ReviewPolicy
from .stage import Stage, as_stage
from .store.base import DEFAULT_MAX_ARTEFACT_BYTES, StateStore
from .validation import MAX_CONCURRENCY, parse_rate

__all__ = ["ReviewTimeout", "StageSpec", "Workflow", "WorkflowBuilder"]


def _closest(name: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class WorkflowBuilder:
    """Collects stages, dependencies and policies; ``build()`` validates them."""

    def __init__(self, name: str = "workflow"):
        self.name = name
        self._stages: dict[str, Stage] = {}
        self._errors: list[WorkflowError] = []
        self._deps: list[tuple[str, str]] = []
        self._gates: dict[str, QualityGate] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._policies: dict[str, ReviewPolicy] = {}
        self._timeouts: dict[str, ReviewTimeout] = {}
        self._limits: dict[str, StageLimit] = {}
        self._max_artefact_bytes = DEFAULT_MAX_ARTEFACT_BYTES
        self._max_recoveries = 3
        self._clock: Clock = SYSTEM_CLOCK

    @property
    def stage_names(self) -> list[str]:
        return list(self._stages)

    def stage(self, name: str, stage: Any, *, needs: Sequence[str] = ()) -> WorkflowBuilder:
        """Add a stage: a `Stage` instance or a function ``(item, ctx)``, sync or async."""
        if name in self._stages:
            self._errors.append(DuplicateStageError(f"stage {name!r} is defined twice"))
            return self
        self._stages[name] = as_stage(stage, name)
        for dep in needs:
            self.dependency(name, dep)
        return self

    def dependency(self, stage: str, depends_on: str) -> WorkflowBuilder:
        """``stage`` runs after ``depends_on``."""
        self._deps.append((stage, depends_on))
        return self

    def quality_gate(self, stage: str, gate: QualityGate) -> WorkflowBuilder:
        self._gates[stage] = gate
        return self

    def retry_budget(self, stage: str, budget: RetryBudget) -> WorkflowBuilder:
        self._budgets[stage] = budget
        return self

    def review_policy(self, stage: str, policy: ReviewPolicy) -> WorkflowBuilder:
        self._policies[stage] = ReviewPolicy(policy)
        return self

    def review_timeout(
        self, stage: str, seconds: float, on_timeout: ReviewDecision | None = None
    ) -> WorkflowBuilder:
        """Decide an unanswered review after ``seconds`` (default: reject "no answer")."""
        if seconds <= 0:
            raise ValueError(f"review_timeout for {stage!r} must be positive, not {seconds}")
        decision = on_timeout if on_timeout is not None else Reject("no answer")
        if not isinstance(decision, REVIEW_DECISION_TYPES):
            raise TypeError("on_timeout must be Approve(), Reject(reason) or ApproveWithEdits(...)")
        self._timeouts[stage] = ReviewTimeout(float(seconds), decision)
        return self

    def max_artefact_bytes(self, limit: int) -> WorkflowBuilder:
        self._max_artefact_bytes = int(limit)
        return self

    def max_recoveries(self, limit: int) -> WorkflowBuilder:
        """How many crashes mid-stage before the stage is FAILED ("recovery limit reached")."""
        self._max_recoveries = int(limit)
        return self

    def limit(
        self,
        stage: str,
        concurrency: int | None = None,
        rate: str | tuple[int, float] | None = None,
    ) -> WorkflowBuilder:
        """At most ``concurrency`` attempts of ``stage`` at once and at most ``rate`` starts
        per period (``"1/s"``, ``"20/s"``, ``"100/m"``, or (starts, seconds)), across every
        worker sharing the store. Waiting for a limit holds no execution slot."""
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            raise ValueError(
                f"limit for {stage!r}: concurrency must be an integer from 1 to "
                f"{MAX_CONCURRENCY:,}, not {concurrency!r}"
            )
        parsed = None
        if isinstance(rate, tuple):
            parsed = parse_rate(f"{rate[0]}/{rate[1]}s")
        elif rate is not None:
            try:
                parsed = parse_rate(rate)
            except ValueError as exc:
                raise ValueError(f"limit for {stage!r}: {exc}") from None
        if concurrency is None and parsed is None:
            raise ValueError(f"limit for {stage!r}: give concurrency, rate, or both")
        self._limits[stage] = StageLimit(concurrency, parsed)
        return self

    def clock(self, clock: Clock) -> WorkflowBuilder:
        """The clock the engine asks for "now" (a `ManualClock` in tests)."""
        self._clock = clock
        return self

    def build(self) -> Workflow:
        """Validate and freeze: a `WorkflowError` names the first mistake found."""
        if self._errors:
            raise self._errors[0]
        graph = self._graph()
        self._check_targets()
        specs = {
            name: StageSpec(
                name=name,
                stage=st,
                gate=self._gates.get(name),
                budget=self._budgets.get(name, RetryBudget()),
                policy=self._policies.get(name, ReviewPolicy.NEVER),
                review_timeout=self._timeouts.get(name),
                limit=self._limits.get(name),
            )
            for name, st in self._stages.items()
        }
        plan = Plan(
            self.name,
            specs,
            graph,
            max_artefact_bytes=self._max_artefact_bytes,
            max_recoveries=self._max_recoveries,
        )
        return Workflow(plan, clock=self._clock)

    def _graph(self) -> nx.DiGraph[str]:
        """The dependency DAG: every edge between known stages, no self-loop, no cycle."""
        known = list(self._stages)
        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(known)
        for stage, dep in self._deps:
            for name in (stage, dep):
                if name not in self._stages:
                    raise UnknownDependencyError(
                        f"dependency {stage!r} -> {dep!r}: {name!r} is not a stage"
                        f"{_closest(name, known)}"
                    )
            if stage == dep:
                raise SelfDependencyError(f"stage {stage!r} depends on itself")
            graph.add_edge(dep, stage)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            return graph
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        raise CycleError(f"dependency cycle: {' -> '.join(names)}")

    def _check_targets(self) -> None:
        """Every per-stage setting names a stage of this workflow."""
        known = list(self._stages)
        for what, mapping in (
            ("quality gate", self._gates),
            ("retry budget", self._budgets),
            ("review policy", self._policies),
            ("review timeout", self._timeouts),
            ("limit", self._limits),
        ):
            for name in mapping:
                if name not in self._stages:
                    raise UnknownTargetError(
                        f"{what} for {name!r}, which is not a stage{_closest(name, known)}"
                    )


class Workflow:
    """A validated DAG of stages, and the operations that move items through it."""

    def __init__(self, plan: Plan, *, clock: Clock = SYSTEM_CLOCK):
        self.plan = plan
        self.name = plan.name
        self.clock = clock
        self.bus = EventBus()
        self._engine = Engine(plan, self.bus, clock)

    @property
    def specs(self) -> dict[str, StageSpec]:
        return self.plan.specs

    @property
    def graph(self) -> nx.DiGraph[str]:
        return self.plan.graph

    @property
    def max_artefact_bytes(self) -> int:
        return self.plan.max_artefact_bytes

    @property
    def max_recoveries(self) -> int:
        return self.plan.max_recoveries

    @staticmethod
    def builder(name: str = "workflow") -> WorkflowBuilder:
        return WorkflowBuilder(name)

    # --- introspection -------------------------------------------------------
    @property
    def stages(self) -> list[str]:
        """Stage names in topological order."""
        return list(self.plan.order)

    def _check(self, stage: str) -> StageSpec:
        spec = self.specs.get(stage)
        if spec is None:
            raise UnknownStageError(
                f"workflow {self.name!r} has no stage {stage!r}{_closest(stage, self.plan.order)}"
            )
        return spec

    def dependencies(self, stage: str) -> list[str]:
        self._check(stage)
        return list(self.plan.deps[stage])

    def dependents(self, stage: str) -> list[str]:
        self._check(stage)
        return list(self.plan.dependents[stage])

    def ancestors(self, stage: str) -> list[str]:
        """Direct and indirect dependencies, in topological order."""
        self._check(stage)
        return list(self.plan.ancestors[stage])

    def root_stages(self) -> list[str]:
        return [n for n in self.plan.order if not self.plan.deps[n]]

    def leaf_stages(self) -> list[str]:
        return [n for n in self.plan.order if not self.plan.dependents[n]]

    def to_mermaid(self) -> str:
        order = self.plan.order
        ids = {n: f"s{i}" for i, n in enumerate(order)}
        lines = ["graph TD"]
        for n in order:
            lines.append(f'    {ids[n]}["{_mermaid_label(n)}"]')
        for n in order:
            for dep in self.plan.deps[n]:
                lines.append(f"    {ids[dep]} --> {ids[n]}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        order = self.plan.order
        lines = [f"digraph {_dot_id(self.name)} {{", "    rankdir=LR;"]
        for n in order:
            lines.append(f"    {_dot_id(n)};")
        for n in order:
            for dep in self.plan.deps[n]:
                lines.append(f"    {_dot_id(dep)} -> {_dot_id(n)};")
        lines.append("}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r} stages={self.plan.order}>"

    # --- running -------------------------------------------------------------
    async def advance(self, item: WorkItem, store: StateStore) -> PipelineStatus:
        """Run every ready stage of ``item`` (independent ones concurrently) until none is ready."""
        await self._engine.advance(item, store)
        return await asyncio.to_thread(self.status, item.id, store)

    async def run(
        self,
        store: StateStore,
        items: Sequence[WorkItem] | None = None,
        *,
        concurrency: int = 8,
        until_idle: bool = True,
        lease_seconds: float = 60.0,
        worker_id: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> RunReport:
        """Advance many items, at most ``concurrency`` stage executions in flight.

        When ``stop`` is set, nothing more is claimed or started; the stages in flight
        finish and commit, and the leases are given back (cancel the call to stop them
        at once: they are put back as they were before their attempt)."""
        return await self._engine.run(
            store,
            items,
            concurrency=concurrency,
            until_idle=until_idle,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
            stop=stop,
        )

    async def serve(
        self,
        store: StateStore,
        *,
        concurrency: int = 8,
        lease_seconds: float = 60.0,
        worker_id: str | None = None,
        stop: asyncio.Event | None = None,
        poll_interval: float = 1.0,
    ) -> RunReport:
        """Work forever (what ``treadle worker`` runs): claim due items, sleep when idle
        (waking at the next due time, or every ``poll_interval`` s for new items), and
        when ``stop`` is set, claim nothing more, finish in-flight stages, release leases."""
        return await self._engine.run(
            store,
            None,
            concurrency=concurrency,
            until_idle=True,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
            stop=stop,
            forever=True,
            poll_interval=poll_interval,
        )

    async def resolve_review(
        self,
        item_id: str,
        stage: str,
        outcome: ReviewDecision,
        store: StateStore,
        reviewer: str | None = None,
        comment: str | None = None,
    ) -> PipelineStatus:
        """Apply a person's decision to a stage AWAITING_REVIEW."""
        self._check(stage)
        await self._engine.resolve_review(
            item_id, stage, outcome, store, reviewer=reviewer, comment=comment
        )
        return await asyncio.to_thread(self.status, item_id, store)

    async def approve_review(
        self,
        item_id: str,
        stage: str,
        store: StateStore,
        *,
        reviewer: str | None = None,
        comment: str | None = None,
    ) -> PipelineStatus:
        return await self.resolve_review(
            item_id, stage, Approve(), store, reviewer=reviewer, comment=comment
        )

    async def reject_review(
        self,
        item_id: str,
        stage: str,
        reason: str,
        store: StateStore,
        *,
        reviewer: str | None = None,
        comment: str | None = None,
    ) -> PipelineStatus:
        return await self.resolve_review(
            item_id, stage, Reject(reason), store, reviewer=reviewer, comment=comment
        )

    async def retry_stage(self, item_id: str, stage: str, store: StateStore) -> PipelineStatus:
        """Put a FAILED stage back to PENDING (attempts keep counting, budget renewed)."""
        self._check(stage)
        await self._engine.retry_stage(item_id, stage, store)
        return await asyncio.to_thread(self.status, item_id, store)

    def status(self, item_id: str, store: StateStore) -> PipelineStatus:
        rec = store.get_item(item_id)
        if rec is None:
            raise UnknownItemError(f"unknown item {item_id!r}")
        states = store.get_all_stage_states(item_id)
        return PipelineStatus(
            item_id, {n: states.get(n) or StageState() for n in self.plan.order}, rec.state
        )

    def summary(self, store: StateStore, *, total: int | None = None) -> dict[str, dict[str, int]]:
        """Stage -> status -> number of items, from grouped queries (never loads items).

        ``total`` (the number of items) saves a query when the caller already counted them.
        """
        if total is None:
            total = sum(store.count_items().values())
        stored = store.summary()
        out: dict[str, dict[str, int]] = {}
        for name in self.plan.order:
            counts = dict(stored.get(name, {}))
            pending = total - sum(counts.values())
            counts["pending"] = counts.get("pending", 0) + max(pending, 0)
            out[name] = {k: v for k, v in counts.items() if v}
        return out

    def pending_reviews(
        self, store: StateStore, stage: str | None = None, *, limit: int | None = None
    ) -> list[PendingReview]:
        """Stages waiting for a person, oldest first (at most ``limit`` of them)."""
        if stage is not None:
            self._check(stage)
            return store.pending_reviews(stage, limit)
        found = [r for r in store.pending_reviews(None, limit) if r.stage in self.specs]
        if limit is not None and len(found) < limit:
            # Reviews of stages this workflow no longer has took some of the room.
            found = [r for r in store.pending_reviews(None) if r.stage in self.specs][:limit]
        return found

    def limits(self, store: StateStore) -> dict[str, LimitStatus]:
        """Each limited stage: its limits, attempts RUNNING and items waiting for it (one
        query, across every worker sharing the store)."""
        counts = store.limit_status()
        return {
            name: LimitStatus(spec.limit.concurrency, spec.limit.rate, *counts.get(name, (0, 0)))
            for name, spec in self.plan.specs.items()
            if spec.limit is not None
        }

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        """An async iterator over this workflow's events (bounded; lagging yields `Lagged`)."""
        return self.bus.subscribe(maxsize)


def _mermaid_label(name: str) -> str:
    return name.replace('"', "#quot;")


def _dot_id(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
