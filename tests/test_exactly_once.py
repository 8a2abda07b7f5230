"""A COMMIT whose reply is lost is never applied twice: every transaction carries a commit
mark, and the writer asks for it before trying again (SPEC §6: committed state is never
lost, and nothing is journalled twice).

On PostgreSQL a real proxy cuts the connection right after every 10th COMMIT; on SQLite
and in memory a store that commits and then says it could not is enough.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from _pgproxy import CommitCutter

from treadle_core import (
    Accepted,
    Complete,
    FanOut,
    Item,
    MemoryStateStore,
    QualityFeedback,
    QualityGate,
    Rejected,
    RetryBudget,
    StageOutput,
    StoreUnavailableError,
    SubTask,
    Workflow,
)
from treadle_core.store.sql import SqlStateStore


class SecondTry(QualityGate):
    async def evaluate(self, item, stage, output, ctx):
        return Accepted() if ctx.attempt > 1 else Rejected(QualityFeedback("again"))


def pipeline() -> Workflow:
    async def fetch(item, ctx):
        return StageOutput(Complete(), artefact={"n": item.data["n"]})

    async def enrich(item, ctx):
        if ctx.subtask is None:
            return FanOut([SubTask("a"), SubTask("b")])
        return StageOutput(Complete(), artefact=ctx.subtask)

    def load(item, ctx):
        return None

    return (
        Workflow.builder("once")
        .stage("fetch", fetch)
        .stage("enrich", enrich, needs=["fetch"])
        .stage("load", load, needs=["enrich"])
        .quality_gate("fetch", SecondTry())
        .retry_budget("fetch", RetryBudget(max_attempts=2))
        .build()
    )


def duplicates(rows: list[str]) -> list[str]:
    return [row for row, n in Counter(rows).items() if n > 1]


def check(store, wf: Workflow, n: int) -> None:
    assert all(wf.status(f"i{k}", store).is_complete for k in range(n))
    for k in range(n):
        events = [json.dumps(e.event.to_dict(), sort_keys=True) for e in store.read_events(f"i{k}")]
        assert duplicates(events) == [], f"item i{k}: events journalled twice"
        for stage in wf.stages:
            records = [json.dumps(a.to_dict()) for a in store.get_attempts(f"i{k}", stage)]
            assert duplicates(records) == [], f"item i{k} {stage}: attempts recorded twice"
        kinds = Counter(e.event.kind for e in store.read_events(f"i{k}"))
        assert kinds["StageCompleted"] == 3 and kinds["WorkflowCompleted"] == 1, kinds


def losing_replies(base: type, every: int):
    """A store class that commits, then (every ``every``-th time) says it could not tell."""

    class LosingReplies(base):  # type: ignore[misc,valid-type]
        commits = 0
        lost = 0
        depth = 0

        @contextlib.contextmanager
        def transaction(self) -> Iterator[None]:
            outer = LosingReplies.depth == 0
            LosingReplies.depth += 1
            try:
                with super().transaction():
                    yield
            finally:
                LosingReplies.depth -= 1
            if outer:
                LosingReplies.commits += 1
                if LosingReplies.commits % every == 0:
                    LosingReplies.lost += 1
                    raise StoreUnavailableError("the connection died during COMMIT")

    return LosingReplies


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_commit_whose_reply_was_lost_is_not_applied_again(kind, tmp_path):
    cls = losing_replies(MemoryStateStore if kind == "memory" else SqlStateStore, every=7)
    store = cls() if kind == "memory" else cls(f"sqlite:///{tmp_path}/s.db")
    wf = pipeline()
    items = [Item(f"i{k}", {"n": k}) for k in range(20)]
    await wf.run(store, items, concurrency=4)
    assert cls.lost >= 5
    check(store, wf, len(items))
    store.close()


@pytest.mark.postgres
async def test_postgres_connections_cut_after_commit_duplicate_nothing(pg_url):
    """A proxy on 127.0.0.1 cuts the connection after every 10th COMMIT has landed (group
    commit makes few, large transactions: this is about one cut per hundred transitions)."""
    proxy = CommitCutter(every=10)
    try:
        database = urlsplit(pg_url).path.lstrip("/")
        store = SqlStateStore(proxy.url(database))
        wf = pipeline()
        items = [Item(f"i{k}", {"n": k}) for k in range(60)]
        await wf.run(store, items, concurrency=8)
        assert proxy.cuts >= 5, (proxy.commits, proxy.cuts)
        store.close()
        with SqlStateStore(pg_url) as direct:  # read it back without the proxy
            check(direct, wf, len(items))
    finally:
        proxy.close()
