"""The ``email`` sink against a real SMTP server (aiosmtpd) on 127.0.0.1: directly, attached to
a Workflow's event bus, and from a treadle.toml ``[[sinks]]`` entry through the CLI."""

from __future__ import annotations

import json
import logging
import re
import smtplib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest
from treadle_sink_email import (
    EmailSink,
    Notice,
    backoff_delay,
    compose,
    is_permanent,
    review_link,
)

from treadle_core import (
    ExhaustedAction,
    Item,
    MemoryStateStore,
    NeedsReview,
    RetryBudget,
    Workflow,
)
from treadle_core.events import (
    Escalated,
    ReviewRequired,
    ReviewResolved,
    StageCompleted,
    StageFailed,
    StageStarted,
)
from treadle_core.plugins import sink_types

if TYPE_CHECKING:  # conftest is not importable under --import-mode=importlib
    from conftest import SmtpServer

#: The longest a test waits for something that normally takes milliseconds.
DEADLINE = 10.0
CONSOLE = "https://treadle.example.com"
REVIEWERS = ["Ada <ada@example.com>", "grace@example.com"]
FAST = {"backoff": 0.01}  # retries without slowing the tests down


def waiting(item_id: str = "doc-1", stage: str = "approve", prompt: str = "Publish it?"):
    return ReviewRequired(item_id=item_id, stage=stage, prompt=prompt, context={"words": 3})


def link_in(text: str) -> str:
    (link,) = re.findall(r"https?://\S+", text)
    return link


@pytest.fixture
def sinks() -> Iterator[Callable[..., EmailSink]]:
    """Makes sinks for a server; any a test left open is closed (without waiting) afterwards."""
    made: list[EmailSink] = []

    def make(port: int, **options: object) -> EmailSink:
        settings: dict[str, object] = {
            "host": "127.0.0.1",
            "port": port,
            "sender": "Treadle <treadle@example.com>",
            "to": REVIEWERS,
            "public_url": CONSOLE,
            "timeout": 5.0,  # a server that stops answering fails the attempt, not the test run
            **options,
        }
        sink = EmailSink(**settings)  # type: ignore[arg-type]
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close(timeout=0)


def call_in_thread(fn: Callable[[], object]) -> threading.Event:
    """Run ``fn`` in a thread; the event is set once it returned."""
    returned = threading.Event()

    def run() -> None:
        fn()
        returned.set()

    threading.Thread(target=run, daemon=True).start()
    return returned


# --- what is sent ----------------------------------------------------------------------


def test_a_review_sends_one_mail_to_every_recipient(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port)
    sink(waiting("doc 1/a", "approve", "Publish doc 1/a?"))
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.mail_from == "treadle@example.com"
    assert mail.rcpt_tos == ["ada@example.com", "grace@example.com"]
    assert mail.message["To"] == "Ada <ada@example.com>, grace@example.com"
    assert mail.message["Subject"] == "[treadle] Review waiting: doc 1/a at approve"
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message["Message-ID"].endswith(".treadle@example.com>")
    text = mail.message.get_content()
    assert "Item 'doc 1/a' is waiting for review at stage 'approve'." in text
    assert "Publish doc 1/a?" in text
    assert "words: 3" in text
    assert sink.sent == 1


def test_the_link_opens_the_consoles_review_page(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port, public_url="https://example.com/treadle/")
    sink(waiting("doc 1/a&b=c", "approve"))
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    link = link_in(mail.message.get_content())
    assert link == "https://example.com/treadle/review?item=doc%201%2Fa%26b%3Dc&stage=approve"
    parts = urlsplit(link)
    assert parts.path == "/treadle/review"
    assert parse_qs(parts.query) == {"item": ["doc 1/a&b=c"], "stage": ["approve"]}


