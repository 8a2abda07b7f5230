"""A person's decision on a stage AWAITING_REVIEW (SPEC §5, §11): pure, values in and
values out, like `decide`.

`resolve` checks the decision against the review — who may decide, the choices offered,
the form's schema, the votes so far — and returns every stage it changes: the reviewed
stage (one more vote, COMPLETE, FAILED or back to PENDING), the dependents a choice did
not pick (SKIPPED "not chosen"), and on a request for changes the stage that produced
the work and everything after it (back to PENDING with the reviewer's feedback). A
refused decision raises `ReviewError` naming what is wrong; the write then saves nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ReviewError
from ..events import (
    ChangesRequested,
    Event,
    ReviewResolved,
    ReviewVoted,
    StageCompleted,
    StageFailed,
    StageSkipped,
)
from ..model import (
    Approve,
    ApproveWithEdits,
    QualityFeedback,
    Reject,
    RequestChanges,
    ReviewDecision,
    ReviewRecord,
    StageState,
    StageStatus,
    decision_name,
    to_ts,
)
from .actions import downstream, reset
from .plan import Plan, StageSpec

#: Why the dependents of a choice a person did not pick were skipped.
NOT_CHOSEN = "not chosen"


@dataclass(frozen=True)
class Resolution:
    """The stages a decision changes, its events, and its audit record."""

    states: dict[str, StageState]
    events: list[Event]
    record: ReviewRecord

    @property
    def wakes(self) -> bool:
        """Whether work may be ready because of it (not one vote among several)."""
        return any(st.status != StageStatus.AWAITING_REVIEW for st in self.states.values())


def reviewed_stage(plan: Plan, stage: str, state: StageState) -> str:
    """The stage whose work a review of ``stage`` is about: the upstream stage its review
    context names under ``"stage"`` (what the built-in ``review`` stage does), else
    ``stage`` itself. Changes asked go there; an edit is checked by its gate."""
    named = state.review_context.get("stage")
    return named if isinstance(named, str) and named in plan.ancestors[stage] else stage


def resolve(
    plan: Plan,
    states: dict[str, StageState],
    stage: str,
    decision: ReviewDecision,
    now: datetime,
    *,
    item_id: str,
    reviewer: str | None,
    comment: str | None,
    edited: Any = None,
    automatic: bool = False,
) -> Resolution:
    """Apply ``decision`` to ``stage`` (AWAITING_REVIEW in ``states``). ``edited`` is the
    checked edit of an `ApproveWithEdits`; ``automatic`` marks the review timeout's own
    decision, which no approver list, choice or form constrains."""
    spec, st = plan.specs[stage], states[stage]
    where = f"item {item_id!r} stage {stage!r}"
    if not automatic:
        _check_reviewer(spec, st, reviewer, where)
    match decision:
        case Reject(reason):
            if not isinstance(reason, str) or not reason.strip():
                raise ReviewError(f"{where}: a rejection needs a reason (it is the audit record)")
            return _reject(st, reason, now, item_id, stage, reviewer, comment)
        case RequestChanges(feedback):
            if not isinstance(feedback, str) or not feedback.strip():
                raise ReviewError(f"{where}: say what to change (the feedback is empty)")
            return _request_changes(plan, states, stage, feedback, now, item_id, reviewer, comment)
    return _approve(
        plan, states, spec, decision, now, item_id, reviewer, comment, edited, automatic
    )


def _check_reviewer(spec: StageSpec, st: StageState, reviewer: str | None, where: str) -> None:
    if reviewer is not None and (not isinstance(reviewer, str) or not reviewer.strip()):
        raise ReviewError(f"{where}: the reviewer's name is empty")
    if reviewer is None:
        if spec.approvers is not None:
            raise ReviewError(f"{where}: only its approvers may decide; name the reviewer")
        if spec.required > 1:
            raise ReviewError(
                f"{where}: it needs {spec.required} approvals from distinct reviewers; "
                "name the reviewer"
            )
        return
    if spec.approvers is not None and reviewer not in spec.approvers:
        names = ", ".join(sorted(spec.approvers))
        raise ReviewError(f"{where}: {reviewer!r} is not one of its approvers ({names})")
    if any(v.get("reviewer") == reviewer for v in st.votes):
        raise ReviewError(f"{where}: {reviewer!r} has already approved it; one vote each")


def _closed(st: StageState, now: datetime, **changes: Any) -> StageState:
    """``st`` with its review over."""
    return st.replace(
        completed_at=now, updated_at=now, review_deadline=None, next_attempt_at=None, **changes
    )


def _reject(
    st: StageState,
    reason: str,
    now: datetime,
    item_id: str,
    stage: str,
    reviewer: str | None,
    comment: str | None,
) -> Resolution:
    # The reason is what the next attempt sees after `retry_stage`.
    new = _closed(
        st,
        now,
        status=StageStatus.FAILED,
        error=reason,
        feedback=QualityFeedback(reason),
        votes=[],
        approval=None,
    )
    events: list[Event] = [
        ReviewResolved(item_id=item_id, stage=stage, decision="reject", reviewer=reviewer, at=now),
        StageFailed(item_id=item_id, stage=stage, error=reason, at=now),
    ]
    record = ReviewRecord("reject", reviewer, comment, now, reason=reason)
    return Resolution({stage: new}, events, record)


def _request_changes(
    plan: Plan,
    states: dict[str, StageState],
    stage: str,
    feedback: str,
    now: datetime,
    item_id: str,
    reviewer: str | None,
    comment: str | None,
) -> Resolution:
    """The stage that produced the work runs again with ``feedback`` (a renewed budget;
    attempts keep counting); every stage after it that already ran goes back to PENDING."""
    target = reviewed_stage(plan, stage, states[stage])
    changed: dict[str, StageState] = {}
    for name in [target, *downstream(plan, target)]:
        cur = states.get(name)
        if cur is None or (name != target and cur.status == StageStatus.PENDING):
            continue
        if cur.status == StageStatus.RUNNING:
            raise ReviewError(
                f"item {item_id!r} stage {stage!r}: stage {name!r} is running; ask for "
                "changes once it has finished"
            )
        new = reset(cur, now)
        if name == target:
            new = new.replace(feedback=QualityFeedback(feedback))
        changed[name] = new
    events: list[Event] = [
        ReviewResolved(
            item_id=item_id, stage=stage, decision="request_changes", reviewer=reviewer, at=now
        ),
        ChangesRequested(
            item_id=item_id,
            stage=target,
            reviewer=reviewer,
            feedback=feedback,
            reviewed_at=stage,
            at=now,
        ),
    ]
    record = ReviewRecord("request_changes", reviewer, comment, now, feedback=feedback)
    return Resolution(changed, events, record)


def _approve(
    plan: Plan,
    states: dict[str, StageState],
    spec: StageSpec,
    decision: Approve | ApproveWithEdits,
    now: datetime,
    item_id: str,
    reviewer: str | None,
    comment: str | None,
    edited: Any,
    automatic: bool,
) -> Resolution:
    stage, st = spec.name, states[spec.name]
    where = f"item {item_id!r} stage {stage!r}"
    choice = decision.choice if isinstance(decision, Approve) else None
    values = decision.values if isinstance(decision, Approve) else None
    if isinstance(decision, ApproveWithEdits):
        _check_edit_allowed(spec, st, where, automatic)
    elif not automatic:
        _check_answer(st, choice, values, where)
    record = ReviewRecord(
        decision_name(decision),
        reviewer,
        comment,
        now,
        edited_artefact=edited,
        note=decision.note if isinstance(decision, ApproveWithEdits) else None,
        choice=choice,
        values=values,
        forced=isinstance(decision, ApproveWithEdits) and decision.force,
    )
    vote = {"reviewer": reviewer, "choice": choice, "values": values, "at": to_ts(now)}
    votes = [*st.votes, vote]
    if len(votes) < spec.required and not automatic:
        event = ReviewVoted(
            item_id=item_id,
            stage=stage,
            reviewer=reviewer or "",
            approvals=len(votes),
            required=spec.required,
            at=now,
        )
        # ``updated_at`` stays: a vote keeps the review's place in the queue.
        return Resolution({stage: st.replace(votes=votes)}, [event], record)
    artefact = edited if isinstance(decision, ApproveWithEdits) else st.artefact
    new = _closed(
        st,
        now,
        status=StageStatus.COMPLETE,
        artefact=artefact,
        error=None,
        votes=votes,
        approval=record.to_dict(),
    )
    changed = {stage: new}
    events: list[Event] = [
        ReviewResolved(
            item_id=item_id,
            stage=stage,
            decision=record.decision,
            reviewer=reviewer,
            choice=choice,
            at=now,
        ),
        StageCompleted(item_id=item_id, stage=stage, at=now),
    ]
    for name in not_chosen(plan, spec, choice):
        cur = states.get(name)
        if cur is None or cur.status == StageStatus.PENDING:
            base = cur or StageState()
            changed[name] = base.replace(
                status=StageStatus.SKIPPED,
                error=None,
                next_attempt_at=None,
                completed_at=now,
                updated_at=now,
            )
            events.append(StageSkipped(item_id=item_id, stage=name, reason=NOT_CHOSEN, at=now))
    return Resolution(changed, events, record)


def _check_edit_allowed(spec: StageSpec, st: StageState, where: str, automatic: bool) -> None:
    if automatic:
        return
    if spec.required > 1:
        raise ReviewError(
            f"{where}: a review that needs {spec.required} approvals cannot be edited; "
            "approve, reject or request changes"
        )
    if st.review_choices or st.review_form is not None:
        asks = "a choice" if st.review_choices else "the form's answers"
        raise ReviewError(f"{where}: this review asks for {asks}; approve with them, not an edit")


def _check_answer(
    st: StageState, choice: str | None, values: dict[str, Any] | None, where: str
) -> None:
    """The choice and form values of an approval, against what the review offered."""
    offered = st.review_choices
    if offered and choice is None:
        raise ReviewError(f"{where}: choose one of: {', '.join(offered)}")
    if choice is not None:
        if not offered:
            raise ReviewError(f"{where}: no choices were offered, so {choice!r} cannot be chosen")
        if choice not in offered:
            raise ReviewError(
                f"{where}: {choice!r} is not one of the choices ({', '.join(offered)})"
            )
        earlier = [v for v in st.votes if v.get("choice") != choice]
        if earlier:
            raise ReviewError(
                f"{where}: {earlier[0].get('reviewer')!r} approved {earlier[0].get('choice')!r}; "
                "approve the same choice, or reject or request changes"
            )
    if st.review_form is None:
        if values is not None:
            raise ReviewError(f"{where}: this review has no form, so it takes no values")
        return
    if values is None:
        raise ReviewError(f"{where}: this review has a form; give its values")
    problem = form_problem(st.review_form, values)
    if problem is not None:
        raise ReviewError(f"{where}: {problem}")


def form_problem(form: dict[str, Any], values: Any) -> str | None:
    """What is wrong with ``values`` as answers to ``form`` (a JSON Schema), naming the
    field; None when they satisfy it."""
    import jsonschema  # only when a form is used

    if not isinstance(values, dict):
        return f"form values are a JSON object, not {type(values).__name__}"
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"form values must be JSON: {exc}"
    validator = jsonschema.validators.validator_for(form)(form)
    error = jsonschema.exceptions.best_match(validator.iter_errors(values))
    if error is None:
        return None
    field = "/".join(str(p) for p in error.absolute_path)
    return f"form field {field!r}: {error.message}" if field else f"form: {error.message}"


def not_chosen(plan: Plan, spec: StageSpec, choice: str | None) -> list[str]:
    """The stages a person's ``choice`` at ``spec``'s review rules out, in order: the
    dependents listed under the other choices, and after them every stage all of whose
    dependencies were ruled out (a branch's own chain; a join of branches still runs)."""
    if not spec.branches:
        return []
    chosen = set(spec.branches.get(choice, ())) if choice is not None else set()
    out = {d for c, deps in spec.branches.items() if c != choice for d in deps} - chosen
    for name in plan.order:
        deps = plan.deps[name]
        if name not in out and deps and all(d in out for d in deps):
            out.add(name)
    return [n for n in plan.order if n in out]
