"""Run `Workflow.serve` on a store for a fixed number of stage executions; print memory.

``python _rss_child.py URL EXECUTIONS`` prints one JSON line: VmRSS once the store
is open (before any work), VmHWM (peak) at the end, executions and seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from _common import build

from treadle_core import open_store

STAGES = 5


def vm(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


async def main(url: str, wanted: int) -> dict[str, float]:
    stop = asyncio.Event()
    count = 0

    async def stage(item, ctx):
        nonlocal count
        count += 1
        if count >= wanted:
            stop.set()

    store = open_store(url)
    wf = build(STAGES, stage)
    idle_rss, idle_hwm = vm("VmRSS"), vm("VmHWM")
    start = time.perf_counter()
    report = await wf.serve(store, concurrency=8, stop=stop, poll_interval=0.2)
    elapsed = time.perf_counter() - start
    store.close()
    return {
        "idle_rss_kb": idle_rss,
        "idle_hwm_kb": idle_hwm,
        "hwm_kb": vm("VmHWM"),
        "executions": report.executions,
        "seconds": round(elapsed, 3),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
