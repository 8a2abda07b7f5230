"""``treadle plugin new``: scaffold a ``treadle-<kind>-<name>`` plugin distribution.

The scaffold is complete from the first minute: a pyproject with the entry point
(name = distribution name), one working hook implementation, tests using the
fixtures of ``treadle_core.testing`` (a store scaffold runs `StoreContract`), and
a README. ``pip install -e '.[test]' && pytest`` passes before any change.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click

from .context import EXIT_USAGE, CliError, emit_json

KINDS = ("stage", "store", "sink", "gate")
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


@click.group("plugin")
def plugin_group() -> None:
    """Writing plugins: scaffold a new plugin distribution."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="stage",
    show_default=True,
    help="What the plugin provides.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    help="Where to create the distribution's directory (default: here).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def new(name: str, kind: str, directory: Path, as_json: bool) -> None:
    """Scaffold treadle-KIND-NAME: pyproject with entry point, hook, tests, README."""
    name = name.removeprefix(f"treadle-{kind}-")
    if not _NAME.match(name):
        raise CliError(
            f"{name!r} is not a plugin name: use lower-case letters, digits and single "
            "hyphens, starting with a letter (like 'pdf' or 'ocr-lite')",
            EXIT_USAGE,
        )
    dist = f"treadle-{kind}-{name}"
    target = directory / dist
    if target.exists():
        raise CliError(f"{target} already exists; nothing written")
    files = scaffold(name, kind)
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if as_json:
        emit_json({"distribution": dist, "path": str(target), "files": sorted(files)})
        return
    click.echo(f"wrote {target}/ ({', '.join(sorted(files))})")
    click.echo(f"next: cd {target} && pip install -e '.[test]' && pytest")
    checkout = treadle_checkout() or "/path/to/treadle"
    click.echo(
        "  (in this environment, which has Treadle; a new one needs Treadle from its "
        f"clone first: pip install -e {checkout})"
    )


def treadle_checkout() -> str | None:
    """The local directory Treadle was installed from (``pip install [-e] DIR``), if any.

    Treadle is not on a package index, so a plugin's ``dependencies = ["treadle"]``
    is met by installing it from that directory first.
    """
    try:
        text = importlib.metadata.distribution("treadle").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    url = urlsplit(json.loads(text).get("url", ""))
    return unquote(url.path) if url.scheme == "file" else None


def scaffold(name: str, kind: str) -> dict[str, str]:
    """The files of a new plugin distribution: relative path -> text."""
    dist = f"treadle-{kind}-{name}"
    module = dist.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    # __WHAT__ first: its text holds __NAME__, filled in after it.
    values = {
        "__WHAT__": _WHAT[kind],
        "__NAME__": name,
        "__DIST__": dist,
        "__MODULE__": module,
        "__CLASS__": cls,
        "__KIND__": kind,
    }

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return {
        "pyproject.toml": fill(PYPROJECT),
        "README.md": fill(README + _README_USE[kind]),
        f"{module}/__init__.py": fill(_MODULE[kind]),
        f"tests/test_{module}.py": fill(_TESTS[kind]),
    }


