"""A voter process for tests/test_quorum.py: opens the store by URL and approves every
item's review as one reviewer, as soon as all voters are ready."""

from __future__ import annotations

import asyncio
from typing import Any

from treadle_core import Approve, NeedsReview, ReviewError, StageOutput, Workflow, open_store

APPROVERS = [f"v{i}" for i in range(8)]


def workflow(required: int) -> Workflow:
    async def ask(item: Any, ctx: Any) -> StageOutput:
        return StageOutput(NeedsReview("sign off?"), artefact={"doc": item.id})

    return (
        Workflow.builder("quorum").stage("ask", ask).approvers("ask", APPROVERS, required).build()
    )


def vote(url: str, required: int, reviewer: str, items: list[str], barrier: Any, out: Any) -> None:
    wf = workflow(required)
    store = open_store(url)
    barrier.wait(timeout=60)

    async def go() -> list[tuple[str, str]]:
        results = []
        for item_id in items:
            try:
                await wf.resolve_review(item_id, "ask", Approve(), store, reviewer=reviewer)
                results.append((item_id, "ok"))
            except ReviewError as exc:
                results.append((item_id, f"refused: {exc}"))
        return results

    try:
        out.put((reviewer, asyncio.run(go())))
    finally:
        store.close()
