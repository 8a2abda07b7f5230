"""The ``webhook`` sink against a real HTTP server on 127.0.0.1: directly, attached to a
Workflow's event bus, and from a treadle.toml ``[[sinks]]`` entry through the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from treadle_sink_webhook import (
    WebhookSink,
    backoff_delay,
    is_retryable,
    parse_retry_after,
    sign,
    verify,
)

from treadle_core import Item, MemoryStateStore, NeedsReview, Workflow
from treadle_core.events import Event, ReviewRequired, StageCompleted, StageStarted
from treadle_core.plugins import sink_types

if TYPE_CHECKING:  # conftest is not importable under --import-mode=importlib
    from conftest import RecordingServer

#: The longest a test waits for something that normally takes milliseconds.
DEADLINE = 10.0

SECRET = "It's a secret to everybody"
FAST = {"backoff": 0.01, "max_backoff": 0.05}  # retries without slowing the tests down


def review(item_id: str = "doc-1", stage: str = "approve") -> ReviewRequired:
    return ReviewRequired(item_id=item_id, stage=stage, prompt="Publish it?", context={"words": 3})


def started(item_id: str) -> StageStarted:
    return StageStarted(item_id=item_id, stage="parse", attempt=1)


@pytest.fixture
def sinks() -> Iterator[Callable[..., WebhookSink]]:
    """Makes sinks; any a test left open is closed (without waiting) afterwards."""
    made: list[WebhookSink] = []

    def make(url: str, **options: object) -> WebhookSink:
        sink = WebhookSink(url, **options)  # type: ignore[arg-type]
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


def test_the_body_is_the_event_as_json(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok")
    event = review("doc 1/ä")
    sink(event)
    sink.close()
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/ok")
    assert json.loads(request.body) == event.to_dict()
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-treadle-event"] == "ReviewRequired"
    assert request.headers["user-agent"].startswith("treadle-sink-webhook/")
    assert sink.delivered == 1


def test_the_signature_is_the_hmac_sha256_of_the_exact_body(server: RecordingServer, sinks):
    sink = sinks(f"{server.url}/ok", secret=SECRET)
    sink(review())
    sink.close()
    (request,) = server.requests
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-treadle-signature"] == f"sha256={expected}"
    assert verify(SECRET, request.body, request.headers["x-treadle-signature"])


def test_a_signature_does_not_verify_with_another_secret_or_body(server: RecordingServer, sinks):
    sink = sinks(f"{server.url}/ok", secret=SECRET)
    sink(review())
    sink.close()
    (request,) = server.requests
    header = request.headers["x-treadle-signature"]
    assert not verify("another secret", request.body, header)
    assert not verify(SECRET, request.body.replace(b"doc-1", b"doc-2"), header)
    assert not verify(SECRET, request.body, None)
    assert not verify(SECRET, request.body, "sha256=ünïcode")


def test_there_is_no_signature_without_a_secret(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok")
    sink(review())
    sink.close()
    assert "x-treadle-signature" not in server.requests[0].headers


def test_the_secret_can_come_from_the_environment(server: RecordingServer, sinks, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    sink = sinks(f"{server.url}/ok", secret_env="HOOK_SECRET")
    sink(review())
    sink.close()
    (request,) = server.requests
    assert request.headers["x-treadle-signature"] == sign(SECRET, request.body)


def test_extra_headers_are_sent(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok", headers={"Authorization": "Bearer t0ken"})
    sink(review())
    sink.close()
    assert server.requests[0].headers["authorization"] == "Bearer t0ken"


def test_only_the_chosen_events_are_sent(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok", events=["ReviewRequired"])
    sink(started("doc-1"))
    sink(review("doc-1"))
    sink(StageCompleted(item_id="doc-1", stage="approve"))
    sink.close()
    assert [r.headers["x-treadle-event"] for r in server.requests] == ["ReviewRequired"]


def test_close_delivers_everything_queued_in_order(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok")
    for n in range(20):
        sink(started(f"doc-{n}"))
    sink.close()
    assert [json.loads(r.body)["item_id"] for r in server.requests] == [
        f"doc-{n}" for n in range(20)
    ]
    assert (sink.delivered, sink.pending) == (20, 0)


def test_closing_an_idle_sink_says_nothing(server: RecordingServer, sinks, caplog) -> None:
    sinks(f"{server.url}/ok").close(timeout=0)
    assert caplog.records == []


def test_events_after_close_are_ignored(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/ok")
    sink.close()
    sink(review())
    sink.close()  # twice is fine
    assert server.requests == []


# --- retries -----------------------------------------------------------------------------


def test_a_server_error_is_retried_until_delivered(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/flaky/2", **FAST)
    sink(review())
    sink.close()
    assert len(server.requests) == 3  # 500, 500, 200
    assert len({r.body for r in server.requests}) == 1
    # One delivery id for every attempt, so a receiver can tell a repeat.
    assert len({r.headers["x-treadle-delivery"] for r in server.requests}) == 1
    assert (sink.delivered, sink.failed) == (1, 0)


def test_too_many_requests_is_retried(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/throttled", **FAST)
    sink(review())
    sink.close()
    assert len(server.requests) == 2
    assert sink.delivered == 1


def test_retries_stop_after_max_attempts_and_are_logged(server: RecordingServer, sinks, caplog):
    caplog.set_level(logging.INFO, logger="treadle.sinks.webhook")
    sink = sinks(f"{server.url}/status/503", max_attempts=3, **FAST)
    sink(review())
    sink.close()
    assert len(server.requests) == 3
    assert (sink.delivered, sink.failed) == (0, 1)
    assert "gave up on ReviewRequired for doc-1/approve after 3 attempts: HTTP 503" in caplog.text


def test_a_client_error_is_not_retried(server: RecordingServer, sinks, caplog) -> None:
    sink = sinks(f"{server.url}/status/400", **FAST)
    sink(review())
    sink.close()
    assert len(server.requests) == 1
    assert sink.failed == 1
    assert "not delivered: HTTP 400 Bad Request: error body 400" in caplog.text


def test_a_redirect_is_not_followed(server: RecordingServer, sinks, caplog) -> None:
    sink = sinks(f"{server.url}/redirect", **FAST)
    sink(review())
    sink.close()
    assert [r.path for r in server.requests] == ["/redirect"]
    assert "redirected to /ok: set url to the final address" in caplog.text


def test_connection_refused_is_retried_then_given_up(refused_url: str, sinks, caplog) -> None:
    sink = sinks(refused_url, max_attempts=3, **FAST)
    sink(review())
    sink.close()
    assert sink.failed == 1
    assert "after 3 attempts: ConnectionRefusedError" in caplog.text
    assert "/events" not in caplog.text  # logs name the host, not a path that may hold a token


# --- never blocking the engine ---------------------------------------------------------------


def test_a_hanging_server_never_blocks_the_listener(server: RecordingServer, sinks) -> None:
    sink = sinks(f"{server.url}/hang")
    sink(review("doc-0"))
    server.wait_for(1)  # the delivery thread is now stuck in that request
    returned = call_in_thread(lambda: [sink(review(f"doc-{n}")) for n in range(1, 6)])
    assert returned.wait(DEADLINE), "the listener blocked on a hanging server"
    assert not server.release.is_set() and len(server.requests) == 1
    assert sink.pending == 6
    server.release.set()
    sink.close()
    assert sink.delivered == 6


def test_a_server_that_is_down_never_blocks_the_listener(refused_url: str, sinks) -> None:
    sink = sinks(refused_url, backoff=60, max_backoff=60)  # waits a minute between attempts
    returned = call_in_thread(lambda: [sink(review(f"doc-{n}")) for n in range(5)])
    assert returned.wait(DEADLINE), "the listener blocked on a server that is down"
    assert sink.pending == 5


def test_close_waits_no_longer_than_its_timeout(server: RecordingServer, sinks, caplog) -> None:
    sink = sinks(f"{server.url}/hang", close_timeout=0.2)
    sink(review("doc-0"))
    sink(review("doc-1"))
    server.wait_for(1)
    closed = call_in_thread(sink.close)
    assert closed.wait(DEADLINE), "close() did not give up after its timeout"
    assert "closed with 2 events undelivered after waiting 0.2 s" in caplog.text


def test_a_full_queue_drops_counts_and_logs(server: RecordingServer, sinks, caplog) -> None:
    sink = sinks(f"{server.url}/hang", queue_size=2)
    sink(started("doc-1"))
    server.wait_for(1)  # doc-1 is in flight, the queue is empty
    for n in range(2, 7):
        sink(started(f"doc-{n}"))  # doc-2 and doc-3 fit; doc-4..6 are dropped
    assert sink.dropped == 3
    assert caplog.text.count("queue full (2 events waiting); dropping events") == 1
    server.release.set()
    server.wait_for(3)  # doc-1..3 delivered: there is room again
    sink(started("doc-7"))
    assert "dropped 3 events while the queue was full (3 in all)" in caplog.text
    sink.close()
    assert [json.loads(r.body)["item_id"] for r in server.requests] == [
        "doc-1",
        "doc-2",
        "doc-3",
        "doc-7",
    ]


# --- the retry decision, as values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        *[(None, True), (500, True), (502, True), (503, True), (429, True), (408, True)],
        *[(400, False), (401, False), (404, False), (410, False), (302, False)],
    ],
)
def test_what_is_retried(status: int | None, retry: bool) -> None:
    assert is_retryable(status) is retry


@pytest.mark.parametrize(
    ("attempt", "retry_after", "delay"),
    [
        (1, None, 1.0),
        (2, None, 2.0),
        (3, None, 4.0),
        (7, None, 30.0),  # capped at max_backoff
        (1, 5.0, 5.0),  # Retry-After asks for longer
        (3, 0.0, 4.0),  # ... or not
        (1, 120.0, 30.0),  # capped even then
    ],
)
def test_backoff_doubles_honours_retry_after_and_is_capped(attempt, retry_after, delay) -> None:
    got = backoff_delay(attempt, backoff=1.0, max_backoff=30.0, retry_after=retry_after)
    assert got == delay


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(later, now) == 90.0
    assert parse_retry_after("Wed, 01 Jan 2020 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://example.com/x"}, "http:// or https://"),
        ({"url": "example.com/hook"}, "http:// or https://"),
        ({"url": "https://user:pw@example.com/"}, "must not hold credentials"),
        ({"secret": "a", "secret_env": "B"}, "not both"),
        ({"secret": ""}, "secret must not be empty"),
        ({"secret_env": "TREADLE_TEST_NO_SUCH_VARIABLE"}, "is not set"),
        ({"events": ["ReviewRequird"]}, "did you mean 'ReviewRequired'"),
        ({"events": ["Nope"]}, "'Nope' is not an event type"),
        ({"headers": {"content-type": "text/plain"}}, "set by the sink itself"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"queue_size": 0}, "queue_size"),
        ({"timeout": 0}, "timeout"),
        ({"backoff": -1}, "backoff"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    options = {"url": "https://example.com/hook", **options}
    with pytest.raises(ValueError, match=message):
        WebhookSink(**options).close()


# --- in a Workflow -------------------------------------------------------------------------


def draft(item: Item, ctx: object) -> NeedsReview:
    return NeedsReview(f"Publish {item.id}?", {"words": 3})


async def test_a_workflow_waiting_for_review_posts_it(server: RecordingServer) -> None:
    wf = Workflow.builder("publish").stage("draft", draft).build()
    sink = WebhookSink(f"{server.url}/ok", secret=SECRET, events=["ReviewRequired"])
    wf.bus.add_listener(sink)
    try:
        await wf.run(MemoryStateStore(), [Item("post 1", {})])
    finally:
        sink.close()
    (request,) = server.requests
    assert verify(SECRET, request.body, request.headers["x-treadle-signature"])
    body = json.loads(request.body)
    assert (body["type"], body["item_id"], body["stage"]) == ("ReviewRequired", "post 1", "draft")
    assert (body["prompt"], body["context"]) == ("Publish post 1?", {"words": 3})
    assert isinstance(Event.from_dict(body), ReviewRequired)


# --- as a plugin: entry point, treadle.toml, CLI --------------------------------------------


def test_the_entry_point_registers_the_webhook_sink(treadle_plugin_manager) -> None:
    assert sink_types(treadle_plugin_manager)["webhook"].factory is WebhookSink
    assert treadle_plugin_manager.sink_types().owners["webhook"] == "treadle-sink-webhook"


def test_sinks_list_shows_it_with_its_options(treadle_cli) -> None:
    result = treadle_cli("sinks", "list", "--json")
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.output) if r["type"] == "webhook"]
    assert row["plugin"] == "treadle-sink-webhook"
    assert {"url", "secret", "events", "max_attempts", "queue_size"} <= set(row["options"])


PIPELINE = """\
[stages.draft]
uses = "stages:draft"