_WHAT = {
    "stage": "the __NAME__ stage type",
    "store": "the __NAME__:// store",
    "sink": "the __NAME__ event sink",
    "gate": "the __NAME__ quality gate",
}

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__DIST__"
version = "0.1.0"
description = "Treadle plugin: __WHAT__"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["treadle>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# Treadle finds plugins through this entry-point group; the name is the distribution's.
[project.entry-points.treadle]
__DIST__ = "__MODULE__"

[tool.setuptools]
packages = ["__MODULE__"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# __DIST__

A Treadle plugin providing __WHAT__.

## Install

Treadle is installed from a clone of its repository (it is not on a package
index), so install it first, then this plugin beside it:

```sh
python3 -m venv .venv && . .venv/bin/activate
pip install /path/to/treadle        # your clone of Treadle
pip install .                       # or: pip install __DIST__, once published
treadle plugins list                # shows __DIST__ and what it provides
```

## Develop

```sh
pip install -e /path/to/treadle     # in the same environment, if not done yet
pip install -e '.[test]'
pytest                              # uses the fixtures of treadle_core.testing
```

## Publish

```sh
python -m build             # pip install build twine
twine upload dist/*
```

"""

_README_USE = {
    "stage": """\
## Use

```toml
[stages.shout]
uses = "__NAME__"
field = "text"              # which field of the item's data to upper-case
```
""",
    "gate": """\
## Use

```toml
[stages.summarise]
uses = "stages:summarise"
gate = { uses = "__NAME__", words = ["Summary"] }
```
""",
    "sink": """\
## Use

```toml
[[sinks]]
uses = "__NAME__"
path = "events.txt"         # relative to treadle.toml
```
""",
    "store": """\
## Use

```toml
[pipeline]
store = "__NAME__://"
```

The store starts as a copy of Treadle's in-memory store, so the contract suite
passes from the start; replace its methods with your backend's, keeping
`tests/` green (`StoreContract` checks every behaviour the engine relies on).
""",
}

_MODULE = {
    "stage": '''\
"""__DIST__: __WHAT__ for Treadle."""

from __future__ import annotations

from collections.abc import Callable

from treadle_core import (
    Complete,
    Option,
    Stage,
    StageContext,
    StageOutput,
    StageType,
    WorkItem,
    hookimpl,
)


class __CLASS__Stage(Stage):
    """Upper-case one field of the item's data (replace with what your stage does)."""

    description = "Upper-case a field of the item's data"

    def __init__(self, field: str = "text"):
        self.field = field

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageOutput:
        data = getattr(item, "data", None) or {}
        value = str(data.get(self.field, ""))
        return StageOutput(
            Complete(), artefact={self.field: value.upper()}, summary=f"{len(value)} characters"
        )


@hookimpl
def register_stage_types(register: Callable[[StageType], None]) -> None:
    register(
        StageType(
            "__NAME__",
            __CLASS__Stage,
            __CLASS__Stage.description,
            {"field": Option(str, default="text", description="Field of the item's data")},
        )
    )
''',
    "gate": '''\
"""__DIST__: __WHAT__ for Treadle."""

from __future__ import annotations

from collections.abc import Callable

from treadle_core import (
    Accepted,
    CriterionResult,
    GateType,
    Option,
    QualityContext,
    QualityFeedback,
    QualityGate,
    Rejected,
    StageOutput,
    WorkItem,
    hookimpl,
)


class __CLASS__Gate(QualityGate):
    """The output contains every one of ``words`` (replace with your check)."""

    def __init__(self, words: list[str]):
        self.words = [str(w) for w in words]

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Accepted | Rejected:
        text = str(output.artefact or "")
        missing = [w for w in self.words if w not in text]
        if not missing:
            return Accepted()
        return Rejected(
            QualityFeedback(
                f"missing: {', '.join(missing)}",
                [CriterionResult(f"contains {w!r}", "present", "missing", False) for w in missing],
                guidance={"add": missing},
            )
        )


@hookimpl
def register_quality_gates(register: Callable[[GateType], None]) -> None:
    register(
        GateType(
            "__NAME__",
            __CLASS__Gate,
            "The output contains every given word",
            {"words": Option(list, required=True, description="Words that must appear")},
        )
    )
''',
    "sink": '''\
"""__DIST__: __WHAT__ for Treadle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from treadle_core import Event, Option, SinkType, hookimpl


class __CLASS__Sink:
    """One line per event in a text file (replace with where your events should go).

    Sinks are called synchronously for every committed event: keep them quick. One
    that does slow I/O (a server, an API) can subclass treadle_core.sinks.QueuedSink.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._fh.write(f"{event.item_id}\\t{event.stage or '-'}\\t{event.kind}\\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


@hookimpl
def register_event_sinks(register: Callable[[SinkType], None]) -> None:
    register(
        SinkType(
            "__NAME__",
            __CLASS__Sink,
            "One line per event in a text file",
            {"path": Option(Path, required=True, description="File (relative to treadle.toml)")},
        )
    )
''',
    "store": '''\
"""__DIST__: __WHAT__ for Treadle."""

from __future__ import annotations

from collections.abc import Callable

from treadle_core import MemoryStateStore, StoreBackend, hookimpl


class __CLASS__StateStore(MemoryStateStore):
    """The store behind __NAME__:// URLs.

    It starts as Treadle's in-memory store, so the contract suite passes at once;
    replace the methods with your backend's (see the StateStore docstrings).
    """

    @classmethod
    def from_url(cls, url: str) -> __CLASS__StateStore:
        return cls()


@hookimpl
def register_stores(register: Callable[[StoreBackend], None]) -> None:
    register(StoreBackend("__NAME__", __CLASS__StateStore.from_url, "__CLASS__ store (__NAME__://)"))
''',
}

_TESTS = {
    "stage": '''\
"""Tests for __DIST__, with the fixtures of treadle_core.testing (a pytest plugin)."""

import asyncio
import json

from treadle_core import Item, Workflow
from treadle_core.plugins import stage_types

from __MODULE__ import __CLASS__Stage

PIPELINE = """
[pipeline]
name = "test"

[stages.shout]
uses = "__NAME__"
"""


def test_the_stage_type_is_registered(treadle_plugin_manager):
    assert "__NAME__" in stage_types(treadle_plugin_manager)


def test_the_stage_runs_in_a_workflow(treadle_store, treadle_events):
    wf = Workflow.builder("test").stage("shout", __CLASS__Stage()).build()
    treadle_events.attach(wf)
    asyncio.run(wf.run(treadle_store, [Item("a", {"text": "hello"})]))
    assert treadle_store.get_stage_state("a", "shout").artefact == {"text": "HELLO"}
    assert treadle_events.kinds("a")[-1] == "WorkflowCompleted"


def test_a_pipeline_file_uses_it(treadle_cli, tmp_path):
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    assert treadle_cli("add", "--id", "a", "--data", '{"text": "hi"}').exit_code == 0
    result = treadle_cli("run")
    assert result.exit_code == 0, result.output
    status = json.loads(treadle_cli("status", "a", "--json").output)
    assert status["stages"]["shout"]["artefact"] == {"text": "HI"}
''',
    "gate": '''\
"""Tests for __DIST__, with the fixtures of treadle_core.testing (a pytest plugin)."""

import asyncio

from treadle_core import Complete, Item, RetryBudget, StageOutput, Workflow
from treadle_core.plugins import gate_types

from __MODULE__ import __CLASS__Gate


def test_the_gate_type_is_registered(treadle_plugin_manager):
    assert "__NAME__" in gate_types(treadle_plugin_manager)


def test_a_rejection_is_retried_with_feedback(treadle_store, treadle_events):
    def write(item, ctx):
        text = "a draft"
        if ctx.feedback is not None:  # the gate said what is missing
            text += " " + " ".join(ctx.feedback.guidance["add"])
        return StageOutput(Complete(), artefact=text)

    wf = (
        Workflow.builder("test")
        .stage("write", write)
        .quality_gate("write", __CLASS__Gate(["Summary"]))
        .retry_budget("write", RetryBudget(max_attempts=2))
        .build()
    )
    treadle_events.attach(wf)
    asyncio.run(wf.run(treadle_store, [Item("a")]))
    state = treadle_store.get_stage_state("a", "write")
    assert (state.status, state.attempt, state.artefact) == ("complete", 2, "a draft Summary")
    assert "QualityCheckFailed" in treadle_events.kinds("a")


def test_a_pipeline_file_accepts_its_options(treadle_cli, tmp_path):
    (tmp_path / "stages.py").write_text("def write(item, ctx):\\n    return None\\n")
    (tmp_path / "treadle.toml").write_text(
        '[stages.write]\\nuses = "stages:write"\\ngate = { uses = "__NAME__", words = ["x"] }\\n'
    )
    result = treadle_cli("validate")
    assert result.exit_code == 0, result.output
''',
    "sink": '''\
"""Tests for __DIST__, with the fixtures of treadle_core.testing (a pytest plugin)."""

import asyncio

from treadle_core import Item, Workflow
from treadle_core.plugins import sink_types

from __MODULE__ import __CLASS__Sink


def test_the_sink_type_is_registered(treadle_plugin_manager):
    assert "__NAME__" in sink_types(treadle_plugin_manager)


def test_every_event_is_written(treadle_store, treadle_events, tmp_path):
    wf = Workflow.builder("test").stage("only", lambda item, ctx: None).build()
    sink = __CLASS__Sink(tmp_path / "events.txt")
    wf.bus.add_listener(sink)
    treadle_events.attach(wf)
    asyncio.run(wf.run(treadle_store, [Item("a")]))
    sink.close()
    lines = (tmp_path / "events.txt").read_text().splitlines()
    assert [line.split("\\t")[2] for line in lines] == treadle_events.kinds()


def test_a_pipeline_file_uses_it(treadle_cli, tmp_path):
    (tmp_path / "stages.py").write_text("def only(item, ctx):\\n    return None\\n")
    (tmp_path / "treadle.toml").write_text(
        '[stages.only]\\nuses = "stages:only"\\n\\n'
        '[[sinks]]\\nuses = "__NAME__"\\npath = "ev.txt"\\n'
    )
    assert treadle_cli("add", "--id", "a").exit_code == 0
    assert treadle_cli("run").exit_code == 0
    assert "WorkflowCompleted" in (tmp_path / "ev.txt").read_text()
''',
    "store": '''\
"""Tests for __DIST__: the store contract every Treadle store must pass."""

import json

import pytest
from treadle_core.plugins import store_backends
from treadle_core.testing import StoreContract

from __MODULE__ import __CLASS__StateStore


class Test__CLASS__StoreContract(StoreContract):
    @pytest.fixture
    def store(self):
        with __CLASS__StateStore() as store:
            yield store

    # A durable store also overrides `reopen` with a fixture returning a callable
    # that opens a second store object on the same data (as another process would).


def test_the_scheme_is_registered(treadle_plugin_manager):
    assert "__NAME__" in store_backends(treadle_plugin_manager)


def test_the_cli_lists_it(treadle_cli):
    result = treadle_cli("stores", "list", "--json")
    assert "__NAME__" in [row["scheme"] for row in json.loads(result.output)]
''',
}
