"""The console in Chromium against a real `treadle ui` process and a real SQLite store."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import UiServer, make_pipeline, treadle

from treadle_core import StageStatus

pytestmark = pytest.mark.browser


def review_url(server: UiServer, item: str, stage: str = "review") -> str:
    return f"{server.url}/review?" + urllib.parse.urlencode({"item": item, "stage": stage})


def item_of(url: str) -> str | None:
    """The review a URL opens (its ``item`` parameter)."""
    return urllib.parse.parse_qs(urllib.parse.urlparse(url).query).get("item", [None])[0]


def status_of(store: Any, item: str, stage: str = "review") -> StageStatus:
    return store.get_stage_state(item, stage).status


def test_approve_records_reviewer_and_comment_then_opens_the_next_review(
    page: Any, server: UiServer, store: Any
) -> None:
    page.goto(review_url(server, "approve-1"))
    page.fill("#comment", "looks right")
    page.click("#approve-btn")
    page.wait_for_url("**/review?item=*")
    assert item_of(page.url) not in (None, "approve-1")  # the next review opened
    assert "Approved approve-1 / review" in page.inner_text(".notice")
    assert status_of(store, "approve-1") == StageStatus.COMPLETE
    [record] = store.get_reviews("approve-1", "review")
    assert record.decision == "approve"
    assert (record.reviewer, record.comment) == ("tester", "looks right")


def test_reject_needs_a_reason_and_records_it(page: Any, server: UiServer, store: Any) -> None:
    page.goto(review_url(server, "reject-1"))
    page.click("#reject-btn")  # no reason yet: refused in the page
    assert page.url.endswith("item=reject-1&stage=review")
    assert page.get_attribute("#reason", "aria-invalid") == "true"
    assert status_of(store, "reject-1") == StageStatus.AWAITING_REVIEW
    page.fill("#reason", "wrong title")
    page.press("#reason", "Enter")
    page.wait_for_selector(".notice-warn")
    assert status_of(store, "reject-1") == StageStatus.FAILED
    [record] = store.get_reviews("reject-1", "review")
    assert (record.decision, record.reason, record.reviewer) == ("reject", "wrong title", "tester")


def test_edited_artefact_is_approved_and_reaches_the_downstream_stage(
    page: Any, server: UiServer, store: Any, pipeline_dir: Path
) -> None:
    page.goto(review_url(server, "edit-1"))
    page.click("#editor summary")
    page.fill("#artefact-edit", '{"title": "final", "words": 5}')
    page.fill("#note", "better title")
    page.click("#edit-btn")
    page.wait_for_selector(".notice-ok")
    assert status_of(store, "edit-1") == StageStatus.COMPLETE
    [record] = store.get_reviews("edit-1", "review")
    assert record.decision == "approve_with_edits"
    assert record.edited_artefact == {"title": "final", "words": 5}
    treadle(pipeline_dir, "run", "--item", "edit-1")
    publish = store.get_stage_state("edit-1", "publish")
    assert publish.status == StageStatus.COMPLETE
    assert publish.artefact == {"published": {"title": "final", "words": 5}}


def test_invalid_json_edit_is_refused_with_the_parse_error_and_nothing_saved(
    page: Any, server: UiServer, store: Any
) -> None:
    before = store.get_stage_state("badjson-1", "review")
    page.goto(review_url(server, "badjson-1"))
    page.keyboard.press("e")
    page.fill("#artefact-edit", '{"title": "oops",')
    page.click("#edit-btn")
    error = page.inner_text("#decision-error")
    assert "Not valid JSON" in error and "line 1" in error
    assert page.input_value("#artefact-edit") == '{"title": "oops",'  # the text is kept to fix
    assert page.get_attribute("#artefact-edit", "aria-invalid") == "true"
    assert store.get_stage_state("badjson-1", "review") == before
    assert store.get_reviews("badjson-1", "review") == []


@pytest.mark.parametrize("item", ["xss-md", "xss-json"])
def test_script_in_an_artefact_is_shown_as_text_and_never_runs(
    page: Any, server: UiServer, item: str
) -> None:
    page.goto(review_url(server, item))
    page.wait_for_timeout(300)
    assert page.dialogs == []
    shown = page.inner_text("#artefact-view")
    assert "<script>alert(" in shown
    assert page.locator("#artefact-view script").count() == 0
    assert page.locator("#artefact-view img").count() == 0
    if item == "xss-md":
        assert page.locator("#artefact-view h1").inner_text() == "Heading"  # markdown rendered


def test_keyboard_shortcuts_move_edit_reject_and_approve(
    page: Any, server: UiServer, store: Any
) -> None:
    page.goto(review_url(server, "kbd-1"))
    page.keyboard.press("j")
    page.wait_for_url(lambda url: item_of(url) != "kbd-1")
    page.keyboard.press("k")
    page.wait_for_url(lambda url: item_of(url) == "kbd-1")
    page.keyboard.press("e")
    assert page.evaluate("document.activeElement.id") == "artefact-edit"
    page.keyboard.press("Escape")
    page.keyboard.press("a")
    page.wait_for_url(lambda url: item_of(url) != "kbd-1")
    assert status_of(store, "kbd-1") == StageStatus.COMPLETE

    page.goto(review_url(server, "kbd-2"))
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.id") == "reason"
    page.keyboard.type("not ready")
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: item_of(url) != "kbd-2")
    assert status_of(store, "kbd-2") == StageStatus.FAILED

    page.goto(server.url + "/")
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.className") == "item-link"
    page.keyboard.press("x")
    assert page.inner_text("#sel-count") == "1"


def test_bulk_approve_decides_only_the_selected_reviews(
    page: Any, server: UiServer, store: Any
) -> None:
    page.goto(server.url + "/?stage=review")
    for item in ("bulk-1", "bulk-2"):
        page.check(f'input[name="target"][value={json.dumps(json.dumps([item, "review"]))}]')
    assert page.inner_text("#sel-count") == "2"
    page.fill("#bulk-comment", "batch ok")
    page.click("#bulk-approve")
    assert "Approved 2 review(s)" in page.inner_text(".notice")
    assert status_of(store, "bulk-1") == status_of(store, "bulk-2") == StageStatus.COMPLETE
    assert status_of(store, "bulk-3") == StageStatus.AWAITING_REVIEW
    assert store.get_reviews("bulk-2", "review")[0].comment == "batch ok"


def test_post_without_the_csrf_token_is_refused(page: Any, server: UiServer, store: Any) -> None:
    page.goto(server.url + "/")
    response = page.request.post(
        server.url + "/decide",
        form={"item": "csrf-1", "stage": "review", "action": "approve"},
        max_redirects=0,
    )
    assert response.status == 403
    assert status_of(store, "csrf-1") == StageStatus.AWAITING_REVIEW


def test_queue_follows_decisions_made_elsewhere_without_a_reload(
    page: Any, server: UiServer, pipeline_dir: Path
) -> None:
    page.goto(server.url + "/")
    row = page.locator(".queue a.item-link", has_text="live-1")
    assert row.count() == 1
    page.evaluate("window.__sameDocument = true")
    treadle(pipeline_dir, "review", "approve", "live-1", "review", "--reviewer", "cli")
    row.wait_for(state="detached", timeout=5000)
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place, not reloaded


def test_failed_stage_can_be_retried_from_the_queue_page(
    page: Any, server: UiServer, store: Any
) -> None:
    page.goto(server.url + "/")
    entry = page.locator(".failed-list li", has_text="fail-1")
    assert "the source was empty" in entry.inner_text()
    entry.locator("button", has_text="Retry").click()
    assert "fail-1 / draft is pending again" in page.inner_text(".notice")
    assert status_of(store, "fail-1", "draft") == StageStatus.PENDING


def test_non_loopback_bind_needs_the_token_and_asks_for_a_name(
    browser: Any, tmp_path: Path
) -> None:
    root = make_pipeline(tmp_path / "p", [{"id": "tok-1"}])
    ui = UiServer(root, "--token", "s3cret-token", host="0.0.0.0")
    try:
        for headers in ({}, {"X-Treadle-Token": "wrong"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(ui.url + "/", headers=headers))
            assert refused.value.code == 401
        ok = urllib.request.urlopen(
            urllib.request.Request(ui.url + "/", headers={"X-Treadle-Token": "s3cret-token"})
        )
        assert ok.status == 200

        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        assert page.goto(ui.url + "/").status == 401
        assert page.goto(ui.url + "/?token=s3cret-token").status == 200
        assert page.url == ui.url + "/"  # the token went into a cookie, out of the address bar
        assert page.goto(review_url(ui, "tok-1")).status == 200
        page.click("#approve-btn")  # no name yet: refused
        assert "Enter your name" in page.inner_text("#decision-error")
        page.fill("#reviewer-name", "Grace")
        page.click("#login button")
        page.click("#approve-btn")
        page.wait_for_selector(".notice-ok")
        context.close()
    finally:
        ui.stop()
    from treadle_core import open_store

    s = open_store(f"sqlite:///{root / '.treadle' / 'state.db'}")
    try:
        assert [r.reviewer for r in s.get_reviews("tok-1", "review")] == ["Grace"]
    finally:
        s.close()


# --- issue 12: people in the loop, version 2 (the console part) ----------------------


def test_a_second_key_press_or_click_never_posts_twice(
    page: Any, server: UiServer, store: Any
) -> None:
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(review_url(server, "once-1"))
    page.keyboard.press("a")
    page.keyboard.press("a")
    page.wait_for_url(lambda url: item_of(url) != "once-1")
    assert posts == [server.url + "/decide"]
    assert [r.decision for r in store.get_reviews("once-1", "review")] == ["approve"]

    posts.clear()
    page.goto(review_url(server, "once-2"))
    page.fill("#reason", "duplicate")
    page.dblclick("#reject-btn")
    page.wait_for_url(lambda url: item_of(url) != "once-2")
    assert posts == [server.url + "/decide"]
    assert [r.reason for r in store.get_reviews("once-2", "review")] == ["duplicate"]


def test_the_server_acts_once_on_a_form_sent_twice(page: Any, server: UiServer, store: Any) -> None:
    """Without the page's guard (a script, a resent request), the server's key still holds."""
    page.goto(review_url(server, "csrf-1"))
    fields = page.eval_on_selector(
        "#decide",
        "f => Object.fromEntries([...new FormData(f)].filter(([k]) => k !== 'artefact'))",
    )
    fields["action"] = "approve"
    answers = [
        page.request.post(server.url + "/decide", form=fields, max_redirects=0) for _ in range(2)
    ]
    assert [a.status for a in answers] == [303, 303]
    assert answers[0].headers["location"] == answers[1].headers["location"]
    assert "conflict" not in answers[1].headers["location"]
    assert len(store.get_reviews("csrf-1", "review")) == 1


def test_bulk_reject_asks_for_one_reason_then_rejects_every_selected_review(
    page: Any, server: UiServer, store: Any
) -> None:
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(server.url + "/?q=bulkrej")
    for item in ("bulkrej-1", "bulkrej-3"):
        page.check(f'input[name="target"][value={json.dumps(json.dumps([item, "review"]))}]')
    page.click("#bulk-reject")  # no reason yet: the page refuses, nothing is sent
    assert posts == []
    assert page.get_attribute("#bulk-reason", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "bulk-reason"
    page.fill("#bulk-reason", "out of scope")
    page.dblclick("#bulk-reject")
    page.wait_for_selector(".notice-warn")
    assert "Rejected 2 review(s)." in page.inner_text(".notice")
    assert posts == [server.url + "/bulk"]
    for item in ("bulkrej-1", "bulkrej-3"):
        [record] = store.get_reviews(item, "review")
        assert (record.decision, record.reason, record.reviewer) == (
            "reject",
            "out of scope",
            "tester",
        )
    assert status_of(store, "bulkrej-2") == StageStatus.AWAITING_REVIEW


OVERFLOW = """() => {
  const wide = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth) wide.push(`page ${doc.scrollWidth} > ${doc.clientWidth}`);
  for (const el of document.querySelectorAll("main *")) {
    if (el.closest(".sr-only") || !el.getClientRects().length) continue;
    const r = el.getBoundingClientRect();
    const name = `${el.tagName}.${el.className}#${el.id || el.name || ""}@${location.pathname}`;
    if (r.right > doc.clientWidth + 0.5) wide.push(`${name} ends at ${r.right}`);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible")
      wide.push(`${name} scrolls ${el.scrollWidth} > ${el.clientWidth}`);
  }
  return wide.slice(0, 10);
}"""


@pytest.mark.parametrize("width", [375, 800, 1440])
def test_long_values_wrap_and_nothing_overflows_sideways(
    browser: Any, server: UiServer, width: int
) -> None:
    from conftest import LONG_ARTEFACT, LONG_ID

    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(review_url(server, LONG_ID))
        page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
        assert page.evaluate(OVERFLOW) == []
        shown = page.inner_text("#artefact-view")
        assert LONG_ARTEFACT["url"] in shown.replace("\n", "")  # wrapped, whole, not clipped
        box = page.locator("#artefact-view").bounding_box()
        assert box["height"] > 300  # the long values take lines, not a sideways scroll
        archive = page.locator('#upstream tr[data-subtask="archive"]')
        assert "refused: eeee" in archive.inner_text()  # the first attempt's error
        page.goto(server.url + "/?q=long-")
        assert page.locator(".queue .item-link").count() == 1
        assert page.evaluate(OVERFLOW) == []
    finally:
        context.close()


def test_review_page_shows_upstream_artefacts_and_subtask_results(
    page: Any, server: UiServer
) -> None:
    from conftest import LONG_ID

    page.goto(review_url(server, LONG_ID))
    upstream = page.locator("#upstream details.upstream")
    assert [upstream.nth(i).get_attribute("data-stage") for i in range(upstream.count())] == [
        "draft",
        "sources",
    ]
    rows = page.locator('#upstream tr.subtask[data-subtask="archive"]')
    assert "complete" in rows.inner_text() and rows.locator("td.num").inner_text() == "2"
    rows.locator("summary", has_text="2 attempts").click()
    assert rows.locator("article.attempt").count() == 2


def test_dag_edges_go_around_the_boxes_as_drawn(page: Any, server: UiServer) -> None:
    page.goto(server.url + "/")
    crossings = page.evaluate(
        """() => {
      const boxes = [...document.querySelectorAll("svg.dag a.node")].map(n => ({
        name: n.querySelector("title").textContent.split(":")[0],
        box: n.querySelector("rect").getBBox(),
      }));
      const bad = [];
      for (const edge of document.querySelectorAll("svg.dag path.edge")) {
        const [from, to] = edge.querySelector("title").textContent.split(" → ");
        const length = edge.getTotalLength();
        for (let i = 0; i <= 200; i++) {
          const p = edge.getPointAtLength(length * i / 200);
          for (const {name, box} of boxes) {
            if (name === from || name === to) continue;
            if (p.x > box.x && p.x < box.x + box.width && p.y > box.y && p.y < box.y + box.height)
              bad.push(`${from} → ${to} through ${name}`);
          }
        }
      }
      return [...new Set(bad)];
    }"""
    )
    assert crossings == []
    assert page.locator("svg.dag path.edge").count() == 4  # draft -> publish skips review


def test_search_and_pages_over_thousands_of_waiting_reviews(browser: Any, tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    (root / "treadle.toml").write_text(
        '[pipeline]\nname = "many"\n\n[stages.check]\nuses = "review"\n'
        'prompt = "Is {item.id} about {item.data[topic]}?"\n'
    )
    topics = ["tides", "bridges", "orchards"]
    (root / "items.jsonl").write_text(
        "".join(
            json.dumps({"id": f"doc-{i:05d}", "data": {"topic": topics[i % 3]}}) + "\n"
            for i in range(3000)
        )
    )
    treadle(root, "add", "items.jsonl")
    treadle(root, "run")
    ui = UiServer(root, "--reviewer", "tester")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(ui.url + "/")
        assert page.locator(".queue .item-link").count() == 50
        assert "1\u201350 of 3,000 waiting" in page.inner_text("#queue-range")
        page.click("#next-page")
        assert "51\u2013100 of 3,000 waiting" in page.inner_text("#queue-range")
        assert page.locator(".queue .item-link").first.inner_text() == "doc-00050"
        page.keyboard.press("/")
        page.keyboard.type("doc-0299")
        page.keyboard.press("Enter")
        page.wait_for_url("**q=doc-0299*")
        links = page.locator(".queue .item-link")
        assert [links.nth(i).inner_text() for i in range(links.count())] == [
            f"doc-0299{i}" for i in range(10)
        ]
        page.fill("#q", "about orchards")  # the question's text
        page.press("#q", "Enter")
        page.wait_for_url("**q=about+orchards*")
        assert "1\u201350 of 1,000 matching" in page.inner_text("#queue-range")
        links.first.click()
        page.wait_for_url("**/review?*")
        assert "doc-00002" in page.inner_text("h1")
        page.keyboard.press("j")
        page.wait_for_url(lambda url: item_of(url) == "doc-00005")  # the next match
    finally:
        context.close()
        ui.stop()


def test_reviewers_sign_in_with_their_own_tokens(browser: Any, tmp_path: Path) -> None:
    root = make_pipeline(tmp_path / "p", [{"id": "who-1"}, {"id": "who-2"}])
    token = treadle(root, "ui", "users", "add", "ada", "--file", "reviewers.json").stdout.strip()
    ui = UiServer(root, "--users", "reviewers.json", "--reviewer", "mallory")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(review_url(ui, "who-1"))
        assert page.url.startswith(ui.url + "/signin?next=")
        page.fill("#signin-name", "ada")
        page.fill("#signin-token", token + "x")
        page.click("#signin-btn")
        assert "That name and token do not match." in page.inner_text("#signin-error")
        page.fill("#signin-token", token)
        page.click("#signin-btn")
        page.wait_for_url(review_url(ui, "who-1"))  # back where they were going
        assert page.inner_text("#signed-in-as") == "ada"
        assert page.locator("#reviewer-name").count() == 0  # no name to type or change
        page.click("#approve-btn")
        page.wait_for_selector(".notice-ok")
        page.click(".signed-in button")
        page.wait_for_url("**/signin")
        assert page.goto(review_url(ui, "who-2")).url.startswith(ui.url + "/signin")
    finally:
        context.close()
        ui.stop()
    from treadle_core import open_store

    s = open_store(f"sqlite:///{root / '.treadle' / 'state.db'}")
    try:
        assert [r.reviewer for r in s.get_reviews("who-1", "review")] == ["ada"]
        assert s.get_reviews("who-2", "review") == []
    finally:
        s.close()


def test_a_page_opened_before_a_console_restart_can_still_decide(
    browser: Any, tmp_path: Path
) -> None:
    root = make_pipeline(tmp_path / "p", [{"id": "restart-1"}])
    first = UiServer(root, "--reviewer", "tester")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(review_url(first, "restart-1"))
        first.stop()
        second = UiServer(root, "--reviewer", "tester", port=first.port)  # a new process
        try:
            page.fill("#comment", "after the restart")
            page.click("#approve-btn")
            page.wait_for_selector(".notice-ok")
        finally:
            second.stop()
    finally:
        context.close()
    secret = root / ".treadle" / "ui-secret"
    assert secret.exists() and secret.stat().st_mode & 0o077 == 0
    from treadle_core import open_store

    s = open_store(f"sqlite:///{root / '.treadle' / 'state.db'}")
    try:
        assert [r.comment for r in s.get_reviews("restart-1", "review")] == ["after the restart"]
    finally:
        s.close()


# --- people in the loop, version 2: choices, forms, changes, votes ----------------------


def sign_in(page: Any, server: UiServer, name: str, tokens: dict[str, str]) -> None:
    page.goto(server.url + "/signin")
    page.fill("#signin-name", name)
    page.fill("#signin-token", tokens[name])
    page.click("#signin-btn")
    page.wait_for_selector("#signed-in-as")


def switch_to(page: Any, server: UiServer, name: str, tokens: dict[str, str]) -> None:
    page.click(".signed-in button")  # sign out
    page.wait_for_url("**/signin")
    sign_in(page, server, name, tokens)


#: Whether the page began sending its decision form (ui.js marks a form it sends).
SENT = "document.getElementById('decide').dataset.sent ?? null"


def posts_of(page: Any) -> list[str]:
    """Every POST the page sends from now on."""
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    return posts


def test_choices_are_buttons_and_a_number_key_approves_with_that_choice(
    page: Any, people_server: UiServer, people_store: Any, people_tokens: dict[str, str]
) -> None:
    sign_in(page, people_server, "ana", people_tokens)
    page.goto(review_url(people_server, "pick-1", "year"))
    assert page.locator("#choices button span").all_inner_texts() == ["2021", "2022", "2023"]
    assert page.locator("#choices button kbd").all_inner_texts() == ["1", "2", "3"]
    assert page.locator("#approve-btn").count() == 0  # a choice is the approval
    page.keyboard.press("2")
    page.wait_for_url("**notice=chose*")
    assert "Approved pick-1 / year: 2022." in page.inner_text(".notice")
    assert status_of(people_store, "pick-1", "year") == StageStatus.COMPLETE
    [record] = people_store.get_reviews("pick-1", "year")
    assert (record.decision, record.choice, record.reviewer) == ("approve", "2022", "ana")


def test_a_second_key_press_or_click_on_a_choice_never_posts_twice(
    page: Any, people_server: UiServer, people_store: Any, people_tokens: dict[str, str]
) -> None:
    sign_in(page, people_server, "bo", people_tokens)
    posts = posts_of(page)
    page.goto(review_url(people_server, "pick-2", "year"))
    for key in ("1", "1", "3"):  # the same choice again, then another one
        page.keyboard.press(key)
    page.wait_for_url("**notice=chose*")
    assert posts == [people_server.url + "/decide"]
    assert [r.choice for r in people_store.get_reviews("pick-2", "year")] == ["2021"]

    posts.clear()
    page.goto(review_url(people_server, "once-3", "year"))
    page.dblclick("#choice-3")
    page.wait_for_url("**notice=chose*")
    assert posts == [people_server.url + "/decide"]
    assert [r.choice for r in people_store.get_reviews("once-3", "year")] == ["2023"]


def test_a_form_answer_that_fails_is_shown_at_its_field_then_fixed_and_approved(
    page: Any, people_server: UiServer, people_store: Any, people_tokens: dict[str, str]
) -> None:
    sign_in(page, people_server, "cy", people_tokens)
    page.goto(review_url(people_server, "form-1", "rate"))
    stars = page.locator('[data-field="stars"]')
    assert "Stars required" in stars.locator("label").inner_text()
    assert "1 is poor, 5 is excellent" in stars.inner_text()
    page.fill('[name="v.stars"]', "9")
    page.check("[name='v.section'][value='\"sport\"']")
    page.fill('[name="v.tags"]', '["bridges"]')
    with page.expect_response(lambda r: r.url.endswith("/decide")) as answer:
        page.click("#approve-btn")
    assert answer.value.status == 400
    page.wait_for_selector('[data-field="stars"] .field-error')
    assert stars.locator(".field-error").inner_text() == "9 is greater than the maximum of 5"
    assert page.get_attribute('[name="v.stars"]', "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.name") == "v.stars"  # there to be fixed
    assert page.is_checked("[name='v.section'][value='\"sport\"']")  # the other answers stay
    assert page.input_value('[name="v.tags"]') == '["bridges"]'
    assert "nothing saved" in page.inner_text("#decision-error")
    assert people_store.get_reviews("form-1", "rate") == []
    assert status_of(people_store, "form-1", "rate") == StageStatus.AWAITING_REVIEW

    page.fill('[name="v.stars"]', "4")
    page.press('[name="v.stars"]', "Enter")  # Enter in an answer approves with the answers
    page.wait_for_selector(".notice-ok")
    [record] = people_store.get_reviews("form-1", "rate")
    assert record.reviewer == "cy"
    assert record.values == {
        "stars": 4,
        "section": "sport",
        "front_page": False,
        "tags": ["bridges"],
    }


def test_request_changes_needs_feedback_then_sends_the_draft_back_with_it(
    page: Any,
    people_server: UiServer,
    people_store: Any,
    people_tokens: dict[str, str],
    people_dir: Path,
) -> None:
    sign_in(page, people_server, "ana", people_tokens)
    posts = posts_of(page)
    page.goto(review_url(people_server, "changes-1", "check"))
    page.click("#changes-btn")  # no feedback yet: refused in the page, nothing sent
    assert posts == []
    assert page.get_attribute("#feedback", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "feedback"
    page.keyboard.press("Escape")
    page.keyboard.press("c")
    assert page.evaluate("document.activeElement.id") == "feedback"
    page.keyboard.type("name the source of the year")
    page.click("#changes-btn")
    page.wait_for_selector(".notice-warn")
    assert "Sent changes-1 / check back: draft runs again with your feedback." in page.inner_text(
        ".notice"
    )
    assert posts == [people_server.url + "/decide"]
    assert status_of(people_store, "changes-1", "draft") == StageStatus.PENDING
    [record] = people_store.get_reviews("changes-1", "check")
    assert (record.decision, record.feedback, record.reviewer) == (
        "request_changes",
        "name the source of the year",
        "ana",
    )
    treadle(people_dir, "run", "--item", "changes-1")
    draft = people_store.get_stage_state("changes-1", "draft")
    assert draft.artefact == {"title": "changes-1", "note": "name the source of the year"}
    assert status_of(people_store, "changes-1", "check") == StageStatus.AWAITING_REVIEW


def test_votes_so_far_approvers_and_who_may_not_vote(
    page: Any, people_server: UiServer, people_store: Any, people_tokens: dict[str, str]
) -> None:
    url = review_url(people_server, "vote-1", "sign")
    sign_in(page, people_server, "tester", people_tokens)  # not one of its approvers
    posts = posts_of(page)
    page.goto(url)
    assert page.inner_text("#vote-refusal") == (
        "Only its approvers (ana, bo, cy) may decide this review; you are signed in as tester."
    )
    assert page.is_disabled("#approve-btn") and page.is_disabled("#reject-btn")
    page.keyboard.press("a")
    assert page.evaluate(SENT) is None and posts == []  # no submission even began

    switch_to(page, people_server, "ana", people_tokens)
    page.goto(url)
    assert page.inner_text("#tally") == "0 of 2 approvals"
    assert page.inner_text("#approvers") == "Approvers: ana, bo, cy"
    page.keyboard.press("a")
    page.wait_for_url("**notice=voted*")
    assert "Your approval of vote-1 / sign is recorded: 1 of 2 approvals: ana." in page.inner_text(
        ".notice"
    )
    assert status_of(people_store, "vote-1", "sign") == StageStatus.AWAITING_REVIEW
    page.goto(url)  # a second vote: not offered, and not sent
    assert "You have approved it already (one vote each)" in page.inner_text("#vote-refusal")
    assert page.is_disabled("#approve-btn")
    posts.clear()
    page.keyboard.press("a")
    assert page.evaluate(SENT) is None and posts == []

    switch_to(page, people_server, "bo", people_tokens)
    page.goto(url)
    assert page.inner_text("#tally") == "1 of 2 approvals: ana"
    assert "ana approved" in page.inner_text(".votes")
    page.click("#approve-btn")
    page.wait_for_url("**notice=approve*")
    assert status_of(people_store, "vote-1", "sign") == StageStatus.COMPLETE
    assert [r.reviewer for r in people_store.get_reviews("vote-1", "sign")] == ["ana", "bo"]


@pytest.mark.parametrize("width", [375, 1440])
def test_choices_forms_and_votes_wrap_and_nothing_overflows_sideways(
    browser: Any, people_server: UiServer, people_tokens: dict[str, str], width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, people_server, "tester", people_tokens)
        for stage in ("year", "sign", "check"):
            page.goto(review_url(people_server, "form-long", stage))
            assert page.evaluate(OVERFLOW) == [], stage
        page.goto(review_url(people_server, "form-long", "rate"))
        long_text = "a-long-headline-" * 30
        page.fill('[name="v.headline"]', long_text)
        page.fill('[name="v.tags"]', json.dumps(["t" * 300]))
        page.fill('[name="v.stars"]', "1" * 15)
        page.check("[name='v.section'][value='\"news\"']")
        with page.expect_navigation():  # to the refusal, loaded (styles and all)
            page.click("#approve-btn")  # refused by the library: a 15-digit number in it
        assert page.locator('[data-field="stars"] .field-error').is_visible()
        assert page.evaluate(OVERFLOW) == []
        assert page.input_value('[name="v.headline"]') == long_text
        page.goto(people_server.url + "/?mine=1")
        assert page.evaluate(OVERFLOW) == []
    finally:
        context.close()
