"""Fixtures: a real pipeline directory with a SQLite store, a `treadle ui` process, Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]

#: An item whose id, artefact and errors are long unbroken strings (wrapping tests).
LONG_ID = "long-" + "x" * 140
LONG_ARTEFACT = {
    "url": "https://example.org/" + "a" * 400,
    "nested": {"deeper": {"deepest": ["b" * 250, {"k": "c " * 200}]}},
    "text": "word " * 300,
}

#: Items of the browser tests: each test decides its own items, so order does not matter.
ITEMS: list[dict[str, Any]] = [
    {"id": "approve-1"},
    {"id": "reject-1"},
    {"id": "edit-1", "data": {"artefact": {"title": "draft", "words": 3}}},
    {"id": "badjson-1"},
    {
        "id": "xss-md",
        "data": {
            "artefact": "# Heading\n\n<script>alert('md')</script>\n\n<img src=x onerror=alert(2)>"
        },
    },
    {"id": "xss-json", "data": {"artefact": {"html": "<script>alert('json')</script>"}}},
    {"id": "kbd-1"},
    {"id": "kbd-2"},
    {"id": "kbd-3"},
    {"id": "bulk-1"},
    {"id": "bulk-2"},
    {"id": "bulk-3"},
    {"id": "csrf-1"},
    {"id": "live-1"},
    {"id": "name-1"},
    {"id": "fail-1", "data": {"fail": "the source was empty"}},
    {"id": "once-1"},
    {"id": "once-2"},
    {"id": "bulkrej-1"},
    {"id": "bulkrej-2"},
    {"id": "bulkrej-3"},
    {"id": LONG_ID, "data": {"artefact": LONG_ARTEFACT, "flaky": "refused: " + "e" * 300}},
]


def treadle(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``treadle`` CLI (this interpreter's) in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def make_pipeline(root: Path, items: list[dict[str, Any]], source: str = "pipeline") -> Path:
    """Copy a test pipeline (``tests/<source>``) to ``root``, add ``items`` and run until
    they wait for review."""
    shutil.copytree(HERE / source, root)
    (root / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    treadle(root, "add", "items.jsonl")
    treadle(root, "run", check=False)  # exit 1: fail-1 failed, as intended
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UiServer:
    """A ``treadle ui`` subprocess serving a pipeline directory."""

    def __init__(
        self, cwd: Path, *args: str, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.cwd = cwd
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TREADLE_UI_TOKEN", None)
        command = [sys.executable, "-m", "treadle_core.cli", "ui", "--host", host]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"treadle ui exited: {self.proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("treadle ui did not start listening within 20 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline(tmp_path_factory.mktemp("ui") / "pipeline", ITEMS)


@pytest.fixture(scope="session")
def server(pipeline_dir: Path) -> Iterator[UiServer]:
    ui = UiServer(pipeline_dir, "--reviewer", "tester", "--poll", "0.3")
    yield ui
    ui.stop()


#: The people-in-the-loop pipeline's reviewers (sign's approvers are ana, bo and cy).
PEOPLE = ("ana", "bo", "cy", "tester")
#: Its items: each browser test decides its own.
PEOPLE_ITEMS = [
    {"id": i}
    for i in ("pick-1", "pick-2", "form-1", "form-long", "changes-1", "vote-1", "vote-2", "once-3")
]


@pytest.fixture(scope="session")
def people_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pipeline(tmp_path_factory.mktemp("ui") / "people", PEOPLE_ITEMS, "people")


@pytest.fixture(scope="session")
def people_tokens(people_dir: Path) -> dict[str, str]:
    add = ("ui", "users", "add")
    return {
        n: treadle(people_dir, *add, n, "--file", "reviewers.json").stdout.strip() for n in PEOPLE
    }


@pytest.fixture(scope="session")
def people_server(people_dir: Path, people_tokens: dict[str, str]) -> Iterator[UiServer]:
    ui = UiServer(people_dir, "--users", "reviewers.json", "--poll", "0.3")
    yield ui
    ui.stop()


@pytest.fixture
def people_store(people_dir: Path) -> Iterator[Any]:
    from treadle_core import open_store

    s = open_store(f"sqlite:///{people_dir / '.treadle' / 'state.db'}")
    yield s
    s.close()


@pytest.fixture
def store(pipeline_dir: Path) -> Iterator[Any]:
    """A fresh connection to the server's store (reads what the other process committed)."""
    from treadle_core import open_store

    s = open_store(f"sqlite:///{pipeline_dir / '.treadle' / 'state.db'}")
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module: Playwright's sync API holds an event loop in this
    thread while it runs, which would stop later modules' ``asyncio.run``."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium in CI: {reason}")
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("browser tests need the playwright package in CI")
        pytest.skip("playwright is not installed (pip install -e 'plugins/treadle-ui[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page at 1280x800 that records every dialog (an alert means a script ran)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.dialogs = []  # type: ignore[attr-defined]

    def on_dialog(dialog: Any) -> None:
        pg.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.set_default_timeout(8000)
    yield pg
    context.close()
