"""The review console: a Starlette app over the public treadle_core API.

Store calls are synchronous (peewee), so they run in the thread pool; the
engine's coroutines (`resolve_review`, `retry_stage`, `rerun`, `cancel`) are awaited
directly. What the CLI does too (failed stages, an item's and a review's detail, the
overview, re-running and cancelling) goes through `treadle_core.ops`, the operator API
both share. The route table is `Console.routes()`: one line per page or action.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from treadle_core import Approve as ApproveDecision
from treadle_core import (
    ApproveWithEdits,
    AttemptRecord,
    PendingReview,
    Reject,
    RequestChanges,
    RerunError,
    RetryError,
    ReviewError,
    StageState,
    StageStatus,
    StateStore,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
    Workflow,
    ops,
)
from treadle_core.metrics import WorkflowMetrics

from . import __version__, forms
from .ballot import Ballot
from .layout import layout
from .once import Once, form_key, view_key
from .queue import (
    FOLLOWING,
    PAGE_SIZE,
    Query,
    first_waiting,
    neighbours,
    queue_page,
    waiting_counts,
)
from .render import (
    ago,
    duration,
    edit_text,
    event_row,
    first_line,
    local_time,
    pretty_json,
    render_value,
    status_label,
)
from .security import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Access,
    Csrf,
    Guard,
    deny,
    new_sid,
    safe_next,
    signed_in,
)
from .users import Users, UsersFileError

HERE = Path(__file__).parent
REVIEWER_COOKIE = "treadle_ui_reviewer"
MAX_FAILED_SHOWN = 50
MAX_EVENTS_SHOWN = 300
MAX_SUBTASKS_SHOWN = 500
MAX_SEARCH = 200  # characters of a search text
STATUSES = ("pending", "running", "awaiting_review", "failed", "complete", "skipped")
_VIEW = re.compile(r"[A-Za-z0-9_-]{8,32}")


@dataclass
class Settings:
    reviewer: str | None
    poll: float
    page_size: int = PAGE_SIZE


def _key(item_id: str, stage: str) -> str:
    """A review's value in a form: JSON, so any item id or stage name survives."""
    return json.dumps([item_id, stage])


def _keys(raw: str, most: int) -> list[tuple[str, str]]:
    """``[[item, stage], ...]`` from a form field; malformed entries are dropped."""
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    pairs = [p for p in value[:most] if isinstance(p, list) and len(p) == 2]
    return [(str(i), str(s)) for i, s in pairs]


def _url(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(clean) if clean else "")


def _int(value: str | None, default: int, low: int = 0) -> int:
    try:
        return max(low, int(value or ""))
    except ValueError:
        return default


