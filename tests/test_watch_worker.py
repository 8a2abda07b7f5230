"""Watching `treadle worker`: Prometheus metrics over real HTTP, a log line per finished
stage with -v, the engine's warnings once and readable (real processes, a SQLite file)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PIPELINE = """
[pipeline]
name = "watched"
store = "sqlite:///state.db"
concurrency = 4

[stages.parse]
uses = "stages:parse"
retry = { max_attempts = 2 }

[stages.approve]
uses = "review"
needs = ["parse"]
"""

STAGES = """
import asyncio, os, pathlib

from treadle_core import Failed, Retry

async def parse(item, ctx):
    pathlib.Path("started", f"{item.id}.{os.getpid()}").touch()
    while item.data.get("hold") and not pathlib.Path("go").exists():
        await asyncio.sleep(0.05)
    if item.data.get("fail"):
        return Failed("the source was empty")
    if item.data.get("flaky") and ctx.attempt == 1:
        return Retry("HTTP 429\\nToo Many Requests")
    return None
"""

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<msg>.*)$"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(textwrap.dedent(STAGES))
    (tmp_path / "started").mkdir()
    return tmp_path


def treadle(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}


class Worker:
    """A `treadle worker` process whose stderr goes to a file the test can read meanwhile."""

    def __init__(self, project: Path, *args: str, name: str = "worker") -> None:
        self.log = project / f"{name}.stderr"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "treadle_core.cli", "worker", "--poll", "100ms", *args],
                cwd=project,
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
                env=_env(),
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def metrics_url(self) -> str:
        found: list[str] = []

        def announced() -> bool:
            found[:] = re.findall(r"metrics at (http://\S+/metrics)", self.stderr)
            return bool(found) or self.proc.poll() is not None

        wait_for(announced, "the metrics address")
        assert found, self.stderr
        return found[0]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        return self.stderr

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def workers(project: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str, name: str = "worker") -> Worker:
        w = Worker(project, *args, name=name)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.kill()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def add(project: Path, item_id: str, data: str = "{}") -> None:
    result = treadle(project, "add", "--id", item_id, "--data", data)
    assert result.returncode == 0, result.stderr


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition (labels in any order)."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if found == labels:
            return float(m.group(3))
    return None


def test_metrics_are_scraped_over_http_after_real_work(project, workers):
    add(project, "a")
    add(project, "bad", '{"fail": true}')
    add(project, "flaky", '{"flaky": true}')
    worker = workers("--metrics-port", "0")
    url = worker.metrics_url()
    assert url.startswith("http://127.0.0.1:")
    text = ""

    parse = {"pipeline": "watched", "stage": "parse"}
    approve = {"pipeline": "watched", "stage": "approve"}

    def settled() -> bool:
        # The store gauges are read when scraped; the counters follow the event bus, which
        # publishes just after the commit: a scrape in between sees the review waiting
        # but not yet counted, so wait for both.
        nonlocal text
        text = scrape(url)
        return (
            sample(text, "treadle_reviews_waiting", **approve) == 2
            and sample(text, "treadle_items", pipeline="watched", state="failed") == 1
            and sample(text, "treadle_stage_executions_total", outcome="review", **approve) == 2
            and sample(text, "treadle_stage_executions_total", outcome="failed", **parse) == 1
        )

    wait_for(settled, "both good items to wait for review and the bad one to fail, counted")
    worker.stop()

    assert sample(text, "treadle_stage_executions_total", outcome="complete", **parse) == 2
    assert sample(text, "treadle_stage_executions_total", outcome="failed", **parse) == 1
    assert sample(text, "treadle_stage_executions_total", outcome="retry", **parse) == 1
    assert sample(text, "treadle_stage_executions_total", outcome="review", **approve) == 2
    assert sample(text, "treadle_stage_duration_seconds_count", **parse) == 4
    assert sample(text, "treadle_stage_duration_seconds_bucket", le="+Inf", **parse) == 4
    assert sample(text, "treadle_items", pipeline="watched", state="awaiting_review") == 2
    assert sample(text, "treadle_items", pipeline="watched", state="failed") == 1
    assert sample(text, "treadle_stage_items", status="failed", **parse) == 1
    assert sample(text, "treadle_review_oldest_age_seconds", **approve) >= 0
    assert sample(text, "treadle_store_up", pipeline="watched") == 1
    assert sample(text, "treadle_log_messages_total", level="error") == 0
    if Path("/proc/self/stat").exists():
        assert sample(text, "process_open_fds") is not None


def test_each_finished_stage_is_one_info_line_with_v(project, workers):
    add(project, "a")
    add(project, "bad", '{"fail": true}')
    add(project, "flaky", '{"flaky": true}')
    worker = workers("-v")
    wait_for(lambda: worker.stderr.count("stage 'approve': review") == 2, "two reviews")
    err = worker.stop()
    lines = [m.groupdict() for m in map(LINE.match, err.splitlines()) if m]
    finished = sorted(
        re.sub(r"\d+\.\d{3} s", "T s", line["msg"])
        for line in lines
        if line["logger"] == "treadle.worker"
    )
    assert all(line["level"] == "INFO" for line in lines if line["logger"] == "treadle.worker")
    assert finished == [
        "item 'a' stage 'approve': review, attempt 1, T s",
        "item 'a' stage 'parse': complete, attempt 1, T s",
        "item 'bad' stage 'parse': failed, attempt 1, T s: the source was empty",
        "item 'flaky' stage 'approve': review, attempt 1, T s",
        "item 'flaky' stage 'parse': complete, attempt 2, T s",
        "item 'flaky' stage 'parse': retry, attempt 1, T s: HTTP 429",
    ]


def test_without_v_a_worker_logs_no_line_per_stage(project, workers):
    add(project, "a")
    worker = workers()
    wait_for(
        lambda: "awaiting_review" in treadle(project, "status", "a", "--json").stdout,
        "the review",
    )
    err = worker.stop()
    assert "treadle.worker" not in err and "stage 'parse'" not in err


def test_a_takeover_from_a_dead_worker_is_one_readable_warning(project, workers):
    add(project, "held", '{"hold": true}')
    first = workers("--id", "first", name="first")
    wait_for(lambda: any((project / "started").iterdir()), "the stage to start")
    first.kill()  # kill -9: its lease would last 60 s
    (project / "go").touch()
    second = workers("--id", "second", name="second")
    wait_for(
        lambda: "awaiting_review" in treadle(project, "status", "held", "--json").stdout,
        "the second worker to finish the stage",
    )
    err = second.stop()
    warnings = [line for line in err.splitlines() if "took over" in line]
    assert len(warnings) == 1, err
    m = LINE.match(warnings[0])
    assert m is not None, warnings[0]
    assert (m["level"], m["logger"]) == ("WARNING", "treadle.engine")
    assert m["msg"].startswith("took over 1 item from first")


def test_a_busy_metrics_port_is_one_line_and_no_work_is_done(project):
    add(project, "a")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = treadle(project, "worker", "--metrics-port", str(port))
    assert result.returncode == 1
    assert result.stderr == f"Error: 127.0.0.1:{port} is in use; pick another --metrics-port\n"
    assert not any((project / "started").iterdir())


def test_a_metrics_host_this_machine_does_not_have_is_one_line(project):
    result = treadle(project, "worker", "--metrics-port", "0", "--metrics-host", "192.0.2.1")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: cannot serve metrics on 192.0.2.1:0: ")
    assert result.stderr.count("\n") == 1


async def test_a_fan_out_logs_its_stage_at_info_and_each_subtask_at_debug(caplog):
    from treadle_core import FanOut, Item, MemoryStateStore, SubTask, Workflow
    from treadle_core.cli.worker import logged_attempts

    def lookup(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask("musicbrainz"), SubTask("discogs")])
        return None

    wf = Workflow.builder("fan").stage("lookup", lookup).build()
    with caplog.at_level(logging.DEBUG, logger="treadle.worker"), logged_attempts(wf):
        await wf.run(MemoryStateStore(), [Item("a", {})])
    lines = sorted(
        (r.levelname, re.sub(r"\d+\.\d{3} s", "T s", r.getMessage()))
        for r in caplog.records
        if r.name == "treadle.worker"
    )
    assert lines == [
        ("DEBUG", "item 'a' stage 'lookup' subtask 'discogs': complete, T s"),
        ("DEBUG", "item 'a' stage 'lookup' subtask 'musicbrainz': complete, T s"),
        ("INFO", "item 'a' stage 'lookup': complete, attempt 1, T s"),
    ]
    assert not wf.bus.has_receivers  # the listener is gone with the worker


def test_below_info_the_worker_adds_no_listener(caplog):
    from treadle_core import Workflow
    from treadle_core.cli.worker import logged_attempts

    wf = Workflow.builder("quiet").stage("s", lambda item, ctx: None).build()
    with caplog.at_level(logging.WARNING, logger="treadle.worker"), logged_attempts(wf):
        assert not wf.bus.has_receivers
