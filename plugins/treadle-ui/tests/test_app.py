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

SECRET = "test-secret-" + "x" * 32
BASE = "http://127.0.0.1"


def draft(item: Any, ctx: Any) -> StageOutput:
    if item.data.get("fail"):
        return StageOutput(Failed("no source"))
    return StageOutput(Complete(), artefact=item.data.get("artefact", {"n": 1}))


class Short:
    """A gate that rejects a stage's first attempt (so a review shows two attempts) and
    anything that still says TODO (an edit too)."""

    async def evaluate(self, item: Any, stage: str, output: Any, ctx: Any) -> Any:
        from treadle_core import Accepted

        if not ctx.previous_attempts:
            feedback = QualityFeedback("too short", [CriterionResult("min chars", 40, 3, False)])
            return Rejected(feedback)
        if "TODO" in json.dumps(output.artefact):
            return Rejected(QualityFeedback("it still says TODO"))
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


def make_store(wf: Workflow, items: list[Item] = ITEMS) -> MemoryStateStore:
    s = MemoryStateStore()
    for item in items:
        s.save_work_item_data(item.id, item.data)
    asyncio.run(wf.run(s, items))
    return s


@pytest.fixture
def store(wf: Workflow) -> MemoryStateStore:
    return make_store(wf)


def client(wf: Workflow, store: Any, **options: Any) -> TestClient:
    options.setdefault("reviewer", "ada")
    options.setdefault("secret", SECRET)
    app = create_app(wf, store, **options)
    return TestClient(app, base_url=BASE, follow_redirects=False)


def csrf(c: TestClient, path: str = "/") -> str:
    """The CSRF token of this client's session, as its pages carry it."""
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', c.get(path).text)
    assert match, "no CSRF token in the page"
    return match.group(1)


def post(c: TestClient, path: str, **form: Any) -> Any:
    return c.post(path, data={"csrf": csrf(c), **form})


def hidden_fields(page: str, form_id: str) -> dict[str, str]:
    """The hidden inputs of one form of a page, as the browser would send them."""
    from html import unescape

    body = page.split(f'id="{form_id}"', 1)[1].split("</form>", 1)[0]
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)
    return {name: unescape(value) for name, value in found}


def decide(c: TestClient, item: str, stage: str = "check", query: str = "", **form: Any) -> Any:
    """Open the review page and send its decision form with ``form`` filled in."""
    page = c.get(f"/review?item={item}&stage={stage}{query}").text
    return c.post("/decide", data={**hidden_fields(page, "decide"), **form})


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
    token = csrf(c)
    for path in ("/", "/review?item=a&stage=check", "/item?item=bad"):
        page = c.get(path).text
        assert 'name="csrf" value=""' not in page
        assert page.count('method="post"') == page.count(f'name="csrf" value="{token}"') >= 1


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
    r = decide(client(wf, store), "b", action="approve", comment="ok")
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
        headers={"X-CSRF-Token": csrf(c)},
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
    r = c.post("/bulk", data={"csrf": csrf(c), "target": targets, "comment": "batch"})
    assert r.status_code == 303 and "count=2" in r.headers["location"]
    assert status(store, "a") == status(store, "c") == StageStatus.COMPLETE
    assert status(store, "b") == StageStatus.AWAITING_REVIEW
    # Decided meanwhile: skipped, not an error.
    r = c.post("/bulk", data={"csrf": csrf(c), "target": targets})
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
    assert "--host 0.0.0.0 is reachable from other machines: give --users FILE" in result.output
    assert "or --token SECRET" in result.output


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


# --- many reviews: pages, search, bounded reads --------------------------------------


