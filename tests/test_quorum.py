"""M-of-N approvals under concurrent votes (SPEC §11): eight processes vote at once on
SQLite, PostgreSQL and MySQL; exactly ``required`` approvals count, the stage completes
once, and one reviewer's votes count once."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from typing import Any

import pytest
import quorum_voter
from _util import journal

from treadle_core import Item, StageStatus, open_store

ITEMS = [f"doc-{i}" for i in range(4)]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


def _prepare(url: str, required: int) -> None:
    wf = quorum_voter.workflow(required)
    store = open_store(url)
    try:

        async def go() -> None:
            for item_id in ITEMS:
                await wf.advance(Item(item_id), store)

        asyncio.run(go())
    finally:
        store.close()


def _vote_at_once(url: str, required: int, reviewers: list[str]) -> dict[str, list[str]]:
    """Each reviewer in its own process, all released at once; item -> outcomes."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(reviewers)), ctx.Queue()
    procs = [
        ctx.Process(target=quorum_voter.vote, args=(url, required, r, ITEMS, barrier, out))
        for r in reviewers
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    outcomes: dict[str, list[str]] = {i: [] for i in ITEMS}
    for _, votes in results:
        for item_id, outcome in votes:
            outcomes[item_id].append(outcome)
    return outcomes


def test_eight_approvers_at_once_complete_the_stage_once_with_exactly_required(url):
    required = 3
    _prepare(url, required)
    outcomes = _vote_at_once(url, required, quorum_voter.APPROVERS)
    store = open_store(url)
    try:
        for item_id in ITEMS:
            counted = Counter("ok" if o == "ok" else "refused" for o in outcomes[item_id])
            assert counted == {"ok": required, "refused": 8 - required}, outcomes[item_id]
            assert all("not awaiting review" in o for o in outcomes[item_id] if o != "ok")
            reviews = store.get_reviews(item_id, "ask")
            assert len(reviews) == required
            assert len({r.reviewer for r in reviews}) == required
            st = store.get_stage_state(item_id, "ask")
            assert st.status == StageStatus.COMPLETE
            assert [v["reviewer"] for v in st.votes] == [r.reviewer for r in reviews]
            kinds = journal(store, item_id)
            assert kinds.count("StageCompleted") == 1
            assert kinds.count("ReviewVoted") == required - 1
    finally:
        store.close()


def test_one_reviewers_concurrent_votes_count_once(url):
    _prepare(url, 2)
    outcomes = _vote_at_once(url, 2, ["v0"] * 8)
    store = open_store(url)
    try:
        for item_id in ITEMS:
            assert outcomes[item_id].count("ok") == 1, outcomes[item_id]
            refused = [o for o in outcomes[item_id] if o != "ok"]
            assert all("'v0' has already approved it" in o for o in refused)
            st = store.get_stage_state(item_id, "ask")
            assert st.status == StageStatus.AWAITING_REVIEW
            assert [v["reviewer"] for v in st.votes] == ["v0"]
    finally:
        store.close()
