"""Screenshots of the console for the docs: docs/images/ui-queue.png, ui-review.png, ui-dag.png.

    python plugins/treadle-ui/scripts/screenshots.py [--also-narrow DIR]

Runs the news-desk pipeline in scripts/demo (a fan-out over three sources, a draft, a
check, a person's approval) in a temporary directory, serves it with a real
`treadle ui --users` and photographs it in Chromium (the queue at 1280x800, a review at
1280x1640 so that upstream artefacts and subtasks show), signed in as "ada".
``--also-narrow DIR`` also writes 390- and 1600-pixel-wide full-page shots there, to look
at (not for the docs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"]
#: More stories, so that the queue has a second page.
TOWNS = ("northgate", "eastfield", "millbrook", "harbourside", "old-town", "westcliff")
TOPICS = (
    "roadworks",
    "market",
    "flooding",
    "schools",
    "bus-routes",
    "museum",
    "election",
    "parking",
    "festival",
    "housing",
)


def treadle(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--also-narrow", type=Path)
    args = parser.parse_args()
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp()) / "newsdesk"
    shutil.copytree(HERE / "demo", work, ignore=shutil.ignore_patterns(".treadle"))
    with (work / "items.jsonl").open("a") as fh:
        for town in TOWNS:
            for topic in TOPICS:
                text = f"{topic.replace('-', ' ').capitalize()} in {town.replace('-', ' ')}"
                fh.write(json.dumps({"id": f"{town}-{topic}", "data": {"text": text}}) + "\n")
    treadle(work, "add", "items.jsonl")
    treadle(work, "run")
    treadle(work, "review", "approve", "city-budget", "approve", "--reviewer", "grace")
    treadle(work, "review", "reject", "heatwave", "approve", "--reason", "weather, not news")
    treadle(work, "run")
    token = treadle(work, "ui", "users", "add", "ada", "--file", "reviewers.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "treadle_core.cli", "ui", "--port", str(port)]
    proc = subprocess.Popen([*command, "--users", "reviewers.json"], cwd=work)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
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
            page.fill("#signin-name", "ada")
            page.fill("#signin-token", token)
            page.click("#signin-btn")
            page.wait_for_selector(".queue")
            page.check('input[name="target"] >> nth=1')
            page.check('input[name="target"] >> nth=2')
            page.screenshot(path=str(out / "ui-queue.png"))
            page.locator("section:has(#pipe-h)").screenshot(path=str(out / "ui-dag.png"))
            review = base + "/review?item=harbour-bridge&stage=approve"
            page.set_viewport_size({"width": 1280, "height": 1640})  # down to the subtasks
            page.goto(review)
            page.fill("#comment", "Year checked against the wire copy.")
            page.click('details.upstream[data-stage="sources"] > summary')
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(out / "ui-review.png"))
            if args.also_narrow:
                args.also_narrow.mkdir(parents=True, exist_ok=True)
                for width in (390, 1600):
                    page.set_viewport_size({"width": width, "height": 900})
                    for name, url in (("queue", base + "/"), ("review", review)):
                        page.goto(url)
                        page.evaluate(
                            "document.querySelectorAll('details').forEach(d => d.open = true)"
                        )
                        path = args.also_narrow / f"ui-{name}-{width}.png"
                        page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"wrote {out / 'ui-queue.png'}, {out / 'ui-review.png'} and {out / 'ui-dag.png'}")


if __name__ == "__main__":
    main()
