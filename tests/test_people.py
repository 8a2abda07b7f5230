"""People in the loop, version 2 (SPEC §11): choices, forms, branching by a person,
request changes, feedback from people, earlier attempts, checked edits, approvers and
quorum, through the library on the memory store and a SQLite file."""

from __future__ import annotations

import pytest
from _util import journal

from treadle_core import (
    Accepted,
    Approve,
    ApproveWithEdits,
    ChangesRequested,
    Complete,
    CriterionResult,
    Item,
    ManualClock,
    NeedsReview,
    QualityFeedback,
    Reject,
    Rejected,
    RequestChanges,
    RetryBudget,
    ReviewError,
    ReviewPolicy,
    ReviewVoted,
    StageOutput,
    StageStatus,
    Workflow,
)
from treadle_core.quality import QualityGate

YEARS = ("2021", "2022")
FORM = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tone": {"enum": ["plain", "warm"]},
    },
    "required": ["title"],
}


def asking(question: NeedsReview, seen: list | None = None, artefact=None):
    """A pipeline: ``ask`` puts ``question`` to a person, ``use`` records what it sees."""

    async def ask(item, ctx):
        return StageOutput(question, artefact=artefact)

    async def use(item, ctx):
        if seen is not None:
            seen.append(ctx.reviews)

    return Workflow.builder("ask").stage("ask", ask).stage("use", use, needs=["ask"])


def waiting(store, item="x", stage="ask"):
    st = store.get_stage_state(item, stage)
    return st.status == StageStatus.AWAITING_REVIEW


# --- choices and forms -------------------------------------------------------------


async def test_a_choice_is_required_and_must_be_offered_then_dependents_see_it(make_store):
    seen: list = []
    wf = asking(NeedsReview("Sources disagree on the year", choices=YEARS), seen).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    [pending] = wf.pending_reviews(store)
    assert pending.choices == YEARS
    with pytest.raises(ReviewError, match="choose one of: 2021, 2022"):
        await wf.resolve_review("x", "ask", Approve(), store, reviewer="ana")
    with pytest.raises(ReviewError, match="'2023' is not one of the choices"):
        await wf.resolve_review("x", "ask", Approve("2023"), store, reviewer="ana")
    assert waiting(store) and store.get_reviews("x") == []  # nothing saved

    await wf.resolve_review("x", "ask", Approve("2022"), store, reviewer="ana")
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    [record] = store.get_reviews("x", "ask")
    assert (record.decision, record.choice, record.reviewer) == ("approve", "2022", "ana")
    [reviews] = seen
    assert reviews["ask"].choice == "2022" and reviews["ask"].reviewer == "ana"


async def test_a_choice_without_choices_and_values_without_a_form_are_refused(make_store):
    wf = asking(NeedsReview("ok?")).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="no choices were offered"):
        await wf.resolve_review("x", "ask", Approve("yes"), store, reviewer="ana")
    with pytest.raises(ReviewError, match="has no form"):
        await wf.resolve_review("x", "ask", Approve(values={"a": 1}), store, reviewer="ana")
    assert waiting(store)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (None, "this review has a form; give its values"),
        ({}, "'title' is a required property"),
        ({"title": 3}, "form field 'title': 3 is not of type 'string'"),
        ({"title": "t", "stars": 9}, "form field 'stars': 9 is greater than the maximum of 5"),
        ({"title": "t", "tone": "loud"}, "form field 'tone': 'loud' is not one of"),
    ],
)
async def test_form_values_are_validated_against_the_schema(make_store, values, problem):
    wf = asking(NeedsReview("rate it", form=FORM)).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match=problem.replace("(", r"\(")):
        await wf.resolve_review("x", "ask", Approve(values=values), store, reviewer="ana")
    assert waiting(store) and store.get_reviews("x") == []


