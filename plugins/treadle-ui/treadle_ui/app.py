"""The review console: a Starlette app over the public treadle_core API.

Store calls are synchronous (peewee), so they run in the thread pool; the
engine's coroutines (`resolve_review`, `retry_stage`, `rerun`, `cancel`) are awaited
directly. What the CLI does too (failed stages, a review's detail, re-running and
cancelling) goes through `treadle_core.ops`, the operator API both share.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from treadle_core import Approve as ApproveDecision
from treadle_core import (
    ApproveWithEdits,
    PendingReview,
    Reject,
    RerunError,
    RetryError,
    ReviewError,
    StageStatus,
    StateStore,
    TreadleError,
    UnknownItemError,
    UnknownStageError,
    Workflow,
    ops,
)

from . import __version__
from .layout import layout
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

HERE = Path(__file__).parent
TOKEN_COOKIE = "treadle_ui_token"
REVIEWER_COOKIE = "treadle_ui_reviewer"
MAX_FAILED_SHOWN = 50
MAX_EVENTS_SHOWN = 300
STATUSES = ("pending", "running", "awaiting_review", "failed", "complete", "skipped")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class Settings:
    reviewer: str | None
    token: str | None
    csrf: str
    poll: float


def _key(item_id: str, stage: str) -> str:
    """A review's value in a bulk form: JSON, so any item id or stage name survives."""
    return json.dumps([item_id, stage])


def _url(path: str, **params: Any) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(clean) if clean else "")


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
        key=lambda r: _key(r.item_id, r.stage),
    )
    env.globals.update(url=_url, duration=duration, version=__version__, statuses=STATUSES)
    return templates


class _Guard(BaseHTTPMiddleware):
    """Token (when configured) on every request; CSRF token on every POST; security headers."""

    def __init__(self, app: Any, settings: Settings) -> None:
        super().__init__(app)
        self.settings = settings

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        token = self.settings.token
        set_cookie = False
        if token is not None:
            given = (
                request.query_params.get("token")
                or request.headers.get("x-treadle-token")
                or _bearer(request.headers.get("authorization"))
                or request.cookies.get(TOKEN_COOKIE)
            )
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return _deny(401, "A token is required: open the URL `treadle ui` printed.")
            if request.query_params.get("token") and request.method == "GET":
                # First visit with ?token=: keep it in a cookie and drop it from the address bar.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                response: Response = RedirectResponse(
                    request.url.path + ("?" + urlencode(rest) if rest else ""), 303
                )
                set_cookie = True
            else:
                response = await self._checked(request, call_next)
        else:
            response = await self._checked(request, call_next)
        if set_cookie and token is not None:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _checked(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method == "POST":
            given = request.headers.get("x-csrf-token")
            if given is None:
                await request.body()  # cached, so the endpoint can read the form again
                form = await request.form()
                value = form.get("csrf")
                given = value if isinstance(value, str) else None
            if not given or not hmac.compare_digest(given.encode(), self.settings.csrf.encode()):
                return _deny(403, "The form's CSRF token is missing or stale: reload the page.")
        return await call_next(request)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def _deny(code: int, message: str) -> Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>Treadle: refused</title>"
        f"<p style='font:16px system-ui;margin:3rem'>{code}: {message}</p>"
    )
    return HTMLResponse(body, status_code=code)


