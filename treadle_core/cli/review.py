"""``treadle review``: list, show, approve, reject, changes, edit."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import ops
from ..errors import InputError, ReviewError, UnknownItemError
from ..model import (
    Approve,
    ApproveWithEdits,
    AttemptRecord,
    PendingReview,
    Reject,
    RequestChanges,
    ReviewRecord,
    StageStatus,
    decision_name,
)
from ..validation import MAX_LIMIT, parse_json
from .context import (
    EXIT_USAGE,
    ITEM_ID,
    CliContext,
    CliError,
    console,
    emit_json,
    iso,
    iso_times,
    pass_state,
    plural,
    reviewer_name,
    run_async,
)


def _fmt(value: Any) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _pending_dict(r: PendingReview) -> dict[str, Any]:
    return {
        "item_id": r.item_id,
        "stage": r.stage,
        "since": iso(r.since),
        "deadline": iso(r.deadline),
        "attempt": r.attempt,
        "prompt": r.prompt,
        "context": r.context,
        "choices": list(r.choices),
        "form": r.form,
        "votes": [iso_times(dict(v)) for v in r.votes],
    }


def _waiting_total(state: CliContext, stage: str | None) -> int:
    """How many stages await review (of ``stage``, or of every stage of the workflow)."""
    summary = state.store(create=False).summary()
    stages = [stage] if stage is not None else state.workflow().stages
    return sum(summary.get(name, {}).get(StageStatus.AWAITING_REVIEW.value, 0) for name in stages)


@click.group()
def review() -> None:
    """Stages waiting for a person: list, show, approve, reject, changes, edit."""


@review.command("list")
@click.option("--stage", help="Only this stage.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=100,
    show_default=True,
    help="Show at most N.",
)
@click.option(
    "--for",
    "for_",
    metavar="NAME",
    help="Only the reviews NAME may still vote on (an approver who has not voted).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def list_reviews(
    state: CliContext, stage: str | None, limit: int, for_: str | None, as_json: bool
) -> None:
    """What waits for review, oldest first.

    --json prints {"reviews": [...], "shown": N, "total": M, "truncated": bool}.
    """
    wf = state.workflow()
    pending = wf.pending_reviews(state.store(create=False), stage, limit=limit, reviewer=for_)
    # Counting costs a grouped query: only when the page may have cut the list.
    if len(pending) < limit:
        total = len(pending)
    elif for_ is not None:
        total = len(wf.pending_reviews(state.store(create=False), stage, reviewer=for_))
    else:
        total = _waiting_total(state, stage)
    total = max(total, len(pending))
    if as_json:
        emit_json(
            {
                "reviews": [_pending_dict(r) for r in pending],
                "shown": len(pending),
                "total": total,
                "truncated": total > len(pending),
            }
        )
        return
    if not pending:
        click.echo("nothing waits for review")
        return
    title = f"{total} awaiting review"
    if total > len(pending):
        title = f"showing {len(pending)} of {total} awaiting review (oldest first; --limit N)"
    table = Table(title=title, title_justify="left")
    for col in ("ITEM", "STAGE", "ATTEMPT", "WAITING SINCE", "DEADLINE", "PROMPT", "ASKS"):
        table.add_column(col)
    for r in pending:
        table.add_row(
            escape(r.item_id),
            r.stage,
            str(r.attempt or ""),
            _fmt(r.since),
            _fmt(r.deadline),
            escape(r.prompt or ""),
            escape(_asks(r.choices, r.form, r.votes)),
        )
    console().print(table)


def _asks(choices: Any, form: Any, votes: Any) -> str:
    """What a review asks for, in a few words: its choices, a form, the votes so far."""
    parts = []
    if choices:
        parts.append(" | ".join(choices))
    if form is not None:
        parts.append("a form")
    if votes:
        parts.append(f"{plural(len(votes), 'approval')} so far")
    return "; ".join(parts)


def _check_target(state: CliContext, item_id: str, stage: str) -> None:
    wf = state.workflow()
    wf.dependencies(stage)  # UnknownStageError with the closest name
    if state.store(create=False).get_item(item_id) is None:
        raise UnknownItemError(f"unknown item {item_id!r}")


def _waiting_stage(state: CliContext, item_id: str) -> str:
    """The one stage of ``item_id`` that awaits review; an error naming them if not one."""
    wf = state.workflow()
    store = state.store(create=False)
    if store.get_item(item_id) is None:
        raise UnknownItemError(f"unknown item {item_id!r}")
    states = store.get_all_stage_states(item_id)
    waiting = [
        name
        for name in wf.stages
        if name in states and states[name].status == StageStatus.AWAITING_REVIEW
    ]
    if len(waiting) == 1:
        return waiting[0]
    if not waiting:
        raise CliError(
            f"no stage of {item_id!r} awaits review; give STAGE (stages: {', '.join(wf.stages)})",
            EXIT_USAGE,
        )
    raise CliError(
        f"{plural(len(waiting), 'stage')} of {item_id!r} await review "
        f"({', '.join(waiting)}); give one as STAGE",
        EXIT_USAGE,
    )


@review.command()
@click.argument("item_id", metavar="ITEM", type=ITEM_ID)
@click.argument("stage", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def show(state: CliContext, item_id: str, stage: str | None, as_json: bool) -> None:
    """Every attempt of ITEM's STAGE (verdict, feedback, artefact) and the review prompt.

    Without STAGE: the stage of ITEM that awaits review (an error when several do).
    """
    if stage is None:
        stage = _waiting_stage(state, item_id)
    detail = ops.review_detail(state.workflow(), state.store(create=False), item_id, stage)
    spec = state.workflow().specs[stage]
    if as_json:
        emit_json(_detail_json(detail, spec))
        return
    _show_detail(detail, spec)


def _detail_json(detail: ops.ReviewDetail, spec: Any) -> dict[str, Any]:
    """``review show --json``: the stage's question, who may approve, attempts and reviews
    (times as ISO 8601 UTC)."""
    st = detail.state
    return {
        "item_id": detail.item_id,
        "stage": detail.stage,
        "status": str(detail.status),
        "stale": st.stale,
        "prompt": st.review_prompt,
        "context": st.review_context,
        "choices": st.review_choices,
        "form": st.review_form,
        "votes": [iso_times(dict(v)) for v in st.votes],
        "approvers": sorted(spec.approvers) if spec.approvers is not None else None,
        "required_approvals": spec.required,
        "artefact": st.artefact,
        "attempts": [iso_times(a.to_dict()) for a in detail.attempts],
        "reviews": [iso_times(r.to_dict()) for r in detail.reviews],
    }


def _show_detail(detail: ops.ReviewDetail, spec: Any) -> None:
    """``review show`` as text: status, prompt and context, the question when it waits,
    then every attempt and every decision."""
    st, attempts, status = detail.state, detail.attempts, detail.status
    out = console()
    out.print(
        f"[bold]{escape(detail.item_id)} / {detail.stage}[/bold]: {status.value.replace('_', ' ')}"
    )
    if st.review_prompt:
        out.print(f"[bold]Prompt:[/bold] {escape(st.review_prompt)}")
    if st.review_context:
        out.print("[bold]Context:[/bold]")
        out.print(escape(json.dumps(st.review_context, indent=2, default=str)))
    if st is not None and status == StageStatus.AWAITING_REVIEW:
        _show_question(st, spec)
    for a in attempts:
        _show_attempt(out, a)
    if not attempts:
        out.print("no attempts recorded")
    for r in detail.reviews:
        out.print(_review_line(r))


def _show_attempt(out: Console, a: AttemptRecord) -> None:
    """One attempt: outcome and verdict, summary, the error's last line, the gate's
    feedback, and the artefact (cut at 2,000 characters)."""
    label = f"Attempt {a.attempt}" + (f" (subtask {a.subtask})" if a.subtask else "")
    verdict = f", verdict {a.verdict}" if a.verdict else ""
    out.print(f"\n[bold]{label}[/bold]: {a.outcome}{verdict}  {_fmt(a.started_at)}")
    if a.summary:
        out.print(f"  summary: {escape(a.summary)}")
    if a.error:
        out.print(f"  error: {escape(a.error.strip().splitlines()[-1])}")
    if a.feedback is not None:
        out.print(f"  feedback: {escape(a.feedback.summary)}")
        for c in a.feedback.failed_criteria:
            mark = "ok" if c.passed else "FAILED"
            out.print(
                f"    - {escape(c.name)}: expected {escape(repr(c.expected))}, "
                f"got {escape(repr(c.actual))} ({mark})"
            )
        if a.feedback.guidance:
            out.print(f"    guidance: {escape(json.dumps(a.feedback.guidance, default=str))}")
    if a.artefact is not None:
        text = json.dumps(a.artefact, indent=2, default=str, ensure_ascii=False)
        if len(text) > 2000:
            text = text[:2000] + "\n  … (truncated; --json shows all)"
        out.print("  artefact:")
        out.print(escape("\n".join("    " + line for line in text.splitlines())))


def _review_line(r: ReviewRecord) -> str:
    """One decision: what, by whom, when, and its choice, values, reasons and notes."""
    who = r.reviewer or "(unnamed)"
    extra = [f"choice {r.choice!r}"] if r.choice is not None else []
    if r.values is not None:
        extra.append(f"values {json.dumps(r.values, default=str, ensure_ascii=False)}")
    if r.forced:
        extra.append("edit forced past the quality gate")
    extra += [t for t in (r.reason, r.feedback, r.note, r.comment) if t]
    if r.carried_from:
        original = r.carried_from.get("reviewer") or "?"
        extra.append(f"the decision of {original} on the same question, carried over")
    return f"\nreview: {r.decision} by {escape(who)} at {_fmt(r.at)}  {escape('; '.join(extra))}"


def _show_question(st: Any, spec: Any) -> None:
    """What the waiting review asks: choices, the form's fields, who may vote, votes so far."""
    out = console()
    if st.review_choices:
        out.print("[bold]Choices:[/bold] " + escape(", ".join(st.review_choices)) + "  (--choice)")
    if st.review_form is not None:
        out.print("[bold]Form[/bold] (--values JSON):")
        required = set(st.review_form.get("required", []))
        for name, field in (st.review_form.get("properties") or {}).items():
            kind = field.get("type", "") if isinstance(field, dict) else ""
            enum = field.get("enum") if isinstance(field, dict) else None
            kind = " | ".join(map(str, enum)) if enum else kind
            mark = " (required)" if name in required else ""
            out.print(f"  {escape(name)}: {escape(str(kind))}{mark}")
    if spec.approvers is not None or spec.required > 1:
        who = ", ".join(sorted(spec.approvers)) if spec.approvers is not None else "anyone"
        out.print(f"[bold]Approvers:[/bold] {escape(who)}; {spec.required} required")
    for v in st.votes:
        choice = f" ({v.get('choice')})" if v.get("choice") is not None else ""
        out.print(f"  approved by {escape(str(v.get('reviewer')))}{escape(choice)}")


