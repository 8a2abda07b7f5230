"""The ``email`` event sink: an SMTP message when a review waits or a stage escalates."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl as ssl_lib
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from treadle_core import Event
from treadle_core.events import Escalated, ReviewRequired
from treadle_core.hookspecs import Duration, Option, SinkType, hookimpl
from treadle_core.sinks import QueuedSink

try:
    __version__ = version("treadle-sink-email")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

log = logging.getLogger("treadle.sinks.email")

#: The events a message can be about: a person is needed at an item's stage.
EVENTS = ("ReviewRequired", "Escalated")
#: What a ``subject`` template may name.
SUBJECT_FIELDS = ("item_id", "stage", "event", "prompt")
DEFAULT_SUBJECTS = {
    "ReviewRequired": "[treadle] Review waiting: {item_id} at {stage}",
    "Escalated": "[treadle] Escalated: {item_id} at {stage} needs a person",
}
#: Subjects (and the prompt inside them) are cut to this many characters.
SUBJECT_MAX = 150
#: A context value in the message is cut to this many characters.
CONTEXT_VALUE_MAX = 300
#: Lines fold at SMTP's hard limit, not at 78: a subject just over 78 characters would
#: otherwise be folded right after "Subject:" and arrive with a leading space.
POLICY = policy.default.clone(max_line_length=998)


# --- composing a message (pure) ---------------------------------------------------------


def review_link(public_url: str, item_id: str, stage: str) -> str:
    """The console's page for the review of ``stage`` of ``item_id``, URL-encoded."""
    query = urlencode({"item": item_id, "stage": stage}, quote_via=quote)
    return f"{public_url.rstrip('/')}/review?{query}"


def check_subject(template: str) -> str:
    """``template`` when it names only `SUBJECT_FIELDS`, else a ValueError saying which."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"subject: {exc} in {template!r} (write {{{{ for a brace)") from None
    allowed = ", ".join("{" + f + "}" for f in SUBJECT_FIELDS)
    for field in fields:
        if field not in SUBJECT_FIELDS:
            raise ValueError(f"subject: unknown placeholder {{{field}}}; use {allowed}")
    return template


def one_line(text: str, limit: int = SUBJECT_MAX) -> str:
    """``text`` on one line (a header cannot hold a line break), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in text.splitlines())


def _context_lines(context: Mapping[str, Any]) -> str:
    """One line per key; a long value is cut (the console shows all of it)."""
    return "\n".join(
        f"{key}: {one_line(str(value), CONTEXT_VALUE_MAX)}" for key, value in context.items()
    )


@dataclass(frozen=True)
class Notice:
    """One message to send: a waiting review, and the escalation that led to it, if any."""

    event: ReviewRequired | Escalated
    escalation: Escalated | None = None

    @property
    def kind(self) -> str:
        return "Escalated" if self.escalation is not None else self.event.kind

    @property
    def prompt(self) -> str:
        if isinstance(self.event, ReviewRequired):
            return self.event.prompt
        return self.event.reason


def compose(
    notice: Notice,
    *,
    sender: str,
    to: list[str],
    public_url: str,
    subject: str | None = None,
) -> EmailMessage:
    """The plain-text message telling reviewers which item and stage wait, why, and where."""
    event = notice.event
    stage = event.stage or ""
    prompt = notice.prompt
    values = {
        "item_id": event.item_id,
        "stage": stage,
        "event": notice.kind,
        "prompt": one_line(prompt),
    }
    template = subject if subject is not None else DEFAULT_SUBJECTS[notice.kind]
    link = review_link(public_url, event.item_id, stage)
    if notice.kind == "Escalated":
        lines = [
            f"Item {event.item_id!r} needs a person at stage {stage!r}: it ran out of "
            "automatic retries and was escalated for review.",
            "",
            "Reason:",
            _indent(prompt or "(none given)"),
        ]
    else:
        lines = [
            f"Item {event.item_id!r} is waiting for review at stage {stage!r}.",
            "",
            "Prompt:",
            _indent(prompt or "(no prompt)"),
        ]
    lines += ["", "Review it in the console:", f"    {link}"]
    context = event.context if isinstance(event, ReviewRequired) else {}
    if context:
        lines += ["", "Context:", _indent(_context_lines(context))]
    lines += [
        "",
        "-- ",
        f"Sent by Treadle (treadle-sink-email) for a {notice.kind} event at "
        f"{event.at:%Y-%m-%d %H:%M:%S %Z}.",
    ]
    message = EmailMessage(policy=POLICY)
    message["Subject"] = one_line(template.format(**values))
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(datetime.now(UTC))
    # The sender's domain, not socket.getfqdn(): that can wait seconds on a DNS lookup.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "treadle.invalid"
    message["Message-ID"] = make_msgid("treadle", domain=domain)
    message.set_content("\n".join(lines) + "\n")
    return message


