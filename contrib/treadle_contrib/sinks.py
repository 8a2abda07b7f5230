"""Event sinks: ``jsonl`` (an append-only file of events) and ``console`` (rich, on stderr)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape

from treadle_core import Event
from treadle_core.hookspecs import Option, SinkType, hookimpl


class JsonlSink:
    """Appends one ``Event.to_dict()`` JSON object per line; flushed after every event."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
        with self._lock:
            if self._fh is None:
                return
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


_STYLES = {
    "StageCompleted": "green",
    "StageFailed": "bold red",
    "StageRetried": "yellow",
    "RetryScheduled": "yellow",
    "QualityCheckFailed": "yellow",
    "ReviewRequired": "bold magenta",
    "Escalated": "bold magenta",
    "WorkflowCompleted": "bold green",
}


class ConsoleSink:
    """One readable line per event on a rich console (stderr by default)."""

    def __init__(self, stderr: bool = True, file: IO[str] | None = None):
        stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
        self.console = Console(file=stream, highlight=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        details: dict[str, Any] = {
            k: v
            for k, v in event.to_dict().items()
            if k not in ("type", "item_id", "stage", "at") and v not in (None, "", {}, [])
        }
        extra = " ".join(f"{k}={v}" for k, v in details.items())
        style = _STYLES.get(event.kind, "")
        kind = f"[{style}]{event.kind}[/{style}]" if style else event.kind
        where = escape(event.item_id) + (f"/{event.stage}" if event.stage else "")
        self.console.print(
            f"{event.at:%H:%M:%S} {where} {kind} {escape(extra)}".rstrip(), markup=True
        )


@hookimpl
def register_event_sinks(register: Callable[[SinkType], None]) -> None:
    register(
        SinkType(
            "jsonl",
            JsonlSink,
            "Append every event as a JSON line to a file",
            {"path": Option(Path, required=True, description="File (relative to treadle.toml)")},
        )
    )
    register(
        SinkType(
            "console",
            ConsoleSink,
            "Print every event on the console (rich)",
            {"stderr": Option(bool, default=True, description="stderr (true) or stdout")},
        )
    )
