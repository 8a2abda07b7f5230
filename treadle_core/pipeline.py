"""Pipeline files (``treadle.toml``): stages from registered types or ``pkg.mod:object``.

Every mistake is a `PipelineFileError` with one line naming the file, the table
and the key, e.g. ``treadle.toml: [stages.extract] key 'retry.delay': '2 sec'
is not a duration (use 500ms, 2s, 5m, 1h)``. Loading never touches a store.
"""

from __future__ import annotations

import contextvars
import difflib
import importlib
import inspect
import json
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, PipelineFileError, PluginError, WorkflowError
from .hookspecs import Duration, JsonSchema, Option, SinkType
from .model import check_form
from .quality import (
    Approve,
    ExhaustedAction,
    QualityGate,
    Reject,
    RetryBudget,
    ReviewPolicy,
    all_of,
)
from .stage import Stage
from .validation import (
    MAX_ARTEFACT_BYTES,
    MAX_ATTEMPTS,
    MAX_BACKOFF,
    MAX_CONCURRENCY,
    MAX_INT,
    check_id,
    check_retry_growth,
    parse_duration,
    parse_rate,
)
from .workflow import Workflow, WorkflowBuilder

if TYPE_CHECKING:
    from .events import Event
    from .plugins import TreadlePluginManager

DEFAULT_FILE = "treadle.toml"
DEFAULT_STORE = "sqlite:///.treadle/state.db"
DEFAULT_CONCURRENCY = 8

PIPELINE_KEYS = ("concurrency", "max_artefact_bytes", "name", "store")
STAGE_KEYS = (
    "approvers",
    "branch",
    "description",
    "gate",
    "max_concurrent",
    "needs",
    "rate",
    "renamed_from",
    "required_approvals",
    "retry",
    "review",
    "review_timeout",
    "uses",
    "version",
)
RETRY_KEYS = ("backoff", "delay", "jitter", "max_attempts", "max_delay", "on_exhausted", "timeout")
TOP_KEYS = ("pipeline", "plugins", "sinks", "stages")

#: The directory of the pipeline file being loaded: where "stages:fn" is imported from.
_base_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "treadle_pipeline_dir", default=None
)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _closest(name: str, known: Sequence[str], also: Sequence[str] = ()) -> str:
    """`` (did you mean 'x'?)``: the closest of ``known``, or a near miss of ``also``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    match = match or difflib.get_close_matches(name, list(also), n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


class _Problem(Exception):
    """A mistake found while loading; turned into a `PipelineFileError` with the file name."""

    def __init__(self, message: str, where: str | None = None, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.key = key

    def at(self, where: str | None = None, key_prefix: str | None = None) -> _Problem:
        if self.where is None:
            self.where = where
        if key_prefix:
            self.key = f"{key_prefix}.{self.key}" if self.key else key_prefix
        return self

    def render(self, label: str) -> str:
        text = label + ":"
        if self.where:
            text += f" [{self.where}]"
        if self.key:
            text += f" key {self.key!r}:"
        return f"{text} {self.message}"


# --- values ----------------------------------------------------------------------------

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
    Duration: "a duration",
    JsonSchema: "a JSON Schema (a table, or the path of a JSON file)",
    Path: "a path (string)",
}


def _kind(value: Any) -> str:
    for t in (bool, int, float, str, list, dict):
        if isinstance(value, t):
            return _TYPE_NAMES[t] if t is not bool else "a boolean"
    return type(value).__name__


def _coerce(value: Any, expected: type, key: str, base_dir: Path) -> Any:
    """``value`` checked (and converted) for an option of type ``expected``."""
    if expected is Duration:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _Problem(str(exc), key=key) from None
    if expected is JsonSchema:
        return _json_schema(value, key, base_dir)
    if expected is Path:
        return _path(value, key, base_dir)
    if not _is_a(value, expected):
        name = _TYPE_NAMES.get(expected, expected.__name__)
        raise _Problem(f"expected {name}, got {_show(value)} ({_kind(value)})", key=key)
    return _in_range(value, expected, key)


def _path(value: Any, key: str, base_dir: Path) -> Path:
    """A path option: a non-empty string, ``~`` expanded, relative to ``base_dir``."""
    if not isinstance(value, str) or not value:
        raise _Problem(f"expected a path (string), got {_show(value)}", key=key)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _is_a(value: Any, expected: type) -> bool:
    """Whether ``value`` has an option's plain type: a boolean is not a number; an integer
    is a number (``float``) too."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected)


