"""Turning stored values into what the templates show: artefacts, times, events."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

from treadle_core import StoredEvent

# CommonMark with raw HTML off: any tag in the source is escaped and shown as text,
# and markdown-it refuses javascript:/vbscript:/file:/data: link targets.
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_MD_HINT = re.compile(
    r"(^|\n)(#{1,6} |[-*+] |\d+\. |> |```)|\*\*[^*\n]+\*\*|\[[^\]\n]+\]\([^)\s]+\)"
)


@dataclass(frozen=True)
class Rendered:
    """An artefact ready for a template: ``kind`` picks the presentation."""

    kind: str  # "empty" | "json" | "markdown" | "text"
    text: str  # the source: pretty JSON or the string itself
    html: Markup | None = None  # only for markdown: the renderer's escaped output

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def looks_like_markdown(text: str) -> bool:
    return bool(_MD_HINT.search(text))


def render_markdown(text: str) -> Markup:
    """Markdown to HTML with raw HTML escaped (never passed through)."""
    return Markup(_md.render(text))


def render_value(value: Any) -> Rendered:
    if value is None:
        return Rendered("empty", "")
    if isinstance(value, str):
        if looks_like_markdown(value):
            return Rendered("markdown", value, render_markdown(value))
        return Rendered("text", value)
    return Rendered("json", pretty_json(value))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def edit_text(value: Any) -> tuple[str, str]:
    """What the editor starts with, and its mode: a string edits as text, anything else as JSON."""
    if isinstance(value, str):
        return value, "text"
    return pretty_json(value), "json"


def local_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        text = "just now" if not future else "in a few seconds"
        return text
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "min")):
        if seconds >= size:
            n = round(seconds / size)
            word = unit if unit == "min" or n == 1 else unit + "s"
            return f"in {n} {word}" if future else f"{n} {word} ago"
    return ""


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    s = (end - start).total_seconds()
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def status_label(status: str) -> str:
    return str(status).replace("_", " ")


def first_line(text: str | None, width: int = 140) -> str:
    if not text:
        return ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    # A traceback's last line says what went wrong; anything else: the first line.
    line = lines[-1] if lines and lines[0].startswith("Traceback") else (lines or [""])[0]
    return line if len(line) <= width else line[: width - 1] + "…"


_COMMON = {"type", "item_id", "stage", "at"}


@dataclass(frozen=True)
class EventRow:
    id: int
    at: datetime
    kind: str
    stage: str | None
    detail: str


def event_row(stored: StoredEvent) -> EventRow:
    event = stored.event
    fields = {k: v for k, v in event.to_dict().items() if k not in _COMMON and v not in (None, "")}
    detail = ", ".join(
        f"{k}: {v if isinstance(v, str | int | float) else json.dumps(v, default=str)}"
        for k, v in fields.items()
    )
    if len(detail) > 200:
        detail = detail[:199] + "…"
    return EventRow(stored.id, event.at, event.kind, event.stage, detail)
