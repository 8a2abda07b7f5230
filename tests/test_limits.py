"""Flow control (SPEC §12): per-stage concurrency and rate limits kept in the store, so
they hold across every worker sharing it; waiting for a limit holds no execution slot."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from treadle_core import (
    Complete,
    FanOut,
    Item,
    MemoryStateStore,
    StageOutput,
    StoreError,
    SubTask,
    Workflow,
)
from treadle_core.store.base import admission


class Overlap:
    """Counts how many calls run at once (also across threads)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.starts: list[float] = []
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.starts.append(time.monotonic())

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


async def test_a_concurrency_of_one_never_overlaps_and_others_go_on_meanwhile(make_store):
    """Six items through a stage limited to one at a time, the engine allowing four: the
    limited stage never overlaps, and the unlimited stage runs beside it (the waiting
    items hold no execution slot)."""
    limited, beside = Overlap(), []

    async def call_api(item, ctx):
        limited.enter()
        try:
            await asyncio.sleep(0.03)
        finally:
            limited.leave()

    async def resize(item, ctx):
        beside.append((item.id, limited.now))

    wf = (
        Workflow.builder()
        .stage("call_api", call_api)
        .stage("resize", resize)
        .limit("call_api", concurrency=1)
        .build()
    )
    store = make_store()
    items = [Item(f"i{n}") for n in range(6)]
    await asyncio.wait_for(wf.run(store, items, concurrency=4), 20)
    assert limited.most == 1
    assert all(wf.status(i.id, store).is_complete for i in items)
    assert any(running for _, running in beside)  # resize ran while call_api was busy
    assert wf.limits(store)["call_api"].running == 0


async def test_a_rate_is_never_exceeded_in_any_window(make_store):
    calls = Overlap()

    async def call_api(item, ctx):
        calls.enter()
        calls.leave()

    wf = Workflow.builder().stage("call_api", call_api).limit("call_api", rate="4/s").build()
    store = make_store()
    started = time.monotonic()
    await asyncio.wait_for(wf.run(store, [Item(f"i{n}") for n in range(10)], concurrency=8), 20)
    took = time.monotonic() - started
    starts = calls.starts
    assert len(starts) == 10
    worst = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert worst <= 4, starts
    assert took >= 2.0  # 10 starts at 4 per second


def test_a_rate_admits_the_next_start_a_margin_past_its_window():
    """5 % of the period: what runs between admission and the call (a commit, a thread
    starting) must not let one too many land in one window (docs/how-to/flow-control)."""
    kept, retry = admission([10.0], 0, 10.5, concurrency=None, rate=(1, 1.0))
    assert (kept, retry) == ([10.0], pytest.approx(11.05))
    # within the margin the start still waits; past it, it is admitted
    assert admission([10.0], 0, 11.04, concurrency=None, rate=(1, 1.0))[1] is not None
    assert admission([10.0], 0, 11.06, concurrency=None, rate=(1, 1.0)) == ([11.06], None)


async def test_a_rate_limits_each_subtask_of_a_fanout(make_store):
    calls = Overlap()

    async def fetch(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask(f"u{n}") for n in range(6)])
        calls.enter()
        calls.leave()
        return StageOutput(Complete(), artefact=ctx.subtask)

    wf = Workflow.builder().stage("fetch", fetch).limit("fetch", rate="3/s").build()
    store = make_store()
    await asyncio.wait_for(wf.run(store, [Item("x")]), 20)
    assert wf.status("x", store).is_complete
    starts = calls.starts
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 3


async def test_items_waiting_for_a_limit_are_shown(make_store):
    release = asyncio.Event()

    async def call_api(item, ctx):
        await release.wait()

    wf = Workflow.builder().stage("call_api", call_api).limit("call_api", concurrency=1).build()
    store = make_store()
    running = asyncio.create_task(wf.run(store, [Item(f"i{n}") for n in range(3)]))
    deadline = time.monotonic() + 10
    while wf.limits(store)["call_api"].waiting < 2:
        assert time.monotonic() < deadline, wf.limits(store)
        await asyncio.sleep(0.01)
    status = wf.limits(store)["call_api"]
    assert (status.concurrency, status.rate, status.running, status.waiting) == (1, None, 1, 2)
    release.set()
    await asyncio.wait_for(running, 20)
    assert wf.limits(store)["call_api"].waiting == 0


