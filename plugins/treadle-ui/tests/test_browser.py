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
