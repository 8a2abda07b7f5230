"""Who may use the console, and proof that a POST came from its own page.

- A persisted secret signs the session cookie (Starlette's ``SessionMiddleware``, which
  signs with itsdangerous) and the CSRF tokens, so both survive a console restart.
- Every browser gets a session id (``sid``) in that cookie; a CSRF token is the sid
  signed with the secret (itsdangerous), so it is bound to the session and checked
  without any server-side table.
- With ``--token`` every request carries the shared token; with ``--users`` every
  request but the sign-in page and static files needs a signed-in reviewer.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer
from markupsafe import escape
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .users import Users, UsersFileError

TOKEN_COOKIE = "treadle_ui_token"
SESSION_COOKIE = "treadle_ui_session"
SESSION_MAX_AGE = 14 * 86400  # seconds; renewed by every request (the cookie is re-signed)
SECRET_BYTES = 32

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecretFileError(Exception):
    """The secret file cannot be created or read; the message names the file."""


def load_secret(path: Path) -> str:
    """The console's signing secret, created (owner-only) on first use and kept after."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SecretFileError(
            f"cannot create the console's secret {path}: {exc.strerror}"
        ) from None
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(SECRET_BYTES) + "\n")
    try:
        text = path.read_text().strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecretFileError(f"cannot read the console's secret {path}: {exc.strerror}") from None
    if len(text) < 32:
        raise SecretFileError(
            f"{path}: the console's secret is shorter than 32 characters "
            "(delete the file and a new one is made; open pages must then be reloaded)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"{path}: the console's secret is readable by others (chmod 600 {path})"
        )
    return text


def new_sid() -> str:
    return secrets.token_urlsafe(18)


class Csrf:
    """CSRF tokens: the session id signed with the console's secret."""

    def __init__(self, secret: str) -> None:
        self._signer = URLSafeSerializer(secret, salt="treadle-ui csrf")

    def token(self, sid: str) -> str:
        return str(self._signer.dumps(sid))

    def valid(self, sid: str | None, given: str | None) -> bool:
        if not sid or not given:
            return False
        try:
            value = self._signer.loads(given)
        except BadSignature:
            return False
        return isinstance(value, str) and hmac.compare_digest(value.encode(), sid.encode())


@dataclass
class Access:
    """How requests are let in: a shared token, per-user sign-in, or (loopback) neither."""

    token: str | None = None
    users: Users | None = None


def signed_in(request: Request, users: Users) -> str | None:
    """The signed-in reviewer's name, while their token is the one they signed in with."""
    session = request.session
    name, fp = session.get("user"), session.get("fp")
    if not isinstance(name, str) or not isinstance(fp, str):
        return None
    current = users.fingerprint(name)
    if current is None or not hmac.compare_digest(current, fp):
        return None
    return name


def _public(path: str) -> bool:
    """Reachable before signing in: the sign-in page and the files it needs."""
    return path == "/signin" or path.startswith("/static/")


class Guard(BaseHTTPMiddleware):
    """Access (token or sign-in) on every request; CSRF on every POST; security headers."""

    def __init__(self, app: Any, access: Access, csrf: Csrf) -> None:
        super().__init__(app)
        self.access = access
        self.csrf = csrf

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await self._dispatch(request, call_next)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def _dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if not path.startswith("/static/") and not isinstance(request.session.get("sid"), str):
            request.session["sid"] = new_sid()
        token = self.access.token
        if token is not None:
            given = (
                request.query_params.get("token")
                or request.headers.get("x-treadle-token")
                or _bearer(request.headers.get("authorization"))
                or request.cookies.get(TOKEN_COOKIE)
            )
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return deny(401, "A token is required: open the URL `treadle ui` printed.")
            if request.query_params.get("token") and request.method == "GET":
                # First visit with ?token=: keep it in a cookie and drop it from the address bar.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                response = RedirectResponse(path + ("?" + urlencode(rest) if rest else ""), 303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
        users = self.access.users
        if users is not None and not _public(path):
            try:
                name = signed_in(request, users)
            except UsersFileError as exc:
                return deny(503, f"The console cannot read its users file: {exc}")
            if name is None:
                if request.method == "GET" and not request.headers.get("x-requested-with"):
                    here = path + ("?" + request.url.query if request.url.query else "")
                    return RedirectResponse("/signin?" + urlencode({"next": here}), 303)
                return deny(401, "Sign in first: your session ended or your token changed.")
        if request.method == "POST":
            given = request.headers.get("x-csrf-token")
            if given is None:
                await request.body()  # cached, so the endpoint can read the form again
                form = await request.form()
                value = form.get("csrf")
                given = value if isinstance(value, str) else None
            if not self.csrf.valid(request.session.get("sid"), given):
                return deny(403, "The form's CSRF token is missing or stale: reload the page.")
        return await call_next(request)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def deny(code: int, message: str) -> Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>Treadle: refused</title>"
        f"<p style='font:16px system-ui;margin:3rem'>{code}: {escape(message)}</p>"
    )
    return HTMLResponse(body, status_code=code)


def safe_next(value: str | None, default: str = "/") -> str:
    """A redirect target on this site only (a path, never ``//host`` or a scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value
