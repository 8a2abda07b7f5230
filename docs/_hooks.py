"""mkdocs hooks: the CLI, event and error references are generated from the code itself.

A page holds markers that are replaced when the site is built:

- ``<!-- treadle:command review approve -->``: usage, help and options of that command,
  taken from the click command (so the reference cannot drift from the CLI);
- ``<!-- treadle:event StageStarted -->``: the event's fields (from the dataclass);
- ``<!-- treadle:error ReviewError -->``: the error's code, parent class and docstring.

A command, event or error without a marker is appended at the end of its page
under "Not yet described", and tests/test_docs.py fails on it. The functions work
without mkdocs installed, so the tests can call them.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from typing import Any

import click

MARKER = re.compile(r"<!-- treadle:(command|event|error) ([^>]*?) -->")


# --- commands ------------------------------------------------------------------------------


def cli_group() -> click.Group:
    """The ``treadle`` group with the built-in commands only (no third-party plugins)."""
    from treadle_core.cli import create_cli
    from treadle_core.plugins import get_plugin_manager

    return create_cli(get_plugin_manager(load_entry_points=False))


def iter_commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    """``("review approve", command)`` for every command, groups before their commands."""
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = (*prefix, name)
        yield " ".join(path), command
        if isinstance(command, click.Group):
            yield from iter_commands(command, path)


def command_paths() -> list[str]:
    return [path for path, _ in iter_commands(cli_group())]


def _usage(path: str, command: click.Command) -> str:
    ctx = click.Context(command, info_name=f"treadle {path}")
    pieces = command.collect_usage_pieces(ctx)
    return " ".join([f"treadle {path}", *pieces])


def _option_row(param: click.Parameter) -> str | None:
    if not isinstance(param, click.Option) or param.hidden:
        return None
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    if not param.is_flag and param.metavar:
        names += f" `{param.metavar}`"
    elif not param.is_flag:
        kind = param.type
        if isinstance(kind, click.Choice):
            names += " `" + "|".join(str(c) for c in kind.choices) + "`"
        else:
            names += f" `{kind.name.upper()}`"
    text = (param.help or "").replace("|", "\\|")
    default = param.default
    if param.show_default and default not in (None, False, ()) and not callable(default):
        text += f" (default: `{default}`)"
    if param.required:
        text += " **Required.**"
    return f"| {names} | {text} |"


def command_markdown(path: str, command: click.Command) -> str:
    """Usage, help text and options of one command, as markdown."""
    help_text = inspect.cleandoc(command.help or "")
    lines = ["```text", _usage(path, command), "```", ""]
    if help_text:
        lines += [help_text, ""]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        subs = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]  # type: ignore[union-attr]
        lines += ["Subcommands: " + ", ".join(f"`{path} {s}`" for s in sorted(subs)), ""]
        return "\n".join(lines)
    rows = [r for r in (_option_row(p) for p in command.params) if r]
    if rows:
        lines += ["| option | meaning |", "|---|---|", *rows, ""]
    return "\n".join(lines)


# --- events --------------------------------------------------------------------------------


def event_types() -> dict[str, type[Any]]:
    from treadle_core.events import EVENT_TYPES

    return {cls.__name__: cls for cls in EVENT_TYPES}


def _type_name(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return str(text).replace("|", "or")


def event_markdown(name: str) -> str:
    cls = event_types()[name]
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in ("item_id", "stage", "at"):
            continue
        rows.append(f"`{f.name}: {_type_name(f.type)}`")
    fields = ", ".join(rows) if rows else "none besides `item_id`, `stage`, `at`"
    return f'Fields: {fields}. Journal type: `"{name}"`.'


# --- errors --------------------------------------------------------------------------------


def error_types() -> dict[str, type[BaseException]]:
    from treadle_core import errors

    found = {}
    for name, obj in vars(errors).items():
        if isinstance(obj, type) and issubclass(obj, errors.TreadleError):
            found[name] = obj
    return found


def error_markdown(name: str) -> str:
    from treadle_core import errors

    cls = error_types()[name]
    parents = [
        b.__name__ for b in cls.__bases__ if b is not object and b is not errors.TreadleError
    ]
    parent = ", ".join(f"`{p}`" for p in parents) if parents else "`TreadleError`"
    if cls is errors.TreadleError:
        parent = "`Exception`"
    doc = inspect.getdoc(cls) or ""
    if cls.__doc__ is None or doc == inspect.getdoc(cls.__mro__[1]):
        doc = ""
    text = f"Code `{cls.code}` · subclass of {parent}."  # type: ignore[attr-defined]
    return text + (f" {doc}" if doc else "")


# --- markers -------------------------------------------------------------------------------


def expand(markdown: str) -> str:
    """Replace every marker in ``markdown``; unknown names are an error."""
    commands = dict(iter_commands(cli_group()))

    def replace(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2).strip()
        if kind == "command":
            if name not in commands:
                raise ValueError(f"docs marker names an unknown command 'treadle {name}'")
            return command_markdown(name, commands[name])
        if kind == "event":
            if name not in event_types():
                raise ValueError(f"docs marker names an unknown event {name!r}")
            return event_markdown(name)
        if name not in error_types():
            raise ValueError(f"docs marker names an unknown error {name!r}")
        return error_markdown(name)

    return MARKER.sub(replace, markdown)


def missing(markdown: str, kind: str) -> list[str]:
    """Names of that kind (command, event, error) that ``markdown`` has no marker for."""
    present = {m.group(2).strip() for m in MARKER.finditer(markdown) if m.group(1) == kind}
    if kind == "command":
        known = command_paths()
    elif kind == "event":
        known = list(event_types())
    else:
        known = list(error_types())
    return [n for n in known if n not in present]


PAGES = {
    "reference/cli.md": ("command", "treadle {}"),
    "reference/events.md": ("event", "{}"),
    "reference/errors.md": ("error", "{}"),
}


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs hook: expand markers; list anything the page does not describe yet."""
    src = page.file.src_uri
    if "<!-- treadle:" not in markdown and src not in PAGES:
        return markdown
    out = expand(markdown)
    if src in PAGES:
        kind, title = PAGES[src]
        rest = missing(markdown, kind)
        if rest:
            out += "\n\n## Not yet described\n\n"
            for name in rest:
                out += (
                    f"### {title.format(name)}\n\n"
                    + expand(f"<!-- treadle:{kind} {name} -->")
                    + "\n\n"
                )
    return out
