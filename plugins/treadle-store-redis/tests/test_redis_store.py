"""What the Redis store does beyond the contract: the plugin, URLs, transactions under
contention, and whole workflows (several workers at once) on a real Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from treadle_store_redis import RedisStateStore, parse_url

from treadle_core import (
    Complete,
    FanOut,
    Item,
    ItemState,
    NeedsReview,
    Retry,
    RetryBudget,
    ReviewError,
    StageOutput,
    StageState,
    StageStatus,
    SubTask,
    Workflow,
    open_store,
)
from treadle_core.errors import SchemaVersionError, StoreUnavailableError
from treadle_core.plugins import get_plugin_manager, store_backends

Opener = Callable[[], RedisStateStore]


# --- the plugin and its URLs ------------------------------------------------------------


def test_the_entry_point_registers_redis_urls():
    pm = get_plugin_manager()
    backends = store_backends(pm)
    assert {"redis", "rediss"} <= set(backends)
    assert pm.store_backends().owners["redis"] == "treadle-store-redis"


def test_open_store_opens_redis_urls_through_the_plugin(redis_url):
    with open_store(redis_url) as store:
        assert isinstance(store, RedisStateStore)
        assert store.prefix.startswith("treadle-test-")


def test_url_options_are_taken_out_of_the_redis_url():
    url, prefix, options = parse_url("redis://:pw@h:6380/3?prefix=acme:&lock_ttl=5&ssl_cert_reqs=x")
    assert (url, prefix) == ("redis://:pw@h:6380/3?ssl_cert_reqs=x", "acme")
    assert options == {"lock_ttl": 5.0}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/0?prefix=", "prefix must not be empty"),
        ("redis://h/0?lock_wait=soon", "lock_wait must be seconds"),
        ("http://h/0", "expected redis://"),
    ],
)
def test_bad_urls_are_refused_with_the_fix(url, message):
    with pytest.raises(Exception, match=message):
        parse_url(url)


def test_an_unreachable_server_is_a_clear_store_error():
    with pytest.raises(StoreUnavailableError, match=r"is the server running\?") as info:
        RedisStateStore("redis://:secret@127.0.0.1:1/0?socket_connect_timeout=1")
    assert "secret" not in str(info.value)


def test_a_newer_schema_is_refused(redis_url):
    store = RedisStateStore(redis_url)
    store.r.hset(store.k("meta"), "schema", 99)
    with pytest.raises(SchemaVersionError, match="upgrade treadle-store-redis"):
        RedisStateStore(redis_url)


def test_stores_with_different_prefixes_share_nothing(redis_url):
    a = RedisStateStore(redis_url)
    b = RedisStateStore(redis_url.replace("prefix=", "prefix=other-"))
    try:
        a.save_work_item_data("doc-1", {})
        assert b.get_item("doc-1") is None and list(b.list_work_items()) == []
    finally:
        b.destroy()


def test_destroy_deletes_every_key_under_the_prefix(redis_url):
    store = RedisStateStore(redis_url)
    store.save_work_item_data("doc-1", {"a": 1})
    store.save_stage_state("doc-1", "s", StageState(StageStatus.COMPLETE))
    assert store.destroy() > 0
    assert list(store.r.scan_iter(match=f"{store.prefix}:*")) == []


# --- transactions: reads see the block's own writes -------------------------------------


def test_reads_in_a_transaction_see_its_writes(open_redis: Opener):
    store, other = open_redis(), open_redis()
    store.save_work_item_data("old", {})
    with store.transaction():
        store.save_work_item_data("new", {"n": 1})
        store.set_item_state("old", ItemState.COMPLETE, None)
        store.save_stage_state("new", "s", StageState(StageStatus.RUNNING, attempt=1))
        assert store.get_work_item_data("new") == {"n": 1}
        assert store.get_all_stage_states("new") == {"s": StageState(StageStatus.RUNNING, 1)}
        assert list(store.list_work_items()) == ["old", "new"]
        assert list(store.list_work_items(ItemState.READY)) == ["new"]
        assert store.count_items() == {ItemState.READY: 1, ItemState.COMPLETE: 1}
        store.delete_work_item("old")
        assert store.get_item("old") is None and list(store.list_work_items()) == ["new"]
        assert other.get_item("old") is not None  # nothing is visible outside yet
    assert other.get_item("old") is None
    assert list(other.list_work_items()) == ["new"]


def test_each_thread_has_its_own_transaction(open_redis: Opener):
    store = open_redis()
    seen: list[Any] = []
    with store.transaction():
        store.save_work_item_data("doc-1", {})
        thread = threading.Thread(target=lambda: seen.append(store.get_item("doc-1")))
        thread.start()
        thread.join()
    assert seen == [None]
    assert store.get_item("doc-1") is not None


def test_lock_item_waits_for_the_other_transaction(open_redis: Opener):
    first, second = open_redis(), open_redis()
    first.save_work_item_data("doc-1", {"v": 0})
    order: list[str] = []
    locked = threading.Event()

    def writer() -> None:
        with first.transaction():
            first.lock_item("doc-1")
            locked.set()
            time.sleep(0.2)  # holding the lock while the other transaction asks for it
            first.save_work_item_data("doc-1", {"v": 1})
            order.append("first commits")

    thread = threading.Thread(target=writer)
    thread.start()
    locked.wait()
    with second.transaction():
        second.lock_item("doc-1")
        order.append("second locked")
        assert second.get_work_item_data("doc-1") == {"v": 1}  # the committed write
    thread.join()
    assert order == ["first commits", "second locked"]


def test_a_lock_held_too_long_times_out_cleanly(redis_url):
    holder = RedisStateStore(redis_url)
    waiter = RedisStateStore(redis_url, lock_wait=0.2)
    holder.save_work_item_data("doc-1", {})
    with holder.transaction():
        holder.lock_item("doc-1")
        with pytest.raises(StoreUnavailableError, match="stayed locked"), waiter.transaction():
            waiter.lock_item("doc-1")
            waiter.save_work_item_data("doc-1", {"lost": True})
    assert waiter.get_work_item_data("doc-1") == {}
    with waiter.transaction():  # the lock was given back at the holder's commit
        waiter.lock_item("doc-1")


def test_a_crashed_transactions_lock_expires(redis_url):
    store = RedisStateStore(redis_url, lock_ttl=0.2, lock_wait=2)
    store.save_work_item_data("doc-1", {})
    store.r.set(store.k("lock", "doc-1"), "dead-process", px=200)
    started = time.monotonic()
    with store.transaction():
        store.lock_item("doc-1")
    assert time.monotonic() - started < 1.5


def test_a_claim_in_a_transaction_holds_at_once_and_is_given_back_on_rollback(
    open_redis: Opener,
):
    store, other = open_redis(), open_redis()
    store.save_work_item_data("doc-1", {})
    with pytest.raises(RuntimeError), store.transaction():
        (lease,) = store.claim("w1", 1, 60)
        assert store.get_item("doc-1").lease_owner == "w1"
        assert other.claim("w2", 1, 60) == []  # like a row lock: others skip it
        raise RuntimeError("boom")
    rec = store.get_item("doc-1")
    assert rec is not None and rec.lease_owner is None
    (again,) = other.claim("w2", 1, 60)
    assert again.token == lease.token + 1  # the fencing token never goes back


def test_journal_ids_follow_commit_order(open_redis: Opener):
    from treadle_core import StageStarted

    store = open_redis()
    store.save_work_item_data("a", {})
    with store.transaction():
        store.append_events([StageStarted(item_id="a", stage="one")])
        store.append_events([StageStarted(item_id="a", stage="two")])
    store.append_events([StageStarted(item_id="a", stage="three")])
    events = store.read_events("a")
    assert [e.event.stage for e in events] == ["one", "two", "three"]
    assert [e.id for e in events] == sorted(e.id for e in events)


# --- whole workflows ----------------------------------------------------------------------


class Pages:
    """Fans out into pages; page-2 fails once; counts every execution."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, item: Item, ctx: Any) -> Any:
        key = f"{item.id}/{ctx.subtask}"
        with self.lock:
            self.runs[key] += 1
            n = self.runs[key]
        if ctx.subtask is None:
            return FanOut([SubTask("page-1"), SubTask("page-2")])
        if ctx.subtask == "page-2" and n == 1:
            return Retry("flaky page")
        return StageOutput(Complete(), artefact={"page": ctx.subtask, "of": item.id})