def _targets(
    state: CliContext, item_id: str | None, stage: str | None, all_: bool, stage_opt: str | None
) -> list[tuple[str, str]]:
    if all_:
        if item_id is not None or stage is not None:
            raise CliError("--all takes no ITEM STAGE (use --all --stage S)", EXIT_USAGE)
        if stage_opt is None:
            raise CliError("--all needs --stage S", EXIT_USAGE)
        wf = state.workflow()
        return [(r.item_id, r.stage) for r in wf.pending_reviews(state.store(), stage_opt)]
    if item_id is None or stage is None:
        raise CliError("give ITEM STAGE, or --all --stage S", EXIT_USAGE)
    if stage_opt is not None:
        raise CliError("--stage goes with --all", EXIT_USAGE)
    _check_target(state, item_id, stage)
    return [(item_id, stage)]


def _decide(
    state: CliContext,
    targets: list[tuple[str, str]],
    bulk: bool,
    decide: Any,
) -> tuple[list[tuple[str, str]], list[str]]:
    wf = state.workflow()
    store = state.store()

    async def go() -> tuple[list[tuple[str, str]], list[str]]:
        done: list[tuple[str, str]] = []
        skipped: list[str] = []
        with state.sinks(wf):
            for item_id, stage in targets:
                try:
                    await decide(wf, item_id, stage, store)
                except ReviewError as exc:
                    if not bulk:
                        raise
                    skipped.append(str(exc))  # someone else decided it meanwhile
                    continue
                done.append((item_id, stage))
        return done, skipped

    try:
        return run_async(go())
    except ReviewError as exc:
        raise CliError(str(exc)) from None


