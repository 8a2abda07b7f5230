"""Building and validating the DAG of stages (networkx), and the `Workflow` API."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import networkx as nx

from .clock import SYSTEM_CLOCK, Clock
from .engine import (
    DEFAULT_VERSION,
    DefinitionChange,
    Engine,
    Plan,
    Progress,
    ReviewTimeout,
    RunReport,
    StageLimit,
    StageSpec,
    plan_from,
    same,
)
from .errors import (
    CycleError,
    DuplicateStageError,
    SelfDependencyError,
    StoreError,
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
    StageStatus,
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
        self._branches: dict[str, dict[str, tuple[str, ...]]] = {}
        self._approvers: dict[str, tuple[frozenset[str] | None, int]] = {}
        self._versions: dict[str, str] = {}
        self._renamed_from: dict[str, tuple[str, ...]] = {}
        self._max_artefact_bytes = DEFAULT_MAX_ARTEFACT_BYTES
        self._max_recoveries = 3
        self._clock: Clock = SYSTEM_CLOCK

    @property
    def stage_names(self) -> list[str]:
        return list(self._stages)

    def stage(
        self,
        name: str,
        stage: Any,
        *,
        needs: Sequence[str] = (),
        version: str | int | None = None,
        renamed_from: str | Sequence[str] | None = None,
    ) -> WorkflowBuilder:
        """Add a stage: a `Stage` instance or a function ``(item, ctx)``, sync or async.

        ``version`` (default "1"): bump it when the stage's code changes what it produces;
        its COMPLETE states then become stale. ``renamed_from``: the stage's old name (or
        names, newest first), so a store's states, attempts and reviews carry over.
        """
        if name in self._stages:
            self._errors.append(DuplicateStageError(f"stage {name!r} is defined twice"))
            return self
        self._stages[name] = as_stage(stage, name)
        if version is not None:
            if isinstance(version, bool) or not str(version).strip():
                raise ValueError(f"stage {name!r}: version must be a non-empty string")
            self._versions[name] = str(version).strip()
        if renamed_from is not None:
            old = (renamed_from,) if isinstance(renamed_from, str) else tuple(renamed_from)
            if not old or not all(isinstance(n, str) and n for n in old):
                raise ValueError(f"stage {name!r}: renamed_from takes a stage name (or names)")
            self._renamed_from[name] = old
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

    def branch(self, stage: str, choices: Mapping[str, Sequence[str]]) -> WorkflowBuilder:
        """A person picks the way: when ``stage``'s review is approved with a choice, the
        dependents listed under the other choices are SKIPPED ("not chosen")."""
        if not isinstance(choices, Mapping) or not choices:
            raise ValueError(f"branch for {stage!r}: give {{choice: [dependents]}}")
        branches: dict[str, tuple[str, ...]] = {}
        for choice, dependents in choices.items():
            if not isinstance(choice, str) or not choice:
                raise ValueError(f"branch for {stage!r}: a choice is a non-empty string")
            names = (dependents,) if isinstance(dependents, str) else tuple(dependents)
            if not all(isinstance(n, str) for n in names):
                raise ValueError(f"branch for {stage!r}: {choice!r} lists stage names")
            branches[choice] = names
        self._branches[stage] = branches
        return self

    def approvers(
        self, stage: str, names: Sequence[str] | None = None, required: int = 1
    ) -> WorkflowBuilder:
        """Only ``names`` (None: anyone) may decide ``stage``'s reviews; it completes after
        ``required`` approvals from distinct reviewers, and one rejection fails it."""
        people = None if names is None else frozenset(names)
        if people is not None and (not people or not all(isinstance(n, str) and n for n in people)):
            raise ValueError(f"approvers for {stage!r}: give non-empty reviewer names")
        if isinstance(required, bool) or not isinstance(required, int) or required < 1:
            raise ValueError(f"approvers for {stage!r}: required must be 1 or more")
        if people is not None and required > len(people):
            raise ValueError(
                f"approvers for {stage!r}: {required} approvals required from "
                f"{len(people)} approver{'s' if len(people) != 1 else ''}"
            )
        self._approvers[stage] = (people, required)
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
        self._check_renames()
        specs = {
            name: StageSpec(
                name=name,
                stage=st,
                gate=self._gates.get(name),
                budget=self._budgets.get(name, RetryBudget()),
                policy=self._policies.get(name, ReviewPolicy.NEVER),
                review_timeout=self._timeouts.get(name),
                limit=self._limits.get(name),
                branches=self._branches.get(name, {}),
                approvers=self._approvers.get(name, (None, 1))[0],
                required=self._approvers.get(name, (None, 1))[1],
                version=self._versions.get(name, DEFAULT_VERSION),
                renamed_from=self._renamed_from.get(name, ()),
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
            ("branch", self._branches),
            ("approvers", self._approvers),
        ):
            for name in mapping:
                if name not in self._stages:
                    raise UnknownTargetError(
                        f"{what} for {name!r}, which is not a stage{_closest(name, known)}"
                    )
        for name, branches in self._branches.items():
            self._check_branch(name, branches)

    def _check_branch(self, name: str, branches: Mapping[str, Sequence[str]]) -> None:
        direct = sorted({s for s, dep in self._deps if dep == name})
        for choice, dependents in branches.items():
            for dependent in dependents:
                if dependent not in direct:
                    raise UnknownTargetError(
                        f"branch for {name!r}: choice {choice!r} lists {dependent!r}, which "
                        f"does not depend on {name!r}{_closest(dependent, direct)}"
                    )

    def _check_renames(self) -> None:
        """``renamed_from`` names an old name: not a stage now, claimed by one stage only."""
        claimed: dict[str, str] = {}
        for name, old_names in self._renamed_from.items():
            for old in old_names:
                if old == name:
                    raise WorkflowError(f"stage {name!r} is renamed_from itself")
                if old in self._stages:
                    raise WorkflowError(
                        f"stage {name!r} is renamed_from {old!r}, which is still a stage; "
                        f"remove {old!r}, or drop renamed_from"
                    )
                if old in claimed:
                    raise WorkflowError(
                        f"stages {claimed[old]!r} and {name!r} are both renamed_from {old!r}"
                    )
                claimed[old] = name


class Workflow:
    """A validated DAG of stages, and the operations that move items through it."""

    def __init__(self, plan: Plan, *, clock: Clock = SYSTEM_CLOCK, runnable: bool = True):
        self.plan = plan
        self.name = plan.name
        self.clock = clock
        self.bus = EventBus()
        self._engine = Engine(plan, self.bus, clock, runnable=runnable)

    @classmethod
    def from_store(cls, store: StateStore, *, clock: Clock = SYSTEM_CLOCK) -> Workflow:
        """The pipeline a store recorded (its stages, versions and dependencies), without
        stage code: for status, reviews, events, ``rerun`` and ``cancel`` with nothing but
        the store. It cannot run stages; it follows the store when the definition changes."""
        rec = store.get_definition()
        if rec is None or not rec.get("definition"):
            raise StoreError(
                f"{_store_label(store)} has no recorded pipeline yet (it is recorded when a "
                "workflow first runs against it); load the pipeline from its treadle.toml "
                "or --app"
            )
        return cls(plan_from(rec["definition"]), clock=clock, runnable=False)

    @property
    def runnable(self) -> bool:
        """False for a workflow loaded from a store's recorded definition (no stage code)."""
        return self._engine.runnable

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
        if not self.runnable:
            await asyncio.to_thread(self._follow, store)
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
        if not self.runnable:
            await asyncio.to_thread(self._follow, store)
        self._check(stage)
        await self._engine.retry_stage(item_id, stage, store)
        return await asyncio.to_thread(self.status, item_id, store)

    # --- a pipeline that lives for months (SPEC §10) -------------------------------------
    async def reconcile(
        self, store: StateStore, *, progress: Progress | None = None
    ) -> DefinitionChange | None:
        """Record this workflow's definition in the store and, if it changed, bring the
        items in line in batches (``run``, ``advance`` and ``serve`` do it first by
        themselves): what changed, or None. ``progress(done, total)`` follows the items."""
        if not self.runnable:
            await asyncio.to_thread(self._follow, store)
            return None
        return await self._engine.reconcile(store, progress)

    async def rerun(
        self,
        item_id: str,
        stage: str,
        store: StateStore,
        *,
        cascade: bool = True,
        reason: str | None = None,
        by: str | None = None,
    ) -> PipelineStatus:
        """Put a COMPLETE, FAILED, SKIPPED, CANCELLED or AWAITING_REVIEW stage back to
        PENDING, and with ``cascade`` every stage downstream of it; attempts keep counting,
        the budget is renewed, and each reset stage journals `StageReset` (``reason``,
        ``by``). Without ``cascade`` downstream COMPLETE stages become stale. A RUNNING
        stage among them raises `RerunError` and nothing changes."""
        (refused,) = await self.rerun_many(
            [(item_id, stage)], store, cascade=cascade, reason=reason, by=by
        )
        if refused is not None:
            raise refused
        return await asyncio.to_thread(self.status, item_id, store)

    async def rerun_many(
        self,
        targets: Iterable[tuple[str, str]],
        store: StateStore,
        *,
        cascade: bool = True,
        reason: str | None = None,
        by: str | None = None,
    ) -> list[BaseException | None]:
        """`rerun` for many ``(item_id, stage)`` pairs, group-committed: for each pair, the
        error that refused it (`RerunError`, `UnknownItemError`) or None."""
        pairs = list(targets)
        for _, stage in pairs:
            self._check(stage)
        await self.reconcile(store)
        return await self._engine.rerun_many(store, pairs, cascade=cascade, reason=reason, by=by)

    async def cancel(
        self, item_id: str, store: StateStore, *, reason: str | None = None, by: str | None = None
    ) -> PipelineStatus:
        """Cancel an item: every stage not COMPLETE or SKIPPED becomes CANCELLED, an attempt
        in flight is stopped (an async stage is cancelled, a sync stage's result dropped)
        and recorded, the item is never claimed again, and `ItemCancelled` is journalled.
        `rerun` revives a cancelled stage. Nothing left to cancel raises `CancelError`."""
        await self.reconcile(store)
        await self._engine.cancel(store, item_id, reason=reason, by=by)
        return await asyncio.to_thread(self.status, item_id, store)

    def stale(self, store: StateStore, stage: str | None = None) -> Iterator[tuple[str, str]]:
        """``(item_id, stage)`` for every stale COMPLETE state (of ``stage``, or any stage)."""
        names = [self._check(stage).name] if stage is not None else self.plan.order
        for name in names:
            for item_id in store.list_stage_items(
                name, statuses=[StageStatus.COMPLETE], stale=True
            ):
                yield item_id, name

    def _follow(self, store: StateStore) -> None:
        """A workflow from a store's definition takes up the definition recorded since."""
        rec = store.get_definition()
        definition = None if rec is None else rec.get("definition")
        if definition and not same(definition, self._engine.definition()):
            self.plan = plan_from(definition)
            self.name = self.plan.name
            self._engine.plan = self.plan

    def status(self, item_id: str, store: StateStore) -> PipelineStatus:
        """One item's stages (``stale`` marks COMPLETE stages whose version or upstream
        changed since they ran); stages the workflow no longer has are in ``removed``."""
        rec = store.get_item(item_id)
        if rec is None:
            raise UnknownItemError(f"unknown item {item_id!r}")
        states = store.get_all_stage_states(item_id)
        removed = {n: s for n, s in states.items() if n not in self.plan.specs}
        return PipelineStatus(
            item_id, {n: states.get(n) or StageState() for n in self.plan.order}, rec.state, removed
        )

    def summary(
        self,
        store: StateStore,
        *,
        total: int | None = None,
        stored: dict[str, dict[str, int]] | None = None,
    ) -> dict[str, dict[str, int]]:
        """Stage -> status -> number of items, from grouped queries (never loads items).

        ``total`` (the number of items) and ``stored`` (``store.summary()``) save a query
        each when the caller already has them.
        """
        if total is None:
            total = sum(store.count_items().values())
        if stored is None:
            stored = store.summary()
        out: dict[str, dict[str, int]] = {}
        for name in self.plan.order:
            counts = dict(stored.get(name, {}))
            pending = total - sum(counts.values())
            counts["pending"] = counts.get("pending", 0) + max(pending, 0)
            out[name] = {k: v for k, v in counts.items() if v}
        return out

    def pending_reviews(
        self,
        store: StateStore,
        stage: str | None = None,
        *,
        limit: int | None = None,
        reviewer: str | None = None,
    ) -> list[PendingReview]:
        """Stages waiting for a person, oldest first (at most ``limit`` of them); with
        ``reviewer``, only those that person may still vote on (an approver of the stage,
        or anyone when it names none, who has not approved it yet)."""
        if stage is not None:
            self._check(stage)

        def wanted(r: PendingReview) -> bool:
            spec = self.specs.get(r.stage)
            if spec is None:
                return False  # a stage this workflow no longer has
            if reviewer is None:
                return True
            allowed = spec.approvers is None or reviewer in spec.approvers
            return allowed and all(v.get("reviewer") != reviewer for v in r.votes)

        raw = store.pending_reviews(stage, limit)
        found = [r for r in raw if wanted(r)]
        if limit is not None and len(found) < limit == len(raw):
            # Reviews this caller may not see took some of the room.
            found = [r for r in store.pending_reviews(stage) if wanted(r)][:limit]
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


def _store_label(store: StateStore) -> str:
    url = getattr(store, "url", None)
    if not isinstance(url, str):
        return "the store"
    parts = urlsplit(url)
    if parts.password is not None:
        url = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()
    return f"the store at {url}"


def _mermaid_label(name: str) -> str:
    return name.replace('"', "#quot;")


def _dot_id(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