def pipeline(pages: Pages) -> Workflow:
    async def summarise(item: Item, ctx: Any) -> StageOutput:
        pages_done = ctx.upstream["pages"]
        return StageOutput(Complete(), artefact={"n": len(pages_done), "id": item.id})

    async def approve(item: Item, ctx: Any) -> Any:
        return NeedsReview(prompt=f"ok {item.id}?")

    return (
        Workflow.builder("redis-e2e")
        .stage("pages", pages)
        .stage("summarise", summarise, needs=["pages"])
        .stage("approve", approve, needs=["summarise"])
        .retry_budget("pages", RetryBudget(max_attempts=2))
        .build()
    )


async def test_a_workflow_runs_end_to_end_on_open_store(redis_url):
    pages = Pages()
    wf = pipeline(pages)
    items = [Item(f"doc-{n}", {"n": n}) for n in range(5)]
    store = open_store(redis_url)  # redis:// resolved through the plugin's register_stores
    try:
        await wf.run(store, items, concurrency=4)
        assert {r.item_id for r in wf.pending_reviews(store)} == {i.id for i in items}
        for item in items:
            await wf.approve_review(item.id, "approve", store, reviewer="ann")
    finally:
        store.close()
    again = open_store(redis_url)  # another process would see the same
    try:
        for item in items:
            status = wf.status(item.id, again)
            assert status.is_complete, str(status)
            assert again.get_stage_state(item.id, "summarise").artefact == {"n": 2, "id": item.id}
            attempts = again.get_attempts(item.id, "pages")
            assert attempts[0].outcome == "fan_out"  # then the pages, concurrently
            assert sorted((a.subtask or "", a.outcome) for a in attempts[1:]) == [
                ("page-1", "complete"),
                ("page-2", "complete"),
                ("page-2", "retry"),
            ]
            assert again.get_reviews(item.id)[0].reviewer == "ann"
            assert again.get_item(item.id).state == ItemState.COMPLETE
        assert again.count_items() == {ItemState.COMPLETE: 5}
        assert wf.summary(again)["approve"] == {"complete": 5}
        kinds = Counter(e.event.kind for e in again.read_events())
        assert kinds["WorkflowCompleted"] == 5 and kinds["ReviewResolved"] == 5
    finally:
        again.close()
    assert pages.runs["doc-0/page-2"] == 2 and pages.runs["doc-0/page-1"] == 1