@pytest.mark.parametrize(
    ("public_url", "item_id", "stage", "link"),
    [
        (CONSOLE, "doc-1", "approve", f"{CONSOLE}/review?item=doc-1&stage=approve"),
        (CONSOLE + "/", "a b", "check it", f"{CONSOLE}/review?item=a%20b&stage=check%20it"),
        (CONSOLE, "dir/file.pdf", "ok", f"{CONSOLE}/review?item=dir%2Ffile.pdf&stage=ok"),
        (CONSOLE, "é?#%", "s", f"{CONSOLE}/review?item=%C3%A9%3F%23%25&stage=s"),
        ("http://127.0.0.1:8765", "x", "s", "http://127.0.0.1:8765/review?item=x&stage=s"),
    ],
)
def test_review_links_are_url_encoded(public_url, item_id, stage, link) -> None:
    assert review_link(public_url, item_id, stage) == link
    query = parse_qs(urlsplit(link).query)
    assert query == {"item": [item_id], "stage": [stage]}


def test_other_events_send_nothing(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port)
    sink(StageStarted(item_id="doc-1", stage="approve", attempt=1))
    sink(StageCompleted(item_id="doc-1", stage="approve"))
    sink(StageFailed(item_id="doc-1", stage="approve", error="boom"))
    sink(ReviewResolved(item_id="doc-1", stage="approve", decision="approve", reviewer="ada"))
    sink.close()
    assert smtp.inbox.mails == []
    assert smtp.inbox.data_commands == 0
    assert (sink.sent, sink.failed) == (0, 0)


def test_an_escalation_and_its_review_are_one_mail(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port)
    reason = "retry budget exhausted after 3 attempts: ValueError: bad scan"
    sink(Escalated(item_id="doc-2", stage="parse", reason=reason))
    sink(ReviewRequired(item_id="doc-2", stage="parse", prompt=reason))
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.message["Subject"] == "[treadle] Escalated: doc-2 at parse needs a person"
    text = mail.message.get_content()
    assert "ran out of automatic retries and was escalated" in text
    assert reason in text
    assert link_in(text) == f"{CONSOLE}/review?item=doc-2&stage=parse"


def test_events_can_choose_escalations_only(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port, events=["Escalated"])
    sink(waiting("doc-1"))
    sink(Escalated(item_id="doc-2", stage="parse", reason="out of retries"))
    sink(ReviewRequired(item_id="doc-2", stage="parse", prompt="out of retries"))
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert "doc-2" in mail.message["Subject"]


def test_the_subject_is_a_template_on_one_line(smtp: SmtpServer, sinks) -> None:
    sink = sinks(smtp.port, subject="{event}: {item_id}/{stage}: {prompt}")
    sink(waiting("doc-1", "approve", "Is this\nright?\r\nBcc: someone@evil.example"))
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    subject = mail.message["Subject"]
    assert subject == "ReviewRequired: doc-1/approve: Is this right? Bcc: someone@evil.example"
    assert mail.message["Bcc"] is None
    assert mail.rcpt_tos == ["ada@example.com", "grace@example.com"]


def test_compose_is_a_plain_function_of_the_event() -> None:
    message = compose(
        Notice(waiting("doc-1", "approve", "")),
        sender="t@example.com",
        to=["a@example.com"],
        public_url=CONSOLE,
    )
    text = message.get_content()
    assert "(no prompt)" in text
    assert link_in(text) == f"{CONSOLE}/review?item=doc-1&stage=approve"


def test_login_with_username_and_password(smtp_with_login: SmtpServer, sinks) -> None:
    sink = sinks(smtp_with_login.port, username="reviewer", password="hunter2")
    sink(waiting())
    sink.close()
    (mail,) = smtp_with_login.inbox.wait_for(1)
    assert mail.login == "reviewer"


