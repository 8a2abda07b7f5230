"""A real SMTP server (aiosmtpd, in a thread) on 127.0.0.1 whose handler keeps every message.

``smtp_server(**options)`` starts one on a free port; ``server.inbox`` is what it received.
The handler can refuse the first N messages with a 4xx (``inbox.refuse_first``), refuse a
recipient for good (any address at ``refused.example``), or hold messages until
``inbox.release`` is set (``inbox.hold = True``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

#: The longest any test waits for something to happen (it normally takes milliseconds).
DEADLINE = 10.0


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None  # who authenticated, if anyone


class Inbox:
    """The aiosmtpd handler: collects messages (and refuses them when told to)."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.data_commands = 0  # DATA commands seen, accepted or not
        self.refuse_first = 0
        self.hold = False
        self.holding = threading.Event()  # set while a message is held
        self.release = threading.Event()
        self._changed = threading.Condition()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.endswith("@refused.example"):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._changed:
            self.data_commands += 1
            self._changed.notify_all()
            if self.refuse_first > 0:
                self.refuse_first -= 1
                return "451 4.3.0 try again later"
        if self.hold:
            self.holding.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, DEADLINE * 3)
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        who = session.login_data if session.authenticated else None
        login = who.decode() if isinstance(who, bytes) else None
        with self._changed:
            self.mails.append(
                Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message, login)
            )
            self._changed.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[Mail]:
        """The mails, once at least ``count`` arrived (fails the test after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.mails) >= count, timeout):
                pytest.fail(f"{len(self.mails)} mails arrived within {timeout} s, not {count}")
            return list(self.mails)


@dataclass
class SmtpServer:
    inbox: Inbox
    host: str
    port: int


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpServer]]:
    """Starts aiosmtpd servers on free ports (SMTP options as keywords); stops them after."""
    running: list[tuple[Controller, Inbox]] = []

    def start(**smtp_options: Any) -> SmtpServer:
        inbox = Inbox()
        for _ in range(5):  # the free port may be taken between finding and binding it
            controller = Controller(inbox, hostname="127.0.0.1", port=_free_port(), **smtp_options)
            try:
                controller.start()
            except OSError:
                continue
            running.append((controller, inbox))
            return SmtpServer(inbox, "127.0.0.1", controller.port)
        pytest.fail("could not start an SMTP server on 127.0.0.1")

    yield start
    for controller, inbox in running:
        inbox.release.set()
        controller.stop()


@pytest.fixture
def smtp(smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain SMTP server (no TLS, no login)."""
    return smtp_server()


@pytest.fixture
def smtp_with_login(smtp_server: Callable[..., SmtpServer]) -> SmtpServer:
    """A server that requires AUTH (reviewer / hunter2), allowed without TLS on loopback."""

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"reviewer",
            b"hunter2",
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return smtp_server(authenticator=authenticate, auth_required=True, auth_require_tls=False)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port nobody answers on: bound but not listening, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
