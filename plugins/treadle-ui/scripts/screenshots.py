"""Screenshots of the console for the docs, in docs/images/: ui-queue.png, ui-dag.png,
ui-review.png, ui-review-choices.png, ui-review-form.png and ui-review-votes.png.

    python plugins/treadle-ui/scripts/screenshots.py [--also-narrow DIR]

Runs the news-desk pipeline in scripts/demo (a fan-out over three sources, a person
picking the year when they disagree, a draft, a check, two of three editors approving
with a form) in a temporary directory, has grace and ada decide a few reviews with the
CLI, serves it with a real `treadle ui --users` and photographs it in Chromium, signed in
as "ada": the queue at 1280x800; a review at 1280x1640 so that upstream artefacts and
subtasks show; the choices of the year question, the form with an answer refused at its
field, and a review ada has already voted on, at 1280x900.
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


#: Generated stories whose sources disagree on the year.
DISPUTED = ("market", "museum", "festival")
#: The years people picked where the sources disagree: (item, year, reviewer).
YEARS = (
    ("harbour-bridge", "2021", "grace"),
    ("river-cleanup", "2022", "ben"),
    ("school-meals", "2022", "ben"),
)
#: Approvals the CLI gives before the shots: (item, reviewer, the form's answers).
VOTES = (
    (
        "school-meals",
        "ben",
        {"headline": "Free meals for every pupil", "section": "news", "priority": 2},
    ),
    (
        "school-meals",
        "grace",
        {"headline": "Free school meals for all", "section": "news", "priority": 2},
    ),
    (
        "harbour-bridge",
        "grace",
        {
            "headline": "Harbour bridge open again",
            "section": "city",
            "priority": 1,
            "front_page": True,
        },
    ),
    (
        "river-cleanup",
        "grace",
        {"headline": "Four tonnes out of the river", "section": "city", "priority": 3},
    ),
    (
        "city-budget",
        "ada",
        {
            "headline": "Council agrees the budget",
            "section": "news",
            "priority": 2,
            "tags": ["council", "budget"],
        },
    ),
)


def treadle(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        sys.exit(f"treadle {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--also-narrow", type=Path)
    args = parser.parse_args()
    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp()) / "newsdesk"
    shutil.copytree(HERE / "demo", work, ignore=shutil.ignore_patterns(".treadle"))
    # The seven stories first, decided a little; then the rest, so the queue's first rows
    # show every kind of question.
    treadle(work, "add", "items.jsonl")
    treadle(work, "run", check=False)
    for item, year, who in YEARS:
        treadle(work, "review", "approve", item, "year", "--choice", year, "--reviewer", who)
    treadle(work, "run", check=False)
    for item, who, answers in VOTES:
        values = json.dumps(answers)
        treadle(work, "review", "approve", item, "approve", "--values", values, "--reviewer", who)
    reason = "weather, not news"
    treadle(
        work, "review", "reject", "heatwave", "approve", "--reason", reason, "--reviewer", "ben"
    )
    treadle(work, "run", check=False)  # exits 1: heatwave was rejected
    with (work / "more.jsonl").open("w") as fh:
        for town in TOWNS:
            for topic in TOPICS:
                text = f"{topic.replace('-', ' ').capitalize()} in {town.replace('-', ' ')}"
                data = {"text": text, "disputed": topic in DISPUTED}
                fh.write(json.dumps({"id": f"{town}-{topic}", "data": data}) + "\n")
    treadle(work, "add", "more.jsonl")
    treadle(work, "run", check=False)
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
            page.screenshot(animations="disabled", path=str(out / "ui-queue.png"))
            page.locator("section:has(#pipe-h)").screenshot(
                animations="disabled", path=str(out / "ui-dag.png")
            )
            review = base + "/review?item=harbour-bridge&stage=approve"
            page.set_viewport_size({"width": 1280, "height": 1640})  # down to the subtasks
            page.goto(review)
            page.fill('[name="v.headline"]', "Harbour bridge reopens after two years")
            page.check('[name="v.section"][value=\'"city"\']')
            page.fill('[name="v.priority"]', "2")
            page.fill("#comment", "Year checked against the wire copy.")
            page.click('details.upstream[data-stage="sources"] > summary')
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(animations="disabled", path=str(out / "ui-review.png"))

            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(base + "/review?item=tram-line&stage=year")
            page.screenshot(animations="disabled", path=str(out / "ui-review-choices.png"))

            page.goto(base + "/review?item=river-cleanup&stage=approve")
            page.fill(
                '[name="v.headline"]', "Volunteers clear four tonnes of rubbish from the river"
            )
            page.check('[name="v.section"][value=\'"city"\']')
            page.fill('[name="v.priority"]', "9")
            page.fill('[name="v.tags"]', '["river", "volunteers"]')
            page.click("#approve-btn")
            page.wait_for_selector(".field-error")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(animations="disabled", path=str(out / "ui-review-form.png"))

            page.goto(base + "/review?item=city-budget&stage=approve")
            page.screenshot(animations="disabled", path=str(out / "ui-review-votes.png"))
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
                        page.screenshot(animations="disabled", path=str(path), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('ui-*.png')))} in {out}")


if __name__ == "__main__":
    main()