def test_the_password_can_come_from_the_environment(
    smtp_with_login: SmtpServer, sinks, monkeypatch
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    sink = sinks(smtp_with_login.port, username="reviewer", password_env="SMTP_PASSWORD")
    sink(waiting())
    sink.close()
    assert smtp_with_login.inbox.wait_for(1)[0].login == "reviewer"


# --- failures: retried, logged, never raised ------------------------------------------------


def test_a_temporary_refusal_is_retried(smtp: SmtpServer, sinks, caplog) -> None:
    caplog.set_level(logging.INFO, logger="treadle.sinks.email")
    smtp.inbox.refuse_first = 2
    sink = sinks(smtp.port, **FAST)
    sink(waiting())
    sink.close()
    assert len(smtp.inbox.wait_for(1)) == 1
    assert smtp.inbox.data_commands == 3
    assert (sink.sent, sink.failed) == (1, 0)
    assert "attempt 1 of 3: SMTPDataError: 451 4.3.0 try again later" in caplog.text


def test_wrong_credentials_are_not_retried(smtp_with_login: SmtpServer, sinks, caplog) -> None:
    sink = sinks(smtp_with_login.port, username="reviewer", password="wrong", **FAST)
    sink(waiting())
    sink.close()
    assert sink.failed == 1
    assert "not sent: SMTPAuthenticationError: 535" in caplog.text
    assert "gave up" not in caplog.text


def test_a_refused_recipient_is_logged_and_the_others_get_it(smtp: SmtpServer, sinks, caplog):
    sink = sinks(smtp.port, to=["ada@example.com", "nobody@refused.example"])
    sink(waiting())
    sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com"]
    assert "refused for nobody@refused.example" in caplog.text


def test_a_server_that_is_down_is_retried_logged_and_never_raised(
    refused_port: int, sinks, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="treadle.sinks.email")
    sink = sinks(refused_port, max_attempts=3, **FAST)
    sink(waiting())  # returns: nothing raised into the caller
    sink.close()
    assert (sink.sent, sink.failed) == (0, 1)
    assert "attempt 1 of 3: ConnectionRefusedError" in caplog.text
    assert "attempt 2 of 3: ConnectionRefusedError" in caplog.text
    assert (
        "gave up on the message for ReviewRequired of doc-1/approve after 3 attempts: "
        "ConnectionRefusedError"
    ) in caplog.text


def test_a_server_that_is_down_never_blocks_the_listener(refused_port: int, sinks) -> None:
    sink = sinks(refused_port, backoff=60)  # waits a minute between attempts
    returned = call_in_thread(lambda: [sink(waiting(f"doc-{n}")) for n in range(5)])
    assert returned.wait(DEADLINE), "the listener blocked on an SMTP server that is down"
    assert sink.pending == 5


def test_a_slow_server_never_blocks_the_listener_and_a_full_queue_drops(
    smtp: SmtpServer, sinks, caplog
) -> None:
    smtp.inbox.hold = True
    sink = sinks(smtp.port, queue_size=1)
    sink(waiting("doc-1"))
    assert smtp.inbox.holding.wait(DEADLINE)  # doc-1 is being sent; the queue is empty
    returned = call_in_thread(lambda: [sink(waiting(f"doc-{n}")) for n in (2, 3, 4)])
    assert returned.wait(DEADLINE), "the listener blocked on a slow SMTP server"
    assert sink.dropped == 2  # doc-3 and doc-4
    # One line for the run of drops, not one per message: a burst does not flood the log.
    assert caplog.text.count("queue full (1 messages waiting); dropping messages") == 1
    smtp.inbox.release.set()
    smtp.inbox.wait_for(2)  # doc-1 and doc-2 sent: there is room again
    sink(waiting("doc-5"))
    assert "dropped 2 messages while the queue was full (2 in all)" in caplog.text
    sink.close()
    mails = smtp.inbox.wait_for(3)
    assert [m.message["Subject"].split(": ")[1] for m in mails] == [
        "doc-1 at approve",
        "doc-2 at approve",
        "doc-5 at approve",
    ]


def test_closing_an_idle_sink_says_nothing(smtp: SmtpServer, sinks, caplog) -> None:
    sinks(smtp.port).close(timeout=0)
    assert [r for r in caplog.records if r.name.startswith("treadle")] == []


def test_close_waits_no_longer_than_its_timeout(smtp: SmtpServer, sinks, caplog) -> None:
    smtp.inbox.hold = True
    sink = sinks(smtp.port, close_timeout=0.2)
    sink(waiting("doc-1"))
    assert smtp.inbox.holding.wait(DEADLINE)
    closed = call_in_thread(sink.close)
    assert closed.wait(DEADLINE), "close() did not give up after its timeout"
    assert "closed with 1 messages unsent after waiting 0.2 s" in caplog.text


# --- the retry decision, as values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (ConnectionRefusedError(), False),
        (TimeoutError(), False),
        (smtplib.SMTPServerDisconnected("gone"), False),
        (smtplib.SMTPDataError(451, b"try later"), False),
        (smtplib.SMTPDataError(554, b"rejected"), True),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), True),
        (smtplib.SMTPSenderRefused(553, b"no", "t@example.com"), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"no"), "b@x": (551, b"no")}), True),
        (smtplib.SMTPRecipientsRefused({"a@x": (550, b"no"), "b@x": (450, b"busy")}), False),
        (smtplib.SMTPNotSupportedError("no STARTTLS"), True),
    ],
)
def test_what_is_given_up_at_once(exc: BaseException, permanent: bool) -> None:
    assert is_permanent(exc) is permanent


