"""Stages: subclass `Stage`, or mark a plain function (sync or async) with `@stage`."""

from __future__ import annotations

import asyncio
import inspect
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


class FunctionStage(Stage):
    """A plain function as a stage: async functions are awaited, sync ones run in a thread."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__treadle_stage__", None) or fn.__name__
        self.description = (inspect.getdoc(fn) or "").split("\n", 1)[0]
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageResult:
        if self._is_async:
            return await self.fn(item, ctx)  # type: ignore[no-any-return,unused-ignore]
        return await asyncio.to_thread(self.fn, item, ctx)

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
