"""Pure: a workflow's definition as the store records it, and what changed between two.

The definition is JSON: the pipeline's name and each stage's name, version and
dependencies. `diff` compares the recorded one with a workflow's and says what
reconciling must do (`Change`): stages added, removed, renamed (``renamed_from``),
versions changed, dependencies rewired, and which stages' COMPLETE states become
stale (those changed and everything downstream of them). `engine.reconcile` applies
it in batches.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ..errors import DefinitionError, TreadleError
from ..model import StageContext, WorkItem
from ..stage import Stage, as_stage
from .plan import DEFAULT_VERSION, Plan, StageSpec

#: Bumped when the shape of the recorded definition changes.
FORMAT = 1

Definition = dict[str, Any]


def describe(plan: Plan) -> Definition:
    """The definition of a plan, as recorded in the store."""
    return {
        "format": FORMAT,
        "name": plan.name,
        "stages": [
            {"name": n, "version": plan.specs[n].version, "needs": list(plan.deps[n])}
            for n in plan.order
        ],
    }


def same(a: Definition | None, b: Definition) -> bool:
    """Whether two definitions name the same pipeline with the same stages."""
    return a is not None and a.get("name") == b.get("name") and _stages(a) == _stages(b)


def _stages(d: Definition) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    out: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for entry in d.get("stages", []):
        needs = entry.get("needs")
        out[entry["name"]] = (
            str(entry.get("version") or DEFAULT_VERSION),
            None if needs is None else tuple(sorted(needs)),
        )
    return out


def stored_stage(name: str) -> Stage:
    """A stage known only from a store's recorded definition: its code is not loaded."""

    def missing(item: WorkItem, ctx: StageContext) -> None:
        """(from the store's recorded definition)"""
        raise TreadleError(
            f"stage {name!r} comes from the store's recorded definition, without its "
            "code; run the pipeline from its treadle.toml or --app"
        )

    return as_stage(missing, name)


def plan_from(definition: Definition) -> Plan:
    """A plan with the definition's stages and dependencies and no stage code (enough for
    readiness, aggregate states and cascades; nothing can run)."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    specs: dict[str, StageSpec] = {}
    for entry in definition.get("stages", []):
        name = entry["name"]
        specs[name] = StageSpec(
            name, stored_stage(name), version=str(entry.get("version") or DEFAULT_VERSION)
        )
        graph.add_node(name)
    for entry in definition.get("stages", []):
        for dep in entry.get("needs") or []:
            if dep in specs:
                graph.add_edge(dep, entry["name"])
    return Plan(str(definition.get("name") or "pipeline"), specs, graph)


@dataclass(frozen=True)
class Change:
    """What reconciling a store with a changed definition does (names are the new ones)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: Removed once, back now: their kept states count again.
    restored: tuple[str, ...] = ()
    #: Old name -> new name.
    renamed: dict[str, str] = field(default_factory=dict)
    #: Stage -> (recorded version, new version).
    versions: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Stages (kept) whose dependencies changed.
    rewired: tuple[str, ...] = ()
    #: Stages whose COMPLETE states become stale: those changed and everything downstream.
    stale: tuple[str, ...] = ()
    #: (old name, new name) when the pipeline itself was renamed.
    name: tuple[str, str] | None = None

    @property
    def reshaped(self) -> bool:
        """Readiness may differ: items' aggregate states are computed again."""
        return bool(self.added or self.removed or self.restored or self.rewired)

    @property
    def only_added(self) -> bool:
        """New stages and no stage gone or back: every COMPLETE item has new work."""
        return bool(self.added) and not self.removed and not self.restored

    @property
    def empty(self) -> bool:
        """Nothing changed (the definition is only being recorded)."""
        return self == Change()

    @property
    def touches_items(self) -> bool:
        """Whether reconciling has to visit the items at all."""
        return bool(self.reshaped or self.renamed or self.stale)

    def describe(self) -> str:
        """What changed, in a few words (the start of `note`)."""
        parts: list[str] = []
        if self.name is not None:
            parts.append(f"renamed from {self.name[0]!r}")
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.restored:
            parts.append("restored " + ", ".join(self.restored))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        parts += [f"renamed {old} -> {new}" for old, new in self.renamed.items()]
        parts += [f"{s} version {a} -> {b}" for s, (a, b) in self.versions.items()]
        if self.rewired:
            parts.append("new dependencies for " + ", ".join(self.rewired))
        return "; ".join(parts) or "no change to the stages"

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "restored": list(self.restored),
            "renamed": dict(self.renamed),
            "versions": {k: list(v) for k, v in self.versions.items()},
            "rewired": list(self.rewired),
            "stale": list(self.stale),
            "name": None if self.name is None else list(self.name),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Change:
        name = d.get("name")
        return cls(
            added=tuple(d.get("added", ())),
            removed=tuple(d.get("removed", ())),
            restored=tuple(d.get("restored", ())),
            renamed=dict(d.get("renamed", {})),
            versions={k: (str(v[0]), str(v[1])) for k, v in d.get("versions", {}).items()},
            rewired=tuple(d.get("rewired", ())),
            stale=tuple(d.get("stale", ())),
            name=None if name is None else (str(name[0]), str(name[1])),
        )