def _apply(
    state: CliContext,
    targets: list[tuple[str, str]],
    bulk: bool,
    decision: Any,
    who: str,
    comment: str | None,
    verb: str,
    as_json: bool,
) -> None:
    """Apply one decision to every target and say what was decided (and skipped)."""

    async def decide(wf: Any, i: str, s: str, store: Any) -> None:
        await wf.resolve_review(i, s, decision, store, reviewer=who, comment=comment)

    done, skipped = _decide(state, targets, bulk, decide)
    _report(done, skipped, verb, as_json, decision_name(decision))


def _report(
    done: list[tuple[str, str]], skipped: list[str], verb: str, as_json: bool, decision: str
) -> None:
    if as_json:
        emit_json(
            {
                "decision": decision,
                "decided": [{"item_id": i, "stage": s} for i, s in done],
                "skipped": skipped,
            }
        )
        return
    if len(done) == 1:
        click.echo(f"{verb} {done[0][0]} / {done[0][1]}")
    else:
        click.echo(f"{verb} {len(done)} review{'s' if len(done) != 1 else ''}")
    for reason in skipped:
        click.echo(f"skipped: {reason}", err=True)


_common = [
    click.argument("item_id", metavar="[ITEM]", type=ITEM_ID, required=False),
    click.argument("stage", metavar="[STAGE]", required=False),
    click.option("--all", "all_", is_flag=True, help="Every stage --stage S awaiting review."),
    click.option("--stage", "stage_opt", metavar="S", help="With --all: the stage."),
    click.option(
        "--reviewer",
        help="Who decides (default: $TREADLE_REVIEWER, then the login name).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
]


def _with_common(fn: Any) -> Any:
    for decorator in reversed(_common):
        fn = decorator(fn)
    return fn


@review.command()
@_with_common
@click.option("--choice", help="The answer picked, when the review offers choices.")
@click.option(
    "--values",
    "values_text",
    metavar="JSON",
    help="The form's answers as a JSON object (@FILE reads them from a file).",
)
@click.option("--comment", help="A note kept with the decision.")
@pass_state
def approve(
    state: CliContext,
    item_id: str | None,
    stage: str | None,
    all_: bool,
    stage_opt: str | None,
    reviewer: str | None,
    as_json: bool,
    choice: str | None,
    values_text: str | None,
    comment: str | None,
) -> None:
    """Approve ITEM STAGE (or --all --stage S): the output stands, dependents may run.

    A review with choices needs --choice; one with a form needs --values.
    """
    who = reviewer_name(reviewer)
    values = None if values_text is None else _values(values_text)
    targets = _targets(state, item_id, stage, all_, stage_opt)
    _apply(state, targets, all_, Approve(choice, values), who, comment, "approved", as_json)


@review.command()
@_with_common
@click.option("--reason", required=True, help="Why (kept in the audit record).")
@click.option("--comment", help="A note kept with the decision.")
@pass_state
def reject(
    state: CliContext,
    item_id: str | None,
    stage: str | None,
    all_: bool,
    stage_opt: str | None,
    reviewer: str | None,
    as_json: bool,
    reason: str,
    comment: str | None,
) -> None:
    """Reject ITEM STAGE (or --all --stage S): the stage fails with the reason (which a
    later retry sees as its feedback)."""
    who = reviewer_name(reviewer)
    if not reason.strip():
        raise CliError(
            "--reason is empty: say why (it is the audit record); nothing saved", EXIT_USAGE
        )
    targets = _targets(state, item_id, stage, all_, stage_opt)
    _apply(state, targets, all_, Reject(reason), who, comment, "rejected", as_json)


@review.command()
@_with_common
@click.option("--feedback", required=True, help="What to change (the next attempt sees it).")
@click.option("--comment", help="A note kept with the decision.")
@pass_state
def changes(
    state: CliContext,
    item_id: str | None,
    stage: str | None,
    all_: bool,
    stage_opt: str | None,
    reviewer: str | None,
    as_json: bool,
    feedback: str,
    comment: str | None,
) -> None:
    """Request changes on ITEM STAGE (or --all --stage S): the stage that produced the work
    runs again with the feedback as ctx.feedback (for a review stage, the stage it reviews)."""
    who = reviewer_name(reviewer)
    if not feedback.strip():
        raise CliError("--feedback is empty: say what to change; nothing saved", EXIT_USAGE)
    targets = _targets(state, item_id, stage, all_, stage_opt)
    decision = RequestChanges(feedback)
    _apply(state, targets, all_, decision, who, comment, "changes requested for", as_json)


def _values(text: str) -> dict[str, Any]:
    """``--values``: a JSON object, or ``@FILE`` holding one."""
    source = "--values"
    if text.startswith("@"):
        source = text[1:]
        try:
            with open(source, "rb") as fh:
                raw: str | bytes = fh.read()
        except OSError as exc:
            raise CliError(f"{source}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    else:
        raw = text
    try:
        values = parse_json(raw, source)
    except InputError as exc:
        raise CliError(f"{exc}; nothing saved", EXIT_USAGE) from None
    if not isinstance(values, dict):
        raise CliError(f"{source}: expected a JSON object of answers; nothing saved", EXIT_USAGE)
    return values


@review.command()
@click.argument("item_id", metavar="ITEM", type=ITEM_ID)
@click.argument("stage")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The edited artefact as JSON (- for stdin); default: open $EDITOR.",
)
@click.option("--note", help="What was changed (kept with the decision).")
@click.option(
    "--force",
    is_flag=True,
    help="Approve the edit even if the stage's quality gate rejects it (audited).",
)
@click.option("--reviewer", help="Who decides (default: $TREADLE_REVIEWER, then the login name).")
@click.option("--comment", help="A note kept with the decision.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def edit(
    state: CliContext,
    item_id: str,
    stage: str,
    path: str | None,
    note: str | None,
    force: bool,
    reviewer: str | None,
    comment: str | None,
    as_json: bool,
) -> None:
    """Approve ITEM STAGE with an edited artefact (from --file, or in $EDITOR). The stage's
    quality gate checks the edit first; --force skips that, and the audit record says so."""
    who = reviewer_name(reviewer)
    _check_target(state, item_id, stage)
    store = state.store()
    st = store.get_stage_state(item_id, stage)
    if st is None or st.status != StageStatus.AWAITING_REVIEW:
        status = st.status.value if st is not None else "pending"
        raise CliError(f"{item_id} / {stage} is {status}, not awaiting review; nothing saved")
    text: str | bytes
    if path is not None:
        source = "<stdin>" if path == "-" else path
        try:
            if path == "-":
                text = getattr(sys.stdin, "buffer", sys.stdin).read()
            else:
                with open(path, "rb") as fh:
                    text = fh.read()
        except OSError as exc:
            raise CliError(f"{source}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    else:
        source = "edited artefact"
        original = json.dumps(st.artefact, indent=2, ensure_ascii=False, default=str) + "\n"
        edited = click.edit(original, extension=".json")
        if edited is None or edited == original:
            raise CliError("artefact unchanged; nothing saved (use 'review approve' to approve)")
        text = edited
    try:
        artefact = parse_json(text, source)
    except InputError as exc:
        raise CliError(f"{exc}; nothing saved", EXIT_USAGE) from None
    decision = ApproveWithEdits(artefact, note, force)
    _apply(state, [(item_id, stage)], False, decision, who, comment, "approved with edits", as_json)
