"""Pipeline commands: init, validate, graph, add, run, status, retry, events, prune."""

from __future__ import annotations

import asyncio
import dataclasses
import glob as globlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from .. import ops
from ..errors import InputError, RetryError, UnknownItemError
from ..events import (
    Event,
    Lagged,
    ReviewRequired,
    StageCompleted,
    StageFailed,
    StageSkipped,
)
from ..model import (
    Item,
    ItemState,
    LimitStatus,
    PipelineStatus,
    StageState,
    StageStatus,
    check_priority,
    utcnow,
)
from ..validation import (
    MAX_CONCURRENCY,
    MAX_INT,
    MAX_LIMIT,
    check_duration,
    check_id,
    parse_duration,
    parse_json,
)
from ..workflow import Workflow
from .context import (
    EXIT_USAGE,
    ITEM_ID,
    CliContext,
    CliError,
    Seconds,
    console,
    emit_json,
    emit_json_line,
    iso_times,
    login_name,
    pass_state,
    plural,
    reconcile,
    run_async,
    seconds_option,
    warn_plugin_errors,
)
from .starter import FILES

if TYPE_CHECKING:
    from ..store.base import StateStore

STATUS_ORDER = [s.value for s in StageStatus]


def _fmt_time(value: Any) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _first_line(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


# --- init, validate, graph ---------------------------------------------------------------


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    help="Where to write the files (default: here).",
)
def init(directory: Path) -> None:
    """Write a starter treadle.toml, stages.py and items.jsonl (never overwrites)."""
    existing = [name for name in FILES if (directory / name).exists()]
    if existing:
        raise CliError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''} in "
            f"{directory.resolve()}; nothing written"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (directory / name).write_text(text, encoding="utf-8")
    click.echo(f"wrote {', '.join(FILES)}; next: treadle add items.jsonl && treadle run")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def validate(state: CliContext, as_json: bool) -> None:
    """Check the pipeline file (types, options, dependencies) without touching the store."""
    if not state.has_pipeline_file():
        wf = state.workflow(runnable=True)
        if as_json:
            emit_json({"ok": True, "pipeline": wf.name, "stages": wf.stages, "app": state.app_ref})
            return
        click.echo(f"{state.app_ref}: OK: pipeline {wf.name!r}, {len(wf.stages)} stages")
        return
    pipeline = state.pipeline()
    wf = pipeline.workflow
    warnings = warn_plugin_errors(state)
    if as_json:
        emit_json(
            {
                "ok": True,
                "pipeline": pipeline.name,
                "stages": wf.stages,
                "sinks": [s.uses for s in pipeline.sinks],
                "store": state.store_url(),
                "warnings": warnings,
            }
        )
        return
    click.echo(
        f"{state.pipeline_label}: OK: pipeline {pipeline.name!r}, "
        f"{plural(len(wf.stages), 'stage')} ({', '.join(wf.stages)})"
    )


@click.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "mermaid", "dot", "json"]),
    default="text",
    show_default=True,
)
@pass_state
def graph(state: CliContext, fmt: str) -> None:
    """Print the stage graph (text, Mermaid, Graphviz dot or JSON)."""
    wf = state.workflow()
    uses = {}
    if state.has_pipeline_file():
        uses = {n: c.uses for n, c in state.pipeline().stages.items()}
    if fmt == "mermaid":
        click.echo(wf.to_mermaid())
    elif fmt == "dot":
        click.echo(wf.to_dot())
    elif fmt == "json":
        emit_json(
            {
                "pipeline": wf.name,
                "stages": [
                    {"name": name, "needs": wf.dependencies(name), "uses": uses.get(name)}
                    for name in wf.stages
                ],
            }
        )
    else:
        width = max(len(n) for n in wf.stages)
        click.echo(wf.name)
        for name in wf.stages:
            deps = wf.dependencies(name)
            after = f"  <- {', '.join(deps)}" if deps else ""
            click.echo(f"  {name:<{width}}  [{uses.get(name, '?')}]{after}")


# --- add ---------------------------------------------------------------------------------