def diff(
    recorded: Definition | None,
    removed: Mapping[str, Any],
    plan: Plan,
    *,
    seen: Collection[str] = (),
) -> Change:
    """What changes from the recorded definition (and the stages it removed earlier,
    whose states are kept) to ``plan``'s.

    ``recorded`` None: the store never recorded one; ``seen`` (the stages that have
    states) stands in for it, with unknown dependencies. A ``renamed_from`` naming a
    stage the store never had is a `DefinitionError`, as is a store that holds another
    pipeline (another name, no stage in common).
    """
    old = (
        _stages(recorded) if recorded is not None else dict.fromkeys(seen, (DEFAULT_VERSION, None))
    )
    gone = {n: (str(e.get("version") or DEFAULT_VERSION), None) for n, e in removed.items()}
    renamed = _renames(plan, old, gone, has_history=recorded is not None or bool(seen))
    source = {new: old_name for old_name, new in renamed.items()}
    if recorded is not None and old and _unrelated(recorded, plan, old, source):
        raise DefinitionError(
            f"the store holds pipeline {recorded.get('name')!r} (stages "
            f"{', '.join(old)}), not {plan.name!r} (stages {', '.join(plan.order)}); "
            "open this pipeline's own store (--store / [pipeline].store)"
        )
    added, restored, versions, rewired = [], [], {}, []
    for name in plan.order:
        before = source.get(name, name)
        if before not in old and before not in gone:
            added.append(name)
            continue
        if before not in old:
            restored.append(name)
        version, needs = old[before] if before in old else gone[before]
        if version != plan.specs[name].version:
            versions[name] = (version, plan.specs[name].version)
        if needs is not None:
            mapped = {renamed.get(d, d) for d in needs}
            if mapped != set(plan.deps[name]):
                rewired.append(name)
    dropped = tuple(n for n in old if n not in plan.specs and n not in renamed)
    roots = set(versions) | set(rewired)
    stale = {d for r in roots for d in nx.descendants(plan.graph, r)} | roots
    stale -= set(added)
    renamed_pipeline: tuple[str, str] | None = None
    if recorded is not None and recorded.get("name") != plan.name:
        renamed_pipeline = (str(recorded.get("name")), plan.name)
    return Change(
        added=tuple(added),
        removed=dropped,
        restored=tuple(restored),
        renamed=renamed,
        versions=versions,
        rewired=tuple(rewired),
        stale=tuple(n for n in plan.order if n in stale),
        name=renamed_pipeline,
    )


def _renames(
    plan: Plan,
    old: Mapping[str, Any],
    gone: Mapping[str, Any],
    *,
    has_history: bool,
) -> dict[str, str]:
    """Old name -> new name, for stages new to the store that name a stage it had."""
    renamed: dict[str, str] = {}
    for name in plan.order:
        spec = plan.specs[name]
        if not spec.renamed_from or name in old or name in gone:
            continue
        found = next((n for n in spec.renamed_from if n in old or n in gone), None)
        if found is not None:
            renamed[found] = name
        elif has_history:
            names = ", ".join(repr(n) for n in spec.renamed_from)
            known = ", ".join([*old, *gone]) or "none"
            raise DefinitionError(
                f"stage {name!r} is renamed_from {names}, which the store never had "
                f"(its stages: {known}); fix renamed_from, or drop it for a new stage"
            )
    return renamed


def _unrelated(
    recorded: Definition, plan: Plan, old: Mapping[str, Any], source: Mapping[str, str]
) -> bool:
    """Another pipeline's store: another name and not one stage in common."""
    if recorded.get("name") == plan.name:
        return False
    return not any(source.get(n, n) in old for n in plan.order)


def removed_after(
    recorded: Definition | None, removed: Mapping[str, Any], change: Change
) -> dict[str, Any]:
    """The stages removed so far (name -> their last definition entry) once ``change``
    is applied: their states are kept and ignored."""
    out = {n: e for n, e in removed.items() if n not in change.restored}
    by_name = {e["name"]: e for e in (recorded or {}).get("stages", [])}
    for name in change.removed:
        out[name] = by_name.get(name, {"name": name, "version": DEFAULT_VERSION, "needs": None})
    for old_name in change.renamed:
        out.pop(old_name, None)
    return out


__all__ = [
    "Change",
    "Definition",
    "describe",
    "diff",
    "plan_from",
    "removed_after",
    "same",
    "stored_stage",
]
