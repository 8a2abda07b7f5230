"""The group-commit writer (`treadle_core._commit.Committer`): what one turn of the event
loop queues is handed over together and committed in one transaction, in queue order;
a refused write fails alone; several event loops may share one writer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from treadle_core._commit import Committer
from treadle_core.errors import LeaseLostError
from treadle_core.store.base import StateStore
from treadle_core.store.memory import MemoryStateStore


class CountingStore(MemoryStateStore):
    """A memory store that counts its outermost transactions and records the writes
    each one applied, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[list[str]] = []
        self._open: list[str] | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        outer = self._open is None
        if outer:
            self._open = []
        try:
            with super().transaction():
                yield
            if outer:
                self.transactions.append(self._open or [])
        finally:
            if outer:
                self._open = None

    def note(self, name: str) -> str:
        assert self._open is not None, "a write ran outside a transaction"
        self._open.append(name)
        return name


def write(name: str):
    def apply(store: StateStore) -> str:
        assert isinstance(store, CountingStore)
        return store.note(name)

    return apply


def refused(store: StateStore) -> str:
    raise LeaseLostError("item 'x': the lease was taken over")


async def test_writes_queued_in_one_turn_commit_together_in_queue_order() -> None:
    store = CountingStore()
    async with Committer(store) as committer:
        futures = [committer.enqueue(write(f"w{n}")) for n in range(40)]
        assert await asyncio.gather(*futures) == [f"w{n}" for n in range(40)]
    assert store.transactions == [[f"w{n}" for n in range(40)]]


async def test_the_writer_gets_a_turns_writes_only_once_the_turn_ends() -> None:
    """Not write by write while the loop still runs (and holds the GIL): the writer
    would wake for the first one and contend with the loop for the rest."""
    store = CountingStore()
    applied = threading.Event()

    def apply(s: StateStore) -> str:
        applied.set()
        return "w"

    async with Committer(store) as committer:
        fut = committer.enqueue(apply)
        # The loop has not yielded: nothing was handed over, so nothing can be applied
        # (the wait releases the GIL; the writer thread is idle).
        assert not applied.wait(0.05)
        assert await fut == "w" and applied.is_set()


async def test_a_write_queued_after_the_turn_ended_commits_in_a_later_batch() -> None:
    store = CountingStore()
    async with Committer(store) as committer:
        assert await committer.submit(write("first")) == "first"
        assert await committer.submit(write("second")) == "second"
    assert store.transactions == [["first"], ["second"]]


async def test_a_refused_write_fails_alone_and_its_neighbours_commit() -> None:
    store = CountingStore()
    async with Committer(store) as committer:
        before = committer.enqueue(write("before"))
        bad = committer.enqueue(refused)
        after = committer.enqueue(write("after"))
        assert await before == "before"
        with pytest.raises(LeaseLostError):
            await bad
        assert await after == "after"
    # the shared transaction rolled back; each write was applied again on its own
    assert store.transactions == [["before"], ["after"]]


async def test_close_hands_over_writes_queued_in_its_own_turn() -> None:
    store = CountingStore()
    committer = Committer(store)
    fut = committer.enqueue(write("last"))
    await committer.close()  # no await in between: the turn has not ended yet
    assert store.transactions == [["last"]]
    assert await fut == "last"


def test_event_loops_in_two_threads_share_one_writer() -> None:
    store = CountingStore()
    committer = Committer(store)
    results: dict[str, list[str]] = {}

    def run(name: str) -> None:
        async def main() -> list[str]:
            futures = [committer.enqueue(write(f"{name}{n}")) for n in range(20)]
            return await asyncio.gather(*futures)

        results[name] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    asyncio.run(committer.close())
    assert results == {name: [f"{name}{n}" for n in range(20)] for name in ("a", "b")}
    applied = [name for batch in store.transactions for name in batch]
    for name in ("a", "b"):  # each loop's writes in its own queue order
        assert [w for w in applied if w.startswith(name)] == results[name]
