"""A stage that kills its own process: `python suicide_pipeline.py URL` (crash-loop test)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from treadle_core import Item, Workflow, open_store


async def crash(item, ctx):
    os.kill(os.getpid(), signal.SIGKILL)


async def main(url: str) -> None:
    store = open_store(url)
    wf = Workflow.builder().stage("crash", crash).max_recoveries(3).build()
    await wf.run(store, [Item("x")], lease_seconds=0.3)
    print(wf.status("x", store).stages["crash"].error)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