[[sinks]]
uses = "webhook"
url = "{url}"
secret = "{secret}"
events = {events}
backoff = "10ms"
"""


def write_pipeline(tmp_path, url: str, events: str = '["ReviewRequired"]') -> None:
    (tmp_path / "stages.py").write_text(
        "from treadle_core import NeedsReview\n\n\n"
        "def draft(item, ctx):\n"
        '    return NeedsReview(f"Publish {item.id}?")\n'
    )
    text = PIPELINE.format(url=url, secret=SECRET, events=events)
    (tmp_path / "treadle.toml").write_text(text)


def test_a_pipeline_file_sink_posts_from_treadle_run(
    server: RecordingServer, treadle_cli, tmp_path
) -> None:
    write_pipeline(tmp_path, f"{server.url}/flaky/1")
    assert treadle_cli("add", "--id", "post-1").exit_code == 0
    result = treadle_cli("run")
    assert result.exit_code == 0, result.output  # waiting for review is not a failure
    requests = server.wait_for(2)  # a 500, then the retry
    assert len({r.body for r in requests}) == 1
    body = requests[-1].body
    assert verify(SECRET, body, requests[-1].headers["x-treadle-signature"])
    event = json.loads(body)
    assert (event["type"], event["item_id"], event["prompt"]) == (
        "ReviewRequired",
        "post-1",
        "Publish post-1?",
    )


def test_a_bad_option_in_a_pipeline_file_is_one_clear_line(treadle_cli, tmp_path) -> None:
    write_pipeline(tmp_path, "http://127.0.0.1:9/", events='["ReviewRequird"]')
    assert treadle_cli("add", "--id", "post-1").exit_code == 0
    result = treadle_cli("run")
    assert result.exit_code == 2
    assert (
        "[sinks[0]] sink 'webhook' failed to start: ValueError: events: 'ReviewRequird' is "
        "not an event type (did you mean 'ReviewRequired'?)"
    ) in result.output
    assert "Traceback" not in result.output


def test_a_wrongly_typed_option_fails_validation(treadle_cli, tmp_path) -> None:
    write_pipeline(tmp_path, "http://127.0.0.1:9/", events='"ReviewRequired"')
    result = treadle_cli("validate")
    assert result.exit_code == 2
    assert "events" in result.output and "expected" in result.output
    assert len(result.output.strip().splitlines()) == 1
