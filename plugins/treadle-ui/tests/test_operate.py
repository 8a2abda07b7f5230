"""Re-run and cancel from the console, and `treadle ui` with --store alone or --app."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from test_app import ITEMS, client, post, workflow

from treadle_core import ItemState, MemoryStateStore, StageReset, StageStatus, Workflow, open_store
from treadle_core.cli import create_cli
from treadle_core.plugins import get_plugin_manager

T = TypeVar("T")


def aside(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own: the browser tests keep an event loop running in
    this one for the whole session, so ``asyncio.run`` (and the CLI) cannot run here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return aside(lambda: asyncio.run(coro))


@pytest.fixture
def wf() -> Workflow:
    return workflow()


@pytest.fixture
def store(wf: Workflow) -> MemoryStateStore:
    s = MemoryStateStore()
    for item in ITEMS:
        s.save_work_item_data(item.id, item.data)
    run(wf.run(s, ITEMS))
    return s


def test_an_item_page_offers_rerun_and_cancel(wf: Workflow, store: Any) -> None:
    page = client(wf, store).get("/item?item=a").text
    assert 'action="/rerun"' in page and 'name="stage" value="draft"' in page
    assert 'action="/cancel"' in page and "Cancel item" in page


def test_rerun_puts_the_stage_and_what_follows_back_to_pending(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = post(c, "/rerun", item="a", stage="draft", reason="new prompt")
    assert r.status_code == 303 and "notice=rerun" in r.headers["location"]
    assert store.get_stage_state("a", "draft").status == StageStatus.PENDING
    assert store.get_stage_state("a", "check").status == StageStatus.PENDING
    resets = [e.event for e in store.read_events("a") if isinstance(e.event, StageReset)]
    assert [(e.stage, e.by, e.reason) for e in resets] == [
        ("draft", "ada", "new prompt"),
        ("check", "ada", "new prompt"),
    ]
    notice = c.get(r.headers["location"]).text
    assert "is pending again" in notice
    r = post(c, "/rerun", item="a", stage="publish")  # never ran
    assert "notice=rerun_failed" in r.headers["location"]
    assert "nothing+to+re-run" in r.headers["location"]


def test_rerun_without_cascade_leaves_what_follows(wf: Workflow, store: Any) -> None:
    post(client(wf, store), "/rerun", item="a", stage="draft", cascade="0")
    assert store.get_stage_state("a", "check").status == StageStatus.AWAITING_REVIEW


def test_cancel_stops_an_item(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = post(c, "/cancel", item="b", reason="duplicate")
    assert "notice=cancelled" in r.headers["location"]
    assert store.get_item("b").state == ItemState.CANCELLED
    assert store.get_stage_state("b", "check").error == "cancelled by ada: duplicate"
    assert "b" not in [p.item_id for p in wf.pending_reviews(store)]
    page = c.get("/item?item=b").text
    assert 'action="/cancel"' not in page and "cancelled" in page
    r = post(c, "/cancel", item="b")
    assert "notice=cancel_failed" in r.headers["location"]
    r = post(c, "/cancel", item="nope")
    assert "notice=cancel_failed" in r.headers["location"]


def test_rerun_and_cancel_need_a_name(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer=None)
    for path, form in (("/rerun", {"stage": "draft"}), ("/cancel", {})):
        r = post(c, path, item="a", **form)
        assert "notice=noname" in r.headers["location"]
    assert store.get_item("a").state == ItemState.AWAITING_REVIEW


def test_forms_without_the_csrf_token_are_refused(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    assert c.post("/cancel", data={"item": "a"}).status_code == 403
    assert store.get_item("a").state == ItemState.AWAITING_REVIEW


APP = """
from treadle_core import Workflow

wf = Workflow.builder("pyapp").stage("a", lambda item, ctx: None).build()
"""


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`treadle ui` without serving: the app it would serve (on a port free now)."""
    import socket

    import uvicorn

    got: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: got.update(app=self.config.app))
    for key in ("TREADLE_STORE", "TREADLE_APP", "TREADLE_UI_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        got["port"] = str(probe.getsockname()[1])
    return got


def test_ui_with_the_store_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]
) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    with open_store(url) as store:
        store.save_work_item_data("x", {})
        run(workflow().run(store))
    monkeypatch.chdir(tmp_path)
    cli = create_cli(get_plugin_manager())
    args = ["--store", url, "ui", "--port", served["port"]]
    result = aside(lambda: CliRunner().invoke(cli, args))
    assert result.exit_code == 0, result.output
    console = served["app"].state.console
    assert console.wf.stages == ["draft", "check", "publish"] and not console.wf.runnable


def test_ui_with_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: dict[str, Any]
) -> None:
    (tmp_path / "uiapp.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    open_store("sqlite:///.treadle/state.db").close()
    cli = create_cli(get_plugin_manager())
    args = ["--app", "uiapp:wf", "ui", "--port", served["port"]]
    result = aside(lambda: CliRunner().invoke(cli, args))
    assert result.exit_code == 0, result.output
    assert served["app"].state.console.wf.name == "pyapp"
    assert "pipeline 'pyapp'" in result.output
