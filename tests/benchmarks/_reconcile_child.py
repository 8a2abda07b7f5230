"""Reconcile a store with one version of the benchmark pipeline; print time and memory.

``python _reconcile_child.py URL v1|v2|v3`` prints one JSON line: VmRSS once the store
is open, VmHWM (peak) at the end, seconds, and the change's note.

- v1: the chain s0 -> ... -> s4 (what `bigstore` filled the store as);
- v2: s5 added after s4, and s3 at version 2;
- v3: s5 removed again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from _common import noop

from treadle_core import Workflow, open_store


def pipeline(version: str) -> Workflow:
    b = Workflow.builder("bench")
    stages = 6 if version == "v2" else 5
    for i in range(stages):
        bumped = version in ("v2", "v3") and i == 3
        b.stage(f"s{i}", noop, needs=[f"s{i - 1}"] if i else [], version="2" if bumped else None)
    return b.build()


def vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main(url: str, version: str) -> dict[str, object]:
    store = open_store(url)
    wf = pipeline(version)
    idle = vm("VmRSS")
    start = time.perf_counter()
    change = asyncio.run(wf.reconcile(store))
    elapsed = time.perf_counter() - start
    store.close()
    return {
        "idle_rss_kb": idle,
        "hwm_kb": vm("VmHWM"),
        "seconds": round(elapsed, 3),
        "note": None if change is None else change.note,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