async def test_form_values_that_pass_are_kept_and_seen_by_dependents(make_store):
    seen: list = []
    wf = asking(NeedsReview("rate it", form=FORM), seen).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    [pending] = wf.pending_reviews(store)
    assert pending.form == FORM
    answers = {"title": "Kept", "stars": 4, "tone": "warm"}
    await wf.resolve_review("x", "ask", Approve(values=answers), store, reviewer="ana")
    await wf.advance(Item("x"), store)
    assert store.get_reviews("x", "ask")[0].values == answers
    assert seen[0]["ask"].values == answers


def test_a_form_that_is_not_a_json_schema_is_refused_when_made():
    with pytest.raises(ValueError, match="not a valid JSON Schema at properties/n"):
        NeedsReview(form={"type": "object", "properties": {"n": {"type": "nope"}}})
    with pytest.raises(ValueError, match="distinct non-empty strings"):
        NeedsReview(choices=("a", "a"))


async def test_ctx_reviews_holds_the_latest_approval_of_each_upstream_stage(make_store):
    seen: list = []

    async def ask(item, ctx):
        return StageOutput(NeedsReview("which?", choices=("a", "b")))

    async def mid(item, ctx):
        seen.append(("mid", dict(ctx.reviews)))

    async def last(item, ctx):
        seen.append(("last", dict(ctx.reviews)))

    wf = (
        Workflow.builder("chain")
        .stage("ask", ask)
        .stage("mid", mid, needs=["ask"])
        .stage("last", last, needs=["mid"])
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.resolve_review("x", "ask", Approve("b"), store, reviewer="ana")
    await wf.advance(Item("x"), store)
    # Indirect dependents see it too; a stage no person approved has no entry.
    assert [(who, sorted(r)) for who, r in seen] == [("mid", ["ask"]), ("last", ["ask"])]
    assert seen[1][1]["ask"].choice == "b"


# --- branching by a person ----------------------------------------------------------


def branching(ran: list[str]):
    def stage(name):
        async def run(item, ctx):
            ran.append(name)

        return run

    async def classify(item, ctx):
        return StageOutput(NeedsReview("publish or archive?"))

    return (
        Workflow.builder("branch")
        .stage("classify", classify)
        .stage("publish", stage("publish"), needs=["classify"])
        .stage("announce", stage("announce"), needs=["publish"])
        .stage("archive", stage("archive"), needs=["classify"])
        .stage("log", stage("log"), needs=["publish", "archive"])
        .branch("classify", {"publish": ["publish"], "archive": ["archive"]})
    )


async def test_branch_skips_the_dependents_of_the_choices_not_made(make_store):
    ran: list[str] = []
    wf = branching(ran).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    # The branch's choices are offered when the stage's own question names none.
    assert wf.pending_reviews(store)[0].choices == ("publish", "archive")
    await wf.resolve_review("x", "classify", Approve("archive"), store, reviewer="ana")
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert ran == ["archive", "log"]  # a join of branches runs; the chain after one does not
    for name in ("publish", "announce"):
        st = store.get_stage_state("x", name)
        assert st.status == StageStatus.SKIPPED
    skipped = [e.event for e in store.read_events("x") if e.event.kind == "StageSkipped"]
    assert [(e.stage, e.reason) for e in skipped] == [
        ("publish", "not chosen"),
        ("announce", "not chosen"),
    ]


async def test_branch_names_must_be_dependents_of_the_stage():
    with pytest.raises(Exception, match="'log', which does not depend on 'classify'"):
        branching([]).branch("classify", {"publish": ["log"]}).build()


async def test_a_timed_out_branch_review_runs_no_branch(make_store):
    clock = ManualClock()
    ran: list[str] = []
    wf = branching(ran).review_timeout("classify", 60, Approve()).clock(clock).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    clock.advance(61)
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    # Nobody chose: every branch is skipped, and so is what follows only from them.
    assert ran == []
    assert store.get_stage_state("x", "log").status == StageStatus.SKIPPED
    assert store.get_reviews("x", "classify")[0].reviewer == "timeout"


# --- request changes and feedback from people ---------------------------------------


async def test_request_changes_runs_the_stage_again_with_the_reviewers_words(make_store):
    feedback: list = []

    async def draft(item, ctx):
        feedback.append(None if ctx.feedback is None else ctx.feedback.summary)
        return StageOutput(Complete(), artefact={"v": ctx.attempt})

    wf = (
        Workflow.builder("d")
        .stage("draft", draft)
        .review_policy("draft", ReviewPolicy.ALWAYS)
        .retry_budget("draft", RetryBudget(max_attempts=1))
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="feedback is empty"):
        await wf.resolve_review("x", "draft", RequestChanges("  "), store, reviewer="ana")
    await wf.resolve_review("x", "draft", RequestChanges("shorter, please"), store, reviewer="ana")
    st = store.get_stage_state("x", "draft")
    assert st.status == StageStatus.PENDING
    await wf.advance(Item("x"), store)
    # Attempts keep counting, the budget is renewed, and the words reach the stage once.
    st = store.get_stage_state("x", "draft")
    assert (st.status, st.attempt, st.artefact) == (StageStatus.AWAITING_REVIEW, 2, {"v": 2})
    assert feedback == [None, "shorter, please"]
    [record] = store.get_reviews("x", "draft")
    assert (record.decision, record.feedback, record.reviewer) == (
        "request_changes",
        "shorter, please",
        "ana",
    )
    [event] = [e.event for e in store.read_events("x") if e.event.kind == "ChangesRequested"]
    assert isinstance(event, ChangesRequested)
    assert (event.reviewer, event.feedback) == ("ana", "shorter, please")


async def test_request_changes_at_a_review_stage_reruns_the_stage_it_reviews(make_store):
    from treadle_core.builtins.stages import ReviewStage

    drafts: list = []

    async def draft(item, ctx):
        drafts.append(None if ctx.feedback is None else ctx.feedback.summary)
        return StageOutput(Complete(), artefact={"text": f"draft {ctx.attempt}"})

    async def polish(item, ctx):
        return StageOutput(Complete(), artefact=ctx.upstream["draft"])

    events: list = []
    wf = (
        Workflow.builder("d")
        .stage("draft", draft)
        .stage("polish", polish, needs=["draft"])
        .stage("check", ReviewStage("Check {item.id}", stage="draft"), needs=["polish"])
        .build()
    )
    wf.bus.add_listener(events.append)
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.resolve_review("x", "check", RequestChanges("cite a source"), store, reviewer="bo")
    for name in ("draft", "polish", "check"):
        assert store.get_stage_state("x", name).status == StageStatus.PENDING
    await wf.advance(Item("x"), store)
    assert drafts == [None, "cite a source"]
    assert store.get_stage_state("x", "check").artefact == {"text": "draft 2"}
    [changed] = [e for e in events if isinstance(e, ChangesRequested)]
    assert (changed.stage, changed.reviewed_at, changed.feedback) == (
        "draft",
        "check",
        "cite a source",
    )
    await wf.resolve_review("x", "check", Approve(), store, reviewer="bo")
    assert (await wf.advance(Item("x"), store)).is_complete


async def test_a_rejection_reason_reaches_the_next_attempt_after_retry_stage(make_store):
    seen: list = []

    async def ask(item, ctx):
        seen.append(None if ctx.feedback is None else ctx.feedback.summary)
        return StageOutput(NeedsReview("ok?"))

    wf = Workflow.builder("r").stage("ask", ask).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="a rejection needs a reason"):
        await wf.resolve_review("x", "ask", Reject(""), store, reviewer="ana")
    await wf.resolve_review("x", "ask", Reject("the figures are wrong"), store, reviewer="ana")
    await wf.retry_stage("x", "ask", store)
    await wf.advance(Item("x"), store)
    assert seen == [None, "the figures are wrong"]


