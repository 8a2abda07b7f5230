"""What every command shares: the plugin manager, the pipeline, the store, error handling."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from ..errors import (
    AppError,
    DefinitionError,
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
        PipelineFileError | UnknownItemError | UnknownStageError | AppError | DefinitionError,
    ):
        return EXIT_USAGE
    return 1


class TreadleGroup(click.Group):
    """Turns `TreadleError` into a one-line message and an exit code (never a traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TreadleError as exc:
            raise CliError(str(exc), exit_code_for(exc)) from None


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
        self.pipeline_path = Path(pipeline_path or DEFAULT_FILE)
        self.pipeline_label = pipeline_path or DEFAULT_FILE
        self.pipeline_given = pipeline_path is not None
        self.store_override = store_url or None
        self.app_ref = app_ref or None
        self._pipeline: Pipeline | None = None
        self._workflow: Workflow | None = None
        self._store: StateStore | None = None

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
            self._store = open_store(url, plugins=self.pm)
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


# --- output helpers ---------------------------------------------------------------------


def state(ctx: click.Context | None = None) -> CliContext:
    ctx = ctx or click.get_current_context()
    obj = ctx.find_object(CliContext)
    if obj is None:  # a plugin's command invoked outside `treadle`
        raise click.UsageError("this command must run under the treadle CLI")
    return obj


#: Decorator: the command receives the `CliContext` as its first argument.
pass_state = click.make_pass_decorator(CliContext)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def console(*, stderr: bool = False) -> Console:
    """A rich console on the current stdout/stderr (so click's test runner captures it)."""
    # sys.stdout/sys.stderr, not click.get_text_stream (deprecated): click's test runner
    # swaps these too, so output is still captured there.
    stream: IO[str] = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def emit_json(value: Any) -> None:
    """Machine-stable JSON on stdout: sorted keys, 2-space indent, one trailing newline."""
    click.echo(json.dumps(value, sort_keys=True, indent=2, default=str, ensure_ascii=False))


def emit_json_line(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))


def reviewer_default() -> str | None:
    return os.environ.get("USER") or os.environ.get("USERNAME") or None


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
