"""Prometheus metrics of a workflow: counters and histograms from its event bus, gauges
read from a real store when scraped (treadle_core.metrics)."""

from __future__ import annotations

import logging
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from treadle_core import (
    Failed,
    FanOut,
    Item,
    ManualClock,
    NeedsReview,
    Retry,
    RetryBudget,
    Skipped,
    StageCompleted,
    StageRetried,
    StageStarted,
    StateStore,
    SubTask,
    SubTaskCompleted,
    SubTaskStarted,
    Workflow,
    open_store,
)
from treadle_core.metrics import AttemptTracker, WorkflowMetrics

T0 = datetime(2025, 1, 31, 9, 0, tzinfo=UTC)


def value(m: WorkflowMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def mixed(clock: ManualClock) -> Workflow:
    """fetch: retried once, then done after 2.5 s; check: a review for item r; tag:
    skipped; send: fails for item x."""

    async def fetch(item: Any, ctx: Any) -> Any:
        await clock.sleep(2.5)
        if ctx.attempt == 1:
            return Retry("HTTP 429\nbody")
        return None

    def check(item: Any, ctx: Any) -> Any:
        return NeedsReview("ok?") if item.id == "r" else None

    def tag(item: Any, ctx: Any) -> Any:
        return Skipped("nothing to tag")

    def send(item: Any, ctx: Any) -> Any:
        return Failed("mailbox full") if item.id == "x" else None

    return (
        Workflow.builder("mixed")
        .stage("fetch", fetch)
        .stage("check", check, needs=["fetch"])
        .stage("tag", tag, needs=["fetch"])
        .stage("send", send, needs=["fetch"])
        .retry_budget("fetch", RetryBudget(max_attempts=2))
        .clock(clock)
        .build()
    )


async def test_executions_are_counted_by_stage_and_outcome(store: StateStore) -> None:
    wf = mixed(ManualClock())
    with WorkflowMetrics(wf) as m:
        await wf.run(store, [Item("r", {}), Item("x", {})], concurrency=1)
        counts = {
            (stage, outcome): value(
                m, "treadle_stage_executions_total", pipeline="mixed", stage=stage, outcome=outcome
            )
            for stage in wf.stages
            for outcome in ("complete", "failed", "retry", "review", "skipped")
        }
    assert {k: v for k, v in counts.items() if v} == {
        ("fetch", "retry"): 2,
        ("fetch", "complete"): 2,
        ("check", "review"): 1,
        ("check", "complete"): 1,
        ("tag", "skipped"): 2,
        ("send", "failed"): 1,
        ("send", "complete"): 1,
    }
    # Every stage's series exist from the start, at zero, so rate() sees the first one.
    assert counts[("tag", "failed")] == 0


async def test_durations_go_from_start_to_outcome_by_stage(store: StateStore) -> None:
    clock = ManualClock()
    wf = mixed(clock)
    with WorkflowMetrics(wf) as m:
        await wf.run(store, [Item("a", {})], concurrency=1)
        labels = {"pipeline": "mixed", "stage": "fetch"}
        assert value(m, "treadle_stage_duration_seconds_count", **labels) == 2
        assert value(m, "treadle_stage_duration_seconds_sum", **labels) == 5.0
        assert value(m, "treadle_stage_duration_seconds_bucket", le="2.5", **labels) == 2
        assert value(m, "treadle_stage_duration_seconds_bucket", le="1.0", **labels) == 0
        tag = {"pipeline": "mixed", "stage": "tag"}
        assert value(m, "treadle_stage_duration_seconds_sum", **tag) == 0.0
        assert value(m, "treadle_stage_duration_seconds_count", **tag) == 1


async def test_a_fan_out_counts_its_subtasks_and_the_stage_spans_them(store: StateStore) -> None:
    clock = ManualClock()

    async def lookup(item: Any, ctx: Any) -> Any:
        if ctx.subtask is None:
            return FanOut([SubTask("musicbrainz"), SubTask("discogs")])
        await clock.sleep(1.0)
        return Failed("gone") if ctx.subtask == "discogs" else None

    wf = Workflow.builder("fan").stage("lookup", lookup).clock(clock).build()
    with WorkflowMetrics(wf) as m:
        await wf.run(store, [Item("a", {})], concurrency=1)
        sub = {"pipeline": "fan", "stage": "lookup"}
        assert value(m, "treadle_subtask_executions_total", outcome="complete", **sub) == 1
        assert value(m, "treadle_subtask_executions_total", outcome="failed", **sub) == 1
        assert value(m, "treadle_subtask_duration_seconds_sum", **sub) == 2.0
        assert value(m, "treadle_stage_executions_total", outcome="failed", **sub) == 1
        assert value(m, "treadle_stage_duration_seconds_sum", **sub) == 2.0


async def test_a_review_decision_is_counted_and_is_no_execution(store: StateStore) -> None:
    wf = mixed(ManualClock())
    await wf.run(store, [Item("r", {})])
    with WorkflowMetrics(wf) as m:
        await wf.approve_review("r", "check", store, reviewer="ada")
        labels = {"pipeline": "mixed", "stage": "check"}
        assert value(m, "treadle_reviews_resolved_total", decision="approve", **labels) == 1
        assert value(m, "treadle_stage_executions_total", outcome="complete", **labels) == 0


async def test_gauges_read_items_stages_and_reviews_from_the_store(store: StateStore) -> None:
    clock = ManualClock()
    wf = mixed(clock)
    await wf.run(store, [Item("r", {}), Item("x", {}), Item("ok", {})], concurrency=1)
    store.save_work_item_data("new", {})
    clock.advance(90)
    with WorkflowMetrics(wf, store) as m:
        items = {
            state: value(m, "treadle_items", pipeline="mixed", state=state)
            for state in ("ready", "scheduled", "running", "awaiting_review", "failed", "complete")
        }
        assert items == {
            "ready": 1,
            "scheduled": 0,
            "running": 0,
            "awaiting_review": 1,
            "failed": 1,
            "complete": 1,
        }
        check = {"pipeline": "mixed", "stage": "check"}
        assert value(m, "treadle_reviews_waiting", **check) == 1
        assert value(m, "treadle_stage_items", status="awaiting_review", **check) == 1
        assert value(m, "treadle_stage_items", status="complete", **check) == 2
        assert value(m, "treadle_stage_items", status="pending", **check) == 1  # "new"
        assert value(m, "treadle_stage_items", status="failed", pipeline="mixed", stage="send") == 1
        # fetch took 2 x 2.5 s on the manual clock before check asked, then 90 s went by
        assert value(m, "treadle_review_oldest_age_seconds", **check) >= 90
        assert value(m, "treadle_review_oldest_age_seconds", pipeline="mixed", stage="send") == 0
        assert value(m, "treadle_store_up", pipeline="mixed") == 1
        # read at each scrape, not when the metrics were made
        await wf.approve_review("r", "check", store, reviewer="ada")
        assert value(m, "treadle_reviews_waiting", **check) == 0
        assert value(m, "treadle_review_oldest_age_seconds", **check) == 0


async def test_the_oldest_review_is_the_first_to_wait(store: StateStore) -> None:
    clock = ManualClock()

    def ask(item: Any, ctx: Any) -> Any:
        return NeedsReview("ok?")

    wf = Workflow.builder("ask").stage("ask", ask).clock(clock).build()
    await wf.run(store, [Item("first", {})])
    clock.advance(600)
    await wf.run(store, [Item("second", {})])
    clock.advance(30)
    with WorkflowMetrics(wf, store) as m:
        labels = {"pipeline": "ask", "stage": "ask"}
        assert value(m, "treadle_reviews_waiting", **labels) == 2
        assert value(m, "treadle_review_oldest_age_seconds", **labels) == 630


class Spy:
    """A store that records which of its methods were called, and how."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((name, args, kw))
            return attr(*args, **kw)

        return call


async def test_a_scrape_uses_grouped_counts_and_asks_for_one_review_per_stage(
    store: StateStore,
) -> None:
    def ask(item: Any, ctx: Any) -> Any:
        return NeedsReview("ok?")

    wf = Workflow.builder("ask").stage("ask", ask).stage("other", ask).build()
    await wf.run(store, [Item(f"i{n}", {}) for n in range(20)])
    spy = Spy(store)
    with WorkflowMetrics(wf, spy) as m:  # type: ignore[arg-type]
        assert value(m, "treadle_reviews_waiting", pipeline="ask", stage="ask") == 20
    names = [name for name, _, _ in spy.calls]
    assert sorted(set(names)) == ["count_items", "pending_reviews", "summary"]
    reviews = [(args, kw) for name, args, kw in spy.calls if name == "pending_reviews"]
    assert len(reviews) == 2  # one per stage that has a review waiting
    assert all((args + tuple(kw.values()))[-1] == 1 for args, kw in reviews)  # limit=1


async def test_a_store_that_fails_a_scrape_reads_as_down_and_the_rest_is_served(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Spy):
        def count_items(self) -> Any:
            raise OSError("disk I/O error")

    wf = mixed(ManualClock())
    with WorkflowMetrics(wf, Broken(store)) as m:  # type: ignore[arg-type]
        await wf.run(store, [Item("a", {})])
        with caplog.at_level(logging.WARNING, logger="treadle.metrics"):
            text = m.render()[0].decode()
        assert "treadle_store_up" in text
        assert value(m, "treadle_store_up", pipeline="mixed") == 0
        assert value(m, "treadle_items", pipeline="mixed", state="ready") is None
        fetch = {"pipeline": "mixed", "stage": "fetch"}
        assert value(m, "treadle_stage_executions_total", outcome="complete", **fetch) == 1
    assert "metrics: reading the store failed: disk I/O error" in caplog.text


async def test_a_store_that_hangs_reads_as_down_after_the_timeout(store: StateStore) -> None:
    import threading

    release = threading.Event()

    class Hanging(Spy):
        def count_items(self) -> Any:
            release.wait(10)
            return {}

    wf = mixed(ManualClock())
    with WorkflowMetrics(wf, Hanging(store), store_timeout=0.2) as m:  # type: ignore[arg-type]
        try:
            assert value(m, "treadle_store_up", pipeline="mixed") == 0
        finally:
            release.set()


async def test_each_workflow_has_its_own_registry(store: StateStore, tmp_path: Path) -> None:
    one, two = mixed(ManualClock()), mixed(ManualClock())
    other = open_store(f"sqlite:///{tmp_path}/other.db")
    with WorkflowMetrics(one, store) as m1, WorkflowMetrics(two, other) as m2:
        await one.run(store, [Item("a", {})])
        labels = {"pipeline": "mixed", "stage": "tag", "outcome": "skipped"}
        assert value(m1, "treadle_stage_executions_total", **labels) == 1
        assert value(m2, "treadle_stage_executions_total", **labels) == 0
        assert value(m1, "treadle_items", pipeline="mixed", state="complete") == 1
        assert value(m2, "treadle_items", pipeline="mixed", state="complete") == 0
    other.close()


async def test_closed_metrics_stop_counting(store: StateStore) -> None:
    wf = mixed(ManualClock())
    m = WorkflowMetrics(wf)
    m.close()
    await wf.run(store, [Item("a", {})])
    labels = {"pipeline": "mixed", "stage": "tag", "outcome": "skipped"}
    assert value(m, "treadle_stage_executions_total", **labels) == 0
    assert not wf.bus.has_receivers


def test_process_metrics_count_treadle_warnings_and_errors() -> None:
    wf = Workflow.builder("p").stage("s", lambda item, ctx: None).build()
    with WorkflowMetrics(wf, process=True) as m:
        logging.getLogger("treadle.engine").warning("took over 1 item from x: that process is gone")
        logging.getLogger("treadle.engine").error("item 'a': advancing it failed; putting it aside")
        logging.getLogger("somebody.else").error("not ours")
        assert value(m, "treadle_log_messages_total", level="warning") == 1
        assert value(m, "treadle_log_messages_total", level="error") == 1
        assert value(m, "treadle_log_messages_total", level="critical") == 0
        text = m.render()[0].decode()
        if Path("/proc/self/stat").exists():
            assert "process_resident_memory_bytes" in text
    logging.getLogger("treadle.engine").warning("after close")
    assert value(m, "treadle_log_messages_total", level="warning") == 1


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    wf = Workflow.builder("p").stage("s", lambda item, ctx: None).build()
    with WorkflowMetrics(wf) as m:
        body, kind = m.render("application/openmetrics-text; version=1.0.0")
        assert kind.startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")
        body, kind = m.render(None)
        assert kind.startswith("text/plain") and b"treadle_stage_executions_total" in body


async def test_served_over_http(store: StateStore) -> None:
    wf = mixed(ManualClock())
    with WorkflowMetrics(wf, store) as m:
        await wf.run(store, [Item("a", {})])
        server = m.serve(0)
        try:
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(server.url, timeout=10) as response:
                text = response.read().decode()
        finally:
            server.close()
    assert 'treadle_items{pipeline="mixed",state="complete"} 1.0' in text
    skipped = 'treadle_stage_executions_total{outcome="skipped",pipeline="mixed",stage="tag"} 1.0'
    assert skipped in text


@pytest.mark.postgres
async def test_gauges_from_postgresql(pg_url: str) -> None:
    clock = ManualClock()
    wf = mixed(clock)
    store = open_store(pg_url)
    try:
        await wf.run(store, [Item("r", {}), Item("x", {}), Item("ok", {})])
        clock.advance(60)
        with WorkflowMetrics(wf, store) as m:
            assert value(m, "treadle_store_up", pipeline="mixed") == 1
            assert value(m, "treadle_items", pipeline="mixed", state="awaiting_review") == 1
            assert value(m, "treadle_items", pipeline="mixed", state="failed") == 1
            assert value(m, "treadle_items", pipeline="mixed", state="complete") == 1
            check = {"pipeline": "mixed", "stage": "check"}
            assert value(m, "treadle_reviews_waiting", **check) == 1
            assert value(m, "treadle_review_oldest_age_seconds", **check) >= 60
    finally:
        store.close()


# --- pairing starts with their ends ------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_tracker_pairs_a_start_with_the_end_of_the_same_attempt() -> None:
    t = AttemptTracker()
    assert t.feed(StageStarted(item_id="a", stage="s", attempt=3, at=at(0))) is None
    assert t.feed(StageStarted(item_id="b", stage="s", attempt=1, at=at(1))) is None
    done = t.feed(StageRetried(item_id="a", stage="s", attempt=3, error="boom\ntrace", at=at(4)))
    assert done is not None
    assert (done.item_id, done.stage, done.attempt, done.outcome) == ("a", "s", 3, "retry")
    assert (done.seconds, done.error, done.subtask) == (4.0, "boom", None)
    assert len(t) == 1


def test_tracker_ignores_an_end_it_saw_no_start_of() -> None:
    """A review decision, a crash recovery or a retry_stage ends no attempt here."""
    t = AttemptTracker()
    assert t.feed(StageCompleted(item_id="a", stage="s", at=at(1))) is None
    recovered = "recovered after its process died"
    assert t.feed(StageRetried(item_id="a", stage="s", attempt=1, error=recovered)) is None


def test_tracker_keeps_subtasks_apart_from_their_stage() -> None:
    t = AttemptTracker()
    t.feed(StageStarted(item_id="a", stage="s", attempt=1, at=at(0)))
    t.feed(SubTaskStarted(item_id="a", stage="s", subtask="x", at=at(1)))
    done = t.feed(SubTaskCompleted(item_id="a", stage="s", subtask="x", at=at(3)))
    assert done is not None and (done.subtask, done.seconds, done.attempt) == ("x", 2.0, None)
    done = t.feed(StageCompleted(item_id="a", stage="s", at=at(5)))
    assert done is not None and (done.subtask, done.seconds, done.attempt) == (None, 5.0, 1)


def test_tracker_is_bounded_and_a_new_start_replaces_a_lost_one() -> None:
    t = AttemptTracker(limit=2)
    t.feed(StageStarted(item_id="a", stage="s", attempt=1, at=at(0)))
    t.feed(StageStarted(item_id="a", stage="s", attempt=2, at=at(10)))  # the first never ended
    assert len(t) == 1
    t.feed(StageStarted(item_id="b", stage="s", attempt=1, at=at(11)))
    t.feed(StageStarted(item_id="c", stage="s", attempt=1, at=at(12)))
    assert len(t) == 2
    assert t.feed(StageCompleted(item_id="a", stage="s", at=at(13))) is None  # made room
    done = t.feed(StageCompleted(item_id="c", stage="s", at=at(13)))
    assert done is not None and done.seconds == 1.0
