"""On PostgreSQL an idle worker is woken by LISTEN/NOTIFY when work appears (an item
added, a review decided, a retry), not at its next poll (SPEC §12)."""

from __future__ import annotations

import asyncio
import time

import pytest

from treadle_core import Item, NeedsReview, Workflow, open_store
from treadle_core.store.sql import SqlStateStore

pytestmark = pytest.mark.postgres


async def wait_until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_an_idle_worker_starts_a_new_item_at_once_not_at_its_next_poll(pg_url):
    started: dict[str, float] = {}

    async def work(item, ctx):
        started[item.id] = time.monotonic()

    wf = Workflow.builder().stage("work", work).build()
    store = open_store(pg_url)
    other = SqlStateStore(pg_url)  # what `treadle add` in another process would use
    stop = asyncio.Event()
    worker = asyncio.create_task(wf.serve(store, stop=stop, poll_interval=30))
    try:
        other.save_work_item_data("first", {})
        await wait_until(lambda: "first" in started, "the first item")
        await asyncio.sleep(0.2)  # the worker is idle now, sleeping towards its 30 s poll
        added = time.monotonic()
        other.save_work_item_data("second", {})
        await wait_until(lambda: "second" in started, "the second item", timeout=10)
        assert started["second"] - added < 5  # woken by NOTIFY, not the 30 s poll
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        other.close()
        store.close()


async def test_a_review_decided_elsewhere_wakes_the_worker(pg_url):
    ran: dict[str, float] = {}

    async def ask(item, ctx):
        return NeedsReview("ok?")

    async def publish(item, ctx):
        ran[item.id] = time.monotonic()

    wf = Workflow.builder().stage("ask", ask).stage("publish", publish, needs=["ask"]).build()
    store = open_store(pg_url)
    other = SqlStateStore(pg_url)
    stop = asyncio.Event()
    worker = asyncio.create_task(wf.serve(store, stop=stop, poll_interval=30))
    try:
        other.save_work_item_data("x", {})
        await wait_until(lambda: wf.pending_reviews(other), "the review")
        await asyncio.sleep(0.2)  # idle again
        decided = time.monotonic()
        await wf.approve_review("x", "ask", other, reviewer="ann")
        await wait_until(lambda: "x" in ran, "the dependent stage")
        assert ran["x"] - decided < 5
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        other.close()
        store.close()


async def test_a_notification_sent_inside_a_transaction_arrives_once_it_commits(pg_url):
    store = SqlStateStore(pg_url)
    listener = store.listen()
    assert listener is not None
    try:
        with store.transaction():
            store.save_work_item_data("a", {})
            store.save_work_item_data("b", {})
            assert listener.drain() == 0  # not before the commit
        deadline = time.monotonic() + 5
        got = 0
        while not got:
            assert time.monotonic() < deadline
            got = listener.drain()
            time.sleep(0.01)
        assert got == 1  # one per transaction
    finally:
        listener.close()
        store.close()


def test_stores_without_notifications_have_no_listener(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/s.db") as store:
        assert store.listen() is None
        store.notify_work()  # harmless


def test_item_run_is_unchanged_for_a_run_until_idle(pg_url):
    """``run`` does not listen: it ends when its own items are done."""
    wf = Workflow.builder().stage("w", lambda i, c: None).build()
    with open_store(pg_url) as store:
        report = asyncio.run(wf.run(store, [Item("a")]))
        assert report.items == 1