def test_a_store_that_cannot_keep_limits_refuses_to_run_them():
    class NoLimits(MemoryStateStore):
        admit = MemoryStateStore.__mro__[1].admit  # the StateStore default

    wf = Workflow.builder().stage("a", lambda i, c: None).limit("a", concurrency=1).build()
    with pytest.raises(StoreError, match="stage 'a' has a limit, which NoLimits cannot keep"):
        asyncio.run(wf.run(NoLimits(), [Item("x")]))


@pytest.mark.parametrize(
    "concurrency, rate, error",
    [
        (0, None, "concurrency must be an integer from 1 to 10,000"),
        (1.5, None, "concurrency must be an integer"),
        (None, "fast", "'fast' is not a rate"),
        (None, "0/s", "is not a rate"),
        (None, None, "give concurrency, rate, or both"),
    ],
)
def test_a_limit_that_means_nothing_is_refused(concurrency, rate, error):
    builder = Workflow.builder().stage("a", lambda i, c: None)
    with pytest.raises(ValueError, match=error):
        builder.limit("a", concurrency=concurrency, rate=rate)


PIPELINE = """
[pipeline]
name = "limited"
store = "sqlite:///state.db"

[stages.fetch]
uses = "python"
object = "stages:fetch"
max_concurrent = 1
rate = "10/s"
"""

STAGES = """
import time

def fetch(item, ctx):
    time.sleep(0.05)
"""


def test_the_cli_reads_limits_from_the_file_and_status_shows_them(tmp_path, treadle_cli):
    import json

    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(STAGES)
    assert treadle_cli("add", "--id", "a").exit_code == 0
    assert treadle_cli("add", "--id", "b").exit_code == 0
    result = treadle_cli("run", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(treadle_cli("status", "--json").stdout)
    assert status["limits"] == {
        "fetch": {"max_concurrent": 1, "rate": "10/s", "running": 0, "waiting": 0}
    }
    shown = treadle_cli("status").stdout
    assert "limits" in shown and "10/s" in shown


@pytest.mark.parametrize(
    "line, error",
    [
        ('rate = "fast"', "[stages.fetch] key 'rate': 'fast' is not a rate"),
        ("max_concurrent = 0", "[stages.fetch] key 'max_concurrent': 0 is out of range"),
        ('max_concurrent = "2"', "[stages.fetch] key 'max_concurrent': expected an integer"),
    ],
)
def test_a_limit_in_the_file_that_means_nothing_is_one_line(tmp_path, treadle_cli, line, error):
    text = PIPELINE.replace('max_concurrent = 1\nrate = "10/s"', line)
    (tmp_path / "treadle.toml").write_text(text)
    (tmp_path / "stages.py").write_text(STAGES)
    result = treadle_cli("validate")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and error in result.stderr


def test_add_takes_a_priority_and_run_claims_the_highest_first(tmp_path, treadle_cli):
    import json

    (tmp_path / "treadle.toml").write_text(
        '[pipeline]\nname = "p"\nstore = "sqlite:///s.db"\n'
        '[stages.note]\nuses = "python"\nobject = "stages:note"\n'
    )
    (tmp_path / "stages.py").write_text(
        "ORDER = []\n\ndef note(item, ctx):\n"
        "    with open('order.txt', 'a') as fh:\n        fh.write(item.id + '\\n')\n"
    )
    (tmp_path / "items.jsonl").write_text(
        json.dumps({"id": "low"}) + "\n" + json.dumps({"id": "top", "priority": 9}) + "\n"
    )
    assert treadle_cli("add", "items.jsonl", "--priority", "3").exit_code == 0
    assert treadle_cli("add", "--id", "later").exit_code == 0
    assert treadle_cli("run", "--concurrency", "1").exit_code == 0
    assert (tmp_path / "order.txt").read_text().split() == ["top", "low", "later"]


@pytest.mark.parametrize("value", ["-1", "1000001"])
def test_a_priority_out_of_range_is_one_line(tmp_path, treadle_cli, value):
    (tmp_path / "treadle.toml").write_text('[pipeline]\nname = "p"\n[stages.a]\nuses = "review"\n')
    result = treadle_cli("add", "--id", "x", "--priority", value)
    assert result.exit_code == 2
    assert "--priority: priority must be an integer from 0 to 1,000,000" in result.stderr
