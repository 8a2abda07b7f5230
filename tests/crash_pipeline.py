"""A pipeline run in a subprocess by the crash tests: `python crash_pipeline.py URL MARKERS N`.

Every stage execution appends a line to a marker file named for the item and stage
*before* it returns, so the test can count how often each stage really ran.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from treadle_core import Complete, Item, StageOutput, Workflow, open_store

STAGES = ("extract", "transform", "load")


def build(markers: Path) -> Workflow:
    def make(name: str):
        async def run(item, ctx):
            with open(markers / f"{item.id}.{name}", "a") as f:
                f.write(f"{os.getpid()} {ctx.attempt}\n")
            await asyncio.sleep(0.003)
            return StageOutput(Complete(), artefact={"stage": name, "item": item.id})

        return run

    b = Workflow.builder("crash")
    prev = None
    for name in STAGES:
        b.stage(name, make(name), needs=[prev] if prev else [])
        prev = name
    return b.build()


async def main(url: str, markers: Path, n: int, lease: float) -> None:
    store = open_store(url)
    wf = build(markers)
    items = [Item(f"item-{i:03d}", {"n": i}) for i in range(n)]
    await wf.run(store, items, concurrency=8, lease_seconds=lease)
    store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