def _parse_items(lines: Iterable[bytes | str], source: str, priority: int = 0) -> list[Item]:
    """Every item of a JSONL source, all checked before any is stored."""
    items: list[Item] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if number == 1:  # a byte-order mark some editors write
            line = line[3:] if line[:3] == b"\xef\xbb\xbf" else line
            line = line[1:] if line[:1] == "\ufeff" else line
        if not line.strip():
            continue
        obj = parse_json(line, f"{source}:{number}")
        if not isinstance(obj, dict):
            raise CliError(f'{source}:{number}: expected a JSON object with an "id"', EXIT_USAGE)
        items.append(_item_from(obj, f"{source}:{number}", seen, priority))
    return items


def _priority(value: Any, where: str) -> int:
    try:
        return check_priority(value, where)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _item_from(obj: dict[str, Any], where: str, seen: set[str], priority: int = 0) -> Item:
    item_id = obj.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if item_id is None:
        raise CliError(f'{where}: missing "id" (a non-empty string)', EXIT_USAGE)
    try:
        item_id = check_id(item_id)
    except InputError as exc:
        raise CliError(f"{where}: {exc}", EXIT_USAGE) from None
    if item_id in seen:
        raise CliError(f"{where}: item {item_id!r} appears twice", EXIT_USAGE)
    seen.add(item_id)
    if "priority" in obj:
        priority = _priority(obj["priority"], f'{where}: "priority"')
    if "data" in obj:
        data = obj["data"]
        extra = sorted(set(obj) - {"id", "data", "priority"})
        if extra:
            raise CliError(
                f'{where}: keys {", ".join(extra)} beside "data" (put them inside "data")',
                EXIT_USAGE,
            )
        if not isinstance(data, dict):
            raise CliError(f'{where}: "data" must be a JSON object', EXIT_USAGE)
    else:
        data = {k: v for k, v in obj.items() if k not in ("id", "priority")}
    return Item(item_id, data, priority)


@click.command()
@click.argument("source", required=False)
@click.option("--id", "item_id", help="Add one item with this id.")
@click.option("--data", "data_text", help="JSON object of the item's data (with --id).")
@click.option("--glob", "pattern", help="One item per matching file, data {'path': ...}.")
@click.option(
    "--update",
    is_flag=True,
    help="Replace the data of items already in the store (their complete stages go stale).",
)
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help='Claimed first when higher (0 to 1,000,000); a JSONL line\'s "priority" wins.',
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def add(
    state: CliContext,
    source: str | None,
    item_id: str | None,
    data_text: str | None,
    pattern: str | None,
    update: bool,
    priority: int,
    as_json: bool,
) -> None:
    """Add work items: a JSONL file (or - for stdin), --id/--data, or --glob PATTERN.

    Each JSONL line is an object with "id" and "data" (or its other keys are the data),
    and may carry "priority".
    Items already in the store are left as they are, or with --update get the new data
    (journalled; their complete stages become stale: 'treadle rerun --stage S --stale').
    Every item is checked before any is stored (UTF-8 JSON, ids of 1-255 characters); a
    --glob matching no file is exit 2.
    """
    priority = _priority(priority, "--priority")
    chosen = [x for x in (source, item_id, pattern) if x is not None]
    if len(chosen) != 1:
        raise CliError("give exactly one of: a JSONL file (or -), --id, --glob", EXIT_USAGE)
    if data_text is not None and item_id is None:
        raise CliError("--data goes with --id", EXIT_USAGE)
    items: list[Item]
    if item_id is not None:
        items = _id_items(item_id, data_text, priority)
    elif pattern is not None:
        items = _glob_items(pattern, priority)
    else:
        assert source is not None
        items = _jsonl_items(source, priority)
    store = state.store()
    report = ops.add_items(store, items, update=update, by=login_name())
    if as_json:
        emit_json(_add_json(report, update))
        return
    click.echo(_add_text(report))


def _id_items(item_id: str, data_text: str | None, priority: int) -> list[Item]:
    """``--id ID [--data JSON]``: the one item, its data a JSON object (empty without --data)."""
    check_id(item_id, "--id")
    data: Any = {}
    if data_text is not None:
        data = parse_json(data_text, "--data")
        if not isinstance(data, dict):
            raise CliError("--data must be a JSON object", EXIT_USAGE)
    return [Item(item_id, data, priority)]


