"""The plan: what the engine needs of a workflow (stage specs, order, dependencies, limits).

`Workflow` builds and validates the DAG; the engine only ever sees this plan, so it
never imports the workflow module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx

from ..model import ReviewDecision
from ..quality import ExhaustedAction, QualityGate, RetryBudget, ReviewPolicy
from ..stage import Stage
from ..store.base import DEFAULT_MAX_ARTEFACT_BYTES

#: The version of a stage that does not declare one (and of states recorded before
#: versions were recorded).
DEFAULT_VERSION = "1"


@dataclass(frozen=True)
class ReviewTimeout:
    """Decide an unanswered review after ``seconds`` with ``on_timeout``."""

    seconds: float
    on_timeout: ReviewDecision


@dataclass(frozen=True)
class StageLimit:
    """Flow control for one stage, across every worker sharing the store: at most
    ``concurrency`` of its attempts RUNNING at once, and at most ``rate`` = (starts,
    seconds) starts in any window of that many seconds."""

    concurrency: int | None = None
    rate: tuple[int, float] | None = None


@dataclass
class StageSpec:
    """Everything the workflow knows about one stage."""

    name: str
    stage: Stage
    gate: QualityGate | None = None
    budget: RetryBudget = field(default_factory=RetryBudget)
    policy: ReviewPolicy = ReviewPolicy.NEVER
    review_timeout: ReviewTimeout | None = None
    limit: StageLimit | None = None
    #: choice -> the dependents that run only when a person approves with that choice.
    branches: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Who may decide its reviews (None: anyone), and how many approvals complete one.
    approvers: frozenset[str] | None = None
    required: int = 1
    #: The stage's version: a COMPLETE state recorded under another one is stale.
    version: str = DEFAULT_VERSION
    #: Names this stage had before (newest first): their states, attempts and reviews
    #: are carried over when the store still has them under one of these names.
    renamed_from: tuple[str, ...] = ()

    @property
    def escalates(self) -> bool:
        """Whether an exhausted budget goes to a person instead of failing."""
        return self.budget.on_exhausted == ExhaustedAction.ESCALATE or self.policy.escalates


class Plan:
    """Stage specs in topological order, with each stage's dependencies and ancestors."""

    def __init__(
        self,
        name: str,
        specs: Mapping[str, StageSpec],
        graph: nx.DiGraph[str],
        *,
        max_artefact_bytes: int = DEFAULT_MAX_ARTEFACT_BYTES,
        max_recoveries: int = 3,
    ) -> None:
        self.name = name
        self.specs = dict(specs)
        self.graph = graph
        self.max_artefact_bytes = max_artefact_bytes
        self.max_recoveries = max_recoveries
        position = {n: i for i, n in enumerate(self.specs)}
        #: Topological order; ties keep the order the stages were declared in.
        self.order: list[str] = list(
            nx.lexicographical_topological_sort(graph, key=lambda n: position[n])
        )
        rank = {n: i for i, n in enumerate(self.order)}
        #: Direct dependencies of each stage, in declaration order.
        self.deps: dict[str, list[str]] = {
            n: sorted(graph.predecessors(n), key=position.__getitem__) for n in self.specs
        }
        #: Direct and indirect dependencies of each stage, in topological order.
        self.ancestors: dict[str, list[str]] = {
            n: sorted(nx.ancestors(graph, n), key=rank.__getitem__) for n in self.specs
        }
        #: Stages that depend directly on each stage, in topological order.
        self.dependents: dict[str, list[str]] = {
            n: [m for m in self.order if n in self.deps[m]] for n in self.specs
        }

    def __contains__(self, stage: object) -> bool:
        return stage in self.specs