async def test_previous_attempts_keep_a_gates_criteria_when_a_later_attempt_fails(make_store):
    clock = ManualClock()
    seen: list = []

    class NeedsTitle(QualityGate):
        async def evaluate(self, item, stage, output, ctx):
            if "title" in (output.artefact or {}):
                return Accepted()
            crit = CriterionResult("title", "present", "missing", False)
            return Rejected(QualityFeedback("no title", [crit]))

    async def write(item, ctx):
        seen.append(
            [
                (a.attempt, a.verdict, a.feedback and a.feedback.summary)
                for a in ctx.previous_attempts
            ]
        )
        if ctx.attempt == 2:
            raise TimeoutError("the model timed out")
        if ctx.attempt == 3:
            criteria = ctx.previous_attempts[0].feedback.failed_criteria
            return StageOutput(Complete(), artefact={"title": criteria[0].name})
        return StageOutput(Complete(), artefact={"body": "x"})

    wf = (
        Workflow.builder("w")
        .stage("write", write)
        .quality_gate("write", NeedsTitle())
        .retry_budget("write", RetryBudget(max_attempts=3, delay=0))
        .clock(clock)
        .build()
    )
    store = make_store()
    status = await wf.advance(Item("x"), store)
    assert status.is_complete
    assert seen[0] == []
    assert seen[2][0] == (1, "rejected", "no title")
    assert seen[2][1][:2] == (2, None) and "timed out" in seen[2][1][2]