def _glob_items(pattern: str, priority: int) -> list[Item]:
    """``--glob PATTERN``: an item per matching file (sorted), its path the id and data."""
    paths = sorted(p for p in globlib.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise CliError(f"--glob {pattern!r} matches no file; nothing added", EXIT_USAGE)
    for path in paths:
        check_id(path, f"--glob: file name {path!r} as an item id:")
    return [Item(p, {"path": p}, priority) for p in paths]


def _jsonl_items(source: str, priority: int) -> list[Item]:
    """The items of a JSONL file, or of stdin for ``-``."""
    if source == "-":
        return _parse_items(getattr(sys.stdin, "buffer", sys.stdin), "<stdin>", priority)
    try:
        with open(source, "rb") as fh:
            return _parse_items(fh, source, priority)
    except OSError as exc:
        raise CliError(f"{source}: cannot read: {exc.strerror}", EXIT_USAGE) from None


def _add_json(report: ops.AddReport, update: bool) -> dict[str, list[str]]:
    """``add --json``: the report, without updated/unchanged unless ``--update``."""
    out = report.to_dict()
    if not update:  # nothing is updated without --update
        del out["updated"], out["unchanged"]
    return out


def _add_text(report: ops.AddReport) -> str:
    """``add``'s one line: how many were added, updated, unchanged and left alone."""
    msg = f"added {len(report.added)} item{'s' if len(report.added) != 1 else ''}"
    if report.updated:
        msg += f"; updated the data of {len(report.updated)}"
    if report.unchanged:
        msg += f"; {len(report.unchanged)} already in the store with the same data"
    if report.skipped:
        msg += (
            f"; {len(report.skipped)} already in the store (left unchanged; --update "
            "replaces their data)"
        )
    return msg


# --- run ---------------------------------------------------------------------------------


def _summary_table(wf: Workflow, summary: dict[str, dict[str, int]], title: str) -> Table:
    present = [s for s in STATUS_ORDER if any(c.get(s) for c in summary.values())]
    table = Table(title=title, title_justify="left")
    table.add_column("STAGE")
    for status in present:
        table.add_column(status.upper(), justify="right")
    for name in wf.stages:
        counts = summary.get(name, {})
        table.add_row(name, *(str(counts.get(s, 0) or "") for s in present))
    return table


class _RunProgress:
    """Per-stage progress bars fed by ``wf.subscribe()``."""

    def __init__(self, wf: Workflow, total: int, done: dict[str, int], enabled: bool):
        self.wf = wf
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.fields[stage]:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=console(stderr=True),
            transient=False,
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}
        self.failed: dict[str, int] = {}
        self.waiting: dict[str, int] = {}
        for name in wf.stages:
            self.tasks[name] = self.progress.add_task(
                name, total=total, completed=done.get(name, 0), stage=name, note=""
            )

    def handle(self, event: Event | Lagged) -> None:
        if isinstance(event, Lagged) or event.stage not in self.tasks:
            return
        task = self.tasks[event.stage]
        if isinstance(event, StageCompleted | StageSkipped):
            self.progress.advance(task)
        elif isinstance(event, StageFailed):
            self.failed[event.stage] = self.failed.get(event.stage, 0) + 1
        elif isinstance(event, ReviewRequired):
            self.waiting[event.stage] = self.waiting.get(event.stage, 0) + 1
        notes = []
        if self.failed.get(event.stage):
            notes.append(f"[red]{self.failed[event.stage]} failed[/red]")
        if self.waiting.get(event.stage):
            notes.append(f"[yellow]{self.waiting[event.stage]} awaiting review[/yellow]")
        self.progress.update(task, note=", ".join(notes))


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    help="Stage executions in flight.",
)
@click.option(
    "--item", "item_ids", type=ITEM_ID, multiple=True, help="Only this item (repeatable)."
)
@click.option("--no-wait", is_flag=True, help="Do not wait for retries scheduled for later.")
@click.option(
    "--grace",
    default="30s",
    show_default=True,
    help="After Ctrl-C or SIGTERM, how long running stages may finish before they stop.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@pass_state
def run(
    state: CliContext,
    concurrency: int | None,
    item_ids: tuple[str, ...],
    no_wait: bool,
    grace: str,
    as_json: bool,
) -> None:
    """Advance every item with work until nothing is ready (exit 1 if anything failed).

    Ctrl-C (or SIGTERM) stops claiming and lets the stages in flight finish (up to
    --grace) and commit; a second one stops them at once, puts them back as they were
    and gives the leases back (exit 130 either way).
    """
    grace_seconds = seconds_option(grace, "--grace", positive=False)
    wf = state.workflow(runnable=True)
    warn_plugin_errors(state)
    store = state.store()
    reconcile(wf, store)
    items = _run_items(store, item_ids)
    total = len(items) if items is not None else sum(store.count_items().values())
    before = wf.summary(store) if items is None else {}
    done = {n: c.get("complete", 0) + c.get("skipped", 0) for n, c in before.items()}
    show = not as_json and console(stderr=True).is_terminal
    bars = _RunProgress(wf, total, done, show)

    interrupt = _Interrupt(grace_seconds)
    report = run_async(
        _run_watched(state, wf, store, items, bars, interrupt, concurrency, until_idle=not no_wait)
    )
    errors = report.errors if report is not None else {}
    for item_id, error in errors.items():
        click.echo(f"error: item {item_id}: {error} (put aside; see the log above)", err=True)
    failed, states = _run_outcome(wf, store, items)
    summary = wf.summary(store)
    if as_json:
        emit_json({"items": states, "stages": summary, "failed": failed, "errors": errors})
    else:
        out = console()
        out.print(_summary_table(wf, summary, f"pipeline {wf.name!r}"))
        out.print(", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(states.items())))
    if interrupt.signals:
        interrupt.exit()
    if failed or (report is not None and report.errors):
        raise click.exceptions.Exit(1)


def _run_items(store: StateStore, item_ids: tuple[str, ...]) -> list[Item] | None:
    """The items of ``--item`` (each once, with its stored data); None without ``--item``."""
    if not item_ids:
        return None
    items = []
    for item_id in dict.fromkeys(item_ids):
        data = store.get_work_item_data(item_id)
        if data is None:
            raise UnknownItemError(f"unknown item {item_id!r} (add it with 'treadle add')")
        items.append(Item(item_id, data))
    return items


async def _run_watched(
    state: CliContext,
    wf: Workflow,
    store: StateStore,
    items: list[Item] | None,
    bars: _RunProgress,
    interrupt: _Interrupt,
    concurrency: int | None,
    *,
    until_idle: bool,
) -> Any:
    """``wf.run`` with the sinks open, its events fed to the progress bars, and Ctrl-C
    handled by ``interrupt``; the run's report (None when stopped at once)."""
    with state.sinks(wf), wf.subscribe() as sub:

        async def feed() -> None:
            async for event in sub:
                bars.handle(event)

        feeder = asyncio.create_task(feed())
        try:
            with bars.progress, interrupt:
                report = await interrupt.guard(
                    wf.run(
                        store,
                        items,
                        concurrency=concurrency or state.concurrency(),
                        until_idle=until_idle,
                        stop=interrupt.stop,
                    )
                )
                await asyncio.sleep(0)
                while (event := sub.get_nowait()) is not None:
                    bars.handle(event)
                return report
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)


def _run_outcome(
    wf: Workflow, store: StateStore, items: list[Item] | None
) -> tuple[int, dict[str, int]]:
    """After a run: how many items failed, and items per state (of the store, or of the
    ``--item`` items only)."""
    if items is None:
        counts = store.count_items()
        states = {str(k): v for k, v in counts.items() if v}
        return counts.get(ItemState.FAILED, 0), states
    statuses = [wf.status(i.id, store) for i in items]
    failed = sum(1 for s in statuses if s.failed_stages)
    states = {}
    for s in statuses:
        key = str(s.state) if s.state is not None else "unknown"
        states[key] = states.get(key, 0) + 1
    return failed, states


class _Interrupt:
    """Ctrl-C / SIGTERM during ``treadle run``: the first stops claiming and lets running
    stages finish (up to ``grace`` seconds) and commit; the second stops at once."""

    def __init__(self, grace: float):
        self.grace = grace
        self.stop = asyncio.Event()
        self.signals = 0
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> _Interrupt:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if self._timer is not None:
            self._timer.cancel()

    async def guard(self, run: Coroutine[Any, Any, Any]) -> Any:
        """Await the run; a run stopped at once (second signal, grace over) returns None."""
        self._task = asyncio.create_task(run)
        try:
            return await self._task
        except asyncio.CancelledError:
            if not self.signals or not self._task.cancelled():
                raise
            return None

    def _on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 2:
            return  # already stopping at once: let it give the leases back
        err = console(stderr=True)
        if self.signals == 1:
            err.print(
                f"{signal.Signals(signum).name}: claiming nothing more; the stages running "
                f"finish (up to {self.grace:g} s). Press Ctrl-C again to stop them at once."
            )
            self.stop.set()
            if self._task is not None:
                self._timer = asyncio.get_running_loop().call_later(self.grace, self._task.cancel)
        elif self._task is not None:
            err.print("stopping at once: running stages go back to where they were")
            self._task.cancel()

    def exit(self) -> None:
        """Exit 130 (interrupted); without waiting for a sync stage still in its thread."""
        if any(t.name.startswith("treadle-stage") and t.is_alive() for t in threading.enumerate()):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise click.exceptions.Exit(130)


# --- status ------------------------------------------------------------------------------


def _rate_text(rate: tuple[int, float] | None) -> str:
    if rate is None:
        return ""
    count, seconds = rate
    return f"{count}/s" if seconds == 1 else f"{count}/{seconds:g}s"


def _limit_json(lim: LimitStatus) -> dict[str, Any]:
    return {
        "max_concurrent": lim.concurrency,
        "rate": _rate_text(lim.rate) or None,
        "running": lim.running,
        "waiting": lim.waiting,
    }


def _limits_table(limits: dict[str, LimitStatus]) -> Table:
    """Limited stages: their limits, attempts running across every worker, items waiting."""
    table = Table(title="limits", title_justify="left")
    for col in ("STAGE", "MAX CONCURRENT", "RATE", "RUNNING", "WAITING"):
        table.add_column(col, justify="left" if col in ("STAGE", "RATE") else "right")
    for name, lim in limits.items():
        throttled = " (throttled)" if lim.waiting else ""
        table.add_row(
            name + throttled,
            "" if lim.concurrency is None else str(lim.concurrency),
            _rate_text(lim.rate),
            str(lim.running),
            str(lim.waiting or ""),
        )
    return table


def status_json(st: Any) -> dict[str, Any]:
    """``PipelineStatus.to_dict()`` with every time as ISO 8601 UTC."""
    out = st.to_dict()
    stages = {}
    for name, stage in out["stages"].items():
        stage = iso_times(stage)
        if stage.get("subtasks"):
            stage["subtasks"] = [iso_times(t) for t in stage["subtasks"]]
        stages[name] = stage
    out["stages"] = stages
    return out


@click.command()
@click.argument("item_id", metavar="[ITEM]", type=ITEM_ID, required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: CliContext, item_id: str | None, as_json: bool) -> None:
    """Counts per stage and status (stale ones too), or one item's stages (status,
    attempts, timings, errors); stages the pipeline no longer has show as removed."""
    wf = state.workflow()
    store = state.store(create=False)
    if item_id is None:
        _status_overview(wf, store, as_json)
        return
    st = wf.status(item_id, store)
    if as_json:
        emit_json(status_json(st))
        return
    console().print(_item_table(item_id, st))


def _status_overview(wf: Workflow, store: StateStore, as_json: bool) -> None:
    """``status`` without ITEM: counts per stage and status, the limits of limited stages,
    items per state and a hint when states are stale (or all of it as JSON)."""
    view = ops.overview(wf, store)
    limits = wf.limits(store)
    if as_json:
        shown = view.to_dict()
        if limits:
            shown["limits"] = {name: _limit_json(lim) for name, lim in limits.items()}
        emit_json(shown)
        return
    out = console()
    out.print(_overview_table(wf, view))
    if limits:
        out.print(_limits_table(limits))
    parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(view.items.items()))
    out.print(plural(view.total, "item") + (f": {parts}" if parts else ""))
    stale = sum(view.stale.values())
    if stale:
        out.print(
            f"{stale} stale stage state{'s' if stale != 1 else ''}: re-run them with "
            "'treadle rerun --stage S --stale'"
        )


