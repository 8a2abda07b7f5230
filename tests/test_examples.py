"""The worked examples in docs/examples/, run end to end through the real `treadle` CLI.

Each example's README is its script: its ``<!-- test: run -->`` blocks run in a
temporary copy of the example's directory (see tests/test_docs.py for the
conventions), each `treadle` command a real subprocess. The assertions below then
check what the walkthrough produced.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import DOCS, run_steps, steps

EXAMPLES = DOCS / "examples"


def walk_through(name: str, tmp_path: Path) -> Path:
    """Copy the example, run its README's steps; the copy's directory."""
    target = tmp_path / name
    shutil.copytree(
        EXAMPLES / name, target, ignore=shutil.ignore_patterns(".treadle", "__pycache__")
    )
    result = run_steps(steps(EXAMPLES / name / "README.md"), target)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    return target


def treadle_json(cwd: Path, *args: str) -> object:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    out = subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args, "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def journal(cwd: Path) -> list[dict[str, object]]:
    lines = (cwd / ".treadle" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_media_catalogue(tmp_path: Path) -> None:
    cwd = walk_through("media-catalogue", tmp_path)
    with (cwd / "catalogue.csv").open(newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == [
        "library/copper-sky.mp3",
        "library/glass-garden.mp3",
        "library/night-ferry.mp3",
        "library/slow-river.mp3",
    ]
    assert rows["library/glass-garden.mp3"]["year"] == "1984"
    assert rows["library/night-ferry.mp3"]["catalogue_no"] == "TW-1012"
    events = journal(cwd)
    # The flaky source failed once per album and was retried; the others ran once.
    starts = [e for e in events if e["type"] == "SubTaskStarted"]
    assert sum(e["subtask"] == "discogs" for e in starts) == 8
    assert sum(e["subtask"] == "musicbrainz" for e in starts) == 4
    reviews = [e for e in events if e["type"] == "ReviewResolved"]
    assert [(r["item_id"], r["reviewer"]) for r in reviews] == [("library/glass-garden.mp3", "ada")]
    status = treadle_json(cwd, "status")
    assert status["items"] == {"complete": 4}


def test_ai_documents(tmp_path: Path) -> None:
    cwd = walk_through("ai-documents", tmp_path)
    events = journal(cwd)

    def attempts(item: str) -> int:
        return sum(
            e["type"] == "StageStarted" and e["item_id"] == item and e["stage"] == "summarise"
            for e in events
        )

    assert attempts("documents/heat-pumps.md") == 3
    assert attempts("documents/sourdough.md") == 2
    assert attempts("documents/meeting.txt") == 3
    escalated = [e["item_id"] for e in events if e["type"] == "Escalated"]
    assert escalated == ["documents/meeting.txt"]
    # Feedback reached the retries: each later prompt quotes the previous rejection.
    heat = (cwd / "exports" / "heat-pumps.md").read_text()
    assert "## Summary" in heat and "## Key points" in heat and len(heat.split()) >= 42
    meeting = (cwd / "exports" / "meeting.md").read_text()
    assert meeting.startswith("# Standup, Tuesday") and "moved to Thursday" in meeting
    shown = treadle_json(cwd, "review", "show", "documents/meeting.txt", "summarise")
    assert shown["reviews"][0]["decision"] == "approve_with_edits"
    assert shown["reviews"][0]["note"] == "too short for the model; written by hand"
    assert shown["reviews"][0]["forced"] is True  # the gate refused it first: nothing saved
    assert len(shown["reviews"]) == 1
    assert "Your last answer was rejected" in shown["attempts"][1]["artefact"]["prompt"]
    assert treadle_json(cwd, "status")["items"] == {"complete": 3}


def test_etl(tmp_path: Path) -> None:
    cwd = walk_through("etl", tmp_path)
    with sqlite3.connect(cwd / "warehouse.db") as db:
        rows = db.execute("SELECT order_id, amount, ordered_on FROM orders ORDER BY 1").fetchall()
    assert rows == [
        ("A-1001", 120.5, "2024-03-01"),
        ("A-1002", 75.0, "2024-03-02"),
        ("A-1003", 120.0, "2024-03-02"),
        ("A-1004", 310.25, "2024-03-04"),
        ("A-1006", 48.0, "2024-03-06"),
    ]
    status = treadle_json(cwd, "status")
    assert status["items"] == {"complete": 5, "failed": 1}
    failed = treadle_json(cwd, "status", "A-1005")
    assert failed["stages"]["transform"]["error"] == "refund: goes to the credits table"


@pytest.mark.parametrize("name", ["media-catalogue", "ai-documents", "etl"])
def test_example_has_the_three_files(name: str) -> None:
    folder = EXAMPLES / name
    assert (folder / "treadle.toml").is_file()
    assert (folder / "stages.py").is_file()
    assert (folder / "README.md").is_file()
