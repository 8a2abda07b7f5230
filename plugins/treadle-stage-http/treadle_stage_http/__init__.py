"""The ``http`` stage type: one HTTP request per item (or per URL, fanned out), on httpx."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from treadle_core import (
    Complete,
    Failed,
    FanOut,
    Retry,
    Stage,
    StageContext,
    StageOutput,
    SubTask,
    WorkItem,
)
from treadle_core.hookspecs import Duration, Option, StageType, hookimpl
from treadle_core.templating import TemplateError, check, render

try:
    __version__ = version("treadle-stage-http")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

#: How much of an error response's body a Retry or Failed carries (the end, like the shell stage).
BODY_TAIL = 2000
#: Statuses worth another attempt besides 5xx: Request Timeout, Too Many Requests.
RETRYABLE_4XX = frozenset({408, 429})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_TIMEOUT = 30.0


class HttpStage(Stage):
    """Send ``method url`` with templated headers and JSON body; the response is the artefact.

    A status in ``ok_status`` (default: any 2xx) completes the stage with the
    response's JSON (or its text when it is not JSON). 408, 429, 5xx, timeouts
    and connection errors are a `Retry`; any other status is `Failed`. With
    ``urls`` or ``urls_from`` the stage fans out: one subtask per URL, each with
    the stage's retry budget; the stage's artefact is ``{url: response}``.
    """

    description = "HTTP request per item (httpx); the JSON or text response is the artefact"

    def __init__(
        self,
        url: str | None = None,
        *,
        urls: Sequence[str] | None = None,
        urls_from: str | None = None,
        method: str = "GET",
        headers: Mapping[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        ok_status: Iterable[int] | None = None,
        follow_redirects: bool = True,
    ):
        given = [name for name, v in (("url", url), ("urls", urls), ("urls_from", urls_from)) if v]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of url (one request), urls (a list of URL templates) or "
                f"urls_from (a key of item.data holding a list of URLs); got {given or 'none'}"
            )
        if urls is not None and (
            isinstance(urls, str) or not all(isinstance(u, str) and u for u in urls)
        ):
            raise ValueError('urls must be a list of URL templates, e.g. ["https://a/{item.id}"]')
        self.url = url
        self.urls = list(urls) if urls is not None else None
        self.urls_from = urls_from
        for template in [url] if url else self.urls or []:
            check(template)
        self.method = str(method).upper()
        if self.method not in METHODS:
            raise ValueError(f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        for value in self.headers.values():
            check(value)
        self.json = json
        _check_json(json)
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be longer than zero")
        self.timeout = timeout
        statuses = list(ok_status) if ok_status is not None else None
        if statuses is not None and (
            not statuses
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in statuses)
            or not all(100 <= s <= 599 for s in statuses)
        ):
            raise ValueError("ok_status must be a non-empty list of HTTP statuses (100-599)")
        self.ok_status = frozenset(statuses) if statuses is not None else None
        self.follow_redirects = follow_redirects

    # --- what to fetch ---------------------------------------------------------------
    def fanout_urls(self, item: WorkItem) -> list[str]:
        """The URLs a fan-out stage fetches for ``item`` (duplicates fetched once)."""
        if self.urls is not None:
            found = [render(u, item) for u in self.urls]
        else:
            data = getattr(item, "data", None)
            value = data.get(self.urls_from) if isinstance(data, Mapping) else None
            if not isinstance(value, list) or not all(isinstance(u, str) and u for u in value):
                raise TemplateError(
                    f"urls_from: item.data[{self.urls_from!r}] must be a list of URLs, "
                    f"got {type(value).__name__}"
                )
            found = [render(u, item) for u in value]
        return list(dict.fromkeys(found))

    def is_ok(self, status: int) -> bool:
        return 200 <= status < 300 if self.ok_status is None else status in self.ok_status

    # --- running ---------------------------------------------------------------------
    async def execute(self, item: WorkItem, ctx: StageContext) -> StageOutput:
        try:
            if self.url is None and ctx.subtask is None:
                urls = self.fanout_urls(item)
                if not urls:
                    return StageOutput(Complete(), artefact={}, summary="no URLs to fetch")
                subtasks = [SubTask(u, metadata={"url": u}) for u in urls]
                return StageOutput(FanOut(subtasks), summary=f"fetching {len(urls)} URLs")
            url = render(self.url, item) if self.url else str(ctx.metadata.get("url", ctx.subtask))
            headers = {k: render(v, item) for k, v in self.headers.items()}
            body = _render_json(self.json, item)
        except TemplateError as exc:
            return StageOutput(Failed(f"http stage: {exc}"))
        return await self.fetch(url, headers, body, ctx)

    async def fetch(
        self, url: str, headers: dict[str, str], body: Any, ctx: StageContext
    ) -> StageOutput:
        what = f"{self.method} {url}"
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=self.follow_redirects
            ) as client:
                response = await client.request(
                    self.method,
                    url,
                    headers=headers,
                    json=body if self.json is not None else None,
                )
        except httpx.TimeoutException:
            return StageOutput(Retry(f"{what} timed out after {self.timeout:g} s"))
        except httpx.InvalidURL as exc:
            return StageOutput(Failed(f"{what}: invalid URL ({exc})"))
        except httpx.UnsupportedProtocol as exc:
            return StageOutput(Failed(f"{what}: {exc}"))
        except httpx.HTTPError as exc:  # connection refused, reset, DNS, protocol errors
            return StageOutput(Retry(f"{what} failed: {type(exc).__name__}: {exc}"))
        status = response.status_code
        ctx.metadata["status"] = status
        ctx.metadata["url"] = str(response.url)
        if self.is_ok(status):
            return StageOutput(
                Complete(),
                artefact=_body(response),
                summary=f"{what} -> {status} ({len(response.content)} bytes)",
            )
        tail = response.text[-BODY_TAIL:].strip()
        message = f"{what} returned HTTP {status} {response.reason_phrase}".rstrip()
        retry_after = response.headers.get("retry-after")
        if retry_after:
            message += f" (Retry-After: {retry_after})"
        message = f"{message}: {tail}" if tail else message
        if status >= 500 or status in RETRYABLE_4XX:
            # The server says when to come back: that is when the next attempt is due.
            return StageOutput(Retry(message, delay=retry_after_seconds(retry_after)))
        return StageOutput(Failed(message))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (delay-seconds, or an HTTP date) as seconds from ``now``;
    None when absent or unreadable (then the retry budget's back-off applies)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _body(response: httpx.Response) -> Any:
    """The response's JSON when it says (or turns out to be) JSON, else its text."""
    if not response.content:
        return None
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def _check_json(value: Any) -> None:
    """Templates inside a JSON body are checked when the stage is built, not per item."""
    if isinstance(value, str):
        check(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            _check_json(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_json(v)
    elif value is not None and not isinstance(value, bool | int | float):
        raise ValueError(f"json body holds a {type(value).__name__}; only JSON values are sent")
    json.dumps(value)


def _render_json(value: Any, item: WorkItem) -> Any:
    """``value`` with every string templated (keys are left as they are)."""
    if isinstance(value, str):
        return render(value, item)
    if isinstance(value, Mapping):
        return {k: _render_json(v, item) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render_json(v, item) for v in value]
    return value


OPTIONS = {
    "url": Option(str, description="URL template: {item.id}, {item.data[key]}"),
    "urls": Option(list, description="Fan out: a list of URL templates, one subtask each"),
    "urls_from": Option(str, description="Fan out: the key of item.data holding a list of URLs"),
    "method": Option(str, default="GET", description="HTTP method"),
    "headers": Option(dict, description="Request headers (values are templates)"),
    "json": Option(dict, description="JSON body (string values are templates)"),
    "timeout": Option(Duration, default=DEFAULT_TIMEOUT, description="Per request"),
    "ok_status": Option(list, description="Statuses that complete the stage (default: any 2xx)"),
    "follow_redirects": Option(bool, default=True, description="Follow 3xx redirects"),
}


@hookimpl
def register_stage_types(register: Callable[[StageType], None]) -> None:
    register(StageType("http", HttpStage, HttpStage.description, OPTIONS))


__all__ = ["HttpStage", "register_stage_types"]
