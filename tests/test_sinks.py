"""QueuedSink with a real delivery thread: order, failures, drops, and closing on time.

No sleeps: a test waits on an event, or polls a condition until a deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from treadle_core.sinks import QueuedSink

#: The longest a test waits for something that normally takes milliseconds.
DEADLINE = 10.0
LOGGER = "treadle.sinks.test"


def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds; fail the test if it does not within DEADLINE."""
    give_up = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail("the condition did not hold in time")
        time.sleep(0.001)  # a poll, not a wait for something to happen


class Recorder(QueuedSink[str]):
    """Delivers a job by recording it; "boom" raises, "refuse" is given up on.

    Clear ``gate`` to hold the delivery thread inside ``_deliver``; ``busy`` is set
    once it is there.
    """

    log = logging.getLogger(LOGGER)

    def __init__(self, queue_size: int = 10, close_timeout: float = DEADLINE):
        self.done: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.busy = threading.Event()
        super().__init__(name="recorder", queue_size=queue_size, close_timeout=close_timeout)

    def __call__(self, job: str) -> None:
        self._submit(job)

    def _deliver(self, job: str) -> bool:
        self.busy.set()
        assert self.gate.wait(DEADLINE), "the test never opened the gate"
        if job == "boom":
            raise RuntimeError("boom")
        if job == "refuse":
            return False
        self.done.append(job)
        return True


@pytest.fixture
def sinks() -> Iterator[Callable[..., Recorder]]:
    """Makes sinks; any a test left open is released and closed afterwards."""
    made: list[Recorder] = []

    def make(**options: object) -> Recorder:
        sink = Recorder(**options)  # type: ignore[arg-type]
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.gate.set()
        sink.close(timeout=0)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_jobs_are_delivered_in_order_on_a_named_daemon_thread(sinks) -> None:
    sink = sinks(queue_size=20)
    for n in range(20):
        sink(f"job-{n}")
    sink.close()
    assert sink.done == [f"job-{n}" for n in range(20)]
    assert (sink.delivered, sink.failed, sink.dropped, sink.pending) == (20, 0, 0, 0)
    assert sink._thread.daemon and sink._thread.name == "treadle recorder"
    assert not sink._thread.is_alive()


def test_an_exception_in_deliver_counts_as_failed_and_the_thread_goes_on(sinks, caplog) -> None:
    sink = sinks()
    sink("boom")
    sink("refuse")
    sink("after")
    sink.close()
    assert sink.done == ["after"]
    assert (sink.delivered, sink.failed, sink.pending) == (1, 2, 0)
    (record,) = [r for r in caplog.records if r.name == LOGGER]  # "refuse" logs its own reason
    assert record.getMessage() == "recorder: delivering str failed"
    assert record.exc_info is not None and "boom" in caplog.text


def test_a_full_queue_drops_and_logs_once_per_run_of_drops(sinks, caplog) -> None:
    sink = sinks(queue_size=2)
    sink.gate.clear()
    sink("job-1")
    assert sink.busy.wait(DEADLINE)  # job-1 is in flight, the queue is empty
    for n in range(2, 7):
        sink(f"job-{n}")  # job-2 and job-3 fit; job-4..6 are dropped, without waiting
    assert (sink.dropped, sink.pending) == (3, 3)
    assert warnings_of(caplog) == [
        "recorder: queue full (2 jobs waiting); dropping jobs until it drains"
    ]
    sink.gate.set()
    until(lambda: sink.delivered == 3)  # there is room again
    sink("job-7")
    assert warnings_of(caplog)[1:] == [
        "recorder: dropped 3 jobs while the queue was full (3 in all)"
    ]
    sink.close()
    assert sink.done == ["job-1", "job-2", "job-3", "job-7"]
    assert (sink.delivered, sink.dropped, sink.pending) == (4, 3, 0)


def test_close_delivers_what_is_queued_well_within_its_timeout(sinks, caplog) -> None:
    sink = sinks()
    sink.gate.clear()
    for n in range(5):
        sink(f"job-{n}")
    assert sink.busy.wait(DEADLINE)
    threading.Timer(0.05, sink.gate.set).start()  # the server answers while close() waits
    started = time.monotonic()
    sink.close(timeout=DEADLINE)
    assert time.monotonic() - started < DEADLINE / 2
    assert sink.done == [f"job-{n}" for n in range(5)]
    assert warnings_of(caplog) == []


def test_a_stuck_delivery_is_abandoned_at_the_deadline_naming_what_is_left(sinks, caplog) -> None:
    sink = sinks(close_timeout=0.1)
    sink.gate.clear()
    sink("job-1")
    sink("job-2")
    assert sink.busy.wait(DEADLINE)
    started = time.monotonic()
    sink.close()  # close_timeout
    assert time.monotonic() - started < DEADLINE / 2
    assert warnings_of(caplog) == ["recorder: closed with 2 jobs undelivered after waiting 0.1 s"]
    sink.gate.set()  # job-1 finishes; the abandoned thread then stops without job-2
    sink._thread.join(DEADLINE)
    assert not sink._thread.is_alive()
    assert sink.done == ["job-1"]


def test_calls_after_close_are_ignored_and_closing_twice_is_harmless(sinks, caplog) -> None:
    sink = sinks(close_timeout=0.05)
    sink.gate.clear()
    sink("job-1")
    assert sink.busy.wait(DEADLINE)
    sink.close()
    sink.close()
    sink.close(timeout=0)
    sink("late")
    assert sink.pending == 1  # job-1, still in flight; "late" was never accepted
    assert len(warnings_of(caplog)) == 1  # the one "closed with" line


def test_closing_an_idle_sink_says_nothing(sinks, caplog) -> None:
    sinks().close(timeout=0)
    assert warnings_of(caplog) == []


class Holding(Recorder):
    """Holds every job back until close(), like the email sink holds an escalation."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.holding_lock: list[bool] = []
        super().__init__()

    def __call__(self, job: str) -> None:
        with self._lock:
            if not self._closed:
                self.held.append(job)

    def _before_close(self) -> None:
        self.holding_lock.append(self._lock.locked())
        for job in self.held:
            self._enqueue(job)


def test_before_close_queues_what_was_held_back_once() -> None:
    sink = Holding()
    sink("a")
    sink("b")
    sink.close()
    sink.close()
    assert sink.done == ["a", "b"]
    assert sink.holding_lock == [True]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_size": 0}, "queue_size must be a whole number of at least 1, got 0"),
        ({"queue_size": True}, "queue_size must be a whole number of at least 1, got True"),
        ({"close_timeout": -1}, "close_timeout must be a positive duration, got -1"),
    ],
)
def test_the_queue_is_always_bounded(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recorder(**options)  # type: ignore[arg-type]