def _in_range(value: Any, expected: type, key: str) -> Any:
    """A value of the right type, checked: an integer within ±2**63, a number finite (and
    made a float); any other value as it is."""
    if expected is int and abs(value) > MAX_INT:
        raise _Problem(f"{_show(value)} is out of range (within ±2**63)", key=key)
    if expected is float:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float
            raise _Problem(f"{_show(value)} is out of range", key=key) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise _Problem(f"{value} is not a usable number", key=key)
    return value


def _json_schema(value: Any, key: str, base_dir: Path) -> dict[str, Any]:
    """An inline schema, or the JSON file a path names, checked to be a JSON Schema."""
    where = "the schema"
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        where = str(path)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _Problem(f"cannot read {path}: {exc.strerror or exc}", key=key) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Problem(f"{path} is not JSON: {exc}", key=key) from None
    elif not isinstance(value, dict):
        name = _TYPE_NAMES[JsonSchema]
        raise _Problem(f"expected {name}, got {_show(value)} ({_kind(value)})", key=key)
    try:
        return JsonSchema(check_form(value, where))
    except ValueError as exc:
        raise _Problem(str(exc), key=key) from None


def _options(
    declared: Mapping[str, Option],
    given: Mapping[str, Any],
    what: str,
    base_dir: Path,
    also: Sequence[str] = (),
) -> dict[str, Any]:
    """Validate ``given`` against ``declared``; the keyword arguments for the factory.

    ``also``: the table's own keys (``needs``, ``retry``...), offered for a typo too.
    """
    out: dict[str, Any] = {}
    for key, value in given.items():
        option = declared.get(key)
        if option is None:
            known = ", ".join(sorted(declared)) or "none"
            hint = _closest(key, list(declared), also)
            raise _Problem(f"{what} has no option {key!r}{hint} (options: {known})", key=key)
        out[key] = _coerce(value, option.type, key, base_dir)
    for key, option in declared.items():
        if key in out:
            continue
        if option.required:
            raise _Problem(f"missing; {what} requires it", key=key)
        if option.default is not None:
            out[key] = option.default
    return out


def _check_accepts(
    factory: Any, options: Mapping[str, Any], what: str, also: Sequence[str] = ()
) -> None:
    """A `_Problem` naming the first key of ``options`` that ``factory`` does not take
    (``also``: the table's own keys, offered for a typo too)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: let the call decide
        return
    params = signature.parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in options:
            if key not in accepted:
                takes = ", ".join(accepted) or "none"
                raise _Problem(
                    f"{what} does not take an option {key!r}{_closest(key, accepted, also)} "
                    f"(it takes: {takes})",
                    key=key,
                )
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise _Problem(f"{what}: {exc}") from None


# --- importing "pkg.mod:object" -------------------------------------------------------


def import_object(ref: str) -> Any:
    """The object named by ``"pkg.mod:name"`` (``name`` may be dotted).

    Modules are imported from the pipeline file's directory first.
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or not re.fullmatch(r"[\w.]+", module_name + "." + attr):
        raise _Problem(f"{ref!r} is not an object reference (use 'package.module:name')")
    base = _base_dir.get()
    if base is not None:
        _prefer_local(module_name, base)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise _Problem(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
                + (f" (looked in {base} and sys.path)" if base else "")
            ) from None
        raise _Problem(f"importing {module_name!r} failed: {_exc_line(exc)}") from None
    except Exception as exc:
        raise _Problem(f"importing {module_name!r} failed: {_exc_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise _Problem(
                f"{getattr(obj, '__name__', module_name)!r} has no attribute {part!r}"
                f"{_closest(part, names)}"
            )
        obj = getattr(obj, part)
    return obj


