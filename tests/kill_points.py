"""A pipeline with a gate, a fan-out and a review, run by the kill-point tests:
``python kill_points.py URL MARKERS KILL_AT``.

Run once, it goes until the review waits; after the approval, it runs what follows.
With KILL_AT = N > 0 the process SIGKILLs itself right after its Nth commit (a commit
boundary: the transaction is durable, nothing after it happened). Every stage execution
appends ``pid stage subtask attempt`` to MARKERS before it returns. At the end the
process prints how many commits it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from treadle_core import (
    Accepted,
    Complete,
    FanOut,
    Item,
    NeedsReview,
    QualityFeedback,
    QualityGate,
    Rejected,
    RetryBudget,
    StageOutput,
    SubTask,
    Workflow,
)
from treadle_core.store.sql import SqlStateStore


class KillingStore(SqlStateStore):
    """Counts outermost commits; SIGKILLs the process right after commit number N."""

    def __init__(self, url: str, kill_at: int):
        self.kill_at = kill_at
        self.commits = 0
        self._depth = threading.local()
        super().__init__(url)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        try:
            with super().transaction():
                yield
        finally:
            self._depth.n = depth
        if depth == 0:
            self.commits += 1
            if self.commits == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)


class FirstDraftIsThin(QualityGate):
    async def evaluate(self, item, stage, output, ctx):
        if ctx.attempt == 1:
            return Rejected(QualityFeedback("too thin"))
        return Accepted()


def build(markers: Path) -> Workflow:
    def mark(stage: str, ctx) -> None:
        with open(markers, "a") as fh:
            fh.write(f"{os.getpid()} {stage} {ctx.subtask or '-'} {ctx.attempt}\n")

    def draft(item, ctx):  # sync: runs in a thread
        mark("draft", ctx)
        return StageOutput(Complete(), artefact={"text": f"draft {ctx.attempt}"})

    async def enrich(item, ctx):
        mark("enrich", ctx)
        if ctx.subtask is None:
            return FanOut([SubTask(s) for s in ("a", "b", "c")])
        return StageOutput(Complete(), artefact={"source": ctx.subtask})

    async def approve(item, ctx):
        mark("approve", ctx)
        return NeedsReview("publish?")

    async def publish(item, ctx):
        mark("publish", ctx)
        return StageOutput(Complete(), artefact={"published": True})

    return (
        Workflow.builder("kill-points")
        .stage("draft", draft)
        .stage("enrich", enrich, needs=["draft"])
        .stage("approve", approve, needs=["enrich"])
        .stage("publish", publish, needs=["approve"])
        .quality_gate("draft", FirstDraftIsThin())
        .retry_budget("draft", RetryBudget(max_attempts=2))
        .build()
    )


async def main(url: str, markers: Path, kill_at: int) -> None:
    store = KillingStore(url, kill_at)
    wf = build(markers)
    await wf.run(store, [Item("x")], concurrency=1)
    print(store.commits)
    store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