def one_review(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(NeedsReview(f"Does {item.data['topic']} read well?"), artefact=item.data)


def many(n: int) -> tuple[Workflow, MemoryStateStore]:
    wf = Workflow.builder("many").stage("read", one_review).build()
    topics = ["tides", "bridges", "budgets", "orchards"]
    items = [Item(f"doc-{i:04d}", {"topic": topics[i % 4]}) for i in range(n)]
    return wf, make_store(wf, items)


def count_limits(wf: Workflow) -> list[int | None]:
    """Record the ``limit`` of every ``wf.pending_reviews`` call the console makes."""
    limits: list[int | None] = []
    real = wf.pending_reviews

    def pending_reviews(
        store: Any, stage: str | None = None, *, limit: int | None = None, **kw: Any
    ) -> Any:
        limits.append(limit)
        return real(store, stage, limit=limit, **kw)

    wf.pending_reviews = pending_reviews  # type: ignore[method-assign]
    return limits


def items_on(page: str) -> list[str]:
    return re.findall(r'class="item-link" href="/review\?item=([\w-]+)', page)


def test_the_queue_shows_one_page_and_counts_every_waiting_review() -> None:
    wf, store = many(130)
    c = client(wf, store, page_size=50)
    first = c.get("/").text
    assert items_on(first) == [f"doc-{i:04d}" for i in range(50)]
    assert "1\u201350 of 130 waiting" in first and "page 1 of 3" in first
    third = c.get("/?page=3").text
    assert items_on(third) == [f"doc-{i:04d}" for i in range(100, 130)]
    assert "101\u2013130 of 130 waiting" in third
    assert items_on(c.get("/?page=99").text) == items_on(third)  # past the end: the last page


def test_the_queue_never_asks_the_store_for_every_waiting_review() -> None:
    wf, store = many(130)
    limits = count_limits(wf)
    c = client(wf, store, page_size=20)
    for path in (
        "/",
        "/?page=2",
        "/live/overview",
        "/?q=tides",
        "/review?item=doc-0003&stage=read",
    ):
        assert c.get(path).status_code == 200
    decide(c, "doc-0003", "read", action="approve")
    assert limits and None not in limits
    assert max(limits) <= 5000  # a search reads at most its window
    assert max(x for x in limits if x is not None and x < 5000) <= 40  # pages: what shows


def test_search_finds_reviews_by_item_id_question_or_stage() -> None:
    wf, store = many(130)
    c = client(wf, store, page_size=50)
    assert items_on(c.get("/?q=doc-012").text) == [f"doc-{i:04d}" for i in range(120, 130)]
    by_prompt = c.get("/?q=ORCHARDS").text  # the question, any case
    assert items_on(by_prompt)[:3] == ["doc-0003", "doc-0007", "doc-0011"]
    assert "1\u201332 of 32 matching" in by_prompt
    assert len(items_on(c.get("/?q=read").text)) == 50  # the stage's name
    none = c.get("/?q=<b>volcano</b>").text
    assert "No waiting review matches <strong>&lt;b&gt;volcano&lt;/b&gt;</strong>" in none


def test_a_review_opened_from_a_search_moves_within_its_results() -> None:
    wf, store = many(40)
    c = client(wf, store)
    page = c.get("/?q=bridges").text
    first = re.search(r'class="item-link" href="([^"]+)"', page)
    assert first
    review = c.get(first.group(1).replace("&amp;", "&")).text
    assert "result 1" in review
    nxt = re.search(r'id="next-review" href="([^"]+)"', review)
    assert nxt and "item=doc-0005" in nxt.group(1) and "q=bridges" in nxt.group(1)
    r = decide(c, "doc-0001", "read", "&q=bridges", action="approve")
    assert r.headers["location"].startswith("/review?item=doc-0005&stage=read&q=bridges")


def test_after_a_decision_deep_in_the_queue_the_next_review_opens() -> None:
    wf, store = many(130)
    c = client(wf, store, page_size=50)
    r = decide(c, "doc-0101", "read", "&at=101", action="approve")
    assert r.headers["location"].startswith("/review?item=doc-0102&stage=read&at=101")
    page = c.get(r.headers["location"]).text
    assert "102 of 129" in page  # its place in the queue, from the counts


# --- a form posted twice is acted on once --------------------------------------------


def test_a_decision_form_sent_twice_is_acted_on_once(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    fields = hidden_fields(c.get("/review?item=a&stage=check").text, "decide")
    first = c.post("/decide", data={**fields, "action": "approve"})
    second = c.post("/decide", data={**fields, "action": "approve"})
    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == first.headers["location"]  # not "conflict"
    assert len(store.get_reviews("a", "check")) == 1


def test_concurrent_copies_of_one_form_decide_once(wf: Workflow, store: Any) -> None:
    import httpx

    app = create_app(wf, store, reviewer="ada", secret=SECRET)

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as ac:
            page = (await ac.get("/review?item=b&stage=check")).text
            fields = {**hidden_fields(page, "decide"), "action": "reject", "reason": "dup"}
            return list(await asyncio.gather(*(ac.post("/decide", data=fields) for _ in range(5))))

    answers = asyncio.run(go())
    assert {r.status_code for r in answers} == {303}
    assert len({r.headers["location"] for r in answers}) == 1
    assert "conflict" not in answers[0].headers["location"]
    assert [r.decision for r in store.get_reviews("b", "check")] == ["reject"]


def test_a_refused_form_can_be_corrected_and_sent_with_the_same_key(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store)
    fields = hidden_fields(c.get("/review?item=a&stage=check").text, "decide")
    assert c.post("/decide", data={**fields, "action": "reject"}).status_code == 400
    r = c.post("/decide", data={**fields, "action": "reject", "reason": "off topic"})
    assert r.status_code == 303
    assert status(store, "a") == StageStatus.FAILED


# --- bulk reject ---------------------------------------------------------------------


def test_bulk_reject_needs_one_reason_and_keeps_the_selection_when_it_is_missing(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store)
    fields = hidden_fields(c.get("/").text, "bulk")
    targets = [json.dumps(["a", "check"]), json.dumps(["c", "check"])]
    r = c.post("/bulk", data={**fields, "target": targets, "action": "reject", "reason": " "})
    assert r.status_code == 400
    assert "Rejecting needs a reason" in r.text
    assert r.text.count(" checked>") == 2  # the selection is still there
    assert status(store, "a") == status(store, "c") == StageStatus.AWAITING_REVIEW
    r = c.post(
        "/bulk", data={**fields, "target": targets, "action": "reject", "reason": "duplicates"}
    )
    assert r.status_code == 303 and "notice=bulk_reject" in r.headers["location"]
    assert "count=2" in r.headers["location"]
    for item in ("a", "c"):
        [rec] = store.get_reviews(item, "check")
        assert (rec.decision, rec.reason, rec.reviewer) == ("reject", "duplicates", "ada")
    assert status(store, "b") == StageStatus.AWAITING_REVIEW
    again = c.post(
        "/bulk", data={**fields, "target": targets, "action": "reject", "reason": "duplicates"}
    )
    assert again.headers["location"] == r.headers["location"]  # the same answer, not "skipped"


# --- the review page: what came before ------------------------------------------------


def sources(item: Any, ctx: Any) -> Any:
    from treadle_core import FanOut, SubTask

    if ctx.subtask is None:
        return FanOut([SubTask("wire"), SubTask("archive"), SubTask("blog")])
    if ctx.subtask == "archive" and ctx.attempt == 1:
        raise ConnectionError("archive refused the connection")
    if ctx.subtask == "blog":
        return StageOutput(Failed("blog is gone: 410"))
    return StageOutput(Complete(), artefact={"source": ctx.subtask, "year": 2021})


def summary(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(Complete(), artefact={"summary": "x" * 300, "sources": ctx.upstream})


def ask(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(NeedsReview("Publish?"), artefact=ctx.upstream["summary"])


def fan_workflow() -> Workflow:
    from treadle_core import ExhaustedAction

    return (
        Workflow.builder("fan")
        .stage("meta", lambda item, ctx: StageOutput(Complete(), artefact={"lang": "en"}))
        .stage("sources", sources)
        .retry_budget("sources", RetryBudget(max_attempts=2, on_exhausted=ExhaustedAction.ESCALATE))
        .stage("ask", ask, needs=["meta"])
        .build()
    )


def test_review_page_shows_every_done_upstream_stage_and_its_artefact() -> None:
    wf = (
        Workflow.builder("chain")
        .stage("fetch", lambda item, ctx: StageOutput(Complete(), artefact={"raw": "<i>r</i>"}))
        .stage("summary", summary, needs=["fetch"])
        .stage("meta", lambda item, ctx: StageOutput(Complete(), artefact={"lang": "en"}))
        .stage("ask", ask, needs=["summary", "meta"])
        .build()
    )
    store = make_store(wf, [Item("n1", {})])
    page = client(wf, store).get("/review?item=n1&stage=ask").text
    upstream = page.split('id="upstream"', 1)[1].split("</section>", 1)[0]
    shown = re.findall(r'<details class="upstream"( open)? data-stage="(\w+)">', upstream)
    assert sorted(shown[:2]) == [("", "summary"), (" open", "meta")]  # direct inputs first
    assert shown[2:] == [("", "fetch")]  # then the rest, folded
    assert "the artefact under review" in upstream.split('data-stage="summary"')[1]
    assert "&lt;i&gt;r&lt;/i&gt;" in upstream and "<i>r</i>" not in upstream
    assert "x" * 300 in upstream  # long values whole: wrapped by the page, never cut


def test_review_page_shows_each_subtask_with_status_attempts_result_and_error() -> None:
    wf = fan_workflow()
    store = make_store(wf, [Item("f1", {})])
    st = store.get_stage_state("f1", "sources")
    assert st.status == StageStatus.AWAITING_REVIEW  # escalated: blog failed
    page = client(wf, store).get("/review?item=f1&stage=sources").text
    subtasks = page.split('id="subtasks"', 1)[1].split("</section>", 1)[0]
    rows = dict(re.findall(r'data-subtask="(\w+)">(.*?)</tr>', subtasks, re.S))
    assert list(rows) == ["wire", "archive", "blog"]
    assert "s-complete" in rows["wire"] and "&#34;year&#34;: 2021" in rows["wire"]
    assert '<td class="num">2</td>' in rows["archive"]  # two attempts
    assert "archive refused the connection" in rows["archive"]  # the first one's error
    assert "s-failed" in rows["blog"] and "blog is gone: 410" in rows["blog"]
    assert "2 complete · 1 failed" in page