def _exc_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _prefer_local(module_name: str, base: Path) -> None:
    """Put ``base`` first on sys.path; forget a same-named module imported from elsewhere."""
    base_str = str(base)
    if sys.path[:1] != [base_str]:
        if base_str in sys.path:
            sys.path.remove(base_str)
        sys.path.insert(0, base_str)
    top = module_name.split(".", 1)[0]
    local = base / f"{top}.py"
    if not (local.exists() or (base / top / "__init__.py").exists()):
        return
    cached = sys.modules.get(top)
    origin = getattr(cached, "__file__", None) if cached is not None else None
    if cached is not None and (origin is None or not Path(origin).resolve().is_relative_to(base)):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
        importlib.invalidate_caches()


def stage_from_object(ref: str, options: Mapping[str, Any]) -> Any:
    """A stage from ``"pkg.mod:name"``: a Stage instance, a Stage subclass built with
    ``options``, or a function (sync or async) taking ``(item, ctx)``."""
    obj = import_object(ref)
    if isinstance(obj, type) and issubclass(obj, Stage):
        _check_accepts(obj, options, ref, STAGE_KEYS)
        try:
            return obj(**options)
        except Exception as exc:
            raise _Problem(f"{ref}({', '.join(options)}) raised {_exc_line(exc)}") from None
    if options:
        first = next(iter(options))
        hint = _closest(first, (), STAGE_KEYS)
        raise _Problem(
            f"{ref} is not a Stage class, so it takes no options{hint or ''}"
            + ("" if hint else f" (keys of a stage: {', '.join(STAGE_KEYS)})"),
            key=first,
        )
    if isinstance(obj, Stage) or callable(obj):
        if isinstance(obj, type):
            raise _Problem(f"{ref} is a class but not a Stage subclass")
        return obj
    raise _Problem(f"{ref} is a {type(obj).__name__}, not a Stage, Stage subclass or function")


# --- the pipeline ----------------------------------------------------------------------


@dataclass
class SinkConfig:
    """One ``[[sinks]]`` entry, validated; opened by `Pipeline.open_sinks`."""

    index: int
    uses: str
    type: SinkType
    options: dict[str, Any]


@dataclass
class StageConfig:
    name: str
    uses: str
    description: str = ""


@dataclass
class Pipeline:
    """A validated pipeline file: its workflow, store URL, concurrency and sinks."""

    path: Path
    label: str
    name: str
    store_url: str
    concurrency: int
    workflow: Workflow
    stages: dict[str, StageConfig]
    sinks: list[SinkConfig] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def open_sinks(self) -> list[Callable[[Event], None]]:
        """Create each sink's listener (a failure is a `PipelineFileError` naming the sink)."""
        listeners: list[Callable[[Event], None]] = []
        for sink in self.sinks:
            try:
                listeners.append(sink.type.factory(**sink.options))
            except Exception as exc:
                close_sinks(listeners)
                where = f"sinks[{sink.index}]"
                raise PipelineFileError(
                    f"{self.label}: [{where}] sink {sink.uses!r} failed to start: {_exc_line(exc)}"
                ) from None
        return listeners


def close_sinks(listeners: Sequence[Callable[[Event], None]]) -> None:
    for listener in listeners:
        close = getattr(listener, "close", None)
        if callable(close):
            close()