async def test_several_workers_share_the_items_and_run_each_stage_once(open_redis: Opener):
    pages = Pages()
    wf = pipeline(pages)
    seed = open_redis()
    with seed.transaction():
        for n in range(12):
            seed.save_work_item_data(f"doc-{n}", {"n": n})
    workers = [open_redis() for _ in range(3)]
    await asyncio.gather(
        *(wf.run(s, concurrency=4, worker_id=f"w{n}") for n, s in enumerate(workers))
    )
    assert len(wf.pending_reviews(seed)) == 12
    assert all(pages.runs[f"doc-{n}/None"] == 1 for n in range(12))
    assert all(pages.runs[f"doc-{n}/page-1"] == 1 for n in range(12))
    assert seed.claim("late", 100, 60) == []  # nothing left to do, nothing left held


async def test_two_processes_resolving_one_review_exactly_one_wins(open_redis: Opener):
    wf = pipeline(Pages())
    first, second = open_redis(), open_redis()
    await wf.run(first, [Item("doc-1", {})])
    results = await asyncio.gather(
        wf.approve_review("doc-1", "approve", first, reviewer="ann"),
        wf.reject_review("doc-1", "approve", "no", second, reviewer="bob"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ReviewError), results
    assert len(first.get_reviews("doc-1")) == 1


def test_redis_holds_nothing_outside_the_prefix(redis_url, redis_server):
    store = RedisStateStore(redis_url)
    store.save_work_item_data("doc-1", {})
    with redis.Redis.from_url(redis_server, decode_responses=True) as client:
        mine = [k for k in client.scan_iter(match="*doc-1*") if "doc-1" in k]
    assert mine and all(k.startswith(store.prefix + ":") for k in mine)