# --- edits are checked --------------------------------------------------------------


class TitleGate(QualityGate):
    async def evaluate(self, item, stage, output, ctx):
        if isinstance(output.artefact, dict) and output.artefact.get("title"):
            return Accepted()
        return Rejected(QualityFeedback("a summary needs its title"))


async def test_an_edit_that_fails_the_gate_is_refused_and_force_is_audited(make_store):
    async def summarise(item, ctx):
        return StageOutput(Complete(), artefact={"title": "T", "text": "long"})

    wf = (
        Workflow.builder("s")
        .stage("summarise", summarise)
        .quality_gate("summarise", TitleGate())
        .review_policy("summarise", ReviewPolicy.ALWAYS)
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    bad = ApproveWithEdits({"text": "short"})
    with pytest.raises(
        ReviewError, match="fails the quality gate of stage 'summarise': a summary needs its title"
    ):
        await wf.resolve_review("x", "summarise", bad, store, reviewer="ana")
    assert waiting(store, stage="summarise") and store.get_reviews("x") == []

    good = ApproveWithEdits({"title": "T2", "text": "short"}, note="trimmed")
    await wf.resolve_review("x", "summarise", good, store, reviewer="ana")
    assert store.get_stage_state("x", "summarise").artefact["title"] == "T2"
    assert store.get_reviews("x")[0].forced is False


async def test_force_skips_the_gate_and_says_so(make_store):
    async def summarise(item, ctx):
        return StageOutput(Complete(), artefact={"title": "T"})

    wf = (
        Workflow.builder("s")
        .stage("summarise", summarise)
        .quality_gate("summarise", TitleGate())
        .review_policy("summarise", ReviewPolicy.ALWAYS)
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    forced = ApproveWithEdits({"text": "no title"}, force=True)
    await wf.resolve_review("x", "summarise", forced, store, reviewer="ana")
    [record] = store.get_reviews("x")
    assert record.forced and record.edited_artefact == {"text": "no title"}


async def test_an_edit_at_a_review_stage_is_checked_by_the_reviewed_stages_gate(make_store):
    from treadle_core.builtins.stages import ReviewStage

    async def summarise(item, ctx):
        return StageOutput(Complete(), artefact={"title": "T"})

    wf = (
        Workflow.builder("s")
        .stage("summarise", summarise)
        .quality_gate("summarise", TitleGate())
        .stage("check", ReviewStage(stage="summarise"), needs=["summarise"])
        .build()
    )
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="a summary needs its title"):
        await wf.resolve_review("x", "check", ApproveWithEdits({"t": 1}), store, reviewer="a")


async def test_an_edit_is_refused_where_the_review_asks_for_a_choice(make_store):
    wf = asking(NeedsReview("which?", choices=YEARS)).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="asks for a choice"):
        await wf.resolve_review("x", "ask", ApproveWithEdits({}), store, reviewer="ana")


