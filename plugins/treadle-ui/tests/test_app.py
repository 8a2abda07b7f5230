"""The routes in-process (Starlette's TestClient) over a MemoryStateStore."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from treadle_ui.app import create_app
from treadle_ui.command import is_loopback

from treadle_core import (
    Complete,
    CriterionResult,
    Failed,
    Item,
    MemoryStateStore,
    NeedsReview,
    QualityFeedback,
    Rejected,
    RetryBudget,
    StageOutput,
    StageStatus,
    Workflow,
    open_store,
)
from treadle_core.cli import create_cli
from treadle_core.plugins import get_plugin_manager

CSRF = "test-csrf-secret"
BASE = "http://127.0.0.1"


def draft(item: Any, ctx: Any) -> StageOutput:
    if item.data.get("fail"):
        return StageOutput(Failed("no source"))
    return StageOutput(Complete(), artefact=item.data.get("artefact", {"n": 1}))


class Short:
    """A gate that rejects the first attempt, so a review shows two attempts."""

    async def evaluate(self, item: Any, stage: str, output: Any, ctx: Any) -> Any:
        from treadle_core import Accepted

        if ctx.attempt == 1:
            feedback = QualityFeedback("too short", [CriterionResult("min chars", 40, 3, False)])
            return Rejected(feedback)
        return Accepted()


def check(item: Any, ctx: Any) -> StageOutput:
    artefact = ctx.upstream["draft"]
    return StageOutput(NeedsReview(f"Is {item.id} right?", {"stage": "draft"}), artefact=artefact)


def publish(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(Complete(), artefact={"published": ctx.upstream["check"]})


def workflow() -> Workflow:
    return (
        Workflow.builder("app-test")
        .stage("draft", draft)
        .stage("check", check, needs=["draft"])
        .stage("publish", publish, needs=["check"])
        .quality_gate("draft", Short())  # type: ignore[arg-type]
        .retry_budget("draft", RetryBudget(max_attempts=2))
        .build()
    )


ITEMS = [
    Item("a", {}),
    Item("b", {"artefact": "plain words"}),
    Item("c", {"artefact": {"html": "<script>alert(1)</script>"}}),
    Item("md", {"artefact": "# Title\n\n<b>bold?</b> [x](javascript:alert(1))"}),
    Item("bad", {"fail": True}),
]


@pytest.fixture
def wf() -> Workflow:
    return workflow()


@pytest.fixture
def store(wf: Workflow) -> MemoryStateStore:
    s = MemoryStateStore()
    for item in ITEMS:
        s.save_work_item_data(item.id, item.data)
    asyncio.run(wf.run(s, ITEMS))
    return s


def client(wf: Workflow, store: Any, **options: Any) -> TestClient:
    options.setdefault("reviewer", "ada")
    app = create_app(wf, store, csrf_secret=CSRF, **options)
    return TestClient(app, base_url=BASE, follow_redirects=False)


def post(c: TestClient, path: str, **form: Any) -> Any:
    return c.post(path, data={"csrf": CSRF, **form})


def status(store: Any, item: str, stage: str = "check") -> StageStatus:
    return store.get_stage_state(item, stage).status


def test_queue_lists_every_waiting_review_oldest_first_with_counts(
    wf: Workflow, store: Any
) -> None:
    page = client(wf, store).get("/").text
    order = re.findall(r'class="item-link" href="/review\?item=(\w+)', page)
    assert order == [r.item_id for r in wf.pending_reviews(store)] == ["a", "b", "c", "md"]
    assert re.search(r"check <span class=\"count\">4</span>", page)
    assert "no source" in page  # the failed stage, with its error
    assert '<svg class="dag"' in page and "<script" not in page.split("</head>")[1]


def test_queue_filters_by_stage(wf: Workflow, store: Any) -> None:
    page = client(wf, store).get("/?stage=publish").text
    assert "Nothing waits for review" in page and "item-link" not in page


def test_every_form_carries_the_csrf_token(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    for path in ("/", "/review?item=a&stage=check", "/item?item=bad"):
        page = c.get(path).text
        assert 'name="csrf" value=""' not in page
        assert page.count(f'name="csrf" value="{CSRF}"') >= 1


def test_review_page_shows_prompt_artefact_every_attempt_and_history(
    wf: Workflow, store: Any
) -> None:
    page = client(wf, store).get("/review?item=a&stage=check").text
    assert "Is a right?" in page
    assert "Attempts of draft" in page  # the reviewed stage named in the context
    assert "too short" in page and "min chars" in page  # feedback, failed criterion
    assert page.count('class="attempt"') == 3  # 1 of check + 2 of draft
    assert "ReviewRequired" in page  # event history
    assert "1 of 4" in page


def test_artefact_html_is_escaped_and_markdown_never_passes_raw_html(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store)
    page = c.get("/review?item=c&stage=check").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    md = c.get("/review?item=md&stage=check").text
    assert "<h1>Title</h1>" in md
    assert "&lt;b&gt;bold?&lt;/b&gt;" in md and "<b>bold?" not in md
    assert 'href="javascript:' not in md


def test_unknown_item_or_stage_is_a_404(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    assert c.get("/review?item=nope&stage=check").status_code == 404
    assert c.get("/review?item=a&stage=nope").status_code == 404
    assert c.get("/item?item=nope").status_code == 404


def test_approve_records_the_decision_and_opens_the_next_review(wf: Workflow, store: Any) -> None:
    r = post(client(wf, store), "/decide", item="b", stage="check", action="approve", comment="ok")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/review?item=c&stage=check")
    assert status(store, "b") == StageStatus.COMPLETE
    [rec] = store.get_reviews("b", "check")
    assert (rec.decision, rec.reviewer, rec.comment) == ("approve", "ada", "ok")


def test_last_decision_returns_to_the_queue(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    for item in ("a", "b", "c"):
        post(c, "/decide", item=item, stage="check", action="approve")
    r = post(c, "/decide", item="md", stage="check", action="approve")
    assert r.headers["location"].startswith("/?notice=approve")


def test_reject_without_a_reason_is_refused_and_changes_nothing(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = post(c, "/decide", item="a", stage="check", action="reject", reason="  ")
    assert r.status_code == 400 and "needs a reason" in r.text
    assert status(store, "a") == StageStatus.AWAITING_REVIEW
    r = post(c, "/decide", item="a", stage="check", action="reject", reason="wrong")
    assert r.status_code == 303
    assert status(store, "a") == StageStatus.FAILED
    assert store.get_reviews("a", "check")[0].reason == "wrong"


def test_invalid_json_edit_is_refused_with_the_parse_error(wf: Workflow, store: Any) -> None:
    before = store.get_stage_state("a", "check")
    r = post(client(wf, store), "/decide", item="a", stage="check", action="edit", artefact="{x")
    assert r.status_code == 400
    assert "Not valid JSON: Expecting property name enclosed in double quotes" in r.text
    assert "line 1, column 2" in r.text and ">{x</textarea>" in r.text
    assert store.get_stage_state("a", "check") == before
    assert store.get_reviews("a", "check") == []


def test_edit_approves_with_the_edited_artefact_for_dependents(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = post(c, "/decide", item="a", stage="check", action="edit", artefact='{"n": 2}', note="n")
    assert r.status_code == 303
    r = post(c, "/decide", item="b", stage="check", action="edit", artefact="new", mode="text")
    assert r.status_code == 303
    asyncio.run(wf.run(store, [ITEMS[0], ITEMS[1]]))
    assert store.get_stage_state("a", "publish").artefact == {"published": {"n": 2}}
    assert store.get_stage_state("b", "publish").artefact == {"published": "new"}
    assert store.get_reviews("a", "check")[0].note == "n"


def test_post_without_csrf_token_is_refused(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    for form in ({}, {"csrf": "guess"}):
        r = c.post("/decide", data={"item": "a", "stage": "check", "action": "approve", **form})
        assert r.status_code == 403
    assert status(store, "a") == StageStatus.AWAITING_REVIEW
    r = c.post(
        "/decide",
        data={"item": "a", "stage": "check", "action": "approve"},
        headers={"X-CSRF-Token": CSRF},
    )
    assert r.status_code == 303


def test_a_decision_needs_a_name_which_the_page_asks_for(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer=None)
    assert 'id="login"' in c.get("/").text
    r = post(c, "/decide", item="a", stage="check", action="approve")
    assert r.status_code == 400 and "Enter your name" in r.text
    assert status(store, "a") == StageStatus.AWAITING_REVIEW
    r = post(c, "/reviewer", reviewer="Grace Hopper", back="/review?item=a&stage=check")
    assert r.headers["location"] == "/review?item=a&stage=check"
    assert "Reviewing as <strong>Grace Hopper</strong>" in c.get("/").text
    post(c, "/decide", item="a", stage="check", action="approve")
    assert store.get_reviews("a", "check")[0].reviewer == "Grace Hopper"


def test_reviewer_redirect_stays_on_this_site(wf: Workflow, store: Any) -> None:
    r = post(client(wf, store), "/reviewer", reviewer="x", back="//evil.example/")
    assert r.headers["location"] == "/"


def test_bulk_approve_decides_the_selected_reviews(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    targets = [json.dumps(["a", "check"]), json.dumps(["c", "check"])]
    r = c.post("/bulk", data={"csrf": CSRF, "target": targets, "comment": "batch"})
    assert r.status_code == 303 and "count=2" in r.headers["location"]
    assert status(store, "a") == status(store, "c") == StageStatus.COMPLETE
    assert status(store, "b") == StageStatus.AWAITING_REVIEW
    # Decided meanwhile: skipped, not an error.
    r = c.post("/bulk", data={"csrf": CSRF, "target": targets})
    assert "count=0" in r.headers["location"] and "skipped=2" in r.headers["location"]


def test_retry_puts_a_failed_stage_back_to_pending(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = post(c, "/retry", item="bad", stage="draft")
    assert r.status_code == 303 and "notice=retried" in r.headers["location"]
    assert status(store, "bad", "draft") == StageStatus.PENDING
    r = post(c, "/retry", item="a", stage="draft")  # complete: not retryable
    assert "notice=retry_failed" in r.headers["location"]


def test_live_overview_returns_every_part(wf: Workflow, store: Any) -> None:
    page = client(wf, store).get("/live/overview").text
    for part in ("tiles", "queue", "pipeline", "failed"):
        assert f'data-part="{part}"' in page
    assert "<html" not in page


def test_token_is_required_by_every_request_when_configured(wf: Workflow, store: Any) -> None:
    c = client(wf, store, token="s3cret", loopback_only=False)
    assert c.get("/").status_code == 401
    assert c.get("/static/ui.css").status_code == 401
    assert c.get("/", headers={"X-Treadle-Token": "nope"}).status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.get("/?token=s3cret&stage=check")
    assert r.status_code == 303 and r.headers["location"] == "/?stage=check"
    assert "treadle_ui_token" in r.headers["set-cookie"]
    assert c.get("/").status_code == 200  # the cookie carries it now


def test_loopback_console_refuses_foreign_host_headers(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 400
    assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_pages_forbid_inline_scripts_and_framing(wf: Workflow, store: Any) -> None:
    r = client(wf, store).get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_is_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.org"]))


def test_ui_on_a_non_loopback_host_without_token_exits_with_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TREADLE_UI_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(create_cli(get_plugin_manager()), ["ui", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--host 0.0.0.0 is reachable from other machines: give --token" in result.output


def test_ui_on_a_busy_port_is_one_line_before_any_url(tmp_path: Any) -> None:
    import socket

    (tmp_path / "treadle.toml").write_text('[stages.x]\nuses = "review"\n')
    cli = create_cli(get_plugin_manager())
    assert CliRunner().invoke(cli, ["--store", f"sqlite:///{tmp_path}/s.db", "add", "--id", "a"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            result = CliRunner().invoke(
                cli, ["ui", "--port", str(port), "--store", f"sqlite:///{tmp_path}/s.db"]
            )
        finally:
            os.chdir(old)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: 127.0.0.1:{port} is in use (another treadle ui?); pick another --port\n"
    )


def test_the_plugin_registers_the_ui_command() -> None:
    assert "ui" in create_cli(get_plugin_manager()).commands


PG_ADMIN_URL = os.environ.get("TREADLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (skipped when no server answers, failed under CI=true)."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    parts = urlsplit(PG_ADMIN_URL)
    name = f"treadle_ui_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(
            host=parts.hostname,
            port=parts.port or 5432,
            user=parts.username or "postgres",
            password=parts.password,
            dbname="postgres",
            connect_timeout=3,
        )
    except psycopg2.OperationalError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_console_decides_reviews_on_postgresql(wf: Workflow, pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        for item in ITEMS:
            store.save_work_item_data(item.id, item.data)
        asyncio.run(wf.run(store, ITEMS))
        c = client(wf, store)
        assert "Is a right?" in c.get("/review?item=a&stage=check").text
        assert post(c, "/decide", item="a", stage="check", action="approve").status_code == 303
        r = post(c, "/decide", item="b", stage="check", action="edit", artefact="[1]")
        assert r.status_code == 303
        assert status(store, "a") == status(store, "b") == StageStatus.COMPLETE
        assert store.get_reviews("a", "check")[0].reviewer == "ada"
        assert 'data-part="queue"' in c.get("/live/overview").text
    finally:
        store.close()