def _epoch(value: Any) -> datetime | None:
    """A vote's time (epoch seconds, as the library keeps it) as a datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.autoescape = True  # every template, whatever its extension
    env.filters.update(
        local_time=local_time,
        ago=ago,
        status_label=status_label,
        first_line=first_line,
        pretty_json=pretty_json,
        render_value=render_value,
        epoch=_epoch,
        key=lambda r: _key(r.item_id, r.stage),
        keys=lambda rs: json.dumps([[r.item_id, r.stage] for r in rs]),
    )
    env.globals.update(url=_url, duration=duration, version=__version__, statuses=STATUSES)
    return templates


@dataclass(frozen=True)
class Upstream:
    """An ancestor of the stage under review, as the review page shows it."""

    name: str
    state: StageState
    direct: bool
    attempts_by_subtask: dict[str, list[AttemptRecord]]
    under_review: bool  # its artefact is the one under review (shown above already)


class Console:
    """The routes, holding the workflow, the store and the settings."""

    def __init__(
        self,
        wf: Workflow,
        store: StateStore,
        settings: Settings,
        access: Access,
        csrf: Csrf,
    ) -> None:
        self.wf = wf
        self.store = store
        self.settings = settings
        self.access = access
        self.csrf = csrf
        self.once = Once()
        self.templates = _templates()
        self.templates.env.globals["asks"] = self.asks

    def asks(self, r: PendingReview) -> list[str]:
        """What a waiting review asks for (choices, a form, approvals), for the queue."""
        if r.stage not in self.wf.specs:
            return []
        return Ballot.of(self.wf, r.stage, choices=r.choices, form=r.form, votes=r.votes).asks()

    def routes(self) -> list[BaseRoute]:
        """Every page and action of the console."""
        return [
            Route("/", self.overview),
            Route("/live/overview", self.overview_live),
            Route("/review", self.review_page),
            Route("/item", self.item_page),
            Route("/live/item", self.item_live),
            Route("/decide", self.decide, methods=["POST"]),
            Route("/bulk", self.bulk, methods=["POST"]),
            Route("/retry", self.retry, methods=["POST"]),
            Route("/rerun", self.rerun, methods=["POST"]),
            Route("/cancel", self.cancel, methods=["POST"]),
            Route("/reviewer", self.set_reviewer, methods=["POST"]),
            Route("/signin", self.signin, methods=["GET", "POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]

    # --- helpers -----------------------------------------------------------------------
    def reviewer(self, request: Request) -> str | None:
        """Who decides: the signed-in reviewer with --users, else the name cookie or
        --reviewer."""
        if self.access.users is not None:
            try:
                return signed_in(request, self.access.users)
            except UsersFileError:
                return None
        name = unquote(request.cookies.get(REVIEWER_COOKIE) or "").strip()
        return name or self.settings.reviewer

    def page(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        given = request.query_params.get("view", "")
        view = given if _VIEW.fullmatch(given) else secrets.token_urlsafe(12)
        base = {
            "pipeline": self.wf.name,
            "reviewer": self.reviewer(request),
            "users_mode": self.access.users is not None,
            "csrf": self.csrf.token(str(request.session.get("sid", ""))),
            "poll_ms": int(self.settings.poll * 1000),
            "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
            "view": view,
            "idem": lambda *parts: view_key(view, *parts),
        }
        return self.templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status_code
        )

    def _stage_filter(self, value: str | None) -> str | None:
        if value and value in self.wf.stages:
            return value
        return None

    def _query(self, request: Request, params: Any, stage_key: str = "stage") -> Query:
        return Query(
            stage=self._stage_filter(str(params.get(stage_key) or "")),
            q=str(params.get("q") or "").strip()[:MAX_SEARCH],
            page=_int(params.get("page"), 1, low=1),
            mine=self.reviewer(request) if params.get("mine") else None,
        )

    def _overview_data(self, query: Query) -> dict[str, Any]:
        """Queue page, counts, summary, failures: one thread-pool call per refresh."""
        wf, store = self.wf, self.store
        view = ops.overview(wf, store)
        items, summary = view.items, view.stages
        counts = waiting_counts(summary)
        page = queue_page(wf, store, query, counts, size=self.settings.page_size)
        failed = [
            (f.item_id, f.stage, f.error, f.attempt)
            for f in ops.failed_stages(wf, store, limit=MAX_FAILED_SHOWN)
        ]
        return {
            "queue": page,
            "query": query,
            "stage": query.stage,
            "per_stage": counts,
            "total_pending": sum(counts.values()),
            "summary": summary,
            "items": items,
            "stale": view.stale,
            "item_total": view.total,
            "graph": layout(wf, summary),
            "failed": failed,
            "stages": wf.stages,
        }

    # --- overview ----------------------------------------------------------------------
    async def overview(
        self,
        request: Request,
        *,
        error: str | None = None,
        form: FormData | None = None,
        status_code: int = 200,
    ) -> Response:
        params = form if form is not None else request.query_params
        query = self._query(request, params, "queue" if form is not None else "stage")
        data = await run_in_threadpool(self._overview_data, query)
        bulk = {"comment": "", "reason": ""}
        selected: set[str] = set()
        if form is not None:
            bulk = {k: str(form.get(k) or "") for k in bulk}
            selected = {str(v) for v in form.getlist("target")}
        context = {
            **data,
            "notice": _notice(request) if error is None else None,
            "bulk_error": error,
            "bulk": bulk,
            "selected": selected,
        }
        return self.page(request, "overview.html", context, status_code)

    async def overview_live(self, request: Request) -> Response:
        query = self._query(request, request.query_params)
        data = await run_in_threadpool(self._overview_data, query)
        return self.page(request, "_overview_live.html", {**data, "selected": set()})

    # --- one item / one review ---------------------------------------------------------
    def _item_data(self, item_id: str) -> dict[str, Any]:
        detail = ops.item_detail(self.wf, self.store, item_id, events=MAX_EVENTS_SHOWN)
        rows = [event_row(e) for e in detail.events]
        rows.reverse()
        return {
            "item_id": item_id,
            "data": detail.data,
            "status": detail.status,
            "events": rows,
            "events_total": detail.events_total,
        }

    def _upstream(self, item_id: str, stage: str, states: dict[str, StageState]) -> list[Upstream]:
        """Every done ancestor, direct dependencies first, then the nearest first."""
        reviewed = states[stage].artefact
        wf, store = self.wf, self.store
        direct = set(wf.dependencies(stage))
        order = wf.ancestors(stage)
        found = []
        for name in sorted(order, key=lambda n: (n not in direct, -order.index(n))):
            st = states.get(name)
            if st is None or not st.status.is_done:
                continue
            by_sub = _by_subtask(store.get_attempts(item_id, name)) if st.subtasks else {}
            same = st.artefact is not None and st.artefact == reviewed
            found.append(Upstream(name, st, name in direct, by_sub, same))
        return found

    def _review_data(
        self, item_id: str, stage: str, query: Query, at: int | None
    ) -> dict[str, Any]:
        wf, store = self.wf, self.store
        detail = ops.review_detail(wf, store, item_id, stage)  # Unknown{Stage,Item}Error
        data = self._item_data(item_id)
        states = data["status"].stages
        st, attempts = states[stage], detail.attempts
        source = (st.review_context or {}).get("stage")
        reviewed = None
        if isinstance(source, str) and source in wf.stages and source != stage:
            reviewed = {"stage": source, "attempts": store.get_attempts(item_id, source)}
        near = neighbours(wf, store, query, item_id, stage, at)
        counts = waiting_counts(wf.summary(store))
        context = {k: v for k, v in (st.review_context or {}).items() if k != "data"}
        return {
            **data,
            "stage": stage,
            "state": st,
            "awaiting": st.status == StageStatus.AWAITING_REVIEW,
            "artefact": render_value(st.artefact),
            "attempts": [a for a in attempts if a.subtask is None],
            "subtasks": st.subtasks[:MAX_SUBTASKS_SHOWN],
            "subtask_attempts": _by_subtask(attempts),
            "reviewed": reviewed,
            "upstream": self._upstream(item_id, stage, states),
            "reviews": detail.reviews,
            "context": context,
            "ballot": Ballot.of(
                wf, stage, choices=st.review_choices, form=st.review_form, votes=st.votes
            ),
            "fields": forms.fields(st.review_form),
            "changes_to": _changes_to(wf, stage, st),
            "queue_len": counts.get(query.stage, 0) if query.stage else sum(counts.values()),
            "near": near,
            "query": query,
            "queue_stage": query.stage,
        }

    async def review(
        self,
        request: Request,
        *,
        item_id: str | None = None,
        stage: str | None = None,
        query: Query | None = None,
        at: int | None = None,
        error: str | None = None,
        error_field: str | None = None,
        problems: dict[str, str] | None = None,
        offer_force: bool = False,
        form: FormData | None = None,
        status_code: int = 200,
    ) -> Response:
        q = request.query_params
        item_id = item_id if item_id is not None else q.get("item", "")
        stage = stage if stage is not None else q.get("stage", "")
        query = query or self._query(request, q, "queue")
        at = at if at is not None else _int(q.get("at"), 0)
        try:
            data = await run_in_threadpool(self._review_data, item_id, stage, query, at)
        except (UnknownItemError, UnknownStageError) as exc:
            return self.page(request, "missing.html", {"message": str(exc)}, 404)
        text, mode = edit_text(data["state"].artefact)
        values = {
            "artefact": text,
            "mode": mode,
            "comment": "",
            "reason": "",
            "note": "",
            "feedback": "",
            "force": "",
        }
        answers = forms.initial_texts(data["fields"])
        if form is not None:
            values.update({k: str(form.get(k) or "") for k in values})
            values["mode"] = "text" if values["mode"] == "text" else "json"
            answers = forms.read(data["fields"], form).texts
        ballot: Ballot = data["ballot"]
        near = data["near"]
        position = near.position if near.position is not None else None
        return self.page(
            request,
            "review.html",
            {
                **data,
                "values": values,
                "error": error,
                "error_field": error_field,
                "problems": problems or {},
                "answers": answers,
                "offer_force": offer_force or values["force"] == "on",
                "refusal": ballot.refusal(self.reviewer(request)) if data["awaiting"] else None,
                "notice": _notice(request),
                "open_editor": error_field == "artefact",
                "at": at if position is None else position,
                "position": None if position is None else position + 1,
                "here": _url(
                    "/review", item=item_id, stage=stage, queue=query.stage, at=at, **query.keep
                ),
            },
            status_code,
        )

    async def review_page(self, request: Request) -> Response:
        return await self.review(request)

    async def item_page(self, request: Request) -> Response:
        item_id = request.query_params.get("item", "")
        try:
            data = await run_in_threadpool(self._item_data, item_id)
        except UnknownItemError as exc:
            return self.page(request, "missing.html", {"message": str(exc)}, 404)
        return self.page(request, "item.html", {**data, "notice": _notice(request)})

    async def item_live(self, request: Request) -> Response:
        item_id = request.query_params.get("item", "")
        try:
            data = await run_in_threadpool(self._item_data, item_id)
        except UnknownItemError as exc:
            return PlainTextResponse(str(exc), 404)
        current = self._stage_filter(request.query_params.get("current"))
        return self.page(request, "_item_live.html", {**data, "current": current, "back": "item"})

    # --- decisions ---------------------------------------------------------------------
    async def _once(
        self, request: Request, act: Callable[[FormData], Awaitable[Response]]
    ) -> Response:
        """Run a POST action once per form submission (see once.py)."""
        form = await request.form()
        key = form_key(str(request.session.get("sid", "")), form)
        return await self.once.run(key, lambda: act(form))

    async def decide(self, request: Request) -> Response:
        return await self._once(request, lambda form: self._decide(request, form))

    async def _decide(self, request: Request, form: FormData) -> Response:
        item_id = str(form.get("item") or "")
        stage = str(form.get("stage") or "")
        action = str(form.get("action") or "")
        query = self._query(request, form, "queue")
        at = _int(str(form.get("at") or ""), 0)
        comment = str(form.get("comment") or "").strip() or None
        reviewer = self.reviewer(request)
        choice = form.get("choice")
        if not action and choice is not None:
            action = "approve"  # a choice's button approves with that choice

        def refuse(
            message: str,
            field: str | None = None,
            *,
            problems: dict[str, str] | None = None,
            status_code: int = 400,
        ) -> Awaitable[Response]:
            return self.review(
                request,
                item_id=item_id,
                stage=stage,
                query=query,
                at=at,
                error=message,
                error_field=field,
                problems=problems,
                offer_force=action == "edit" and field == "artefact",
                form=form,
                status_code=status_code,
            )

        if not reviewer:
            return await refuse("Enter your name (top right) before deciding.", "reviewer")
        st = await run_in_threadpool(self.store.get_stage_state, item_id, stage)
        form_fields = forms.fields(st.review_form if st is not None else None)
        outcome: Any
        if action == "approve":
            values = None
            if form_fields:
                answers = forms.read(form_fields, form)
                if answers.problems:
                    names = ", ".join(
                        repr(f.label) for f in form_fields if f.name in answers.problems
                    )
                    return await refuse(
                        f"Check the answers to {names}; nothing saved.", problems=answers.problems
                    )
                values = answers.values
            outcome = ApproveDecision(choice=None if choice is None else str(choice), values=values)
        elif action == "changes":
            feedback = str(form.get("feedback") or "").strip()
            if not feedback:
                return await refuse(
                    "Say what to change: your words are what the stage sees when it runs "
                    "again; nothing saved.",
                    "feedback",
                )
            outcome = RequestChanges(feedback)
        elif action == "reject":
            reason = str(form.get("reason") or "").strip()
            if not reason:
                return await refuse("A rejection needs a reason; nothing saved.", "reason")
            outcome = Reject(reason)
        elif action == "edit":
            text = str(form.get("artefact") or "")
            if form.get("mode") == "text":
                artefact: Any = text
            else:
                try:
                    artefact = json.loads(text)
                except json.JSONDecodeError as exc:
                    return await refuse(
                        f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
                        "nothing saved.",
                        "artefact",
                    )
            note = str(form.get("note") or "").strip() or None
            outcome = ApproveWithEdits(artefact, note, force=form.get("force") == "on")
        else:
            return PlainTextResponse(f"unknown action {action!r}", 400)

        try:
            after = await self.wf.resolve_review(
                item_id, stage, outcome, self.store, reviewer=reviewer, comment=comment
            )
        except (UnknownItemError, UnknownStageError) as exc:
            return self.page(request, "missing.html", {"message": str(exc)}, 404)
        except ReviewError as exc:
            now = await run_in_threadpool(self.store.get_stage_state, item_id, stage)
            if now is None or now.status != StageStatus.AWAITING_REVIEW:
                # Decided meanwhile (by someone else, or by a timeout): back to the queue.
                back = {"stage": query.stage, **query.keep}
                return _redirect("/", **back, notice="conflict", detail=str(exc))
            message = str(exc)
            if "nothing saved" not in message:
                message += " (nothing saved)"
            ballot = Ballot.of(
                self.wf, stage, choices=now.review_choices, form=now.review_form, votes=now.votes
            )
            if ballot.refusal(reviewer):
                return await refuse(message, status_code=403)
            field, problems = _problem_of(action, str(exc), form_fields)
            return await refuse(message, field, problems=problems)
        following = _keys(str(form.get("following") or ""), FOLLOWING)
        nxt = await run_in_threadpool(self._next_review, query, (item_id, stage), following)
        done = {"notice": action, "done_item": item_id, "done_stage": stage}
        if after.stages[stage].status == StageStatus.AWAITING_REVIEW:
            # One approval of several: the review waits for the others.
            tally = Ballot.of(
                self.wf, stage, choices=(), form=None, votes=after.stages[stage].votes
            ).tally
            done.update(notice="voted", detail=tally or "")
        elif action == "changes":
            done["detail"] = _changes_to(self.wf, stage, st) if st is not None else stage
        elif action == "approve" and choice is not None:
            done.update(notice="chose", detail=str(choice))
        if nxt is None:
            return _redirect("/", stage=query.stage, **query.keep, **done)
        return _redirect(
            "/review",
            item=nxt.item_id,
            stage=nxt.stage,
            queue=query.stage,
            **query.keep,
            at=at,  # the decided review left the queue: the next one takes its place
            **done,
        )

    def _next_review(
        self, query: Query, decided: tuple[str, str], following: list[tuple[str, str]]
    ) -> PendingReview | None:
        """The first of the reviews that followed the decided one that still waits, else
        the oldest one waiting."""
        for item_id, stage in following:
            if stage not in self.wf.specs:
                continue
            st = self.store.get_stage_state(item_id, stage)
            if st is not None and st.status == StageStatus.AWAITING_REVIEW:
                return PendingReview.of(item_id, stage, st)
        return first_waiting(self.wf, self.store, query, skip=[decided])

    async def bulk(self, request: Request) -> Response:
        return await self._once(request, lambda form: self._bulk(request, form))

    async def _bulk(self, request: Request, form: FormData) -> Response:
        query = self._query(request, form, "queue")
        back = {"stage": query.stage, **query.keep, "page": query.page if query.page > 1 else None}
        reviewer = self.reviewer(request)
        if not reviewer:
            return _redirect("/", **back, notice="noname")
        action = str(form.get("action") or "approve")
        targets: list[tuple[str, str]] = []
        for raw in form.getlist("target"):
            try:
                item_id, stage = json.loads(str(raw))
                targets.append((str(item_id), str(stage)))
            except (ValueError, TypeError):
                return PlainTextResponse("malformed target", 400)
        if not targets:
            return _redirect("/", **back, notice="nothing")
        comment = str(form.get("comment") or "").strip() or None
        reason = str(form.get("reason") or "").strip()
        if action == "reject" and not reason:
            message = "Rejecting needs a reason (it is the audit record); nothing was rejected."
            return await self.overview(request, error=message, form=form, status_code=400)
        if action not in ("approve", "reject"):
            return PlainTextResponse(f"unknown action {action!r}", 400)
        done = skipped = 0
        for item_id, stage in targets:
            try:
                if action == "reject":
                    await self.wf.reject_review(
                        item_id, stage, reason, self.store, reviewer=reviewer, comment=comment
                    )
                else:
                    await self.wf.approve_review(
                        item_id, stage, self.store, reviewer=reviewer, comment=comment
                    )
                done += 1
            except TreadleError:
                skipped += 1  # decided meanwhile by someone else, or gone
        notice = "bulk_reject" if action == "reject" else "bulk"
        return _redirect("/", **back, notice=notice, count=done, skipped=skipped)

    async def retry(self, request: Request) -> Response:
        return await self._once(request, self._retry)

    async def _retry(self, form: FormData) -> Response:
        item_id = str(form.get("item") or "")
        stage = str(form.get("stage") or "")
        back = str(form.get("back") or "item")
        try:
            await self.wf.retry_stage(item_id, stage, self.store)
        except (RetryError, UnknownItemError, UnknownStageError) as exc:
            notice: dict[str, Any] = {"notice": "retry_failed", "detail": str(exc)}
        else:
            notice = {"notice": "retried", "done_item": item_id, "done_stage": stage}
        if back == "overview":
            return _redirect("/", **notice)
        return _redirect("/item", item=item_id, **notice)

    async def rerun(self, request: Request) -> Response:
        return await self._once(request, lambda form: self._rerun(request, form))

    async def _rerun(self, request: Request, form: FormData) -> Response:
        """Re-run a stage of an item (and what follows it, unless ``cascade`` is 0)."""
        item_id = str(form.get("item") or "")
        stage = str(form.get("stage") or "")
        cascade = str(form.get("cascade") or "1") != "0"
        reason = str(form.get("reason") or "").strip()[:500] or None
        by = self.reviewer(request)
        if not by:
            return _redirect("/item", item=item_id, notice="noname")
        try:
            await self.wf.rerun(item_id, stage, self.store, cascade=cascade, reason=reason, by=by)
        except (RerunError, UnknownItemError, UnknownStageError) as exc:
            notice: dict[str, Any] = {"notice": "rerun_failed", "detail": str(exc)}
        else:
            notice = {"notice": "rerun", "done_item": item_id, "done_stage": stage}
        return _redirect("/item", item=item_id, **notice)

    async def cancel(self, request: Request) -> Response:
        return await self._once(request, lambda form: self._cancel(request, form))

    async def _cancel(self, request: Request, form: FormData) -> Response:
        """Cancel an item: its unfinished stages stop and never run (until re-run)."""
        item_id = str(form.get("item") or "")
        reason = str(form.get("reason") or "").strip()[:500] or None
        by = self.reviewer(request)
        if not by:
            return _redirect("/item", item=item_id, notice="noname")
        notice: dict[str, Any]
        try:
            report = await ops.cancel(self.wf, self.store, [item_id], reason=reason, by=by)
        except UnknownItemError as exc:
            notice = {"notice": "cancel_failed", "detail": str(exc)}
        else:
            notice = {"notice": "cancelled", "done_item": item_id}
            for _, why in report.skipped:  # nothing left to cancel
                notice = {"notice": "cancel_failed", "detail": why}
        return _redirect("/item", item=item_id, **notice)

    async def set_reviewer(self, request: Request) -> Response:
        if self.access.users is not None:
            return deny(403, "You are signed in: your name comes from your token.")
        form = await request.form()
        name = str(form.get("reviewer") or "").strip()[:80]
        response = RedirectResponse(safe_next(str(form.get("back") or "/")), 303)
        if name:
            response.set_cookie(
                REVIEWER_COOKIE, quote(name), samesite="strict", max_age=180 * 86400
            )
        else:
            response.delete_cookie(REVIEWER_COOKIE)
        return response

    # --- signing in (--users) ----------------------------------------------------------
    async def signin(self, request: Request) -> Response:
        users = self.access.users
        if users is None:
            return RedirectResponse("/", 303)
        if request.method == "GET":
            target = safe_next(request.query_params.get("next"))
            return self.page(request, "signin.html", {"next": target, "name": "", "error": None})
        form = await request.form()
        name = str(form.get("name") or "").strip()
        token = str(form.get("token") or "").strip()
        target = safe_next(str(form.get("next") or "/"))
        try:
            ok = bool(name and token) and await run_in_threadpool(users.verify, name, token)
            fingerprint = users.fingerprint(name) if ok else None
        except UsersFileError as exc:
            return deny(503, f"The console cannot read its users file: {exc}")
        if not ok or fingerprint is None:
            context = {"next": target, "name": name, "error": "That name and token do not match."}
            return self.page(request, "signin.html", context, 401)
        # A new session id on signing in: a session id planted before cannot be reused.
        request.session.clear()
        request.session.update(sid=new_sid(), user=name, fp=fingerprint)
        return RedirectResponse(target, 303)

    async def signout(self, request: Request) -> Response:
        request.session.clear()
        request.session["sid"] = new_sid()
        target = "/signin" if self.access.users is not None else "/"
        return RedirectResponse(target, 303)


def _by_subtask(attempts: list[AttemptRecord]) -> dict[str, list[AttemptRecord]]:
    out: dict[str, list[AttemptRecord]] = {}
    for a in attempts:
        if a.subtask is not None:
            out.setdefault(a.subtask, []).append(a)
    return out


def _changes_to(wf: Workflow, stage: str, st: StageState) -> str:
    """The stage a request for changes sends back: the upstream stage the review's context
    names (the built-in ``review`` stage's ``stage``), else the stage itself."""
    source = (st.review_context or {}).get("stage")
    return source if isinstance(source, str) and source in wf.ancestors(stage) else stage


def _problem_of(
    action: str, message: str, form_fields: list[forms.Field]
) -> tuple[str | None, dict[str, str]]:
    """Where on the page a refused decision's problem belongs: a field of the form, the
    choices, the feedback, the reason or the edited artefact."""
    if action == "approve":
        found = forms.problem_field(message, form_fields)
        if found is not None:
            return None, {found[0]: found[1]}
        return ("choice" if "choice" in message or "choose" in message else None), {}
    return {"changes": "feedback", "reject": "reason", "edit": "artefact"}.get(action), {}


def _redirect(path: str, **params: Any) -> Response:
    return RedirectResponse(_url(path, **params), 303)


NOTICES = {
    "approve": ("ok", "Approved {item} / {stage}."),
    "chose": ("ok", "Approved {item} / {stage}: {detail}."),
    "voted": ("ok", "Your approval of {item} / {stage} is recorded: {detail}."),
    "changes": ("warn", "Sent {item} / {stage} back: {detail} runs again with your feedback."),
    "reject": ("warn", "Rejected {item} / {stage}."),
    "edit": ("ok", "Approved {item} / {stage} with your edits."),
    "retried": ("ok", "{item} / {stage} is pending again; a worker or `treadle run` picks it up."),
    "retry_failed": ("error", "Not retried: {detail}"),
    "rerun": ("ok", "{item} / {stage} is pending again; a worker or `treadle run` runs it."),
    "rerun_failed": ("error", "Not re-run: {detail}"),
    "cancelled": ("warn", "Cancelled {item}: its unfinished stages will not run."),
    "cancel_failed": ("error", "Not cancelled: {detail}"),
    "conflict": ("warn", "Not saved: {detail} (someone may have decided it already)."),
    "bulk": ("ok", "Approved {count} review(s){skipped_text}."),
    "bulk_reject": ("warn", "Rejected {count} review(s){skipped_text}."),
    "nothing": ("warn", "Select at least one review first."),
    "noname": ("error", "Enter your name (top right) before deciding."),
}


def _notice(request: Request) -> dict[str, str] | None:
    q = request.query_params
    entry = NOTICES.get(q.get("notice", ""))
    if entry is None:
        return None
    tone, template = entry
    skipped = q.get("skipped", "0")
    return {
        "tone": tone,
        "text": template.format(
            item=q.get("done_item", ""),
            stage=q.get("done_stage", ""),
            detail=q.get("detail", ""),
            count=q.get("count", "0"),
            skipped_text=""
            if skipped in ("", "0")
            else (
                f", {skipped} skipped (decided meanwhile, not yours to decide, or asking for "
                "a choice or a form's answers: open those one by one)"
            ),
        ),
    }


def create_app(
    wf: Workflow,
    store: StateStore,
    *,
    reviewer: str | None = None,
    token: str | None = None,
    users: Users | None = None,
    secret: str | None = None,
    loopback_only: bool = True,
    poll: float = 2.0,
    page_size: int = PAGE_SIZE,
) -> Starlette:
    """The console for ``wf`` over ``store``.

    ``secret`` signs sessions and CSRF tokens (pass the same one after a restart and open
    pages keep working; None: a new one per process). ``users``: reviewers sign in with
    their own tokens (then ``reviewer`` and ``token`` are not used). ``loopback_only``:
    refuse other Host headers.
    """
    if users is not None and token is not None:
        raise ValueError("give either users (per-reviewer tokens) or one shared token")
    secret = secret or secrets.token_urlsafe(32)
    access = Access(token=token, users=users)
    csrf = Csrf(secret)
    console = Console(wf, store, Settings(reviewer, poll, page_size), access, csrf)
    middleware = []
    if loopback_only:
        # A page on another site cannot reach us through DNS rebinding.
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    middleware += [
        # Lax, not Strict: a link in an email (the email sink) opens the review signed in;
        # POSTs from other sites are refused by the CSRF check whatever the cookie says.
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE,
            same_site="lax",
        ),
        Middleware(Guard, access=access, csrf=csrf),
    ]
    metrics = WorkflowMetrics(wf, store)

    async def prometheus(request: Request) -> Response:
        body, kind = await run_in_threadpool(metrics.render, request.headers.get("accept"))
        return Response(body, media_type=kind)

    routes = [*console.routes(), Route("/metrics", prometheus)]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.console = console
    return app
