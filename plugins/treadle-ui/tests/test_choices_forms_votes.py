"""People in the loop, version 2, in the console (SPEC §11): choices, forms, request
changes, votes and approvers, checked edits, "yours to decide" — through the routes
(Starlette's TestClient) over a MemoryStateStore. Every refusal is a 4xx that names the
problem and saves nothing."""

from __future__ import annotations

import asyncio
import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from test_app import client, csrf, decide, hidden_fields, items_on, make_store, post

from treadle_core import (
    Accepted,
    Complete,
    Item,
    NeedsReview,
    QualityFeedback,
    Rejected,
    StageOutput,
    StageStatus,
    Workflow,
)

YEARS = ("2021", "2022")
RATING = {
    "type": "object",
    "properties": {
        "stars": {
            "type": "integer",
            "minimum": 1,
            "maximum": 5,
            "title": "Stars",
            "description": "1 is poor, 5 is excellent",
        },
        "headline": {"type": "string", "title": "Headline", "maxLength": 80},
        "byline": {"type": "string", "title": "Byline", "maxLength": 40},
        "section": {"enum": ["news", "sport", "culture"], "title": "Section"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "front_page": {"type": "boolean", "title": "Front page"},
        "tags": {"type": "array", "items": {"type": "string"}, "title": "Tags"},
    },
    "required": ["stars", "section"],
}


def draft(item: Any, ctx: Any) -> StageOutput:
    note = ctx.feedback.summary if ctx.feedback else None
    return StageOutput(Complete(), artefact={"title": item.id, "note": note})


class NoTodo:
    """The draft's gate: nothing that still says TODO (an edit included)."""

    async def evaluate(self, item: Any, stage: str, output: Any, ctx: Any) -> Any:
        if "TODO" in json.dumps(output.artefact):
            return Rejected(QualityFeedback("it still says TODO"))
        return Accepted()


def year(item: Any, ctx: Any) -> StageOutput:
    question = NeedsReview("Sources disagree on the year", {"years": [2021, 2022]}, choices=YEARS)
    return StageOutput(question, artefact=ctx.upstream["draft"])


def rate(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(NeedsReview("Rate the draft", form=RATING), artefact=ctx.upstream["draft"])


def sign(item: Any, ctx: Any) -> StageOutput:
    return StageOutput(NeedsReview("Sign it off"), artefact=ctx.upstream["draft"])


def check(item: Any, ctx: Any) -> StageOutput:
    question = NeedsReview("Is the draft right?", {"stage": "draft"})
    return StageOutput(question, artefact=ctx.upstream["draft"])


def people() -> Workflow:
    return (
        Workflow.builder("people")
        .stage("draft", draft)
        .quality_gate("draft", NoTodo())  # type: ignore[arg-type]
        .stage("year", year, needs=["draft"])
        .stage("rate", rate, needs=["draft"])
        .stage("sign", sign, needs=["draft"])
        .approvers("sign", ["ana", "bo", "cy"], required=2)
        .stage("check", check, needs=["draft"])
        .stage("headline", lambda item, ctx: StageOutput(NeedsReview("Headline?")), needs=["year"])
        .build()
    )


@pytest.fixture
def wf() -> Workflow:
    return people()


@pytest.fixture
def store(wf: Workflow) -> Any:
    return make_store(wf, [Item("s1", {}), Item("s2", {}), Item("s3", {})])


def page_of(c: Any, item: str, stage: str, query: str = "") -> str:
    r = c.get(f"/review?item={item}&stage={stage}{query}")
    assert r.status_code == 200
    return r.text


def unchanged(store: Any, item: str, stage: str, before: Any) -> None:
    """Nothing saved: the stage as it was, no decision record."""
    assert store.get_stage_state(item, stage) == before
    assert store.get_reviews(item, stage) == []


def field_error(page: str, name: str) -> str:
    """The problem shown next to one field of the form."""
    block = page.split(f'data-field="{name}"', 1)[1].split('<div class="answer', 1)[0]
    found = re.search(r'<p class="field-error" id="[^"]+">(.*?)</p>', block, re.S)
    assert found, f"no error shown at {name}"
    return unescape(found.group(1))


# --- choices -------------------------------------------------------------------------


def test_choices_are_buttons_with_number_keys_and_no_plain_approve(
    wf: Workflow, store: Any
) -> None:
    page = page_of(client(wf, store), "s1", "year")
    buttons = re.findall(
        r'<button class="btn choice" name="choice" value="(\d+)" id="choice-(\d)" data-key="(\d)"',
        page,
    )
    assert buttons == [("2021", "1", "1"), ("2022", "2", "2")]
    assert 'id="approve-btn"' not in page
    assert 'id="editor"' not in page  # a choice is the answer, not an edit


def test_a_choice_button_approves_with_that_choice(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    r = decide(c, "s1", "year", choice="2022", comment="the wire is wrong")
    assert r.status_code == 303
    assert "notice=chose" in r.headers["location"] and "detail=2022" in r.headers["location"]
    assert store.get_stage_state("s1", "year").status == StageStatus.COMPLETE
    asyncio.run(wf.run(store, [Item("s1", {})]))
    page = c.get("/review?item=s1&stage=headline").text.split('id="upstream"', 1)[1]
    year_line = page.split('data-stage="year"', 1)[1].split("</summary>", 1)[0]
    assert 'approved <span class="choice-tag">2022</span> by ada' in year_line  # seen later on
    [rec] = store.get_reviews("s1", "year")
    assert (rec.decision, rec.choice, rec.reviewer, rec.comment) == (
        "approve",
        "2022",
        "ada",
        "the wire is wrong",
    )


@pytest.mark.parametrize(
    ("form", "problem"),
    [
        ({"choice": "2020"}, "'2020' is not one of the choices (2021, 2022)"),
        ({"action": "approve"}, "choose one of: 2021, 2022"),
    ],
)
def test_a_choice_not_offered_or_none_is_refused_and_nothing_saved(
    wf: Workflow, store: Any, form: dict[str, str], problem: str
) -> None:
    before = store.get_stage_state("s1", "year")
    r = decide(client(wf, store), "s1", "year", **form)
    assert r.status_code == 400
    assert problem in unescape(r.text) and "nothing saved" in r.text
    assert '<fieldset class="choices" id="choices" aria-invalid="true"' in r.text
    unchanged(store, "s1", "year", before)


def test_a_choice_form_sent_twice_decides_once(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    fields = hidden_fields(c.get("/review?item=s1&stage=year").text, "decide")
    first = c.post("/decide", data={**fields, "choice": "2021"})
    second = c.post("/decide", data={**fields, "choice": "2021"})
    assert first.status_code == second.status_code == 303
    assert second.headers["location"] == first.headers["location"]
    assert len(store.get_reviews("s1", "year")) == 1


# --- forms ---------------------------------------------------------------------------


def test_the_form_is_drawn_from_its_json_schema(wf: Workflow, store: Any) -> None:
    page = page_of(client(wf, store), "s1", "rate")
    answers = page.split('id="answers"', 1)[1].split("</fieldset>\n        {%", 1)[0]
    stars = answers.split('data-field="stars"', 1)[1].split('<div class="answer', 1)[0]
    assert '<label for="field-1">Stars <span class="req">required</span></label>' in stars
    assert 'name="v.stars"' in stars and 'type="number" step="1"' in stars
    assert 'min="1" max="5"' in stars and "1 is poor, 5 is excellent" in stars
    headline = answers.split('data-field="headline"', 1)[1].split('<div class="answer', 1)[0]
    assert '<textarea id="field-2" name="v.headline" rows="2" class="grow" maxlength="80">' in (
        headline
    )  # it wraps
    assert "required" not in headline
    byline = answers.split('data-field="byline"', 1)[1].split('<div class="answer', 1)[0]
    assert 'name="v.byline" value="" autocomplete="off" type="text" maxlength="40"' in byline
    section = answers.split('data-field="section"', 1)[1].split('<div class="answer', 1)[0]
    assert re.findall(r'type="radio" name="v.section" value="([^"]+)"', section) == [
        "&#34;news&#34;",
        "&#34;sport&#34;",
        "&#34;culture&#34;",
    ]
    assert 'step="any"' in answers.split('data-field="confidence"', 1)[1]
    assert 'type="checkbox" id="field-6" name="v.front_page"' in answers
    tags = answers.split('data-field="tags"', 1)[1]
    assert '<textarea id="field-7" name="v.tags"' in tags and "As JSON: a list" in tags
    assert "Approve with these answers" in page
    assert 'id="editor"' not in page


def test_form_answers_are_approved_as_json_of_the_right_types(wf: Workflow, store: Any) -> None:
    r = decide(
        client(wf, store),
        "s1",
        "rate",
        action="approve",
        **{
            "v.stars": "4",
            "v.headline": "",  # optional and empty: left out
            "v.section": '"sport"',
            "v.confidence": "0.75",
            "v.front_page": "on",
            "v.tags": '["bridges", "repairs"]',
        },
    )
    assert r.status_code == 303
    [rec] = store.get_reviews("s1", "rate")
    assert rec.values == {
        "stars": 4,
        "section": "sport",
        "confidence": 0.75,
        "front_page": True,
        "tags": ["bridges", "repairs"],
    }


@pytest.mark.parametrize(
    ("answers", "field", "problem"),
    [
        ({"v.stars": "9"}, "stars", "9 is greater than the maximum of 5"),
        ({"v.stars": "four"}, "stars", "'four' is not a whole number"),
        ({"v.stars": ""}, "stars", "required: fill it in"),
        ({"v.confidence": "1.5"}, "confidence", "1.5 is greater than the maximum of 1"),
        ({"v.tags": '["a",'}, "tags", "not valid JSON: Expecting value at line 1, column 6"),
        ({"v.tags": '["a", 2]'}, "tags", "tags/1: 2 is not of type 'string'"),
        ({"v.section": '"weather"'}, "section", "'\"weather\"' is not one of the options"),
    ],
)
def test_form_answers_that_fail_are_shown_at_their_field_and_nothing_saved(
    wf: Workflow, store: Any, answers: dict[str, str], field: str, problem: str
) -> None:
    before = store.get_stage_state("s1", "rate")
    good = {"v.stars": "3", "v.section": '"news"'}
    r = decide(client(wf, store), "s1", "rate", action="approve", **{**good, **answers})
    assert r.status_code == 400
    assert field_error(r.text, field) == problem
    assert "nothing saved" in r.text
    block = r.text.split(f'data-field="{field}"', 1)[1].split('<div class="answer', 1)[0]
    assert 'aria-invalid="true"' in block
    typed = answers[f"v.{field}"]
    if field not in ("section",):
        assert f'value="{typed}"' in unescape(block) or f">{typed}</textarea>" in unescape(
            block
        )  # what was typed stays, to be fixed
    unchanged(store, "s1", "rate", before)


def test_a_form_without_properties_is_answered_as_one_json_object() -> None:
    schema = {"type": "object", "minProperties": 1, "title": "Anything to add"}

    def ask(item: Any, ctx: Any) -> StageOutput:
        return StageOutput(NeedsReview("Notes?", form=schema))

    wf = Workflow.builder("free").stage("ask", ask).build()
    store = make_store(wf, [Item("f1", {})])
    c = client(wf, store)
    page = page_of(c, "f1", "ask")
    assert '<textarea id="field-1" name="v."' in page and "Anything to add" in page
    r = decide(c, "f1", "ask", action="approve", **{"v.": "[1]"})
    assert r.status_code == 400 and "the answers are a JSON object" in unescape(r.text)
    r = decide(c, "f1", "ask", action="approve", **{"v.": "{}"})
    assert r.status_code == 400 and "should be non-empty" in unescape(r.text)
    assert store.get_reviews("f1", "ask") == []
    r = decide(c, "f1", "ask", action="approve", **{"v.": '{"note": "ok"}'})
    assert r.status_code == 303
    assert store.get_reviews("f1", "ask")[0].values == {"note": "ok"}


def test_a_choice_with_a_form_approves_with_both() -> None:
    schema = {"type": "object", "properties": {"why": {"type": "string"}}, "required": ["why"]}

    def ask(item: Any, ctx: Any) -> StageOutput:
        return StageOutput(NeedsReview("Which, and why?", choices=("a", "b"), form=schema))

    wf = Workflow.builder("both").stage("ask", ask).build()
    store = make_store(wf, [Item("b1", {})])
    c = client(wf, store)
    page = page_of(c, "b1", "ask")
    assert 'id="answers"' in page and 'id="choice-2"' in page and 'id="approve-btn"' not in page
    r = decide(c, "b1", "ask", choice="b")  # no answer yet: refused at the field
    assert r.status_code == 400 and field_error(r.text, "why") == "required: fill it in"
    r = decide(c, "b1", "ask", choice="b", **{"v.why": "fewer words"})
    assert r.status_code == 303
    [rec] = store.get_reviews("b1", "ask")
    assert (rec.choice, rec.values) == ("b", {"why": "fewer words"})


# --- request changes -----------------------------------------------------------------


def test_request_changes_needs_feedback_and_nothing_is_saved_without_it(
    wf: Workflow, store: Any
) -> None:
    before = store.get_stage_state("s1", "check")
    r = decide(client(wf, store), "s1", "check", action="changes", feedback="  \n ")
    assert r.status_code == 400
    assert "Say what to change" in r.text
    assert '<textarea id="feedback" name="feedback" rows="2" aria-invalid="true"' in r.text
    unchanged(store, "s1", "check", before)
    assert store.get_stage_state("s1", "draft").status == StageStatus.COMPLETE


def test_request_changes_sends_the_work_back_with_the_reviewers_words(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store)
    page = page_of(c, "s1", "check")
    assert "draft runs again with your words" in page
    r = decide(c, "s1", "check", action="changes", feedback="name the source")
    assert r.status_code == 303
    assert "notice=changes" in r.headers["location"] and "detail=draft" in r.headers["location"]
    assert store.get_stage_state("s1", "draft").status == StageStatus.PENDING
    [rec] = store.get_reviews("s1", "check")
    assert (rec.decision, rec.feedback, rec.reviewer) == (
        "request_changes",
        "name the source",
        "ada",
    )
    asyncio.run(wf.run(store, [Item("s1", {})]))
    assert store.get_stage_state("s1", "draft").artefact["note"] == "name the source"
    assert "changes asked: name the source" in page_of(c, "s1", "check")


# --- votes and approvers -------------------------------------------------------------


def as_(c: Any, name: str) -> Any:
    """Switch the console's reviewer name (the page's own name form)."""
    assert post(c, "/reviewer", reviewer=name).status_code == 303
    return c


def test_votes_so_far_and_the_approvers_are_shown(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer="ana")
    page = page_of(c, "s1", "sign")
    assert "0 of 2 approvals" in page and "Approvers: ana, bo, cy" in page
    r = decide(c, "s1", "sign", action="approve")
    assert r.status_code == 303
    assert "notice=voted" in r.headers["location"]
    assert "Your approval of s1 / sign is recorded: 1 of 2 approvals: ana." in c.get(
        r.headers["location"]
    ).text.replace("&#39;", "'")
    st = store.get_stage_state("s1", "sign")
    assert st.status == StageStatus.AWAITING_REVIEW and [v["reviewer"] for v in st.votes] == ["ana"]
    page = page_of(as_(c, "bo"), "s1", "sign")
    assert "1 of 2 approvals: ana" in page
    assert '<progress max="2" value="1"' in page
    assert "vote-refusal" not in page and '<fieldset class="plain">' in page  # bo may vote
    assert decide(c, "s1", "sign", action="approve").status_code == 303
    assert store.get_stage_state("s1", "sign").status == StageStatus.COMPLETE
    assert [r.reviewer for r in store.get_reviews("s1", "sign")] == ["ana", "bo"]


def test_a_non_approver_sees_the_buttons_disabled_with_the_reason_and_is_refused(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store, reviewer="eve")
    page = page_of(c, "s1", "sign")
    assert '<fieldset class="plain" disabled>' in page
    assert "Only its approvers (ana, bo, cy) may decide this review" in page
    before = store.get_stage_state("s1", "sign")
    for form in (
        {"action": "approve"},
        {"action": "reject", "reason": "no"},
        {"action": "changes", "feedback": "more"},
    ):
        r = decide(c, "s1", "sign", **form)
        assert r.status_code == 403
        assert "'eve' is not one of its approvers (ana, bo, cy)" in unescape(r.text)
    unchanged(store, "s1", "sign", before)


def test_a_second_vote_by_the_same_reviewer_is_refused(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer="ana")
    assert decide(c, "s1", "sign", action="approve").status_code == 303
    before = store.get_stage_state("s1", "sign")
    page = page_of(c, "s1", "sign")
    assert '<fieldset class="plain" disabled>' in page
    assert "You have approved it already (one vote each); it waits for 1 more approval." in page
    r = decide(c, "s1", "sign", action="approve")  # a new page view: a new form, not a repeat
    assert r.status_code == 403
    assert "'ana' has already approved it; one vote each" in unescape(r.text)
    assert store.get_stage_state("s1", "sign") == before
    assert len(store.get_reviews("s1", "sign")) == 1


def test_a_decision_names_the_signed_in_reviewer(wf: Workflow, store: Any, tmp_path: Path) -> None:
    from test_access import sign_in, users_client
    from treadle_ui.users import add_user

    users = tmp_path / "reviewers.json"
    token = add_user(users, "bo")
    c = users_client(wf, store, users)
    assert sign_in(c, "bo", token).status_code == 303
    fields = hidden_fields(c.get("/review?item=s2&stage=year").text, "decide")
    r = c.post("/decide", data={**fields, "choice": "2021", "reviewer": "mallory"})
    assert r.status_code == 303
    assert decide(c, "s2", "sign", action="approve").status_code == 303
    assert store.get_reviews("s2", "year")[0].reviewer == "bo"
    assert store.get_reviews("s2", "sign")[0].reviewer == "bo"


# --- edits ---------------------------------------------------------------------------


def test_an_edit_the_gate_rejects_is_shown_in_place_and_can_be_forced(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store)
    assert 'id="force"' not in page_of(c, "s1", "check")
    before = store.get_stage_state("s1", "check")
    edited = '{"title": "TODO"}'
    r = decide(c, "s1", "check", action="edit", artefact=edited)
    assert r.status_code == 400
    text = unescape(r.text)
    assert "the edit fails the quality gate of stage 'draft': it still says TODO" in text
    assert '<details class="editor" id="editor" open>' in r.text
    assert f">{edited}</textarea>" in text  # the edit is kept
    assert 'id="force" name="force" value="on">' in r.text
    unchanged(store, "s1", "check", before)
    fields = {**hidden_fields(r.text, "decide"), "action": "edit", "artefact": edited}
    r = c.post("/decide", data={**fields, "force": "on", "note": "the gate is wrong"})
    assert r.status_code == 303
    [rec] = store.get_reviews("s1", "check")
    assert (rec.decision, rec.forced, rec.edited_artefact) == (
        "approve_with_edits",
        True,
        {"title": "TODO"},
    )
    assert '<span class="badge v-reject">forced</span>' in page_of(c, "s1", "check")


def test_an_edit_is_offered_only_where_the_review_takes_one(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer="ana")
    assert 'id="editor"' in page_of(c, "s1", "check")
    for stage in ("year", "rate", "sign"):  # a choice, a form, two approvals
        assert 'id="editor"' not in page_of(c, "s1", stage)
    r = decide(c, "s1", "year", action="edit", artefact="{}")  # sent anyway: refused
    assert r.status_code == 400
    assert "this review asks for a choice; approve with them, not an edit" in unescape(r.text)
    assert store.get_reviews("s1", "year") == []


# --- the queue -----------------------------------------------------------------------


def asks_of(page: str, item: str, stage: str) -> list[str]:
    row = page.split(f"?item={item}&amp;stage={stage}", 1)[1].split("</tr>", 1)[0]
    return [unescape(a) for a in re.findall(r'<span class="ask">(.*?)</span>', row)]


def test_the_queue_says_what_each_review_asks(wf: Workflow, store: Any) -> None:
    c = client(wf, store, reviewer="ana")
    decide(c, "s2", "sign", action="approve")
    page = c.get("/").text
    assert asks_of(page, "s1", "year") == ["choose: 2021 · 2022"]
    assert asks_of(page, "s1", "rate") == ["form"]
    assert asks_of(page, "s1", "sign") == ["0 of 2 approvals"]
    assert asks_of(page, "s2", "sign") == ["1 of 2 approvals"]
    assert asks_of(page, "s1", "check") == []


def test_yours_to_decide_lists_only_what_the_reviewer_may_still_vote_on(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store, reviewer="ana")
    decide(c, "s2", "sign", action="approve")
    everything = c.get("/?stage=sign").text
    assert sorted(items_on(everything)) == ["s1", "s2", "s3"]
    assert 'id="mine" href="/?stage=sign&amp;mine=1" aria-pressed="false"' in everything
    mine = c.get("/?stage=sign&mine=1").text
    assert items_on(mine) == ["s1", "s3"]  # ana voted on s2 already
    assert "1\u20132 of 2 yours to decide" in mine
    assert 'aria-pressed="true"' in mine
    assert "mine=1" in re.search(r'class="item-link" href="([^"]+)"', mine).group(1)  # type: ignore[union-attr]
    # Deciding from there opens the next review that is still yours.
    r = decide(c, "s1", "sign", "&queue=sign&mine=1", action="approve")
    assert r.headers["location"].startswith("/review?item=s3&stage=sign&queue=sign&mine=1")
    eve = client(wf, store, reviewer="eve")
    none = eve.get("/?stage=sign&mine=1").text
    assert items_on(none) == []
    assert "Nothing waits for a vote from <strong>eve</strong> at <strong>sign</strong>" in none
    assert len(items_on(eve.get("/?mine=1").text)) == 9  # year, rate, check: anyone's


def test_yours_to_decide_is_offered_only_when_the_console_knows_your_name(
    wf: Workflow, store: Any
) -> None:
    c = client(wf, store, reviewer=None)
    assert 'id="mine"' not in c.get("/").text
    assert len(items_on(c.get("/?mine=1").text)) == 12  # no name: the whole queue


def test_bulk_approve_skips_reviews_that_ask_for_an_answer(wf: Workflow, store: Any) -> None:
    c = client(wf, store)
    targets = [json.dumps(["s1", "year"]), json.dumps(["s1", "check"])]
    r = c.post("/bulk", data={"csrf": csrf(c), "target": targets})
    assert "count=1" in r.headers["location"] and "skipped=1" in r.headers["location"]
    assert "asking for a choice or a form" in c.get(r.headers["location"]).text
    assert store.get_reviews("s1", "year") == []
