"""The ``webhook`` event sink: each event POSTed as JSON, signed, retried, off the engine's path."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from difflib import get_close_matches
from email.message import Message
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import IO
from urllib.parse import urlsplit

from treadle_core import Event
from treadle_core.hookspecs import Duration, Option, SinkType, hookimpl
from treadle_core.sinks import QueuedSink

try:
    __version__ = version("treadle-sink-webhook")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

log = logging.getLogger("treadle.sinks.webhook")

#: The header carrying ``sha256=<hex HMAC-SHA256 of the body>`` when a secret is set.
SIGNATURE_HEADER = "X-Treadle-Signature"
#: Headers the sink sets itself; ``headers`` may not replace them.
OWN_HEADERS = frozenset(
    {"content-type", "user-agent", "x-treadle-event", "x-treadle-delivery", "x-treadle-signature"}
)
#: Statuses worth another attempt besides 5xx: Request Timeout, Too Many Requests.
RETRYABLE_4XX = frozenset({408, 429})
#: How much of an error response's body goes into the log.
BODY_TAIL = 300


# --- signing ---------------------------------------------------------------------------


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Treadle-Signature`` value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of the exact ``body`` bytes (constant-time compare)."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode("utf-8"))


# --- the retry decision (pure) ---------------------------------------------------------


def is_retryable(status: int | None) -> bool:
    """Another attempt helps: no response at all (``None``), a 5xx, 408 or 429."""
    return status is None or status >= 500 or status in RETRYABLE_4XX


def backoff_delay(
    attempt: int, *, backoff: float, max_backoff: float, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): doubling, at least ``Retry-After``."""
    delay = backoff * 2 ** (attempt - 1)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max_backoff)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class Response:
    """What one POST came to: a status (None when there was no response) and a message."""

    status: int | None
    message: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


# --- the sink ------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would turn the POST into a GET without the body."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


def event_names() -> list[str]:
    """Every event type name the engine knows."""
    return sorted(n for n in Event.registry if n != "UnknownEvent")


def check_events(events: Iterable[str] | str | None) -> frozenset[str] | None:
    """``events`` as a set of known event type names (None: every event)."""
    if events is None:
        return None
    names = [events] if isinstance(events, str) else list(events)
    known = event_names()
    for name in names:
        if not isinstance(name, str) or name not in known:
            close = get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise ValueError(f"events: {name!r} is not an event type{hint}")
    return frozenset(names)


