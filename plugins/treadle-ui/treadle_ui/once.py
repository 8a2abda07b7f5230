"""A form posted twice is acted on once: a server-side idempotency key per form.

Every POST form carries ``idem``, a key the page made for that form. The first request
with a given (session, key, fields) runs; a second one — a double click, a second key
press, a resubmitted page — waits for the first and gets the same answer, without
deciding anything again. Only answers that changed something (redirects) are kept: a
form refused for a missing reason can be corrected and sent again with the same key.
Kept in memory for ``ttl`` seconds: the guard against a repeated submission, not a
record (the store refuses to decide a review twice anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

#: Fields that are not part of what a form asks for.
_NOT_CONTENT = {"csrf", "idem"}

Key = tuple[str, str, str]


def form_key(sid: str, form: FormData) -> Key | None:
    """The request's idempotency key: session, the form's ``idem`` and what it asks for."""
    idem = form.get("idem")
    if not isinstance(idem, str) or not idem:
        return None
    fields = sorted((k, str(v)) for k, v in form.multi_items() if k not in _NOT_CONTENT)
    digest = hashlib.sha256(repr(fields).encode()).hexdigest()
    return (sid, idem[:64], digest)


def view_key(view: str, *parts: object) -> str:
    """The ``idem`` of one form on one page view (stable across the page's live refreshes)."""
    text = "\0".join([view, *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class _Answer:
    status: int
    location: str
    at: float


class Once:
    """Runs each keyed action once; repeats get the first answer."""

    def __init__(self, ttl: float = 600.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._answers: OrderedDict[Key, _Answer] = OrderedDict()
        self._locks: dict[Key, asyncio.Lock] = {}

    def _expire(self, now: float) -> None:
        while self._answers:
            key, answer = next(iter(self._answers.items()))
            if now - answer.at < self.ttl and len(self._answers) <= self.size:
                break
            del self._answers[key]

    async def run(self, key: Key | None, act: Callable[[], Awaitable[Response]]) -> Response:
        if key is None:
            return await act()
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                self._expire(time.monotonic())
                answer = self._answers.get(key)
                if answer is not None:
                    return RedirectResponse(answer.location, answer.status)
                response = await act()
                location = response.headers.get("location")
                if 300 <= response.status_code < 400 and location:
                    self._answers[key] = _Answer(response.status_code, location, time.monotonic())
                return response
        finally:
            if not lock.locked():
                self._locks.pop(key, None)
