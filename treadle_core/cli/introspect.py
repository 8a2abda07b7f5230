"""``treadle plugins list`` and the registry listings (stages, gates, sinks, stores)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..hookspecs import Option
from ..plugins import Registry, plugin_infos
from .context import EXIT_USAGE, CliContext, CliError, console, emit_json, pass_state


@click.group("plugins")
def plugins_group() -> None:
    """Installed plugins."""


@plugins_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--hook", "hook", metavar="NAME", help="Only plugins implementing this hook.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def list_plugins(state: CliContext, show_all: bool, hook: str | None, as_json: bool) -> None:
    """Plugins with their version, hooks and what they provide (or their error)."""
    hooks = sorted(n for n in dir(state.pm.hook) if not n.startswith("_"))
    if hook is not None and hook not in hooks:
        raise CliError(f"unknown hook {hook!r} (hooks: {', '.join(hooks)})", EXIT_USAGE)
    every = [i for i in plugin_infos(state.pm) if hook is None or hook in i.hooks]
    infos = [i for i in every if show_all or not i.builtin]
    if as_json:
        emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        builtins = [i.name for i in every if i.builtin]
        what = f"no installed plugin implements {hook}" if hook else "no plugins installed"
        if builtins:
            what += f"; built-in: {', '.join(builtins)} (--all lists them)"
        click.echo(what)
        return
    table = Table(show_lines=False)
    for col in ("NAME", "VERSION", "HOOKS", "PROVIDES / ERROR"):
        table.add_column(col, overflow="fold")
    for info in infos:
        cell = escape(", ".join(sorted(info.provides)))
        if info.error:
            cell = (cell + "\n" if cell else "") + f"[red]ERROR: {escape(info.error)}[/red]"
        name = info.name + (" (built-in)" if info.builtin else "")
        table.add_row(name, info.version or "", ", ".join(info.hooks), cell)
    console().print(table)


def _option_dict(option: Option) -> dict[str, Any]:
    return {
        "type": option.type.__name__.lower(),
        "required": option.required,
        "default": option.default,
        "description": option.description,
    }


def _option_text(options: Mapping[str, Option]) -> str:
    parts = []
    for name, option in options.items():
        bits = [option.type.__name__.lower()]
        if option.required:
            bits.append("required")
        elif option.default not in (None, {}, []):
            bits.append(f"default {option.default!r}")
        parts.append(f"{name} ({', '.join(bits)})")
    return "\n".join(parts)


def _listing(registry: Registry[Any], kind: str, key: str, as_json: bool) -> None:
    rows = []
    for name in registry.names():
        value = registry.entries[name]
        options = getattr(value, "options", None)
        row: dict[str, Any] = {
            key: name,
            "plugin": registry.owners[name],
            "description": value.description,
        }
        if options is not None:
            row["options"] = {n: _option_dict(o) for n, o in options.items()}
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    table = Table()
    columns = [key.upper(), "PLUGIN", "DESCRIPTION"] + (
        ["OPTIONS"] if rows and "options" in rows[0] else []
    )
    for col in columns:
        table.add_column(col, overflow="fold")
    for name in registry.names():
        value = registry.entries[name]
        cells = [name, registry.owners[name], escape(value.description)]
        if "OPTIONS" in columns:
            cells.append(escape(_option_text(value.options)))
        table.add_row(*cells)
    console().print(table)
    for name in sorted(registry.conflicts):
        click.echo(f"warning: {registry.conflict_message(name)}", err=True)


def _registry_group(name: str, kind: str, key: str, attr: str) -> click.Group:
    @click.group(name, help=f"Registered {kind}s.")
    def group() -> None:
        pass

    @group.command("list", help=f"Registered {kind}s: {key}, plugin, description, options.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @pass_state
    def list_(state: CliContext, as_json: bool) -> None:
        _listing(getattr(state.pm, attr)(), kind, key, as_json)

    return group


stages_group = _registry_group("stages", "stage type", "type", "stage_types")
gates_group = _registry_group("gates", "quality gate type", "type", "gate_types")
sinks_group = _registry_group("sinks", "event sink type", "type", "sink_types")
stores_group = _registry_group("stores", "store backend", "scheme", "store_backends")