def resolve_store_url(url: str, base_dir: Path) -> str:
    """A relative ``sqlite:///path`` made relative to ``base_dir``; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":memory:"):
            return prefix + str(base_dir / rest)
    return url


def load_pipeline(
    path: str | Path, pm: TreadlePluginManager, *, label: str | None = None
) -> Pipeline:
    """Read, validate and build a pipeline file; `PipelineFileError` on any mistake."""
    path = Path(path)
    label = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineFileError(
            f"{label}: no such file (run 'treadle init' to create one, or pass -p PATH)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError(f"{label}: cannot read: {exc}") from None
    return loads_pipeline(text, pm, path=path, label=label)


def loads_pipeline(
    text: str,
    pm: TreadlePluginManager,
    *,
    path: Path | None = None,
    label: str = DEFAULT_FILE,
) -> Pipeline:
    """Validate and build a pipeline from TOML text (``path`` sets the base directory)."""
    path = path or Path(DEFAULT_FILE)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineFileError(f"{label}: not valid TOML: {exc}") from None
    except RecursionError:
        raise PipelineFileError(f"{label}: not valid TOML: nested too deeply") from None
    base_dir = path.resolve().parent
    token = _base_dir.set(base_dir)
    try:
        return _Loader(doc, pm, path, label, base_dir).load()
    except _Problem as problem:
        raise PipelineFileError(problem.render(label)) from None
    finally:
        _base_dir.reset(token)


class _Loader:
    def __init__(
        self,
        doc: dict[str, Any],
        pm: TreadlePluginManager,
        path: Path,
        label: str,
        base_dir: Path,
    ):
        self.doc = doc
        self.pm = pm
        self.path = path
        self.label = label
        self.base_dir = base_dir

    def load(self) -> Pipeline:
        for key in self.doc:
            if key not in TOP_KEYS:
                raise _Problem(
                    f"unknown table or key {key!r}{_closest(key, TOP_KEYS)} "
                    f"(allowed: {', '.join(TOP_KEYS)})"
                )
        settings = self._table(self.doc.get("pipeline", {}), "pipeline", None)
        self._check_keys(settings, PIPELINE_KEYS, "pipeline")
        name = settings.get("name", self.base_dir.name or "pipeline")
        self._type(name, str, "pipeline", "name")
        self._id(name, "pipeline", "name", "the pipeline's name")
        store = settings.get("store", DEFAULT_STORE)
        self._type(store, str, "pipeline", "store")
        if "://" not in store:
            raise _Problem(
                f"{_show(store)} is not a store URL (use sqlite:///path/state.db, "
                "postgresql://host/db or memory://)",
                "pipeline",
                "store",
            )
        concurrency = settings.get("concurrency", DEFAULT_CONCURRENCY)
        self._positive_int(concurrency, "pipeline", "concurrency", MAX_CONCURRENCY)
        if "plugins" in self.doc:
            self._table(self.doc["plugins"], "plugins", None)

        stages_doc = self._table(self.doc.get("stages"), "stages", None, required=True)
        if not stages_doc:
            raise _Problem("no stages defined (add a [stages.NAME] table)", "stages")
        builder = Workflow.builder(name)
        if "max_artefact_bytes" in settings:
            self._positive_int(
                settings["max_artefact_bytes"], "pipeline", "max_artefact_bytes", MAX_ARTEFACT_BYTES
            )
            builder.max_artefact_bytes(settings["max_artefact_bytes"])
        configs: dict[str, StageConfig] = {}
        for stage_name, table in stages_doc.items():
            where = f"stages.{stage_name}"
            self._id(stage_name, "stages", None, "a stage name")
            table = self._table(table, where, None)
            configs[stage_name] = self._stage(builder, stage_name, table, where, list(stages_doc))
        sinks = self._sinks(self.doc.get("sinks", []))

        try:
            self.pm.prepare_workflow(builder, self.doc)
        except PluginError as exc:
            raise _Problem(str(exc)) from None
        try:
            workflow = builder.build()
        except WorkflowError as exc:
            raise _Problem(str(exc), "stages") from None
        return Pipeline(
            path=self.path,
            label=self.label,
            name=name,
            store_url=resolve_store_url(store, self.base_dir),
            concurrency=concurrency,
            workflow=workflow,
            stages=configs,
            sinks=sinks,
            config=self.doc,
        )

    # --- helpers -------------------------------------------------------------
    @staticmethod
    def _table(
        value: Any, where: str, key: str | None, *, required: bool = False
    ) -> dict[str, Any]:
        if value is None and required:
            raise _Problem("no stages defined (add a [stages.NAME] table)", where)
        if not isinstance(value, dict):
            raise _Problem(f"expected a table, got {_show(value)} ({_kind(value)})", where, key)
        return value

    @staticmethod
    def _check_keys(
        table: Mapping[str, Any], allowed: Sequence[str], where: str, *, prefix: str = ""
    ) -> None:
        """A `_Problem` naming the first key not ``allowed`` (``prefix``: the key of a table
        within ``where``, e.g. ``retry``)."""
        for key in table:
            if key not in allowed:
                raise _Problem(
                    f"unknown key{_closest(key, allowed)} (allowed: {', '.join(allowed)})",
                    where,
                    f"{prefix}.{key}" if prefix else key,
                )

    @staticmethod
    def _type(value: Any, expected: type, where: str, key: str) -> None:
        try:
            _coerce(value, expected, key, Path())
        except _Problem as problem:
            raise problem.at(where) from None

    def _positive_int(self, value: Any, where: str, key: str, most: int) -> None:
        self._type(value, int, where, key)
        if not 1 <= value <= most:
            raise _Problem(f"must be from 1 to {most:,}, not {_show(value)}", where, key)

    @staticmethod
    def _id(value: str, where: str, key: str | None, what: str) -> None:
        try:
            check_id(value, what)
        except InputError as exc:
            raise _Problem(str(exc), where, key) from None

    def _duration(self, value: Any, where: str, key: str, *, positive: bool = False) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _Problem(str(exc), where, key) from None
        if positive and seconds <= 0:
            raise _Problem(f"{_show(value)} must be longer than zero", where, key)
        return seconds

    # --- stages --------------------------------------------------------------
    def _stage(
        self,
        builder: WorkflowBuilder,
        name: str,
        table: dict[str, Any],
        where: str,
        all_stages: list[str],
    ) -> StageConfig:
        if "uses" not in table:
            raise _Problem(
                "missing; say which stage type to use "
                '(uses = "python", "review", a plugin\'s type, or "pkg.module:object")',
                where,
                "uses",
            )
        uses = table["uses"]
        self._type(uses, str, where, "uses")
        description = table.get("description", "")
        self._type(description, str, where, "description")
        options = {k: v for k, v in table.items() if k not in STAGE_KEYS}
        try:
            stage = self._make_stage(uses, options)
        except _Problem as problem:
            raise problem.at(where) from None
        needs = self._needs(table, name, where, all_stages)
        builder.stage(name, stage, needs=needs, **self._lineage(table, where))
        self._checks(builder, name, table, where)
        self._limit(builder, name, table, where)
        self._people(builder, name, table, where)
        return StageConfig(name, uses, description or getattr(stage, "description", "") or "")

    @staticmethod
    def _needs(table: dict[str, Any], name: str, where: str, all_stages: list[str]) -> list[str]:
        """``needs``: a stage name or a list of them, each another stage of the file."""
        needs = table.get("needs", [])
        if isinstance(needs, str):
            needs = [needs]
        if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
            raise _Problem(f"expected a list of stage names, got {_show(needs)}", where, "needs")
        for dep in needs:
            if dep == name:
                raise _Problem("a stage cannot need itself", where, "needs")
            if dep not in all_stages:
                raise _Problem(f"{dep!r} is not a stage{_closest(dep, all_stages)}", where, "needs")
        return needs

    def _checks(
        self, builder: WorkflowBuilder, name: str, table: dict[str, Any], where: str
    ) -> None:
        """``retry``, ``gate``, ``review`` and ``review_timeout``: what happens to an attempt
        after it runs."""
        if "retry" in table:
            builder.retry_budget(name, self._retry(table["retry"], where))
        if "gate" in table:
            builder.quality_gate(name, self._gate(table["gate"], where))
        if "review" in table:
            builder.review_policy(name, self._policy(table["review"], where))
        if "review_timeout" in table:
            seconds, decision = self._review_timeout(table["review_timeout"], where)
            builder.review_timeout(name, seconds, decision)

    def _limit(
        self, builder: WorkflowBuilder, name: str, table: dict[str, Any], where: str
    ) -> None:
        """``max_concurrent = 2`` and ``rate = "1/s"``: flow control across every worker."""
        concurrency, rate = table.get("max_concurrent"), table.get("rate")
        if concurrency is None and rate is None:
            return
        if concurrency is not None:
            self._type(concurrency, int, where, "max_concurrent")
            if not 1 <= concurrency <= MAX_CONCURRENCY:
                raise _Problem(
                    f"{concurrency} is out of range (1 to {MAX_CONCURRENCY:,} attempts at once)",
                    where,
                    "max_concurrent",
                )
        if rate is not None:
            try:
                parse_rate(rate)
            except ValueError as exc:
                raise _Problem(str(exc), where, "rate") from None
        builder.limit(name, concurrency=concurrency, rate=rate)

    def _people(
        self, builder: WorkflowBuilder, name: str, table: dict[str, Any], where: str
    ) -> None:
        """``approvers = ["ana", "ben"]``, ``required_approvals = 2`` and ``branch = {choice =
        ["stage", ...]}``: who decides this stage's reviews, and what a choice runs."""
        self._approvers(builder, name, table, where)
        if "branch" in table:
            self._branch(builder, name, table["branch"], where)

    def _approvers(
        self, builder: WorkflowBuilder, name: str, table: dict[str, Any], where: str
    ) -> None:
        """``approvers`` (a name or a list of names) and ``required_approvals``."""
        names, required = table.get("approvers"), table.get("required_approvals")
        if names is not None:
            if isinstance(names, str):
                names = [names]
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n.strip() for n in names)
            ):
                raise _Problem(
                    f"expected a list of reviewer names, got {_show(names)}", where, "approvers"
                )
        if required is not None:
            self._positive_int(required, where, "required_approvals", MAX_CONCURRENCY)
        if names is not None or required is not None:
            try:
                builder.approvers(name, names, required or 1)
            except ValueError as exc:
                key = "required_approvals" if required is not None else "approvers"
                raise _Problem(str(exc).split(": ", 1)[-1], where, key) from None

    def _branch(self, builder: WorkflowBuilder, name: str, value: Any, where: str) -> None:
        """``branch = {choice = ["stage", ...]}``: the dependents each choice runs."""
        branches: dict[str, list[str]] = {}
        for choice, dependents in self._table(value, where, "branch").items():
            if isinstance(dependents, str):
                dependents = [dependents]
            if not isinstance(dependents, list) or not all(isinstance(d, str) for d in dependents):
                raise _Problem(
                    f"expected a list of stage names, got {_show(dependents)}",
                    where,
                    f"branch.{choice}",
                )
            branches[choice] = dependents
        try:
            builder.branch(name, branches)
        except ValueError as exc:
            raise _Problem(str(exc).split(": ", 1)[-1], where, "branch") from None

    def _lineage(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        """``version`` and ``renamed_from`` of a stage (SPEC §10)."""
        out: dict[str, Any] = {}
        if "version" in table:
            version = table["version"]
            if isinstance(version, bool) or not isinstance(version, str | int) or not str(version):
                raise _Problem(
                    f'expected a version string like "2", got {_show(version)}', where, "version"
                )
            out["version"] = str(version)
        if "renamed_from" in table:
            old = table["renamed_from"]
            names = [old] if isinstance(old, str) else old
            if (
                not isinstance(names, list)
                or not names
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise _Problem(
                    f"expected the stage's old name (or a list of them), got {_show(old)}",
                    where,
                    "renamed_from",
                )
            out["renamed_from"] = names
        return out

    def _make_stage(self, uses: str, options: dict[str, Any]) -> Any:
        if ":" in uses:
            return stage_from_object(uses, options)
        registry = self.pm.stage_types()
        try:
            stage_type = registry.get(uses)
        except PluginError as exc:
            raise _Problem(str(exc), key="uses") from None
        if stage_type is None:
            known = ", ".join(registry.names()) or "none"
            raise _Problem(
                f"unknown stage type {uses!r}{_closest(uses, registry.names())}; "
                f"known: {known} (a plugin may provide it: pip install treadle-stage-{uses}; "
                'or use "pkg.module:object")',
                key="uses",
            )
        what = f"stage type {uses!r}"
        kwargs = _options(stage_type.options, options, what, self.base_dir, STAGE_KEYS)
        _check_accepts(stage_type.factory, kwargs, what, STAGE_KEYS)
        try:
            return stage_type.factory(**kwargs)
        except _Problem:
            raise
        except Exception as exc:
            raise _Problem(f"stage type {uses!r}: {_exc_line(exc)}") from None

    def _retry(self, value: Any, where: str) -> RetryBudget:
        """``retry = {...}``: the stage's retry budget, each key checked, then how far its
        delays grow."""
        table = self._table(value, where, "retry")
        self._check_keys(table, RETRY_KEYS, where, prefix="retry")
        kw = self._retry_kwargs(table, where)
        try:
            check_retry_growth(
                kw.get("max_attempts", 1),
                kw.get("delay", 0.0),
                kw.get("backoff", 1.0),
                kw.get("max_delay"),
            )
            return RetryBudget(**kw)
        except ValueError as exc:
            raise _Problem(str(exc), where, "retry") from None

    def _retry_kwargs(self, table: dict[str, Any], where: str) -> dict[str, Any]:
        """`RetryBudget`'s keyword arguments from a ``retry`` table, each value checked."""
        kw: dict[str, Any] = {}
        if "max_attempts" in table:
            self._positive_int(table["max_attempts"], where, "retry.max_attempts", MAX_ATTEMPTS)
            kw["max_attempts"] = table["max_attempts"]
        for key in ("delay", "max_delay", "jitter"):
            if key in table:
                kw[key] = self._duration(table[key], where, f"retry.{key}")
        if "timeout" in table:
            kw["attempt_timeout"] = self._duration(
                table["timeout"], where, "retry.timeout", positive=True
            )
        if "backoff" in table:
            kw["backoff"] = self._backoff(table["backoff"], where)
        if "on_exhausted" in table:
            kw["on_exhausted"] = self._on_exhausted(table["on_exhausted"], where)
        return kw

    def _backoff(self, value: Any, where: str) -> float:
        """``retry.backoff``: a number more than 0 and at most `MAX_BACKOFF`."""
        self._type(value, float, where, "retry.backoff")
        if not 0 < value <= MAX_BACKOFF:
            raise _Problem(
                f"must be more than 0 and at most {MAX_BACKOFF:g}, not {_show(value)}",
                where,
                "retry.backoff",
            )
        return float(value)

    @staticmethod
    def _on_exhausted(value: Any, where: str) -> ExhaustedAction:
        """``retry.on_exhausted``: what a stage out of attempts does."""
        choices = [a.value for a in ExhaustedAction]
        if value not in choices:
            raise _Problem(
                f"{_show(value)} is not one of {', '.join(choices)}",
                where,
                "retry.on_exhausted",
            )
        return ExhaustedAction(value)

    def _gate(self, value: Any, where: str) -> QualityGate:
        if isinstance(value, list):
            if not value:
                raise _Problem("an empty list of gates", where, "gate")
            return all_of(*(self._one_gate(g, where, f"gate[{i}]") for i, g in enumerate(value)))
        return self._one_gate(value, where, "gate")

    def _one_gate(self, value: Any, where: str, key: str) -> QualityGate:
        """One gate: ``"type"``, or ``{uses = "type" or "pkg.mod:object", options...}``."""
        if isinstance(value, str):
            value = {"uses": value}
        table = self._table(value, where, key)
        uses = table.get("uses")
        if uses is None:
            raise _Problem("missing; say which gate type to use", where, f"{key}.uses")
        self._type(uses, str, where, f"{key}.uses")
        options = {k: v for k, v in table.items() if k != "uses"}
        if ":" in uses:
            return self._gate_object(uses, options, where, key)
        return self._gate_type(uses, options, where, key)

    @staticmethod
    def _gate_object(uses: str, options: dict[str, Any], where: str, key: str) -> QualityGate:
        """A gate from ``"pkg.mod:object"``: a QualityGate, or a class built with ``options``
        that makes one."""
        try:
            obj = import_object(uses)
        except _Problem as problem:
            raise problem.at(where, f"{key}.uses") from None
        if not isinstance(obj, type):
            if options:
                first = next(iter(options))
                raise _Problem(
                    f"{uses} is a gate object, not a class, so it takes no options",
                    where,
                    f"{key}.{first}",
                )
            gate = obj
        else:
            try:
                _check_accepts(obj, options, uses)
            except _Problem as problem:
                raise problem.at(where, key) from None
            try:
                gate = obj(**options)
            except Exception as exc:
                raise _Problem(f"{uses}: {_exc_line(exc)}", where, key) from None
        if not isinstance(gate, QualityGate):
            raise _Problem(f"{uses} is not a QualityGate", where, f"{key}.uses")
        return gate

    def _gate_type(self, uses: str, options: dict[str, Any], where: str, key: str) -> QualityGate:
        """A gate of a registered type (built in or a plugin's), its options checked."""
        registry = self.pm.gate_types()
        try:
            gate_type = registry.get(uses)
        except PluginError as exc:
            raise _Problem(str(exc), where, f"{key}.uses") from None
        if gate_type is None:
            known = ", ".join(registry.names()) or "none"
            raise _Problem(
                f"unknown gate type {uses!r}{_closest(uses, registry.names())}; known: {known} "
                f"(a plugin may provide it: pip install treadle-gate-{uses})",
                where,
                f"{key}.uses",
            )
        try:
            kwargs = _options(gate_type.options, options, f"gate type {uses!r}", self.base_dir)
            _check_accepts(gate_type.factory, kwargs, f"gate type {uses!r}")
        except _Problem as problem:
            raise problem.at(where, key) from None
        try:
            return gate_type.factory(**kwargs)
        except Exception as exc:
            raise _Problem(f"gate type {uses!r}: {_exc_line(exc)}", where, key) from None

    def _policy(self, value: Any, where: str) -> ReviewPolicy:
        choices = [p.value for p in ReviewPolicy]
        if value not in choices:
            raise _Problem(
                f"{_show(value)} is not a review policy (use {', '.join(choices)})",
                where,
                "review",
            )
        return ReviewPolicy(value)

    def _review_timeout(self, value: Any, where: str) -> tuple[float, Approve | Reject]:
        key = "review_timeout"
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return self._duration(value, where, key, positive=True), Reject("no answer")
        table = self._table(value, where, key)
        self._check_keys(table, ("after", "decision", "reason"), where, prefix=key)
        if "after" not in table:
            raise _Problem("missing (how long to wait, e.g. '1h')", where, f"{key}.after")
        seconds = self._duration(table["after"], where, f"{key}.after", positive=True)
        decision = table.get("decision", "reject")
        reason = table.get("reason", "no answer")
        self._type(reason, str, where, f"{key}.reason")
        if decision == "approve":
            if "reason" in table:
                raise _Problem("only a 'reject' decision takes a reason", where, f"{key}.reason")
            return seconds, Approve()
        if decision == "reject":
            return seconds, Reject(reason)
        raise _Problem(
            f"{_show(decision)} is not a decision (use approve or reject)",
            where,
            f"{key}.decision",
        )

    # --- sinks ---------------------------------------------------------------
    def _sinks(self, value: Any) -> list[SinkConfig]:
        if not isinstance(value, list):
            raise _Problem(
                f"expected [[sinks]] tables, got {_show(value)} ({_kind(value)})", "sinks"
            )
        registry = self.pm.sink_types()
        out: list[SinkConfig] = []
        for index, entry in enumerate(value):
            where = f"sinks[{index}]"
            table = self._table(entry, where, None)
            uses = table.get("uses")
            if uses is None:
                raise _Problem("missing; say which sink type to use", where, "uses")
            self._type(uses, str, where, "uses")
            try:
                sink_type = registry.get(uses)
            except PluginError as exc:
                raise _Problem(str(exc), where, "uses") from None
            if sink_type is None:
                known = ", ".join(registry.names()) or "none"
                raise _Problem(
                    f"unknown sink type {uses!r}{_closest(uses, registry.names())}; "
                    f"known: {known} (a plugin may provide it: pip install treadle-sink-{uses})",
                    where,
                    "uses",
                )
            options = {k: v for k, v in table.items() if k != "uses"}
            try:
                kwargs = _options(sink_type.options, options, f"sink type {uses!r}", self.base_dir)
                _check_accepts(sink_type.factory, kwargs, f"sink type {uses!r}")
            except _Problem as problem:
                raise problem.at(where) from None
            out.append(SinkConfig(index, uses, sink_type, kwargs))
        return out
