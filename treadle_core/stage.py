"""Stages: subclass `Stage`, or mark a plain function (sync or async) with `@stage`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .model import Outcome, StageContext, StageOutput, WorkItem

StageResult = StageOutput | Outcome | None
F = TypeVar("F", bound=Callable[..., Any])


class Stage:
    """One step of a workflow. Implement ``async def execute(self, item, ctx)``."""

    #: A one-line description shown by ``treadle stages list``.
    description: str = ""

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageResult:
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")

    async def before_execute(self, item: WorkItem, ctx: StageContext) -> None:
        """Called before each attempt."""

    async def after_execute(self, item: WorkItem, ctx: StageContext, output: StageOutput) -> None:
        """Called after each attempt that returned (not raised)."""

    async def settle(self, item_id: str, subtask: str | None) -> None:
        """Wait until no earlier attempt of this stage for this item (or subtask) is still
        running; the engine calls it before starting the next one. Override it if your
        stage runs work the engine cannot stop (a thread, a process) past a timeout."""


#: Threads of sync function stages. Not the event loop's default executor: a stage that
#: timed out goes on in its thread, and the engine must be able to wait for that one.
_THREADS = concurrent.futures.ThreadPoolExecutor(
    max_workers=256, thread_name_prefix="treadle-stage"
)


class FunctionStage(Stage):
    """A plain function as a stage: async functions are awaited, sync ones run in a thread."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__treadle_stage__", None) or fn.__name__
        self.description = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )
        #: (item id, subtask) -> the thread of a sync attempt still running.
        self._running: dict[tuple[str, str | None], concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageResult:
        if self._is_async:
            return await self.fn(item, ctx)  # type: ignore[no-any-return,unused-ignore]
        call = functools.partial(contextvars.copy_context().run, self.fn, item, ctx)
        thread = _THREADS.submit(call)
        key = (ctx.item_id, ctx.subtask)
        with self._lock:
            self._running[key] = thread
        thread.add_done_callback(functools.partial(self._finished, key))
        # A cancelled attempt (timeout, shutdown) stops waiting; the thread runs on,
        # and `settle` makes the next attempt of this item wait for it.
        return await asyncio.wrap_future(thread)

    def _finished(
        self, key: tuple[str, str | None], thread: concurrent.futures.Future[Any]
    ) -> None:
        with self._lock:
            if self._running.get(key) is thread:
                del self._running[key]

    async def settle(self, item_id: str, subtask: str | None) -> None:
        with self._lock:
            thread = self._running.get((item_id, subtask))
        if thread is not None:
            await asyncio.wait([asyncio.wrap_future(thread)])

    def __repr__(self) -> str:
        return f"<stage {self.name} {self.fn!r}>"


def stage(name: str | Callable[..., Any] | None = None) -> Any:
    """Mark a function ``(item, ctx)`` as a stage: ``@stage("parse")`` or bare ``@stage``."""

    def mark(fn: F) -> F:
        fn.__treadle_stage__ = name if isinstance(name, str) else fn.__name__  # type: ignore[attr-defined]
        return fn

    if callable(name):
        return mark(name)
    return mark


def as_stage(obj: Any, name: str) -> Stage:
    """A `Stage` from a Stage instance or a function; anything else is a TypeError."""
    if isinstance(obj, Stage):
        return obj
    if isinstance(obj, type) and issubclass(obj, Stage):
        raise TypeError(f"stage {name!r}: pass an instance ({obj.__name__}()), not the class")
    if callable(obj):
        return FunctionStage(obj, name)
    raise TypeError(
        f"stage {name!r}: expected a Stage instance or a function (item, ctx), "
        f"got {type(obj).__name__}"
    )
