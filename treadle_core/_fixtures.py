"""pytest fixtures for plugin authors (re-exported by `treadle_core.testing`).

- ``treadle_plugin_manager``: a fresh plugin manager (built-ins + installed plugins).
- ``treadle_cli``: runs ``treadle ...`` in-process on that manager, in ``tmp_path``.
- ``treadle_store``: a temporary SQLite store in ``tmp_path``.
- ``treadle_events``: an `EventRecorder`; ``treadle_events.attach(wf)`` records ``wf``'s events.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from .events import Event
from .plugins import TreadlePluginManager, get_plugin_manager
from .store.base import StateStore
from .workflow import Workflow

E = TypeVar("E", bound=Event)


class TreadleCli:
    """``treadle_cli("run", "--concurrency", "2")`` returns a click `Result`."""

    def __init__(self, pm: TreadlePluginManager, cwd: Path):
        from .cli import create_cli

        self.pm = pm
        self.cwd = cwd
        self.cli = create_cli(pm)
        self.runner = CliRunner()

    def __call__(
        self,
        *args: Any,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
        catch_exceptions: bool = False,
    ) -> Result:
        old = Path.cwd()
        os.chdir(self.cwd)
        try:
            return self.runner.invoke(
                self.cli,
                [str(a) for a in args],
                input=input,
                env=dict(env or {}),
                catch_exceptions=catch_exceptions,
            )
        finally:
            os.chdir(old)


class EventRecorder:
    """Collects events; pass it to ``wf.bus.add_listener`` or call ``attach(wf)``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._attached: list[Workflow] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def attach(self, wf: Workflow) -> EventRecorder:
        wf.bus.add_listener(self)
        self._attached.append(wf)
        return self

    def detach(self) -> None:
        for wf in self._attached:
            wf.bus.remove_listener(self)
        self._attached.clear()

    def kinds(self, item_id: str | None = None) -> list[str]:
        """Event class names in order (optionally for one item)."""
        return [e.kind for e in self.events if item_id is None or e.item_id == item_id]

    def of(self, *types: type[E]) -> list[E]:
        """The recorded events of these types."""
        return [e for e in self.events if isinstance(e, types)]

    def for_stage(self, stage: str, item_id: str | None = None) -> list[Event]:
        return [
            e for e in self.events if e.stage == stage and (item_id is None or e.item_id == item_id)
        ]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))


def open_test_store(tmp_path: Path) -> StateStore:
    """A SQLite store in ``tmp_path`` (an in-memory one where the SQL store is unavailable)."""
    from .store.memory import MemoryStateStore
    from .store.open import open_store

    try:
        return open_store(f"sqlite:///{tmp_path}/state.db")
    except NotImplementedError:
        return MemoryStateStore()


@pytest.fixture
def treadle_plugin_manager() -> TreadlePluginManager:
    """A fresh plugin manager: the built-ins and every installed ``treadle`` entry point."""
    return get_plugin_manager()


@pytest.fixture
def treadle_cli(treadle_plugin_manager: TreadlePluginManager, tmp_path: Path) -> TreadleCli:
    """Run ``treadle`` commands in-process (working directory: ``tmp_path``)."""
    return TreadleCli(treadle_plugin_manager, tmp_path)


@pytest.fixture
def treadle_store(tmp_path: Path) -> Iterator[StateStore]:
    """A temporary SQLite store in ``tmp_path``, closed afterwards."""
    store = open_test_store(tmp_path)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def treadle_events() -> Iterator[EventRecorder]:
    """An `EventRecorder`; ``treadle_events.attach(wf)`` records that workflow's events."""
    recorder = EventRecorder()
    yield recorder
    recorder.detach()


__all__: Sequence[str] = [
    "EventRecorder",
    "TreadleCli",
    "open_test_store",
    "treadle_cli",
    "treadle_events",
    "treadle_plugin_manager",
    "treadle_store",
]
