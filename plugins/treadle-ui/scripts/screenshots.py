"""Screenshots of the console for the docs: docs/images/ui-queue.png and ui-review.png.

    python plugins/treadle-ui/scripts/screenshots.py

Runs the examples/hello pipeline (plus a few more items) in a temporary directory,
serves it with a real `treadle ui` and photographs it at 1280x800 in Chromium.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[3]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"]
EXTRA = [
    ("invoice-0042", "Invoice 0042 from Acme Tools: 12 hammers, 4 ladders, due within 30 days."),
    ("release-notes", "Version 2.3 adds offline mode, faster sync and a redesigned settings page."),
    ("support-1187", "Customer cannot log in after resetting the password twice in one hour."),
    ("blog-draft", "Five lessons from running a small workflow engine in production for a year."),
    ("meeting-notes", "Agreed to ship the review console first and the Redis store next month."),
]


def treadle(cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "treadle_core.cli", *args], cwd=cwd, check=False)


def main() -> None:
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp()) / "hello"
    shutil.copytree(ROOT / "examples" / "hello", work, ignore=shutil.ignore_patterns(".treadle"))
    with (work / "items.jsonl").open("a") as fh:
        for item_id, text in EXTRA:
            fh.write(json.dumps({"id": item_id, "data": {"text": text}}) + "\n")
    treadle(work, "add", "items.jsonl")
    treadle(work, "run")
    treadle(work, "review", "approve", "recipe", "approve", "--reviewer", "ada")
    treadle(work, "review", "reject", "meeting-notes", "approve", "--reason", "internal only")
    treadle(work, "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadle_core.cli", "ui", "--port", str(port), "--reviewer", "ada"],
        cwd=work,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=ARGS
            )
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(base + "/")
            page.check('input[name="target"] >> nth=1')
            page.screenshot(path=str(out / "ui-queue.png"))
            page.goto(base + "/review?item=greeting&stage=approve")
            page.fill("#comment", "Reads well; publish.")
            page.screenshot(path=str(out / "ui-review.png"))
            page.set_viewport_size({"width": 420, "height": 900})
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "ui-review-narrow.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"wrote {out / 'ui-queue.png'} and {out / 'ui-review.png'}")


if __name__ == "__main__":
    main()