def test_backoff_doubles() -> None:
    assert [backoff_delay(n, 5.0) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sender": "treadle"}, "sender: 'treadle' is not an email address"),
        ({"to": []}, "to: give at least one address"),
        ({"to": ["ada@example.com", "grace"]}, "to: 'grace' is not an email address"),
        ({"public_url": "treadle.example.com"}, "public_url must be the console's http"),
        ({"public_url": f"{CONSOLE}/?x=1"}, "must not hold a query"),
        ({"ssl": True, "starttls": True}, "not both"),
        ({"username": "ada"}, "username and password go together"),
        ({"password": "pw", "password_env": "X"}, "not both"),
        ({"password_env": "TREADLE_TEST_NO_SUCH_VARIABLE", "username": "a"}, "is not set"),
        ({"port": 0}, "port must be 1-65535"),
        ({"subject": "{item}"}, r"unknown placeholder \{item\}; use \{item_id\}"),
        ({"subject": "{item_id"}, "subject:"),
        ({"events": ["StageFailed"]}, "sends ReviewRequired and Escalated only, not 'StageFailed'"),
        ({"events": []}, "at least one of"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queue_size": 0}, "queue_size"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    settings = {
        "sender": "t@example.com",
        "to": ["a@example.com"],
        "public_url": CONSOLE,
        **options,
    }
    with pytest.raises(ValueError, match=message):
        EmailSink(**settings).close()


@pytest.mark.parametrize(
    ("options", "port"),
    [({}, 25), ({"starttls": True}, 587), ({"ssl": True}, 465), ({"port": 2525}, 2525)],
)
def test_the_port_follows_the_kind_of_tls(options: dict, port: int) -> None:
    sink = EmailSink(sender="t@example.com", to="a@example.com", public_url=CONSOLE, **options)
    sink.close()
    assert sink.port == port


# --- in a Workflow -------------------------------------------------------------------------


def draft(item: Item, ctx: object) -> NeedsReview:
    return NeedsReview(f"Publish {item.id}?", {"words": 3})


def flaky(item: Item, ctx: object) -> None:
    raise ValueError("the scan is unreadable")


async def test_a_workflow_waiting_for_review_sends_the_mail(smtp: SmtpServer) -> None:
    wf = Workflow.builder("publish").stage("draft", draft).build()
    sink = EmailSink(
        host=smtp.host, port=smtp.port, sender="t@example.com", to=REVIEWERS, public_url=CONSOLE
    )
    wf.bus.add_listener(sink)
    try:
        await wf.run(MemoryStateStore(), [Item("post 1/2", {})])
    finally:
        sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com", "grace@example.com"]
    text = mail.message.get_content()
    assert "Item 'post 1/2' is waiting for review at stage 'draft'." in text
    assert "Publish post 1/2?" in text
    assert link_in(text) == f"{CONSOLE}/review?item=post%201%2F2&stage=draft"


async def test_a_workflow_that_escalates_sends_one_mail(smtp: SmtpServer) -> None:
    wf = (
        Workflow.builder("scan")
        .stage("parse", flaky)
        .retry_budget("parse", RetryBudget(max_attempts=2, on_exhausted=ExhaustedAction.ESCALATE))
        .build()
    )
    sink = EmailSink(
        host=smtp.host, port=smtp.port, sender="t@example.com", to=REVIEWERS, public_url=CONSOLE
    )
    wf.bus.add_listener(sink)
    try:
        await wf.run(MemoryStateStore(), [Item("scan-7", {})])
    finally:
        sink.close()
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.message["Subject"] == "[treadle] Escalated: scan-7 at parse needs a person"
    text = mail.message.get_content()
    assert "retry budget exhausted after 2 attempts" in text
    assert "the scan is unreadable" in text


# --- as a plugin: entry point, treadle.toml, CLI --------------------------------------------


def test_the_entry_point_registers_the_email_sink(treadle_plugin_manager) -> None:
    assert sink_types(treadle_plugin_manager)["email"].factory is EmailSink
    assert treadle_plugin_manager.sink_types().owners["email"] == "treadle-sink-email"


def test_sinks_list_shows_it_with_its_options(treadle_cli) -> None:
    result = treadle_cli("sinks", "list", "--json")
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.output) if r["type"] == "email"]
    assert row["plugin"] == "treadle-sink-email"
    assert {"host", "port", "sender", "to", "public_url", "starttls", "ssl"} <= set(row["options"])