class Console:
    """The routes, holding the workflow, the store and the settings."""

    def __init__(self, wf: Workflow, store: StateStore, settings: Settings) -> None:
        self.wf = wf
        self.store = store
        self.settings = settings
        self.templates = _templates()

    # --- helpers -----------------------------------------------------------------------
    def reviewer(self, request: Request) -> str | None:
        name = unquote(request.cookies.get(REVIEWER_COOKIE) or "").strip()
        return name or self.settings.reviewer

    def page(
        self, request: Request, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        base = {
            "pipeline": self.wf.name,
            "reviewer": self.reviewer(request),
            "csrf": self.settings.csrf,
            "poll_ms": int(self.settings.poll * 1000),
            "here": request.url.path + ("?" + request.url.query if request.url.query else ""),
        }
        return self.templates.TemplateResponse(
            request, name, {**base, **context}, status_code=status_code
        )

    def _stage_filter(self, value: str | None) -> str | None:
        if value and value in self.wf.stages:
            return value
        return None

    def _overview_data(self, stage: str | None) -> dict[str, Any]:
        """Queue, counts, summary, failures: one thread-pool call per refresh."""
        wf, store = self.wf, self.store
        everything = wf.pending_reviews(store)
        per_stage: dict[str, int] = {}
        for r in everything:
            per_stage[r.stage] = per_stage.get(r.stage, 0) + 1
        queue = [r for r in everything if stage is None or r.stage == stage]
        view = ops.overview(wf, store)
        summary, items = view.stages, view.items
        failed = [
            (f.item_id, f.stage, f.error)
            for f in ops.failed_stages(wf, store, limit=MAX_FAILED_SHOWN)
        ]
        return {
            "queue": queue,
            "per_stage": per_stage,
            "total_pending": len(everything),
            "stage": stage,
            "summary": summary,
            "items": items,
            "stale": view.stale,
            "item_total": view.total,
            "graph": layout(wf, summary),
            "failed": failed,
            "stages": wf.stages,
        }

    # --- overview ----------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        stage = self._stage_filter(request.query_params.get("stage"))
        data = await run_in_threadpool(self._overview_data, stage)
        notice = _notice(request)
        return self.page(request, "overview.html", {**data, "notice": notice})

    async def overview_live(self, request: Request) -> Response:
        stage = self._stage_filter(request.query_params.get("stage"))
        data = await run_in_threadpool(self._overview_data, stage)
        return self.page(request, "_overview_live.html", data)

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

    def _review_data(self, item_id: str, stage: str, queue_stage: str | None) -> dict[str, Any]:
        wf, store = self.wf, self.store
        detail = ops.review_detail(wf, store, item_id, stage)  # Unknown{Stage,Item}Error
        data = self._item_data(item_id)
        st, attempts = detail.state, detail.attempts
        source = (st.review_context or {}).get("stage")
        upstream = None
        if isinstance(source, str) and source in wf.stages and source != stage:
            upstream = {"stage": source, "attempts": store.get_attempts(item_id, source)}
        queue = wf.pending_reviews(store, queue_stage)
        keys = [(r.item_id, r.stage) for r in queue]
        here = keys.index((item_id, stage)) if (item_id, stage) in keys else None
        prev_r = queue[here - 1] if here is not None and here > 0 else None
        next_r = queue[here + 1] if here is not None and here + 1 < len(queue) else None
        context = {k: v for k, v in (st.review_context or {}).items() if k != "data"}
        return {
            **data,
            "stage": stage,
            "state": st,
            "awaiting": st.status == StageStatus.AWAITING_REVIEW,
            "artefact": render_value(st.artefact),
            "attempts": attempts,
            "upstream": upstream,
            "reviews": detail.reviews,
            "context": context,
            "queue_len": len(queue),
            "position": None if here is None else here + 1,
            "prev_r": prev_r,
            "next_r": next_r,
            "queue_stage": queue_stage,
        }

    async def review(
        self,
        request: Request,
        *,
        item_id: str | None = None,
        stage: str | None = None,
        queue_stage: str | None = None,
        error: str | None = None,
        error_field: str | None = None,
        form: FormData | None = None,
        status_code: int = 200,
    ) -> Response:
        q = request.query_params
        item_id = item_id if item_id is not None else q.get("item", "")
        stage = stage if stage is not None else q.get("stage", "")
        if queue_stage is None:
            queue_stage = self._stage_filter(q.get("queue"))
        try:
            data = await run_in_threadpool(self._review_data, item_id, stage, queue_stage)
        except (UnknownItemError, UnknownStageError) as exc:
            return self.page(request, "missing.html", {"message": str(exc)}, 404)
        text, mode = edit_text(data["state"].artefact)
        values = {"artefact": text, "mode": mode, "comment": "", "reason": "", "note": ""}
        if form is not None:
            values.update({k: str(form.get(k) or "") for k in values})
            values["mode"] = "text" if values["mode"] == "text" else "json"
        return self.page(
            request,
            "review.html",
            {
                **data,
                "values": values,
                "error": error,
                "error_field": error_field,
                "notice": _notice(request),
                "open_editor": error_field == "artefact",
                "here": _url("/review", item=item_id, stage=stage, queue=queue_stage),
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
    async def decide(self, request: Request) -> Response:
        form = await request.form()
        item_id = str(form.get("item") or "")
        stage = str(form.get("stage") or "")
        action = str(form.get("action") or "")
        queue_stage = self._stage_filter(str(form.get("queue") or ""))
        comment = str(form.get("comment") or "").strip() or None
        reviewer = self.reviewer(request)

        def refuse(message: str, field: str | None = None) -> Awaitable[Response]:
            return self.review(
                request,
                item_id=item_id,
                stage=stage,
                queue_stage=queue_stage,
                error=message,
                error_field=field,
                form=form,
                status_code=400,
            )

        if not reviewer:
            return await refuse("Enter your name (top right) before deciding.", "reviewer")
        outcome: Any
        if action == "approve":
            outcome = ApproveDecision()
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
            outcome = ApproveWithEdits(artefact, note)
        else:
            return PlainTextResponse(f"unknown action {action!r}", 400)

        before = await run_in_threadpool(self.wf.pending_reviews, self.store, queue_stage)
        try:
            await self.wf.resolve_review(
                item_id, stage, outcome, self.store, reviewer=reviewer, comment=comment
            )
        except (UnknownItemError, UnknownStageError) as exc:
            return self.page(request, "missing.html", {"message": str(exc)}, 404)
        except ReviewError as exc:
            return _redirect("/", stage=queue_stage, notice="conflict", detail=str(exc))
        after = await run_in_threadpool(self.wf.pending_reviews, self.store, queue_stage)
        nxt = _next_review(before, after, item_id, stage)
        done = {"notice": action, "done_item": item_id, "done_stage": stage}
        if nxt is None:
            return _redirect("/", stage=queue_stage, **done)
        return _redirect("/review", item=nxt.item_id, stage=nxt.stage, queue=queue_stage, **done)

    async def bulk(self, request: Request) -> Response:
        form = await request.form()
        queue_stage = self._stage_filter(str(form.get("queue") or ""))
        reviewer = self.reviewer(request)
        if not reviewer:
            return _redirect("/", stage=queue_stage, notice="noname")
        targets: list[tuple[str, str]] = []
        for raw in form.getlist("target"):
            try:
                item_id, stage = json.loads(str(raw))
                targets.append((str(item_id), str(stage)))
            except (ValueError, TypeError):
                return PlainTextResponse("malformed target", 400)
        if not targets:
            return _redirect("/", stage=queue_stage, notice="nothing")
        comment = str(form.get("comment") or "").strip() or None
        done = skipped = 0
        for item_id, stage in targets:
            try:
                await self.wf.approve_review(
                    item_id, stage, self.store, reviewer=reviewer, comment=comment
                )
                done += 1
            except TreadleError:
                skipped += 1  # decided meanwhile by someone else, or gone
        return _redirect("/", stage=queue_stage, notice="bulk", count=done, skipped=skipped)

    async def retry(self, request: Request) -> Response:
        form = await request.form()
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
        """Re-run a stage of an item (and what is downstream, unless ``cascade`` is 0)."""
        form = await request.form()
        item_id = str(form.get("item") or "")
        stage = str(form.get("stage") or "")
        cascade = str(form.get("cascade") or "1") != "0"
        reason = str(form.get("reason") or "").strip() or None
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
        """Cancel an item: its unfinished stages stop and never run (until re-run)."""
        form = await request.form()
        item_id = str(form.get("item") or "")
        reason = str(form.get("reason") or "").strip() or None
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
        form = await request.form()
        name = str(form.get("reviewer") or "").strip()[:80]
        back = str(form.get("back") or "/")
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        response = RedirectResponse(back, 303)
        if name:
            response.set_cookie(
                REVIEWER_COOKIE, quote(name), samesite="strict", max_age=180 * 86400
            )
        else:
            response.delete_cookie(REVIEWER_COOKIE)
        return response


def _next_review(
    before: Sequence[PendingReview], after: Sequence[PendingReview], item_id: str, stage: str
) -> PendingReview | None:
    """The review after the one just decided (in the queue as it was), still waiting."""
    waiting = {(r.item_id, r.stage): r for r in after}
    keys = [(r.item_id, r.stage) for r in before]
    at = keys.index((item_id, stage)) if (item_id, stage) in keys else -1
    for key in keys[at + 1 :] + keys[: max(at, 0)]:
        if key in waiting:
            return waiting[key]
    return after[0] if after else None


def _redirect(path: str, **params: Any) -> Response:
    return RedirectResponse(_url(path, **params), 303)


NOTICES = {
    "approve": ("ok", "Approved {item} / {stage}."),
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
    "nothing": ("warn", "Select at least one review to approve."),
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
            skipped_text="" if skipped in ("", "0") else f", {skipped} already decided elsewhere",
        ),
    }


def create_app(
    wf: Workflow,
    store: StateStore,
    *,
    reviewer: str | None = None,
    token: str | None = None,
    loopback_only: bool = True,
    poll: float = 2.0,
    csrf_secret: str | None = None,
) -> Starlette:
    """The console for ``wf`` over ``store``. ``loopback_only``: refuse other Host headers."""
    settings = Settings(
        reviewer=reviewer, token=token, csrf=csrf_secret or secrets.token_urlsafe(32), poll=poll
    )
    console = Console(wf, store, settings)
    middleware = []
    if loopback_only:
        # A page on another site cannot reach us through DNS rebinding.
        hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    middleware.append(Middleware(_Guard, settings=settings))
    routes = [
        Route("/", console.overview),
        Route("/live/overview", console.overview_live),
        Route("/review", console.review_page),
        Route("/item", console.item_page),
        Route("/live/item", console.item_live),
        Route("/decide", console.decide, methods=["POST"]),
        Route("/bulk", console.bulk, methods=["POST"]),
        Route("/retry", console.retry, methods=["POST"]),
        Route("/rerun", console.rerun, methods=["POST"]),
        Route("/cancel", console.cancel, methods=["POST"]),
        Route("/reviewer", console.set_reviewer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.console = console
    return app