# --- the retry decision (pure) ---------------------------------------------------------


def is_permanent(exc: BaseException) -> bool:
    """Another attempt will not help: a 5xx reply, bad credentials, a missing server feature."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    return isinstance(exc, smtplib.SMTPNotSupportedError | ssl_lib.SSLCertVerificationError)


def backoff_delay(attempt: int, backoff: float) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): ``backoff``, doubling."""
    return backoff * 2 ** (attempt - 1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = (
            exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
        )
        return f"{type(exc).__name__}: {exc.smtp_code} {reply}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{who} ({code})" for who, (code, _) in exc.recipients.items())
        return f"recipients refused: {refused}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the sink ------------------------------------------------------------------------


def _address(value: object, what: str) -> str:
    if not isinstance(value, str) or "@" not in parseaddr(value)[1]:
        raise ValueError(f"{what}: {value!r} is not an email address (name@example.com)")
    return value


class EmailSink(QueuedSink[Notice]):
    """Mails ``to`` when a review waits (``ReviewRequired``) or a stage escalates (``Escalated``).

    The listener call only queues the event; a daemon thread composes and sends
    each message over SMTP, retrying connection problems and 4xx replies
    (``max_attempts``, waiting ``backoff`` seconds, doubling) and logging what it
    gives up on. Nothing is ever raised into the engine. An ``Escalated`` event
    followed by its ``ReviewRequired`` (as the engine sends them) is one message.
    """

    log = log  # the base class logs through this module's logger
    noun = "messages"
    unfinished = "unsent"

    def __init__(
        self,
        *,
        sender: str,
        to: Iterable[str] | str,
        public_url: str,
        host: str = "localhost",
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        password_env: str | None = None,
        starttls: bool = False,
        ssl: bool = False,
        subject: str | None = None,
        events: Iterable[str] = EVENTS,
        timeout: float = 30.0,
        max_attempts: int = 3,
        backoff: float = 5.0,
        queue_size: int = 100,
        close_timeout: float = 30.0,
    ):
        self.sender = _address(sender, "sender")
        recipients = [to] if isinstance(to, str) else list(to)
        if not recipients:
            raise ValueError('to: give at least one address, e.g. to = ["reviewers@example.com"]')
        self.to = [_address(r, "to") for r in recipients]
        parts = urlsplit(str(public_url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"public_url must be the console's http(s) address, got {public_url!r} "
                "(e.g. https://treadle.example.com)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"public_url must not hold a query or fragment: {public_url!r}")
        self.public_url = str(public_url)
        if not host:
            raise ValueError("host must name the SMTP server")
        if ssl and starttls:
            raise ValueError("give ssl (TLS from the start, port 465) or starttls (587), not both")
        if password is not None and password_env is not None:
            raise ValueError("give password or password_env, not both")
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise ValueError(
                    f"password_env: the environment variable {password_env} is not set"
                )
        if (username is None) != (password is None):
            raise ValueError("username and password go together: give both or neither")
        self.host = host
        self.port = port if port is not None else 465 if ssl else 587 if starttls else 25
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {port!r}")
        self.username = username
        self._password = password
        self.starttls = starttls
        self.ssl = ssl
        if username is not None and not (ssl or starttls) and host not in _LOOPBACK:
            log.warning("email sink: the password for %s goes to %s unencrypted", username, host)
        self.subject = check_subject(subject) if subject is not None else None
        chosen = [events] if isinstance(events, str) else list(events)
        for name in chosen:
            if name not in EVENTS:
                raise ValueError(
                    f"events: the email sink sends {' and '.join(EVENTS)} only, not {name!r} "
                    "(the webhook sink sends any event)"
                )
        if not chosen:
            raise ValueError(f"events: give at least one of {', '.join(EVENTS)}")
        self.events = frozenset(chosen)
        for key, value in (
            ("timeout", timeout),
            ("backoff", backoff),
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
        self._escalations: dict[tuple[str, str | None], Escalated] = {}
        # Last, once the options hold: it starts the sending thread. It keeps the counts:
        # delivered (read it as ``sent``), failed, dropped (queue full), pending.
        super().__init__(
            name=f"email via {host}:{self.port}", queue_size=queue_size, close_timeout=close_timeout
        )

    @property
    def sent(self) -> int:
        """Messages the server accepted (some recipients may have been refused)."""
        return self.delivered

    # --- on the engine's path: queue only -------------------------------------------------
    def __call__(self, event: Event) -> None:
        if event.kind not in self.events:
            return
        assert isinstance(event, ReviewRequired | Escalated)
        key = (event.item_id, event.stage)
        with self._lock:
            if self._closed:
                return
            if isinstance(event, Escalated) and "ReviewRequired" in self.events:
                # The engine follows it with the ReviewRequired it caused: one message for both.
                self._escalations[key] = event
                return
            escalation = self._escalations.pop(key, None)
            self._enqueue(Notice(event, escalation))

    def _before_close(self) -> None:
        for escalation in self._escalations.values():  # no ReviewRequired came after it
            self._enqueue(Notice(escalation))
        self._escalations.clear()

    # --- the sending thread -------------------------------------------------------------------
    def _what(self, notice: Notice) -> str:
        return f"{notice.kind} of {notice.event.item_id}/{notice.event.stage}"

    def message(self, notice: Notice) -> EmailMessage:
        return compose(
            notice, sender=self.sender, to=self.to, public_url=self.public_url, subject=self.subject
        )

    def _deliver(self, notice: Notice) -> bool:
        message = self.message(notice)
        what = self._what(notice)
        for attempt in range(1, self.max_attempts + 1):
            try:
                refused = self.send(message)
            except Exception as exc:
                problem = _describe(exc)
                if is_permanent(exc):
                    log.warning("%s: message for %s not sent: %s", self.name, what, problem)
                    return False
            else:
                if refused:
                    log.warning(
                        "%s: message for %s refused for %s",
                        self.name,
                        what,
                        ", ".join(sorted(refused)),
                    )
                return True
            if attempt == self.max_attempts:
                break
            delay = backoff_delay(attempt, self.backoff)
            log.info(
                "%s: message for %s, attempt %d of %d: %s; retrying in %.2g s",
                self.name,
                what,
                attempt,
                self.max_attempts,
                problem,
                delay,
            )
            if self._abandon.wait(delay):  # close() gave up waiting
                break
        log.warning(
            "%s: gave up on the message for %s after %d attempts: %s",
            self.name,
            what,
            attempt,
            problem,
        )
        return False

    def send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """One SMTP session sending ``message``; the recipients refused (raises on failure)."""
        context = ssl_lib.create_default_context()
        client: smtplib.SMTP
        if self.ssl:
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with client:
            if self.starttls:
                client.starttls(context=context)
            if self.username is not None and self._password is not None:
                client.login(self.username, self._password)
            envelope_to = [parseaddr(a)[1] for a in self.to]
            return client.send_message(
                message, from_addr=parseaddr(self.sender)[1], to_addrs=envelope_to
            )


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

OPTIONS = {
    "sender": Option(str, required=True, description="From: address"),
    "to": Option(list, required=True, description="Recipients' addresses"),
    "public_url": Option(str, required=True, description="The console's address, for links"),
    "host": Option(str, default="localhost", description="SMTP server"),
    "port": Option(int, description="Default: 465 with ssl, 587 with starttls, else 25"),
    "username": Option(str, description="SMTP login"),
    "password": Option(str, description="SMTP password"),
    "password_env": Option(str, description="The environment variable holding the password"),
    "starttls": Option(bool, default=False, description="Upgrade to TLS after connecting"),
    "ssl": Option(bool, default=False, description="TLS from the start (SMTPS)"),
    "subject": Option(str, description="Template: {item_id}, {stage}, {event}, {prompt}"),
    "events": Option(list, default=list(EVENTS), description="ReviewRequired and/or Escalated"),
    "timeout": Option(Duration, default=30.0, description="Per SMTP session"),
    "max_attempts": Option(int, default=3, description="Attempts per message, the first included"),
    "backoff": Option(Duration, default=5.0, description="Wait before the first retry; doubles"),
    "queue_size": Option(int, default=100, description="Messages held for sending; more drop"),
    "close_timeout": Option(Duration, default=30.0, description="How long closing may send"),
}


@hookimpl
def register_event_sinks(register: Callable[[SinkType], None]) -> None:
    register(
        SinkType(
            "email",
            EmailSink,
            "Email reviewers (SMTP) when a review waits or a stage escalates, with a link",
            OPTIONS,
        )
    )


__all__ = [
    "EVENTS",
    "EmailSink",
    "Notice",
    "backoff_delay",
    "compose",
    "is_permanent",
    "register_event_sinks",
    "review_link",
]