def _item_table(item_id: str, st: PipelineStatus) -> Table:
    """``status ITEM``: a row per stage (removed ones last, marked so)."""
    table = Table(
        title=f"{item_id}: {st.progress:.0f}% done"
        + (f" ({st.state.value.replace('_', ' ')})" if st.state else ""),
        title_justify="left",
    )
    for col in ("STAGE", "STATUS", "ATTEMPT", "STARTED", "DURATION", "ERROR"):
        table.add_column(col)
    rows = [(n, s, "") for n, s in st.stages.items()]
    rows += [(n, s, " (removed)") for n, s in st.removed.items()]
    for name, s, mark in rows:
        table.add_row(*_item_row(name + mark, s))
    return table


def _item_row(label: str, s: StageState) -> tuple[str, ...]:
    """One stage's cells: status (with stale, subtasks done, next retry), attempt, start,
    duration and the first line of its error."""
    duration = ""
    if s.started_at and s.completed_at:
        duration = f"{(s.completed_at - s.started_at).total_seconds():.2f}s"
    extra = " (stale)" if s.stale else ""
    if s.subtasks:
        finished = sum(1 for t in s.subtasks if t.status.is_done)
        extra += f" ({finished}/{len(s.subtasks)} subtasks)"
    if s.next_attempt_at and s.status == StageStatus.PENDING:
        extra += f" (retry at {_fmt_time(s.next_attempt_at)})"
    return (
        label,
        s.status.value + extra,
        str(s.attempt or ""),
        _fmt_time(s.started_at),
        duration,
        _first_line(s.error),
    )