# --- who may decide, and how many --------------------------------------------------


def quorum(names=("ana", "bo", "cy"), required=2):
    return asking(NeedsReview("sign off?"), artefact={"doc": 1}).approvers("ask", names, required)


async def test_only_approvers_decide_and_each_votes_once(make_store):
    events: list = []
    wf = quorum().build()
    wf.bus.add_listener(events.append)
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="'eve' is not one of its approvers \\(ana, bo, cy\\)"):
        await wf.resolve_review("x", "ask", Approve(), store, reviewer="eve")
    with pytest.raises(ReviewError, match="name the reviewer"):
        await wf.resolve_review("x", "ask", Approve(), store)

    await wf.resolve_review("x", "ask", Approve(), store, reviewer="ana")
    assert waiting(store)
    [voted] = [e for e in events if isinstance(e, ReviewVoted)]
    assert (voted.reviewer, voted.approvals, voted.required) == ("ana", 1, 2)
    [pending] = wf.pending_reviews(store)
    assert [v["reviewer"] for v in pending.votes] == ["ana"]
    assert wf.pending_reviews(store, reviewer="ana") == []  # ana has voted
    assert len(wf.pending_reviews(store, reviewer="bo")) == 1
    assert wf.pending_reviews(store, reviewer="eve") == []  # not an approver
    with pytest.raises(ReviewError, match="'ana' has already approved it"):
        await wf.resolve_review("x", "ask", Approve(), store, reviewer="ana")

    await wf.resolve_review("x", "ask", Approve(), store, reviewer="cy")
    assert store.get_stage_state("x", "ask").status == StageStatus.COMPLETE
    assert [r.reviewer for r in store.get_reviews("x", "ask")] == ["ana", "cy"]
    assert journal(store, "x").count("StageCompleted") == 1


async def test_one_rejection_fails_a_review_that_needs_several(make_store):
    wf = quorum().build()
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.resolve_review("x", "ask", Approve(), store, reviewer="ana")
    await wf.resolve_review("x", "ask", Reject("not ready"), store, reviewer="bo")
    st = store.get_stage_state("x", "ask")
    assert (st.status, st.error) == (StageStatus.FAILED, "not ready")


async def test_approvals_with_choices_must_agree(make_store):
    wf = asking(NeedsReview("year?", choices=YEARS)).approvers("ask", None, 2).build()
    store = make_store()
    await wf.advance(Item("x"), store)
    await wf.resolve_review("x", "ask", Approve("2021"), store, reviewer="ana")
    with pytest.raises(ReviewError, match="'ana' approved '2021'"):
        await wf.resolve_review("x", "ask", Approve("2022"), store, reviewer="bo")
    await wf.resolve_review("x", "ask", Approve("2021"), store, reviewer="bo")
    assert store.get_stage_state("x", "ask").status == StageStatus.COMPLETE


async def test_an_edit_is_refused_where_several_approvals_are_needed(make_store):
    wf = quorum().build()
    store = make_store()
    await wf.advance(Item("x"), store)
    with pytest.raises(ReviewError, match="needs 2 approvals cannot be edited"):
        await wf.resolve_review("x", "ask", ApproveWithEdits({"doc": 2}), store, reviewer="ana")


@pytest.mark.parametrize(
    ("names", "required", "problem"),
    [
        ((), 1, "give non-empty reviewer names"),
        (("ana",), 2, "2 approvals required from 1 approver"),
        (None, 0, "required must be 1 or more"),
    ],
)
def test_approvers_are_checked_when_built(names, required, problem):
    with pytest.raises(ValueError, match=problem):
        quorum().approvers("ask", names, required)


def test_settings_for_stages_that_do_not_exist_are_refused():
    with pytest.raises(Exception, match="approvers for 'nope', which is not a stage"):
        quorum().approvers("nope", ["a"]).build()
