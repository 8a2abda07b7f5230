"""The plugin hooks (pluggy project ``"treadle"``) and the values they register.

Three verb families: ``register_*`` collects (each takes a ``register``
callback), ``prepare_*`` adjusts in place. An implementation may accept fewer
arguments than the spec declares. Exact signatures and examples: docs/plugin-hooks.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .events import Event
    from .quality import QualityGate
    from .store.base import StateStore
    from .workflow import WorkflowBuilder

hookspec = pluggy.HookspecMarker("treadle")
hookimpl = pluggy.HookimplMarker("treadle")


class Duration(float):
    """Option type: a duration (``500ms``, ``2s``, ``5m``, ``1h``, ``1d``), given as seconds."""


class JsonSchema(dict[str, Any]):
    """Option type: a JSON Schema, given inline (a table) or as the path of a JSON file
    (relative to the pipeline file); checked to be a valid schema, given as a dict."""


@dataclass(frozen=True)
class Option:
    """One option a stage, gate or sink type accepts in a pipeline file.

    ``type`` is a Python type (``str``, ``int``, ``float``, ``bool``, ``list``,
    ``dict``), `Duration`, or ``pathlib.Path`` (a path relative to the pipeline
    file's directory).
    """

    type: type = str
    required: bool = False
    default: Any = None
    description: str = ""


Options = Mapping[str, Option]


@dataclass(frozen=True)
class StageType:
    """A named kind of stage: ``factory(**options)`` returns a `Stage` or a function stage."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    options: Options = field(default_factory=dict)


@dataclass(frozen=True)
class StoreBackend:
    """A URL scheme: ``factory(url, **options)`` returns an open `StateStore` (`open_store`
    passes the options its caller gave, usually none)."""

    scheme: str
    factory: Callable[..., StateStore]
    description: str = ""


@dataclass(frozen=True)
class GateType:
    """A named kind of quality gate: ``factory(**options)`` returns a `QualityGate`."""

    name: str
    factory: Callable[..., QualityGate]
    description: str = ""
    options: Options = field(default_factory=dict)


@dataclass(frozen=True)
class SinkType:
    """A named event sink: ``factory(**options)`` returns ``listener(event)``, maybe with close."""

    name: str
    factory: Callable[..., Callable[[Event], None]]
    description: str = ""
    options: Options = field(default_factory=dict)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def registration_problem(value: Any) -> str | None:
    """What is wrong with a registered value (one line), or None.

    The plugin manager records the problem as that plugin's error and skips the
    value, so one malformed registration never breaks a command for the others.
    """
    kind = type(value).__name__
    attr = "scheme" if isinstance(value, StoreBackend) else "name"
    name = getattr(value, attr, None)
    if not isinstance(name, str) or not name.strip():
        return f"{kind} {attr} must be a non-empty string, not {name!r}"
    label = f"{kind} {name!r}"
    if isinstance(value, StoreBackend) and not _SCHEME.fullmatch(name):
        return f"{label}: not a URL scheme (letters, digits, '+', '-', '.')"
    if not callable(value.factory):
        return f"{label}: factory {value.factory!r} is not callable"
    if not isinstance(value.description, str):
        return f"{label}: description must be a string, not {type(value.description).__name__}"
    return _options_problem(label, getattr(value, "options", None))


def _options_problem(label: str, options: Any) -> str | None:
    if options is None:
        return None
    if not isinstance(options, Mapping):
        return f"{label}: options must map names to Option, not {type(options).__name__}"
    for key, option in options.items():
        if not isinstance(key, str) or not key:
            return f"{label}: option name {key!r} is not a non-empty string"
        if not isinstance(option, Option):
            return (
                f"{label}: option {key!r} is {type(option).__name__} {option!r}, not an Option "
                "(write Option(str, description=...))"
            )
        if not isinstance(option.type, type):
            return f"{label}: option {key!r} has type {option.type!r}, which is not a type"
    return None


@hookspec
def register_stage_types(register: Callable[[StageType], None]) -> None:
    """Register stage types usable as ``uses = "name"`` in a pipeline file."""


@hookspec
def register_stores(register: Callable[[StoreBackend], None]) -> None:
    """Register store backends, each for a URL scheme."""


@hookspec
def register_quality_gates(register: Callable[[GateType], None]) -> None:
    """Register quality gate types usable as ``gate = { uses = "name" }``."""


@hookspec
def register_event_sinks(register: Callable[[SinkType], None]) -> None:
    """Register event sink types usable in ``[[sinks]]``."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``treadle`` CLI."""


@hookspec
def prepare_workflow(builder: WorkflowBuilder, config: dict[str, Any]) -> None:
    """Adjust a workflow being built from a pipeline file, before it is validated."""
