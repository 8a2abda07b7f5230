"""The shape of treadle_core, held by a table: which module may import which.

Read from the source with `ast`, so it holds for imports inside functions and under
``TYPE_CHECKING`` too. A new import that crosses a layer fails here; if it is right,
change the table in the same commit and say why.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "treadle_core"

#: The inner layers: each module may import only these (names relative to treadle_core).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "model": set(),
    "clock": {"model"},
    "events": {"model"},
    "quality": {"model"},
    "stage": {"model"},
    "templating": {"model"},
    "store.base": {"errors", "events", "model"},
    "store.memory": {"errors", "events", "model", "store.base"},
    "store.sql": {"errors", "events", "model", "store.base"},
    "store.open": {"errors", "plugins", "store.base", "store.sql"},
    "_commit": {"errors", "store.base"},
    # The engine: the plan and pure rules at the bottom, the claim loop at the top.
    "engine.plan": {"model", "quality", "stage", "store.base"},
    "engine.ready": {"model", "engine.plan"},
    "engine.attempt": {"errors", "model", "store.base", "engine.plan"},
    "engine.decide": {"events", "model", "quality", "engine.attempt", "engine.plan"},
    "engine.fanout": {"events", "model", "quality", "engine.decide", "engine.plan"},
    "engine.actions": {
        "errors",
        "events",
        "model",
        "engine.decide",
        "engine.fanout",
        "engine.plan",
    },
    # A pipeline that lives for months: its recorded definition and the diff (pure), and
    # reconciling a store with it in batches.
    "engine.definition": {"errors", "model", "stage", "engine.plan"},
    "engine.reconcile": {
        "_commit",
        "clock",
        "model",
        "store.base",
        "engine.definition",
        "engine.plan",
        "engine.ready",
    },
    "engine.review": {"errors", "events", "model", "engine.actions", "engine.plan"},
    "engine.writes": {
        "_commit",
        "clock",
        "errors",
        "events",
        "model",
        "store.base",
        "engine.actions",
        "engine.decide",
        "engine.plan",
        "engine.ready",
        "engine.review",
    },
    "engine.session": {"_commit", "clock", "events", "model", "store.base", "engine.plan"},
    # A fan-out's subtasks, run through the writes of the item run they are part of.
    "engine.subtasks": {
        "clock",
        "events",
        "model",
        "engine.attempt",
        "engine.decide",
        "engine.fanout",
        "engine.plan",
        "engine.session",
    },
    "engine.item": {
        "_commit",
        "errors",
        "events",
        "model",
        "engine.actions",
        "engine.attempt",
        "engine.decide",
        "engine.fanout",
        "engine.plan",
        "engine.ready",
        "engine.session",
        "engine.subtasks",
        "engine.writes",
    },
    "engine.wakeup": {"clock", "store.base"},
    "engine.worker": {
        "engine.wakeup",
        "errors",
        "model",
        "store.base",
        "engine.item",
        "engine.session",
        "engine.writes",
    },
    "engine": {
        "_commit",
        "clock",
        "errors",
        "events",
        "model",
        "store.base",
        "engine.attempt",
        "engine.definition",
        "engine.plan",
        "engine.reconcile",
        "engine.review",
        "engine.session",
        "engine.worker",
        "engine.writes",
    },
    "workflow": {
        "clock",
        "engine",
        "errors",
        "events",
        "model",
        "quality",
        "stage",
        "store.base",
        "validation",
    },
    "validation": {"errors"},
    # The base for sinks that do slow I/O: plugins import it, so it stands alone (stdlib only).
    "sinks": set(),
    # Metrics see the engine only through the public surface: the bus's events, the
    # workflow's summary and reviews, the store's counts.
    "metrics": {"events", "model", "store.base", "workflow"},
}

#: The outer layers may import anything public, but never these internals.
FORBIDDEN: dict[str, set[str]] = {
    # The CLI is a client of the library's public API, like any user's program.
    "cli": {"engine", "_commit", "store.sql", "store.memory"},
    "pipeline": {"engine", "_commit", "cli"},
    # The operator API: a client of the public API that the CLI and the console share.
    "ops": {"engine", "_commit", "store.sql", "store.memory", "cli"},
    "plugins": {"engine", "_commit", "cli"},
    "hookspecs": {"engine", "_commit", "cli"},
}

#: Pure modules: values in, values out. No awaiting, no threads, no store.
PURE = {
    "engine.ready",
    "engine.decide",
    "engine.fanout",
    "engine.actions",
    "engine.definition",
    "engine.review",
}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(CORE.rglob("*.py")):
        parts = list(path.relative_to(CORE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), ast.parse(path.read_text(encoding="utf-8"))


def _imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """treadle_core modules imported by ``name`` (relative to treadle_core)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    if name == "":
        package = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            elif node.module and node.module.startswith("treadle_core."):
                found.add(node.module.removeprefix("treadle_core."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("treadle_core."):
                    found.add(alias.name.removeprefix("treadle_core."))
    # "from . import x" inside a package names a module or a package attribute.
    return {m for m in found if m and not m.startswith("__")}


def _module_exists(name: str) -> bool:
    path = CORE.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, tree in _modules():
        is_package = (CORE.joinpath(*name.split(".")) / "__init__.py").exists() if name else True
        out[name] = {m for m in _imports(name, tree, is_package) if _module_exists(m)}
    return out


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_inner_module_imports_only_what_the_table_allows(module: str) -> None:
    assert module in GRAPH, f"{module} is in the table but not in treadle_core"
    extra = {m for m in GRAPH[module] if m != module} - ALLOWED[module]
    assert not extra, (
        f"treadle_core.{module} imports {sorted(extra)}, beyond {sorted(ALLOWED[module])}"
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_outer_layers_stay_out_of_internals(layer: str) -> None:
    for module, imported in GRAPH.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        bad = {
            m
            for m in imported
            for banned in FORBIDDEN[layer]
            if m == banned or m.startswith(banned + ".")
        }
        assert not bad, f"treadle_core.{module} reaches into {sorted(bad)}"


def test_every_engine_module_is_in_the_table() -> None:
    engine = {m for m in GRAPH if m == "engine" or m.startswith("engine.")}
    assert engine <= set(ALLOWED), f"add {sorted(engine - set(ALLOWED))} to ALLOWED"


def test_the_engine_never_imports_the_workflow() -> None:
    for module, imported in GRAPH.items():
        if module == "engine" or module.startswith("engine."):
            assert "workflow" not in imported, module


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_do_no_io_and_never_await(module: str) -> None:
    tree = dict(_modules())[module]
    for node in ast.walk(tree):
        assert not isinstance(node, ast.AsyncFunctionDef | ast.Await), (
            f"{module} line {node.lineno}: pure modules never await"
        )
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for banned in ("asyncio", "threading", "socket", "store", "_commit", "time"):
                assert not any(n == banned or n.startswith(banned + ".") for n in names), (
                    f"{module} imports {banned}"
                )


def test_the_table_is_checked_against_a_real_violation(tmp_path: Path) -> None:
    """The checker sees relative imports, also inside functions."""
    tree = ast.parse("def f():\n    from ..workflow import Workflow\n")
    assert _imports("engine.item", tree, False) == {"workflow"}
