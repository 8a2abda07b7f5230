"""Stages of the media catalogue: identify -> lookup (fan-out to sources) -> merge -> export."""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path

from treadle_core import Complete, FanOut, NeedsReview, Stage, StageOutput, SubTask

HERE = Path(__file__).resolve().parent


def identify(item, ctx):
    """Read the file's ID3v1 tag (the last 128 bytes)."""
    data = Path(item.data["path"]).read_bytes()
    tag = data[-128:]
    if not tag.startswith(b"TAG"):
        raise ValueError(f"{item.id}: no ID3v1 tag")

    def text(start: int, size: int) -> str:
        return tag[start : start + size].rstrip(b"\0 ").decode("latin-1")

    return StageOutput(
        Complete(),
        artefact={
            "title": text(3, 30),
            "artist": text(33, 30),
            "album": text(63, 30),
            "year": int(text(93, 4)),
        },
        summary=f"{text(33, 30)} / {text(63, 30)}",
    )


class Lookup(Stage):
    """Ask every metadata source about the album, one subtask per source."""

    description = "Look the album up in each source (fan-out)"

    def __init__(self, sources: list[str], flaky: str | None = None):
        self.sources = sources
        self.flaky = flaky  # this source fails the first time it is asked (a 503)

    async def execute(self, item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask(name) for name in self.sources])
        if ctx.subtask == self.flaky and ctx.attempt == 1:
            raise ConnectionError(f"{ctx.subtask}: 503 Service Unavailable")
        tag = ctx.upstream["identify"]
        key = f"{tag['artist']} / {tag['album']}"
        db = json.loads((HERE / "sources" / f"{ctx.subtask}.json").read_text())
        return StageOutput(Complete(), artefact=db.get(key), summary=f"{ctx.subtask}: {key}")


def merge(item, ctx):
    """One record from the tag and the sources; a person decides when sources disagree."""
    tag, found = ctx.upstream["identify"], ctx.upstream["lookup"]
    record = dict(tag)
    for source in ("musicbrainz", "discogs", "coverart"):
        for key, value in (found.get(source) or {}).items():
            record.setdefault(key, value)
    years = {s: r["year"] for s, r in found.items() if r and "year" in r}
    years["tag"] = tag["year"]
    if len(set(years.values())) > 1:
        prompt = f"{tag['artist']} / {tag['album']}: sources disagree on the year"
        return StageOutput(NeedsReview(prompt, {"years": years}), artefact=record)
    return StageOutput(Complete(), artefact=record)


COLUMNS = ["file", "title", "artist", "album", "year", "label", "catalogue_no", "cover"]


def export(item, ctx):
    """Upsert this item's row into catalogue.csv: re-running it never duplicates a row."""
    record = {"file": item.id, **ctx.upstream["merge"]}
    path = Path("catalogue.csv")
    with open("catalogue.csv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other items (and workers) write the same file
        rows = {}
        if path.exists():
            with path.open(newline="") as fh:
                rows = {row["file"]: row for row in csv.DictReader(fh)}
        rows[item.id] = {c: record.get(c, "") for c in COLUMNS}
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS)
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))
        os.replace(tmp, path)
    return StageOutput(Complete(), artefact={"row": rows[item.id]})
