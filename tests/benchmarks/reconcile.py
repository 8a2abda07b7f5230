"""Reconciling a changed pipeline on a large store (default 1,000,000 items x 5 stages).

The store is the one `bigstore` builds (SQLite; 94 % of items complete, the rest
ready, scheduled, awaiting review or failed), recorded as the chain s0 -> ... -> s4.
Two changes are reconciled, each in a child process (`_reconcile_child.py`, so its
peak RSS is its own), each beside a baseline measured in the same run on the same
file — plain SQL over the same rows, in one transaction, through the driver alone:

- ``change``: stage s5 added after s4 and s3's version bumped. Every complete item
  gets new work and the complete states of s3 and s4 become stale. Baseline:
  ``UPDATE items SET state = 'ready' … WHERE state = 'complete'`` and
  ``UPDATE stage_states SET stale = 1 WHERE stage IN ('s3', 's4') AND status =
  'complete'`` (then undone, untimed).
- ``remove``: s5 removed again. Readiness may differ, so every item's stage states are
  read and its aggregate state computed again. Baselines: ``UPDATE items SET updated_at
  = ?`` over every item, and reading the same stage-state rows (status and
  next_attempt_at) into Python through the driver.

Memory: the same two reconciles on a store a tenth the size; peak RSS at N should be
about the same as at N/10 (batches of 1,000 items, never the whole store).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bigstore import fill_sqlite

HERE = Path(__file__).parent


def _child(url: str, version: str) -> dict[str, Any]:
    """Reconcile ``url`` with pipeline ``version`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, str(HERE / "_reconcile_child.py"), url, version],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    return json.loads(out.stdout.splitlines()[-1])


def _timed(path: Path, statements: list[tuple[str, tuple[Any, ...]]]) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA synchronous=FULL")
    start = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    for sql, params in statements:
        con.execute(sql, params)
    con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def _read_states(path: Path) -> float:
    con = sqlite3.connect(path)
    start = time.perf_counter()
    n = sum(
        1 for _ in con.execute("SELECT item_id, stage, status, next_attempt_at FROM stage_states")
    )
    elapsed = time.perf_counter() - start
    con.close()
    assert n > 0
    return elapsed


def _undo(path: Path, statements: list[str]) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    for sql in statements:
        con.execute(sql)
    con.execute("COMMIT")
    con.close()


def _scenario(path: Path) -> dict[str, Any]:
    url = f"sqlite:///{path}"
    recorded = _child(url, "v1")  # records the definition; nothing to change
    now = time.time()
    change_base = _timed(
        path,
        [
            (
                "UPDATE items SET state = 'ready', due_at = ?, updated_at = ?"
                " WHERE state = 'complete'",
                (now, now),
            ),
            (
                "UPDATE stage_states SET stale = 1 WHERE stage IN ('s3', 's4')"
                " AND status = 'complete'",
                (),
            ),
        ],
    )
    _undo(
        path,
        [
            "UPDATE items SET state = 'complete', due_at = NULL WHERE state = 'ready'"
            " AND id IN (SELECT item_id FROM stage_states WHERE stage = 's4'"
            " AND status = 'complete')",
            "UPDATE stage_states SET stale = 0 WHERE stale = 1",
        ],
    )
    change = _child(url, "v2")
    remove_base = _timed(path, [("UPDATE items SET updated_at = ?", (now,))])
    remove_read = _read_states(path)
    remove = _child(url, "v3")
    return {
        "record": recorded,
        "change": change,
        "change_baseline_s": round(change_base, 3),
        "remove": remove,
        "remove_baseline_s": round(remove_base, 3),
        "remove_read_baseline_s": round(remove_read, 3),
    }


def reconcile_sqlite(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.db"
        start = time.perf_counter()
        fill_sqlite(big, n)
        built = time.perf_counter() - start
        large = _scenario(big)
        for p in Path(tmp).iterdir():
            p.unlink()
        small_path = Path(tmp) / "small.db"
        fill_sqlite(small_path, n // 10)
        small = _scenario(small_path)
    out: dict[str, Any] = {"items": n, "build_s": round(built, 1)}
    for name in ("change", "remove"):
        got, base = large[name], large[f"{name}_baseline_s"]
        out[name] = {
            "note": got["note"],
            "seconds": got["seconds"],
            "baseline_update_s": base,
            "ratio_to_baseline": round(got["seconds"] / base, 1),
            **(
                {"baseline_read_states_s": large["remove_read_baseline_s"]}
                if name == "remove"
                else {}
            ),
            "items_per_s": round(n / got["seconds"]),
            "peak_rss_mb": round(got["hwm_kb"] / 1024, 1),
            f"peak_rss_mb_at_{n // 10}": round(small[name]["hwm_kb"] / 1024, 1),
            "rss_ratio": round(got["hwm_kb"] / small[name]["hwm_kb"], 2),
            "growth_mb": round((got["hwm_kb"] - got["idle_rss_kb"]) / 1024, 1),
            f"growth_mb_at_{n // 10}": round(
                (small[name]["hwm_kb"] - small[name]["idle_rss_kb"]) / 1024, 1
            ),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(reconcile_sqlite(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)))
