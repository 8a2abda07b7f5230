"""The plugin manager: built-in plugins, entry points (group ``treadle``), and the registries.

`get_plugin_manager()` returns a fresh manager every time; nothing happens at
import. Built-ins (``treadle_core/builtins/``) register through the same hooks
as third-party plugins. Entry points load one by one: a plugin that fails to
import, names an unknown hook, or raises in a hook is recorded with its error
and the rest keep working.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pluggy

from . import hookspecs
from .errors import PluginError
from .hookspecs import GateType, SinkType, StageType, StoreBackend, registration_problem

if TYPE_CHECKING:
    import click

    from .workflow import WorkflowBuilder

ENTRY_POINT_GROUP = "treadle"

#: Modules registered by every manager, in this order (a new built-in goes here).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "treadle_core.builtins.stores",
    "treadle_core.builtins.stages",
    "treadle_core.builtins.commands",
)

T = TypeVar("T")


@dataclass
class PluginInfo:
    """What the manager knows about one plugin, shown by ``treadle plugins list``."""

    name: str
    version: str | None
    builtin: bool
    source: str
    hooks: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": sorted(self.hooks),
            "provides": sorted(self.provides),
            "error": self.error,
        }


class Registry(Generic[T]):
    """Names registered by plugins; a name claimed by two plugins cannot be used."""

    def __init__(self, kind: str, prefix: str, value_type: type[T]):
        self.kind = kind  # "Stage type", shown in messages
        self.prefix = prefix  # "stage", shown in `plugins list`
        self.value_type = value_type
        self.entries: dict[str, T] = {}
        self.owners: dict[str, str] = {}
        self.conflicts: dict[str, list[str]] = {}

    def add(self, name: str, value: T, plugin: str) -> str | None:
        """Record ``name``; the conflict message when another plugin has it already."""
        owner = self.owners.get(name)
        if owner is not None and owner != plugin:
            self.conflicts.setdefault(name, [owner]).append(plugin)
            return self.conflict_message(name)
        self.entries[name] = value
        self.owners[name] = plugin
        return None

    def conflict_message(self, name: str) -> str:
        first, second = self.conflicts[name][:2]
        return (
            f'{self.kind} "{name}" is registered by both "{first}" and "{second}"; '
            "uninstall one or set TREADLE_LOAD_PLUGINS"
        )

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> T | None:
        """The value, None for an unknown name; `PluginError` for a name two plugins claim."""
        if name in self.conflicts:
            raise PluginError(self.conflict_message(name))
        return self.entries.get(name)

    def names(self) -> list[str]:
        return sorted(self.entries)


class TreadlePluginManager(pluggy.PluginManager):
    """A `pluggy.PluginManager` that also records, per plugin, its source and its errors."""

    def __init__(self) -> None:
        super().__init__("treadle")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry[Any]] = {}

    # --- loading -------------------------------------------------------------
    def add_plugin(
        self,
        plugin: Any,
        name: str,
        *,
        version: str | None = None,
        builtin: bool = False,
        source: str = "",
    ) -> PluginInfo:
        """Register ``plugin`` under ``name``; a failure is recorded, not raised."""
        info = self.infos.get(name) or PluginInfo(name, version, builtin, source)
        self.infos[name] = info
        try:
            self.register(plugin, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, ValueError (name taken)
            info.errors.append(_describe(exc))
            return info
        unknown = [
            caller.name for caller in self.get_hookcallers(plugin) or [] if not caller.has_spec()
        ]
        if unknown:
            self.unregister(plugin)
            for hook in unknown:
                info.errors.append(f"unknown hook {hook!r}{_closest_hook(hook)}")
            return info
        info.hooks = sorted(caller.name for caller in self.get_hookcallers(plugin) or [])
        self._registries.clear()
        return info

    def record_failure(self, name: str, error: str, **kw: Any) -> PluginInfo:
        info = self.infos.get(name) or PluginInfo(
            name, kw.get("version"), kw.get("builtin", False), kw.get("source", "")
        )
        info.errors.append(error)
        self.infos[name] = info
        return info

    def info_for(self, plugin_name: str) -> PluginInfo:
        info = self.infos.get(plugin_name)
        if info is None:  # registered straight through pm.register()
            plugin = self.get_plugin(plugin_name)
            info = PluginInfo(plugin_name, None, False, repr(plugin))
            info.hooks = sorted(c.name for c in self.get_hookcallers(plugin) or [])
            self.infos[plugin_name] = info
        return info

    # --- calling implementations one by one -------------------------------------
    def implementations(self, hook: str) -> list[Any]:
        """The implementations (pluggy ``HookImpl``) of ``hook``, in registration order."""
        return list(getattr(self.hook, hook).get_hookimpls())

    def call_one(self, impl: Any, hook: str, **kwargs: Any) -> Any:
        """Call one implementation with only the arguments it accepts."""
        self.trace.root.get("hook")(f"{hook} [{impl.plugin_name}]")
        return impl.function(**{name: kwargs[name] for name in impl.argnames if name in kwargs})

    def _collect(self, hook: str, registry: Registry[T], key: Callable[[T], str]) -> Registry[T]:
        for impl in self.implementations(hook):
            plugin_name = impl.plugin_name
            info = self.info_for(plugin_name)
            found: list[T] = []
            try:
                self.call_one(impl, hook, register=found.append)
            except Exception as exc:
                info.errors.append(f"{hook}: {_describe(exc)}")
                continue
            for value in found:
                if not isinstance(value, registry.value_type):
                    info.errors.append(
                        f"{hook}: registered {type(value).__name__}, "
                        f"expected {registry.value_type.__name__}"
                    )
                    continue
                malformed = registration_problem(value)
                if malformed is not None:
                    info.errors.append(f"{hook}: {malformed}")
                    continue
                name = key(value)
                problem = registry.add(name, value, plugin_name)
                if problem is not None:
                    info.errors.append(problem)
                    first = self.info_for(registry.conflicts[name][0])
                    if problem not in first.errors:
                        first.errors.append(problem)
                else:
                    info.provides.append(f"{registry.prefix}:{name}")
        return registry

    def _registry(
        self, hook: str, kind: str, prefix: str, value_type: type[Any], key: Callable[[Any], str]
    ) -> Registry[Any]:
        if hook not in self._registries:
            registry: Registry[Any] = Registry(kind, prefix, value_type)
            self._registries[hook] = self._collect(hook, registry, key)
        return self._registries[hook]

    # --- typed access (the rest of the code calls these, never pm.hook) --------
    def stage_types(self) -> Registry[StageType]:
        return self._registry(
            "register_stage_types", "Stage type", "stage", StageType, lambda v: v.name
        )

    def store_backends(self) -> Registry[StoreBackend]:
        return self._registry(
            "register_stores", "Store scheme", "store", StoreBackend, lambda v: v.scheme
        )

    def gate_types(self) -> Registry[GateType]:
        return self._registry(
            "register_quality_gates", "Gate type", "gate", GateType, lambda v: v.name
        )

    def sink_types(self) -> Registry[SinkType]:
        return self._registry(
            "register_event_sinks", "Sink type", "sink", SinkType, lambda v: v.name
        )

    def load_registries(self) -> None:
        """Run every ``register_*`` hook now, so each plugin's errors are known."""
        self.stage_types()
        self.store_backends()
        self.gate_types()
        self.sink_types()

    def add_commands(self, cli: click.Group) -> None:
        """Let each plugin add its commands; a name added twice keeps the first one."""
        for impl in self.implementations("register_commands"):
            plugin_name = impl.plugin_name
            info = self.info_for(plugin_name)
            before = dict(cli.commands)
            try:
                self.call_one(impl, "register_commands", cli=cli)
            except Exception as exc:
                info.errors.append(f"register_commands: {_describe(exc)}")
            for name, command in list(cli.commands.items()):
                if before.get(name) is command:
                    continue
                if name in before:
                    owner = next(
                        (p.name for p in self.infos.values() if f"command:{name}" in p.provides),
                        "?",
                    )
                    cli.commands[name] = before[name]
                    info.errors.append(
                        f'Command "{name}" is registered by both "{owner}" and "{plugin_name}"; '
                        "uninstall one or set TREADLE_LOAD_PLUGINS"
                    )
                else:
                    info.provides.append(f"command:{name}")

    def prepare_workflow(self, builder: WorkflowBuilder, config: dict[str, Any]) -> None:
        """Run each ``prepare_workflow``; one that raises is a `PluginError` naming it."""
        for impl in self.implementations("prepare_workflow"):
            plugin_name = impl.plugin_name
            try:
                self.call_one(impl, "prepare_workflow", builder=builder, config=config)
            except Exception as exc:
                raise PluginError(
                    f'plugin "{plugin_name}" failed in prepare_workflow: {_describe(exc)}'
                ) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _closest_hook(name: str) -> str:
    known = [n for n in dir(hookspecs) if n.startswith(("register_", "prepare_"))]
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _selected_plugins() -> set[str] | None:
    raw = os.environ.get("TREADLE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def get_plugin_manager(*, load_entry_points: bool = True) -> TreadlePluginManager:
    """A fresh manager: the built-ins, then each entry point of group ``treadle``."""
    pm = TreadlePluginManager()
    if os.environ.get("TREADLE_TRACE_PLUGINS", "").strip() not in ("", "0"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    from . import __version__

    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        pm.add_plugin(
            module,
            module_name,
            version=__version__,
            builtin=True,
            source=f"built-in module {module_name}",
        )
    if load_entry_points:
        load_entry_points_into(pm)
    return pm


def load_entry_points_into(pm: TreadlePluginManager) -> None:
    """Load entry points of group ``treadle`` one by one (honouring TREADLE_LOAD_PLUGINS)."""
    wanted = _selected_plugins()
    seen: set[str] = set()
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in eps:
        if wanted is not None and ep.name not in wanted:
            continue
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else None
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        source = f"entry point {ep.name} = {ep.value} (distribution {dist_name})"
        if ep.name in seen:
            # The same distribution seen twice on sys.path (e.g. an editable install).
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except BaseException as exc:  # SystemExit from a plugin must not end treadle
            if isinstance(exc, KeyboardInterrupt):
                raise
            pm.record_failure(
                ep.name,
                f"cannot import {ep.value!r}: {_describe(exc)}",
                version=version,
                source=source,
            )
            continue
        if not isinstance(plugin, ModuleType | type) and not hasattr(plugin, "__dict__"):
            pm.record_failure(ep.name, f"{ep.value!r} is not a module or object", source=source)
            continue
        pm.add_plugin(plugin, ep.name, version=version, source=source)
    for name in sorted((wanted or set()) - seen):
        pm.record_failure(
            name, "not installed (named in TREADLE_LOAD_PLUGINS)", source="TREADLE_LOAD_PLUGINS"
        )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # add_plugin unregisters these; belt and braces
        name = pm.get_name(exc.plugin) or "?"
        pm.record_failure(name, _describe(exc))
        pm.unregister(exc.plugin)


# --- module-level shorthands ---------------------------------------------------------


def _as_treadle(pm: pluggy.PluginManager) -> TreadlePluginManager:
    if not isinstance(pm, TreadlePluginManager):
        raise TypeError("expected the manager from treadle_core.plugins.get_plugin_manager()")
    return pm


def stage_types(pm: pluggy.PluginManager) -> dict[str, StageType]:
    """Registered stage types by name."""
    return dict(_as_treadle(pm).stage_types().entries)


def store_backends(pm: pluggy.PluginManager) -> dict[str, StoreBackend]:
    """Registered store backends by URL scheme."""
    return dict(_as_treadle(pm).store_backends().entries)


def gate_types(pm: pluggy.PluginManager) -> dict[str, GateType]:
    """Registered quality gate types by name."""
    return dict(_as_treadle(pm).gate_types().entries)


def sink_types(pm: pluggy.PluginManager) -> dict[str, SinkType]:
    """Registered event sink types by name."""
    return dict(_as_treadle(pm).sink_types().entries)


def plugin_infos(pm: pluggy.PluginManager, *, include_builtins: bool = True) -> list[PluginInfo]:
    """Every plugin the manager knows (loaded or failed), sorted by name."""
    tpm = _as_treadle(pm)
    tpm.load_registries()
    return sorted(
        (i for i in tpm.infos.values() if include_builtins or not i.builtin),
        key=lambda i: (i.builtin, i.name),
    )
