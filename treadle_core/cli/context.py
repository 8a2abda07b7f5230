"""What every command shares: the plugin manager, the pipeline, the store, error handling."""

from __future__ import annotations

import asyncio
import difflib
import getpass
import json
import logging
import math
import os
import re
import sqlite3
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click
import peewee
from rich.console import Console

from ..errors import (
    AppError,
    DefinitionError,
    InputError,
    PipelineFileError,
    StoreError,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
)
from ..pipeline import (
    DEFAULT_CONCURRENCY,
    DEFAULT_FILE,
    DEFAULT_STORE,
    Pipeline,
    close_sinks,
    load_pipeline,
)
from ..store.open import open_store

if TYPE_CHECKING:
    from ..plugins import TreadlePluginManager
    from ..store.base import StateStore
    from ..workflow import Workflow

T = TypeVar("T")

#: Exit code for a user's mistake in what they asked (bad file, unknown item...).
EXIT_USAGE = 2


class CliError(click.ClickException):
    """A one-line error on stderr (``Error: ...``) and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        # click declares exit_code a class variable; this error picks its own per instance.
        object.__setattr__(self, "exit_code", exit_code)


def exit_code_for(exc: TreadleError) -> int:
    if isinstance(
        exc,
        PipelineFileError
        | UnknownItemError
        | UnknownStageError
        | InputError
        | AppError
        | DefinitionError,
    ):
        return EXIT_USAGE
    return 1


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def one_line_usage_error(exc: click.UsageError) -> click.UsageError:
    """The same usage error, shown as one ``Error: ...`` line with the help hint in it."""
    if exc.ctx is None or isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc
    message = f"{exc.format_message()} (see '{exc.ctx.command_path} --help')"
    return click.UsageError(message)


class TreadleGroup(click.Group):
    """Turns every user mistake into one ``Error: ...`` line and an exit code (1 or 2).

    `TreadleError` keeps its message; click's usage errors lose the usage block;
    a database or file-system error (a corrupt SQLite file, a full disk) names the
    store or the file. Nothing of this prints a traceback.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise one_line_usage_error(exc) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = click.utils.make_str(args[0]) if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = self.list_commands(ctx)
            match = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            ctx.fail(f"no such command {name!r}{hint}; commands: {', '.join(known)}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TreadleError as exc:
            raise CliError(str(exc), exit_code_for(exc)) from None
        except click.UsageError as exc:
            raise one_line_usage_error(exc) from None
        except (peewee.DatabaseError, peewee.InterfaceError, sqlite3.Error) as exc:
            # The store turns what the user must mend (a full disk, a corrupt file) into a
            # StoreError; anything it did not is still one line, never a traceback.
            obj = ctx.find_object(CliContext)
            where = "the store"
            if obj is not None:
                with suppress(TreadleError):
                    where = f"store {redact(obj.store_url())!r}"
            raise CliError(f"{where}: {_first_line(exc)}") from None
        except OSError as exc:
            if exc.filename is not None:
                raise CliError(f"{exc.filename}: {exc.strerror or _first_line(exc)}") from None
            raise CliError(_first_line(exc)) from None


#: Global options also accepted after the command (``treadle status --store URL``).
def _late_store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(CliContext)
    if value is not None and obj is not None:
        obj.store_override = value


def _late_pipeline(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(CliContext)
    if value is not None and obj is not None:
        obj.set_pipeline_path(value)


def _late_app(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(CliContext)
    if value is not None and obj is not None:
        obj.app_ref = value


def _late_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    obj = ctx.find_object(CliContext)
    if value and obj is not None:
        obj.set_logging(verbose=value)


def _late_log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(CliContext)
    if value is not None and obj is not None:
        obj.set_logging(level=value)


#: Log levels for ``--log-level``, quietest last.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_LATE_OPTIONS: tuple[tuple[tuple[str, ...], str, Any, dict[str, Any]], ...] = (
    (("--store",), "store_url", _late_store, {"metavar": "X"}),
    (("-p", "--pipeline"), "pipeline_path", _late_pipeline, {"metavar": "X"}),
    (("--app",), "app_ref", _late_app, {"metavar": "X"}),
    (("-v", "--verbose"), "verbose", _late_verbose, {"count": True}),
    (
        ("--log-level",),
        "log_level",
        _late_log_level,
        {"type": click.Choice(LOG_LEVELS, case_sensitive=False)},
    ),
)


def accept_global_options(command: click.Command) -> None:
    """Let ``command`` (and every subcommand) take ``--store``, ``-p``, ``-v`` and
    ``--log-level`` too.

    Hidden options whose callbacks set the `CliContext` that the group made; an
    option name the command already uses for itself is left to the command.
    """
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_global_options(sub)
    taken = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    for opts, name, callback, extra in _LATE_OPTIONS:
        free = [o for o in opts if o not in taken]
        if free and not any(p.name == name for p in command.params):
            command.params.append(
                click.Option(
                    free, name, hidden=True, expose_value=False, callback=callback, **extra
                )
            )


# --- logging -----------------------------------------------------------------------------

#: One line per record on stderr: ``2025-01-31 09:30:00 WARNING treadle.engine: ...``.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test runner and
    rich's live progress bar swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_level(verbose: int, level: str | None, env_level: str | None = None) -> int | None:
    """The level of Treadle's loggers: ``--log-level``, else -v INFO, -vv DEBUG, else
    ``$TREADLE_LOG_LEVEL``; None: the default (warnings and errors)."""
    if level:
        return int(getattr(logging, level.upper()))
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    if env_level:
        return int(getattr(logging, env_level.upper()))
    return None


class _Logging:
    """The stderr handler of one ``treadle`` invocation, and the level it set."""

    def __init__(self) -> None:
        self.verbose = 0
        self.level: str | None = None
        self.env_level: str | None = None
        self.handler: StderrHandler | None = None
        self.saved_level = logging.NOTSET

    def apply(self) -> None:
        root, treadle = logging.getLogger(), logging.getLogger("treadle")
        if self.handler is None:
            # One of ours left by an earlier invocation in this process: replace it, so
            # each record is printed once.
            for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
                root.removeHandler(old)
            self.handler = StderrHandler()
            root.addHandler(self.handler)
            self.saved_level = treadle.level
        chosen = log_level(self.verbose, self.level, self.env_level)
        # Other libraries stay at the root's level (warnings); Treadle's own loggers
        # (engine, commit, worker, sinks) follow -v / --log-level.
        treadle.setLevel(chosen if chosen is not None else self.saved_level)

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            logging.getLogger("treadle").setLevel(self.saved_level)
            self.handler = None


class CliContext:
    """Lazily loaded pipeline and store for one ``treadle`` invocation."""

    def __init__(
        self,
        pm: TreadlePluginManager,
        pipeline_path: str | None,
        store_url: str | None,
        app_ref: str | None = None,
    ) -> None:
        self.pm = pm
        self.pipeline_path = Path(DEFAULT_FILE)
        self.pipeline_label = DEFAULT_FILE
        #: -p was given: the pipeline comes from that file (and a missing one is an error).
        self.pipeline_given = False
        self.set_pipeline_path(pipeline_path)
        self.store_override = store_url or None
        self.app_ref = app_ref or None
        self._pipeline: Pipeline | None = None
        self._workflow: Workflow | None = None
        self._store: StateStore | None = None
        self._logging = _Logging()

    # --- logging -------------------------------------------------------------
    def set_logging(
        self, *, verbose: int = 0, level: str | None = None, env_level: str | None = None
    ) -> None:
        """``-v`` (counted, before and after the command), ``--log-level`` (wins) and
        ``$TREADLE_LOG_LEVEL`` (what -v and --log-level override)."""
        self._logging.verbose += verbose
        if level:
            self._logging.level = level
        if env_level:
            self._logging.env_level = env_level
        self._logging.apply()

    def close_logging(self) -> None:
        """Take this invocation's stderr handler away again (the last thing it does)."""
        self._logging.close()

    def set_pipeline_path(self, pipeline_path: str | None) -> None:
        """``-p PATH``: a pipeline file, or a directory holding ``treadle.toml``."""
        if not pipeline_path:
            return
        path = Path(pipeline_path)
        label = pipeline_path
        if path.is_dir():
            path = path / DEFAULT_FILE
            label = str(Path(pipeline_path) / DEFAULT_FILE)
        self.pipeline_path = path
        self.pipeline_label = label
        self.pipeline_given = True

    # --- pipeline ------------------------------------------------------------
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = load_pipeline(self.pipeline_path, self.pm, label=self.pipeline_label)
        return self._pipeline

    def has_pipeline_file(self) -> bool:
        """Whether the pipeline comes from a file (-p, or ./treadle.toml), not --app."""
        return self.app_ref is None and (self.pipeline_given or self.pipeline_path.exists())

    def workflow(self, *, runnable: bool = False) -> Workflow:
        """The workflow: from --app, the pipeline file, or (``runnable`` False, for commands
        that run no stage code) the definition the store recorded."""
        if self._workflow is None:
            from .. import ops
            from ..workflow import Workflow

            if self.app_ref is not None:
                self._workflow = ops.load_app(self.app_ref)
            elif self.has_pipeline_file():
                self._workflow = self.pipeline().workflow
            elif runnable and self.store_override:
                raise PipelineFileError(
                    f"{self.pipeline_label}: no such file; running stages needs their code "
                    "(a treadle.toml, -p PATH or --app pkg.module:attr)"
                )
            elif not self.store_override:
                raise PipelineFileError(
                    f"{self.pipeline_label}: no such file (run 'treadle init' to create one, "
                    "pass -p PATH, or --app pkg.module:attr for a pipeline built in Python"
                    + ("" if runnable else "; --store URL alone reads the store's pipeline")
                    + ")"
                )
            else:
                self._workflow = Workflow.from_store(self.store(create=False))
        return self._workflow

    def concurrency(self) -> int:
        return self.pipeline().concurrency if self.has_pipeline_file() else DEFAULT_CONCURRENCY

    # --- store ---------------------------------------------------------------
    def store_url(self) -> str:
        if self.store_override:
            return self.store_override
        if self.has_pipeline_file():
            return self.pipeline().store_url
        if self.app_ref is not None:
            return DEFAULT_STORE
        return self.pipeline().store_url  # the file's "no such file" error

    def store(self, *, create: bool = True) -> StateStore:
        """The store (opened once). ``create=False``: a missing SQLite file is an error."""
        if self._store is None:
            url = self.store_url()
            if not create:
                path = sqlite_path(url)
                if path is not None and not path.exists():
                    raise StoreError(
                        f"no store at {path} yet (add items with 'treadle add', or pass --store)"
                    )
            try:
                self._store = open_store(url, plugins=self.pm)
            except OSError as exc:  # the directory of a new SQLite file cannot be made
                raise StoreError(
                    f"cannot open store {redact(url)!r}: {exc.filename or url}: "
                    f"{exc.strerror or _first_line(exc)}; choose a writable path"
                ) from None
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # --- sinks ---------------------------------------------------------------
    @contextmanager
    def sinks(self, wf: Workflow) -> Iterator[None]:
        """The pipeline's event sinks attached to ``wf`` for the duration."""
        listeners = self.pipeline().open_sinks() if self._pipeline is not None else []
        for listener in listeners:
            wf.bus.add_listener(listener)
        try:
            yield
        finally:
            for listener in listeners:
                wf.bus.remove_listener(listener)
            close_sinks(listeners)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, None for other URLs and in-memory SQLite."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix) :].split("?", 1)[0]
    if not rest or rest.startswith(":memory:"):
        return None
    return Path(rest)


def seconds_option(value: str, option: str, *, positive: bool = True) -> float:
    """A duration option (``500ms``, ``2s``, ``5m``...) as seconds, or one clear line."""
    from ..validation import check_duration, parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise CliError(f"{option}: {exc}", EXIT_USAGE) from None
    if positive and seconds <= 0:
        raise CliError(f"{option}: {value!r} must be more than zero", EXIT_USAGE)
    return check_duration(seconds, option)


# --- input and warnings ---------------------------------------------------------------------


class ItemIdType(click.ParamType):
    """An item id argument, checked at the door (`check_id`): `InputError`, exit 2."""

    name = "item"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ..validation import check_id

        return check_id(value, "item id")


ITEM_ID = ItemIdType()


class Seconds(click.FloatRange):
    """A number of seconds within a range; ``nan`` and ``inf`` are refused too."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def warn_plugin_errors(state: CliContext) -> list[str]:
    """Print ``warning: plugin NAME: ERROR`` on stderr for each broken plugin; the lines."""
    from ..plugins import plugin_infos

    lines = [f"plugin {info.name}: {info.error}" for info in plugin_infos(state.pm) if info.error]
    for line in lines:
        click.echo(f"warning: {line}", err=True)
    return lines


# --- output helpers ---------------------------------------------------------------------


def state(ctx: click.Context | None = None) -> CliContext:
    ctx = ctx or click.get_current_context()
    obj = ctx.find_object(CliContext)
    if obj is None:  # a plugin's command invoked outside `treadle`
        raise click.UsageError("this command must run under the treadle CLI")
    return obj


#: Decorator: the command receives the `CliContext` as its first argument.
pass_state = click.make_pass_decorator(CliContext)


def _quiet_store_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop "Future exception was never retrieved" for a store failure (a full disk):
    the command reports that failure itself, as one line."""
    exc = context.get("exception")
    store_failure = (StoreError, peewee.DatabaseError, peewee.InterfaceError, sqlite3.Error)
    if isinstance(exc, store_failure) and "never retrieved" in str(context.get("message")):
        return
    loop.default_exception_handler(context)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(_quiet_store_failures)
        return await coro

    return asyncio.run(main())


def console(*, stderr: bool = False) -> Console:
    """A rich console on the current stdout/stderr (so click's test runner captures it)."""
    # sys.stdout/sys.stderr, not click.get_text_stream (deprecated): click's test runner
    # swaps these too, so output is still captured there.
    stream: IO[str] = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


#: Keys that hold a time in the records commands print (``to_dict()`` gives epoch seconds).
TIME_KEYS = frozenset(
    {
        "at",
        "completed_at",
        "created_at",
        "deadline",
        "due_at",
        "lease_expires_at",
        "next_attempt_at",
        "retry_at",
        "review_deadline",
        "since",
        "started_at",
        "updated_at",
    }
)


def iso(value: datetime | float | None) -> str | None:
    """A time as ISO 8601 in UTC (``2025-01-31T09:30:00.123456+00:00``), the one format
    of every ``--json`` output."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), UTC)
    return value.astimezone(UTC).isoformat()


def iso_times(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its own time fields (`TIME_KEYS`, not nested data) as ISO 8601."""
    out = dict(record)
    for key in TIME_KEYS & out.keys():
        value = out[key]
        if isinstance(value, datetime) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            out[key] = iso(value)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _dumps(value: Any, **kw: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=_json_default, ensure_ascii=False, **kw)
    # A lone surrogate (stored before ids were checked) cannot be written as UTF-8:
    # print it as the JSON escape it stands for.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def emit_json(value: Any) -> None:
    """Machine-stable JSON on stdout: sorted keys, 2-space indent, one trailing newline."""
    click.echo(_dumps(value, indent=2))


def emit_json_line(value: Any) -> None:
    click.echo(_dumps(value))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 stage``, ``2 stages`` (``many`` when adding an s is wrong)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def reviewer_name(given: str | None, option: str = "--reviewer") -> str:
    """Who decides: ``option`` (``--reviewer``; ``--by`` for rerun and cancel), then
    ``$TREADLE_REVIEWER``, then the login name; a usage error when there is none (every
    human decision names who made it)."""
    if given is not None and not given.strip():
        raise CliError(f"{option} is empty: say who is deciding; nothing saved", EXIT_USAGE)
    name = given if given is not None else os.environ.get("TREADLE_REVIEWER")
    if name is None:
        try:
            name = getpass.getuser()
        except (OSError, KeyError, ImportError):
            name = None
    if name is None or not name.strip():
        raise CliError(
            f"who is deciding? give {option} NAME or set $TREADLE_REVIEWER "
            "(no login name was found); nothing saved",
            EXIT_USAGE,
        )
    return name.strip()


def login_name() -> str | None:
    """Who is at the keyboard, best effort (``$TREADLE_REVIEWER``, then the login name),
    for records where a name helps but none is required."""
    name = os.environ.get("TREADLE_REVIEWER")
    if name is None:
        try:
            name = getpass.getuser()
        except (OSError, KeyError, ImportError):
            return None
    return name.strip() or None


#: A changed pipeline shows a progress bar while it is reconciled on stores with at
#: least this many items (when stderr is a terminal).
PROGRESS_AT = 10_000


def reconcile(
    wf: Workflow, store: StateStore, *, err: Console | None = None, threshold: int = PROGRESS_AT
) -> None:
    """Bring the store to ``wf``'s definition before running it: a progress bar on large
    stores, then one line on stderr saying what changed (nothing when nothing did)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    err = err or console(stderr=True)
    bar: Progress | None = None
    task: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar, task
        if total < threshold or not err.is_terminal:
            return
        if bar is None:
            bar = Progress(
                TextColumn("reconciling {task.fields[name]}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            )
            bar.start()
            task = bar.add_task("reconcile", total=total, name=repr(wf.name))
        bar.update(task, completed=done, total=total)

    try:
        change = run_async(wf.reconcile(store, progress=progress))
    finally:
        if bar is not None:
            bar.stop()
    if change is not None:
        click.echo(change.note, err=True)
