"""Prometheus metrics of a workflow: what its stages did in this process (from its event
bus) and what waits in its store (read when scraped). See docs/how-to/watch-a-worker.md.

Each `WorkflowMetrics` has its own registry, so several workflows (and tests) in one
process never share or collide on a metric.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import (
    Event,
    ReviewRequired,
    ReviewResolved,
    StageCompleted,
    StageFailed,
    StageRetried,
    StageSkipped,
    StageStarted,
    SubTaskCompleted,
    SubTaskFailed,
    SubTaskStarted,
)
from .model import ItemState, StageStatus

if TYPE_CHECKING:
    from .store.base import StateStore
    from .workflow import Workflow

log = logging.getLogger("treadle.metrics")

#: How an attempt ended, by the event that ends it (the ``outcome`` label).
OUTCOMES: dict[type[Event], str] = {
    StageCompleted: "complete",
    StageFailed: "failed",
    StageRetried: "retry",
    ReviewRequired: "review",
    StageSkipped: "skipped",
    SubTaskCompleted: "complete",
    SubTaskFailed: "failed",
}

#: Seconds: from a no-op stage to an hour-long one (an LLM call, a slow export).
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    math.inf,
)


@dataclass(frozen=True)
class FinishedAttempt:
    """One attempt of a stage (or of one of its subtasks) that ended in this process."""

    item_id: str
    stage: str
    #: The fan-out subtask (None: the stage itself).
    subtask: str | None
    #: The stage's attempt number (None for a subtask).
    attempt: int | None
    #: ``complete``, ``failed``, ``retry``, ``review`` or ``skipped``.
    outcome: str
    seconds: float
    #: The first line of the error of a failed or retried attempt.
    error: str | None = None


_Key = tuple[str, str, str | None]


class AttemptTracker:
    """Pairs each ``StageStarted`` (``SubTaskStarted``) with the event that ends that
    attempt, and says how it ended and how long it took, from the events' ``at``.

    Only attempts that started in this process are reported: a review decision or a
    crash recovery ends no attempt here. At most ``limit`` attempts are remembered; one
    whose end never comes (its lease was lost) is dropped when the same stage starts
    again, or when the oldest make room.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._open: OrderedDict[_Key, tuple[int | None, datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def feed(self, event: Event) -> FinishedAttempt | None:
        """The attempt ``event`` ends, if it ends one that started here; else None."""
        stage = event.stage
        if stage is None:
            return None
        if isinstance(event, StageStarted):
            self._start((event.item_id, stage, None), event.attempt, event.at)
            return None
        if isinstance(event, SubTaskStarted):
            self._start((event.item_id, stage, event.subtask), None, event.at)
            return None
        outcome = OUTCOMES.get(type(event))
        if outcome is None:
            return None
        subtask: str | None = getattr(event, "subtask", None)
        with self._lock:
            started = self._open.pop((event.item_id, stage, subtask), None)
        if started is None:
            return None
        attempt, at = started
        error: str | None = getattr(event, "error", None)
        return FinishedAttempt(
            item_id=event.item_id,
            stage=stage,
            subtask=subtask,
            attempt=attempt,
            outcome=outcome,
            seconds=max((event.at - at).total_seconds(), 0.0),
            error=error.strip().splitlines()[0] if error and error.strip() else None,
        )

    def _start(self, key: _Key, attempt: int | None, at: datetime) -> None:
        with self._lock:
            self._open.pop(key, None)
            self._open[key] = (attempt, at)
            while len(self._open) > self.limit:
                self._open.popitem(last=False)

    def __len__(self) -> int:
        return len(self._open)


class WorkflowMetrics:
    """Prometheus metrics of ``wf`` in its own `registry`.

    Counters and histograms count the attempts that ran in this process (a listener on
    ``wf.bus``); with a ``store``, gauges of items, stages and reviews are read from it
    at each scrape, with bounded grouped queries, on one thread of their own (at most
    ``store_timeout`` seconds; ``treadle_store_up`` says whether it answered).
    ``process=True`` adds the process's CPU, memory and file descriptors and counts the
    warnings and errors logged by Treadle (what ``treadle worker`` serves).
    `close()` detaches it.
    """

    def __init__(
        self,
        wf: Workflow,
        store: StateStore | None = None,
        *,
        registry: CollectorRegistry | None = None,
        process: bool = False,
        store_timeout: float = 5.0,
    ) -> None:
        self.wf = wf
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["pipeline", "stage"]
        self.executions = Counter(
            "treadle_stage_executions",
            "Stage attempts that ended in this process, by how they ended.",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "treadle_stage_duration_seconds",
            "How long stage attempts took, from start to outcome (a fan-out: to its last subtask).",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.subtask_executions = Counter(
            "treadle_subtask_executions",
            "Fan-out subtask attempts that ended in this process, by how they ended.",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self.subtask_durations = Histogram(
            "treadle_subtask_duration_seconds",
            "How long fan-out subtask attempts took.",
            labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.reviews_resolved = Counter(
            "treadle_reviews_resolved",
            "Review decisions applied in this process, by decision.",
            [*labels, "decision"],
            registry=self.registry,
        )
        # Every stage's series from the start, so rate() sees the first attempt.
        for stage in wf.stages:
            for outcome in ("complete", "failed", "retry", "review", "skipped"):
                self.executions.labels(wf.name, stage, outcome)
            self.durations.labels(wf.name, stage)
        self._tracker = AttemptTracker()
        self._store: _StoreCollector | None = None
        if store is not None:
            self._store = _StoreCollector(wf, store, store_timeout)
            self.registry.register(self._store)
        self._log_counter: _LogCounter | None = None
        if process:
            ProcessCollector(registry=self.registry)
            logged = Counter(
                "treadle_log_messages",
                "Warnings and errors logged by Treadle in this process (items put aside, "
                "lost leases, store retries...).",
                ["level"],
                registry=self.registry,
            )
            for level in ("warning", "error", "critical"):
                logged.labels(level)
            self._log_counter = _LogCounter(logged)
            logging.getLogger("treadle").addHandler(self._log_counter)
        wf.bus.add_listener(self.listen)

    def listen(self, event: Event) -> None:
        """The bus listener: count what ``event`` ends."""
        if isinstance(event, ReviewResolved):
            stage = event.stage or ""
            self.reviews_resolved.labels(self.wf.name, stage, event.decision).inc()
            return
        done = self._tracker.feed(event)
        if done is None:
            return
        if done.subtask is None:
            self.executions.labels(self.wf.name, done.stage, done.outcome).inc()
            self.durations.labels(self.wf.name, done.stage).observe(done.seconds)
        else:
            self.subtask_executions.labels(self.wf.name, done.stage, done.outcome).inc()
            self.subtask_durations.labels(self.wf.name, done.stage).observe(done.seconds)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when ``accept`` asks) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve `render()` at ``http://host:port/metrics`` from a thread (0: a free port)."""
        return MetricsServer(self.registry, host, port)

    def close(self) -> None:
        """Stop listening to the workflow's events and stop the store reader."""
        self.wf.bus.remove_listener(self.listen)
        if self._log_counter is not None:
            logging.getLogger("treadle").removeHandler(self._log_counter)
            self._log_counter = None
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> WorkflowMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsServer:
    """prometheus_client's HTTP server for one registry, on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@dataclass(frozen=True)
class _Snapshot:
    items: dict[ItemState, int]
    stages: dict[str, dict[str, int]]
    oldest_review: dict[str, float]


class _StoreCollector(Collector):
    """Gauges read from the store at scrape time: a grouped count of items, the
    workflow's per-stage summary, and the oldest waiting review of each stage that has
    one (``limit=1``), so a scrape never loads every item or review."""

    def __init__(self, wf: Workflow, store: StateStore, timeout: float) -> None:
        self.wf = wf
        self.store = store
        self.timeout = timeout
        # One thread, so scrapes reuse one connection instead of opening one each.
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="treadle-metrics")
        self._closed = False

    def _read(self) -> _Snapshot:
        wf, store = self.wf, self.store
        items = store.count_items()
        stages = wf.summary(store, total=sum(items.values()))
        now = wf.clock.now()
        oldest: dict[str, float] = {}
        for stage, counts in stages.items():
            if counts.get(StageStatus.AWAITING_REVIEW.value):
                first = wf.pending_reviews(store, stage, limit=1)
                if first and first[0].since is not None:
                    oldest[stage] = max((now - first[0].since).total_seconds(), 0.0)
        return _Snapshot(items, stages, oldest)

    def _snapshot(self) -> _Snapshot | None:
        if self._closed:
            return None
        try:
            return self._reader.submit(self._read).result(self.timeout)
        except FutureTimeout:
            log.warning("metrics: the store did not answer within %g s", self.timeout)
        except Exception as exc:
            log.warning("metrics: reading the store failed: %s", _first_line(exc))
        return None

    def describe(self) -> Iterator[Metric]:
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._snapshot())

    def _families(self, snap: _Snapshot | None) -> Iterator[Metric]:
        name = self.wf.name
        up = GaugeMetricFamily(
            "treadle_store_up",
            "1 when the store answered this scrape's queries, else 0.",
            labels=["pipeline"],
        )
        up.add_metric([name], 0 if snap is None else 1)
        yield up
        items = GaugeMetricFamily(
            "treadle_items", "Items by aggregate state.", labels=["pipeline", "state"]
        )
        stages = GaugeMetricFamily(
            "treadle_stage_items",
            "Items by stage and that stage's status.",
            labels=["pipeline", "stage", "status"],
        )
        waiting = GaugeMetricFamily(
            "treadle_reviews_waiting",
            "Stages waiting for a person.",
            labels=["pipeline", "stage"],
        )
        oldest = GaugeMetricFamily(
            "treadle_review_oldest_age_seconds",
            "How long the oldest waiting review of the stage has waited (0: none waits).",
            labels=["pipeline", "stage"],
        )
        if snap is not None:
            for state in ItemState:
                items.add_metric([name, state.value], snap.items.get(state, 0))
            for stage, counts in snap.stages.items():
                for status in StageStatus:
                    stages.add_metric([name, stage, status.value], counts.get(status.value, 0))
                waiting.add_metric([name, stage], counts.get(StageStatus.AWAITING_REVIEW.value, 0))
                oldest.add_metric([name, stage], snap.oldest_review.get(stage, 0.0))
        yield from (items, stages, waiting, oldest)

    def close(self) -> None:
        self._closed = True
        release = getattr(self.store, "release_thread", None)
        if release is not None:
            # Close this reader's connection on its own thread, then let the thread go.
            self._reader.submit(_quietly, release)
        self._reader.shutdown(wait=False)


class _LogCounter(logging.Handler):
    """Counts the warnings and errors Treadle's loggers emit."""

    def __init__(self, counter: Counter) -> None:
        super().__init__(logging.WARNING)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        self.counter.labels(record.levelname.lower()).inc()


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:
        log.debug("metrics: closing the store reader's connection failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