def _overview_table(wf: Workflow, view: ops.Overview) -> Table:
    """The status table: a row per stage (removed ones last), a column per status seen,
    and a STALE column when any state is stale."""
    counts = {**view.stages, **view.removed}
    present = [s for s in STATUS_ORDER if any(c.get(s) for c in counts.values())]
    table = Table(title=f"pipeline {wf.name!r}", title_justify="left")
    table.add_column("STAGE")
    for status_name in present:
        table.add_column(status_name.upper(), justify="right")
    if view.stale:
        table.add_column("STALE", justify="right")
    for name, row in counts.items():
        cells = [str(row.get(s, 0) or "") for s in present]
        if view.stale:
            cells.append(str(view.stale.get(name, "")))
        table.add_row(name + (" (removed)" if name in view.removed else ""), *cells)
    return table


# --- retry -------------------------------------------------------------------------------


@click.command()
@click.argument("item_id", metavar="[ITEM]", type=ITEM_ID, required=False)
@click.argument("stage", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Every failed stage of every item.")
@click.option("--stage", "only_stage", help="With --failed: only this stage.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def retry(
    state: CliContext,
    item_id: str | None,
    stage: str | None,
    all_failed: bool,
    only_stage: str | None,
    as_json: bool,
) -> None:
    """Put FAILED stages back to PENDING: ITEM [STAGE], or --failed [--stage S]."""
    if all_failed == (item_id is not None):
        raise CliError("give ITEM [STAGE], or --failed [--stage S]", EXIT_USAGE)
    if only_stage is not None and not all_failed:
        raise CliError("--stage goes with --failed (or give ITEM STAGE)", EXIT_USAGE)
    wf = state.workflow()
    store = state.store(create=False)
    for name in (stage, only_stage):
        if name is not None:
            wf.dependencies(name)  # UnknownStageError names the closest stage
    targets = _retry_targets(wf, store, item_id, stage, only_stage)
    try:
        retried = run_async(_retry_stages(state, wf, store, targets))
    except RetryError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        emit_json({"retried": retried})
        return
    click.echo(
        f"{plural(len(retried), 'stage')} back to pending"
        + ("; run 'treadle run' to run them" if retried else "")
    )


def _retry_targets(
    wf: Workflow,
    store: StateStore,
    item_id: str | None,
    stage: str | None,
    only_stage: str | None,
) -> list[tuple[str, str]]:
    """(item, stage) pairs to retry: ITEM STAGE; ITEM's failed stages (an error if none);
    or, without ITEM, every failed stage (of ``only_stage`` only, if given)."""
    if item_id is None:
        return [(f.item_id, f.stage) for f in ops.failed_stages(wf, store, stage=only_stage)]
    st = wf.status(item_id, store)
    if stage is not None:
        return [(item_id, stage)]
    targets = [(item_id, name) for name in st.failed_stages]
    if not targets:
        raise CliError(f"item {item_id!r} has no failed stage")
    return targets


async def _retry_stages(
    state: CliContext, wf: Workflow, store: StateStore, targets: list[tuple[str, str]]
) -> list[dict[str, str]]:
    """Put each target back to pending, in order, with the sinks open; those done."""
    done = []
    with state.sinks(wf):
        for target_item, target_stage in targets:
            await wf.retry_stage(target_item, target_stage, store)
            done.append({"item_id": target_item, "stage": target_stage})
    return done


# --- events ------------------------------------------------------------------------------


def _event_line(stored_id: int, event: Event) -> str:
    parts = []
    for f in dataclasses.fields(event):
        if f.name in ("item_id", "stage", "at"):
            continue
        value = getattr(event, f.name)
        if value in (None, "", {}, []):
            continue
        if isinstance(value, datetime):
            text = _fmt_time(value)
        elif isinstance(value, str):
            text = _first_line(value, 60)
        else:
            text = json.dumps(value, default=str)
        parts.append(f"{f.name}={text}")
    return (
        f"{stored_id:>6}  {_fmt_time(event.at)}  {event.item_id}  {event.stage or '-'}  "
        f"{event.kind}  {' '.join(parts)}"
    ).rstrip()


@click.command()
@click.argument("item_id", metavar="[ITEM]", type=ITEM_ID, required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep polling for new events (Ctrl-C stops).")
@click.option(
    "--after", type=click.IntRange(0, MAX_INT), default=0, help="Only events after this journal id."
)
@click.option(
    "--interval",
    type=Seconds(0.01, 3600),
    default=1.0,
    show_default=True,
    help="Poll seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--max-polls", type=click.IntRange(1, MAX_LIMIT), default=None, hidden=True)
@pass_state
def events(
    state: CliContext,
    item_id: str | None,
    follow: bool,
    after: int,
    interval: float,
    as_json: bool,
    max_polls: int | None,
) -> None:
    """Replay the event journal (all items or one); --follow waits for new events."""
    store = state.store(create=False)
    if item_id is not None and store.get_item(item_id) is None:
        raise UnknownItemError(f"unknown item {item_id!r}")
    last = after
    polls = 0
    try:
        while True:
            page = store.read_events(item_id, after=last, limit=500)
            for stored in page:
                last = stored.id
                if as_json:
                    emit_json_line({"id": stored.id, **iso_times(stored.event.to_dict())})
                else:
                    click.echo(_event_line(stored.id, stored.event))
            if len(page) == 500:
                continue
            if not follow:
                break
            polls += 1
            if max_polls is not None and polls >= max_polls:
                break
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


# --- prune -------------------------------------------------------------------------------


@click.command()
@click.option(
    "--completed-before",
    "age",
    required=True,
    metavar="DURATION",
    help="Delete items complete for longer than this (e.g. 30d, 12h).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; change nothing.")
@click.option(
    "--batch",
    type=click.IntRange(1, MAX_LIMIT),
    default=500,
    show_default=True,
    help="Items deleted per transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def prune(state: CliContext, age: str, dry_run: bool, batch: int, as_json: bool) -> None:
    """Delete finished items with their attempts, reviews and journal."""
    try:
        seconds = parse_duration(age)
    except ValueError as exc:
        raise CliError(f"--completed-before: {exc}", EXIT_USAGE) from None
    check_duration(seconds, "--completed-before")
    cutoff = utcnow() - timedelta(seconds=seconds)
    store = state.store(create=False)
    ids = ops.prune(store, cutoff, dry_run=dry_run, batch=batch)
    if as_json:
        emit_json({"dry_run": dry_run, "items": ids})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {plural(len(ids), 'item')} complete before {cutoff:%Y-%m-%d %H:%M:%S} UTC")
    if dry_run:
        for item_id in ids:
            click.echo(f"  {item_id}")