PIPELINE = """\
[stages.draft]
uses = "stages:draft"

[[sinks]]
uses = "email"
host = "127.0.0.1"
port = {port}
sender = "Treadle <treadle@example.com>"
to = ["ada@example.com", "grace@example.com"]
public_url = "http://127.0.0.1:8765"
events = {events}
"""


def write_pipeline(tmp_path, port: int, events: str = '["ReviewRequired", "Escalated"]') -> None:
    (tmp_path / "stages.py").write_text(
        "from treadle_core import NeedsReview\n\n\n"
        "def draft(item, ctx):\n"
        '    return NeedsReview(f"Publish {item.id}?")\n'
    )
    (tmp_path / "treadle.toml").write_text(PIPELINE.format(port=port, events=events))


def test_a_pipeline_file_sink_mails_from_treadle_run(
    smtp: SmtpServer, treadle_cli, tmp_path
) -> None:
    write_pipeline(tmp_path, smtp.port)
    assert treadle_cli("add", "--id", "post 1").exit_code == 0
    result = treadle_cli("run")
    assert result.exit_code == 0, result.output  # waiting for review is not a failure
    (mail,) = smtp.inbox.wait_for(1)
    assert mail.rcpt_tos == ["ada@example.com", "grace@example.com"]
    text = mail.message.get_content()
    assert "Publish post 1?" in text
    assert link_in(text) == "http://127.0.0.1:8765/review?item=post%201&stage=draft"


def test_a_bad_option_in_a_pipeline_file_is_one_clear_line(treadle_cli, tmp_path) -> None:
    write_pipeline(tmp_path, 2525, events='["StageFailed"]')
    assert treadle_cli("add", "--id", "post-1").exit_code == 0
    result = treadle_cli("run")
    assert result.exit_code == 2
    assert (
        "[sinks[0]] sink 'email' failed to start: ValueError: events: the email sink sends "
        "ReviewRequired and Escalated only, not 'StageFailed'"
    ) in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