class WebhookSink(QueuedSink[Event]):
    """POSTs each event as JSON to ``url`` from a background thread; never blocks the engine.

    The listener call only puts the event on a bounded queue (``queue_size``); a
    daemon thread delivers in order, retrying connection errors, 5xx, 408 and 429
    with exponential back-off (``backoff``, doubling up to ``max_backoff``, at least
    what ``Retry-After`` asks) for at most ``max_attempts`` attempts. When the queue
    is full the event is dropped, counted in ``dropped`` and logged. ``close()``
    delivers what is queued, waiting at most ``close_timeout`` seconds.
    """

    log = log  # the base class logs through this module's logger
    noun = "events"
    unfinished = "undelivered"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        secret_env: str | None = None,
        events: Iterable[str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        queue_size: int = 1000,
        close_timeout: float = 10.0,
    ):
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http:// or https:// address, got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "url must not hold credentials; send them as a header instead, "
                'e.g. headers = { Authorization = "Bearer ..." }'
            )
        self.url = str(url)
        #: How logs name this sink: without path or query, which may hold a token.
        self.name = f"webhook {parts.scheme}://{parts.netloc}"
        if secret is not None and secret_env is not None:
            raise ValueError("give secret or secret_env, not both")
        if secret_env is not None:
            secret = os.environ.get(secret_env)
            if not secret:
                raise ValueError(f"secret_env: the environment variable {secret_env} is not set")
        if secret is not None and not secret:
            raise ValueError("secret must not be empty (leave it out to send unsigned events)")
        self._secret = secret
        self.events = check_events(events)
        self.headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if taken := sorted(k for k in self.headers if k.lower() in OWN_HEADERS):
            raise ValueError(f"headers: {', '.join(taken)} is set by the sink itself")
        for key, value in (
            ("timeout", timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
            ("close_timeout", close_timeout),
        ):
            if not isinstance(value, int | float) or value < 0 or (key == "timeout" and not value):
                raise ValueError(f"{key} must be a positive duration, got {value!r}")
        for key, number in (("max_attempts", max_attempts), ("queue_size", queue_size)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"{key} must be a whole number of at least 1, got {number!r}")
        self.timeout = float(timeout)
        self.max_attempts = max_attempts
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._opener = urllib.request.build_opener(_NoRedirects())
        # Last, once the options hold: it starts the delivery thread. It keeps the counts:
        # delivered, failed (given up on after retries, or refused), dropped, pending.
        super().__init__(name=self.name, queue_size=queue_size, close_timeout=close_timeout)

    # --- on the engine's path: enqueue only -------------------------------------------
    def __call__(self, event: Event) -> None:
        if self.events is not None and event.kind not in self.events:
            return
        self._submit(event)

    # --- the delivery thread ------------------------------------------------------------
    def body(self, event: Event) -> bytes:
        """The exact bytes POSTed (and signed) for ``event``."""
        return json.dumps(
            event.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str
        ).encode("utf-8")

    def request_headers(self, event: Event, body: bytes, delivery: str) -> dict[str, str]:
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "User-Agent": f"treadle-sink-webhook/{__version__}",
            "X-Treadle-Event": event.kind,
            "X-Treadle-Delivery": delivery,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        return headers

    def _what(self, event: Event) -> str:
        return f"{event.kind} for {event.item_id}" + (f"/{event.stage}" if event.stage else "")

    def _deliver(self, event: Event) -> bool:
        body = self.body(event)
        # One id for every attempt of this event, so a receiver can drop a repeat.
        headers = self.request_headers(event, body, uuid.uuid4().hex)
        what = self._what(event)
        for attempt in range(1, self.max_attempts + 1):
            response = self.post(body, headers)
            if response.ok:
                return True
            if not is_retryable(response.status):
                log.warning("%s: %s not delivered: %s", self.name, what, response.message)
                return False
            if attempt == self.max_attempts:
                break
            delay = backoff_delay(
                attempt,
                backoff=self.backoff,
                max_backoff=self.max_backoff,
                retry_after=response.retry_after,
            )
            log.info(
                "%s: %s, attempt %d of %d: %s; retrying in %.2g s",
                self.name,
                what,
                attempt,
                self.max_attempts,
                response.message,
                delay,
            )
            if self._abandon.wait(delay):  # close() gave up waiting
                break
        log.warning(
            "%s: gave up on %s after %d attempts: %s",
            self.name,
            what,
            attempt,
            response.message,
        )
        return False

    def post(self, body: bytes, headers: Mapping[str, str]) -> Response:
        """One POST of ``body``; what came of it (never raises for a network problem)."""
        request = urllib.request.Request(self.url, data=body, headers=dict(headers), method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as reply:
                reply.read()
                return Response(reply.status, f"HTTP {reply.status}")
        except urllib.error.HTTPError as exc:
            return _refused(exc)
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, DNS
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return Response(None, f"{type(reason).__name__}: {reason}".rstrip(": "))


def _refused(exc: urllib.error.HTTPError) -> Response:
    status = exc.code
    headers: Message = exc.headers
    try:
        tail = exc.read()[-BODY_TAIL:].decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        tail = ""
    finally:
        exc.close()
    message = f"HTTP {status} {exc.reason}".rstrip()
    if 300 <= status < 400:
        message += f", redirected to {headers.get('Location')}: set url to the final address"
    elif tail:
        message += f": {tail}"
    return Response(status, message, parse_retry_after(headers.get("Retry-After")))


OPTIONS = {
    "url": Option(str, required=True, description="Where to POST each event (http or https)"),
    "secret": Option(str, description="Sign the body: X-Treadle-Signature: sha256=<hmac hex>"),
    "secret_env": Option(str, description="The environment variable holding the secret"),
    "events": Option(list, description="Event type names to send (default: every event)"),
    "headers": Option(dict, description="Extra request headers, e.g. Authorization"),
    "timeout": Option(Duration, default=10.0, description="Per request"),
    "max_attempts": Option(int, default=5, description="Attempts per event, the first included"),
    "backoff": Option(Duration, default=1.0, description="Wait before the first retry; doubles"),
    "max_backoff": Option(Duration, default=60.0, description="Longest wait between attempts"),
    "queue_size": Option(int, default=1000, description="Events held for delivery; more drop"),
    "close_timeout": Option(Duration, default=10.0, description="How long closing may deliver"),
}


@hookimpl
def register_event_sinks(register: Callable[[SinkType], None]) -> None:
    register(
        SinkType(
            "webhook",
            WebhookSink,
            "POST every event as JSON to a URL (HMAC-signed with a secret; retried)",
            OPTIONS,
        )
    )


__all__ = [
    "SIGNATURE_HEADER",
    "WebhookSink",
    "backoff_delay",
    "is_retryable",
    "parse_retry_after",
    "register_event_sinks",
    "sign",
    "verify",
]
