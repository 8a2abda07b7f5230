"""The console's ``/metrics``: Prometheus metrics of the pipeline over a real SQLite
file, with the console's own review decisions counted."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from treadle_ui.app import create_app

from treadle_core import Item, NeedsReview, Workflow, open_store

SECRET = "test-secret-" + "x" * 32


def check(item: Any, ctx: Any) -> Any:
    return NeedsReview(f"Is {item.id} right?")


def workflow() -> Workflow:
    return Workflow.builder("metered").stage("check", check).build()


@pytest.fixture
def wf() -> Workflow:
    return workflow()


@pytest.fixture
def store(wf: Workflow, tmp_path: Path) -> Iterator[Any]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    items = [Item("a", {}), Item("b", {}), Item("c", {})]
    # On a thread of its own: the browser tests' Playwright keeps a loop running here.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, wf.run(s, items)).result()
    yield s
    s.close()


def client(wf: Workflow, store: Any, **options: Any) -> TestClient:
    app = create_app(wf, store, secret=SECRET, reviewer="ada", **options)
    return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)


def decide(c: TestClient, item: str, **form: str) -> Any:
    """Send the review page's decision form (its hidden fields) with ``form`` filled in."""
    page = c.get(f"/review?item={item}&stage=check").text
    body = page.split('id="decide"', 1)[1].split("</form>", 1)[0]
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)
    return c.post("/decide", data={**{k: html.unescape(v) for k, v in hidden}, **form})


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
            return float(m.group(3))
    return None


def test_metrics_show_items_and_waiting_reviews_from_the_store(wf: Workflow, store: Any) -> None:
    r = client(wf, store).get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    labels = {"pipeline": "metered", "stage": "check"}
    assert sample(r.text, "treadle_reviews_waiting", **labels) == 3
    assert sample(r.text, "treadle_review_oldest_age_seconds", **labels) >= 0
    assert sample(r.text, "treadle_items", pipeline="metered", state="awaiting_review") == 3
    assert sample(r.text, "treadle_store_up", pipeline="metered") == 1


def test_decisions_made_in_the_console_are_counted(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    assert decide(c, "a", action="approve").status_code == 303
    assert decide(c, "b", action="reject", reason="wrong").status_code == 303
    text = c.get("/metrics").text
    labels = {"pipeline": "metered", "stage": "check"}
    assert sample(text, "treadle_reviews_resolved_total", decision="approve", **labels) == 1
    assert sample(text, "treadle_reviews_resolved_total", decision="reject", **labels) == 1
    assert sample(text, "treadle_reviews_waiting", **labels) == 1
    assert sample(text, "treadle_items", pipeline="metered", state="complete") == 1
    assert sample(text, "treadle_items", pipeline="metered", state="failed") == 1


def test_openmetrics_when_the_scraper_asks(wf: Workflow, store: Any) -> None:
    r = client(wf, store).get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")


def test_metrics_need_the_token_when_the_console_has_one(wf: Workflow, store: Any) -> None:
    c = client(wf, store, token="s3cret", loopback_only=False)
    assert c.get("/metrics").status_code == 401
    r = c.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and "treadle_reviews_waiting" in r.text
