"""A store holding many items (default 1,000,000 x 5 stages): is finding work still cheap?

The store is opened once with `SqlStateStore` (schema and migrations in place),
then filled straight through the driver: its secondary indexes are dropped, the
rows bulk-inserted in a few transactions and the indexes re-created from their own
DDL, so the result is exactly the schema the store made. Item mix, the same at
every size (by ``i % 100``): 94 % complete, 2 % ready, 1 % scheduled (retry
backoff, due in an hour), 2 % awaiting review (half with a deadline), 1 % failed.
Unfinished items stand at stage ``i % 5``, the stages before it complete. Stage
state rows carry ``StageState(...).to_dict()`` as the store serialises it; stages
never started have no row, as in a store the engine filled. No events or attempts.

Measured, each beside a baseline from the same run:
- ``wf.summary(store)`` (target < 1 s) beside ``SELECT COUNT(*) FROM stage_states``;
- ``treadle status`` as a subprocess (target < 1 s) beside ``python -c pass`` and
  ``treadle --help``;
- ``store.claim(worker, 1, 60)`` (each claim then released) and
  ``store.next_due_at()`` (target < 5 ms, median of 200) beside ``store.get_item``
  (a primary-key read) and a one-row durable commit through the driver;
- ``store.pending_reviews(limit=50)`` and ``wf.pending_reviews(store)`` (no limit);
- peak RSS of `Workflow.serve` (what `treadle worker` runs) for a fixed number of
  executions on this store and on one a tenth its size (ratio should be ~1).
"""

from __future__ import annotations

import io
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _pg
from _common import build, noop, write_project

from treadle_core import ItemState, StageState, StageStatus, open_store
from treadle_core.store.base import dumps

STAGES = 5
CHUNK = 50_000  # items per insert transaction
RSS_EXECUTIONS = 2_000
HERE = Path(__file__).parent

ITEM_COLUMNS = (
    "id, data, state, due_at, lease_owner, lease_token, lease_expires_at, created_at, updated_at"
)
STATE_COLUMNS = "item_id, stage, status, attempt, updated_at, next_attempt_at, data"


# --- building -----------------------------------------------------------------------

# Sentinel times, replaced per row in the JSON text (cheaper than 5M to_dict() calls).
_A, _B, _C = 1000000001.25, 1000000002.25, 1000000003.25


def _template(**fields: Any) -> str:
    def at(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, UTC)

    fields = {k: at(v) if isinstance(v, float) else v for k, v in fields.items()}
    text = dumps(StageState(**fields).to_dict())
    text = text.replace("{", "{{").replace("}", "}}")
    for n, sentinel in enumerate((_A, _B, _C)):
        text = text.replace(repr(sentinel), f"{{{n}!r}}")
    return text


TEMPLATES = {
    "complete": _template(
        status=StageStatus.COMPLETE, attempt=1, started_at=_A, completed_at=_B, updated_at=_B
    ),
    "scheduled": _template(
        status=StageStatus.PENDING,
        attempt=1,
        started_at=_A,
        updated_at=_B,
        next_attempt_at=_C,
        error="TimeoutError: stage took longer than 30s",
    ),
    "awaiting_review": _template(
        status=StageStatus.AWAITING_REVIEW,
        attempt=1,
        started_at=_A,
        updated_at=_B,
        review_prompt="Publish this item?",
        review_context={"source": "bench"},
    ),
    "awaiting_review_deadline": _template(
        status=StageStatus.AWAITING_REVIEW,
        attempt=1,
        started_at=_A,
        updated_at=_B,
        review_deadline=_C,
        review_prompt="Publish this item?",
        review_context={"source": "bench"},
    ),
    "failed": _template(
        status=StageStatus.FAILED,
        attempt=3,
        started_at=_A,
        completed_at=_B,
        updated_at=_B,
        error="ValueError: bad input",
    ),
}
for _check in TEMPLATES.values():  # COPY text format would need these escaped
    assert "\\" not in _check and "\t" not in _check and "\n" not in _check


def kind(i: int) -> str:
    r = i % 100
    if r < 2:
        return "ready"
    if r < 3:
        return "scheduled"
    if r < 5:
        return "awaiting_review"
    if r < 6:
        return "failed"
    return "complete"


def rows(start: int, stop: int, now: float) -> tuple[list[tuple], list[tuple]]:
    """Item rows and stage-state rows for items ``start..stop-1``."""
    items: list[tuple] = []
    states: list[tuple] = []
    t0 = now - 30 * 86400
    for i in range(start, stop):
        item_id = f"i{i:07d}"
        created = t0 + i * 1e-3
        k = kind(i)
        at = STAGES if k == "complete" else i % STAGES  # the stage the item stands at
        t = created
        for s in range(at):
            started, t = t + 0.01, t + 0.11
            data = TEMPLATES["complete"].format(started, t, 0)
            states.append((item_id, f"s{s}", "complete", 1, t, None, data))
        due: float | None = None
        if k == "ready":
            due = t
        elif k == "scheduled":
            due = now + 3600 + i * 1e-6
            states.append(
                (item_id, f"s{at}", "pending", 1, t + 1, due,
                 TEMPLATES["scheduled"].format(t + 0.01, t + 1, due))
            )  # fmt: skip
        elif k == "awaiting_review":
            name = "awaiting_review_deadline" if i % 2 else "awaiting_review"
            due = now + 7 * 86400 + i * 1e-6 if i % 2 else None
            states.append(
                (item_id, f"s{at}", "awaiting_review", 1, t + 1, None,
                 TEMPLATES[name].format(t + 0.01, t + 1, due))
            )  # fmt: skip
        elif k == "failed":
            states.append(
                (item_id, f"s{at}", "failed", 3, t + 1, None,
                 TEMPLATES["failed"].format(t + 0.01, t + 1, 0))
            )  # fmt: skip
        items.append((item_id, dumps({"n": i}), k, due, None, 0, None, created, t + 1))
    return items, states


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


def fill_sqlite(path: Path, n: int) -> None:
    open_store(f"sqlite:///{path}").close()
    con = sqlite3.connect(path, isolation_level=None)
    indexes = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        " AND tbl_name IN ('items', 'stage_states')"
    ).fetchall()
    for name, _ in indexes:
        con.execute(f"DROP INDEX {name}")
    con.execute("PRAGMA journal_mode=DELETE")  # no multi-GB WAL to checkpoint afterwards
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    now = time.time()
    for start, stop in _chunks(n):
        items, states = rows(start, stop, now)
        con.execute("BEGIN")
        con.executemany(f"INSERT INTO items ({ITEM_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", items)
        con.executemany(
            f"INSERT INTO stage_states ({STATE_COLUMNS}) VALUES (?,?,?,?,?,?,?)", states
        )
        con.execute("COMMIT")
    for _, sql in indexes:
        con.execute(sql)
    con.execute("PRAGMA journal_mode=WAL")  # as the store left it
    con.close()


def _copy_text(rows_: list[tuple]) -> io.StringIO:
    buf = io.StringIO()
    for row in rows_:
        buf.write("\t".join("\\N" if v is None else str(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


def fill_postgres(url: str, n: int) -> None:
    open_store(url).close()
    conn = _pg.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE tablename IN ('items', 'stage_states') AND indexname NOT LIKE '%%_pkey'"
        )
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f'DROP INDEX "{name}"')
    now = time.time()
    for start, stop in _chunks(n):
        items, states = rows(start, stop, now)
        # Same precision as the driver sends floats.
        with conn, conn.cursor() as cur:
            cur.copy_expert(f"COPY items ({ITEM_COLUMNS}) FROM STDIN", _copy_text(items))
            cur.copy_expert(f"COPY stage_states ({STATE_COLUMNS}) FROM STDIN", _copy_text(states))
    with conn, conn.cursor() as cur:
        for _, sql in indexes:
            cur.execute(sql)
    conn.autocommit = True
    with conn.cursor() as cur:
        # What autovacuum does shortly after a bulk load; without it the planner guesses.
        cur.execute("VACUUM ANALYZE items")
        cur.execute("VACUUM ANALYZE stage_states")
    conn.close()


# --- measuring ----------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def median_ms(times: list[float]) -> float:
    return ms(statistics.median(times))


def subprocess_seconds(cmd: list[str], cwd: Path, repeat: int = 3) -> float:
    """Median wall time of a command (checked to succeed)."""

    def once() -> None:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)

    return statistics.median(timed(once, repeat))


def claim_latencies(store, repeat: int) -> tuple[list[float], int]:
    times = []
    got = 0
    for _ in range(repeat):
        start = time.perf_counter()
        leases = store.claim("bench", 1, 60)
        times.append(time.perf_counter() - start)
        got += len(leases)
        store.release(leases)
    return times, got


def ready_executions(n: int) -> int:
    """Stage executions the READY items among the first ``n`` hold."""
    return sum(STAGES - i % STAGES for i in range(n) if kind(i) == "ready")


def rss(url: str, executions: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_rss_child.py"), url, str(executions)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(url: str, n: int, raw_count: Callable[[], Any], raw_commit: Callable[[], Any]):
    """Every figure on the filled store at ``url`` (the RSS run last: it does work)."""
    out: dict[str, Any] = {}
    store = open_store(url)
    wf = build(STAGES, noop)
    counts = store.count_items()
    assert sum(counts.values()) == n, counts

    first = timed(lambda: wf.summary(store), 1)[0]
    summary = timed(lambda: wf.summary(store), 3)
    count = timed(raw_count, 3)
    out["summary_first_s"] = round(first, 3)
    out["summary_s"] = round(statistics.median(summary), 3)
    out["count_stage_states_s"] = round(statistics.median(count), 3)
    out["summary_ratio_to_count"] = round(statistics.median(summary) / statistics.median(count), 2)
    out["count_items_s"] = round(statistics.median(timed(store.count_items, 3)), 3)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_project(Path(tmp), url, STAGES)
        cli = [sys.executable, "-m", "treadle_core.cli"]
        python = subprocess_seconds([sys.executable, "-c", "pass"], root)
        helps = subprocess_seconds([*cli, "--help"], root)
        status = subprocess_seconds([*cli, "status"], root)
    out["status_s"] = round(status, 3)
    out["python_startup_s"] = round(python, 3)
    out["help_s"] = round(helps, 3)
    out["status_ratio_to_help"] = round(status / helps, 2)

    some = f"i{(n // 2):07d}"
    point = timed(lambda: store.get_item(some), 200)
    commit = timed(raw_commit, 200)
    claims, got = claim_latencies(store, 200)
    due = timed(lambda: store.next_due_at(), 200)
    due_waiting = timed(
        lambda: store.next_due_at((ItemState.READY, ItemState.SCHEDULED, ItemState.RUNNING)), 200
    )
    assert got == 200, got
    out["get_item_ms"] = median_ms(point)
    out["raw_commit_ms"] = median_ms(commit)
    out["claim_ms"] = median_ms(claims)
    out["claim_p95_ms"] = ms(sorted(claims)[189])
    out["next_due_at_ms"] = median_ms(due)
    out["next_due_at_waiting_ms"] = median_ms(due_waiting)
    out["claim_ratio_to_raw_commit"] = round(
        statistics.median(claims) / statistics.median(commit), 2
    )
    out["next_due_at_ratio_to_get_item"] = round(
        statistics.median(due) / statistics.median(point), 2
    )

    limited = timed(lambda: store.pending_reviews(limit=50), 20)
    reviews: list[Any] = []
    unlimited = timed(lambda: reviews.append(len(wf.pending_reviews(store))), 3)
    out["pending_reviews_limit50_ms"] = median_ms(limited)
    out["wf_pending_reviews_all_s"] = round(statistics.median(unlimited), 3)
    out["wf_pending_reviews_count"] = reviews[-1]
    store.close()
    return out


def rss_executions(n: int) -> int:
    """A fixed number of executions both the store and the one a tenth its size can do."""
    return min(RSS_EXECUTIONS, ready_executions(n // 10))


def _rss_figures(big: dict[str, float], small: dict[str, float], n: int) -> dict[str, Any]:
    assert big["executions"] >= rss_executions(n) <= small["executions"], (big, small)
    return {
        "rss_small_items": n // 10,
        "rss_executions": rss_executions(n),
        "rss_small_peak_mb": round(small["hwm_kb"] / 1024, 1),
        "rss_peak_mb": round(big["hwm_kb"] / 1024, 1),
        "rss_small_idle_mb": round(small["idle_rss_kb"] / 1024, 1),
        "rss_idle_mb": round(big["idle_rss_kb"] / 1024, 1),
        "rss_peak_ratio": round(big["hwm_kb"] / small["hwm_kb"], 3),
        "rss_growth_ratio": round(
            (big["hwm_kb"] - big["idle_rss_kb"]) / max(small["hwm_kb"] - small["idle_rss_kb"], 1),
            2,
        ),
        "rss_seconds": big["seconds"],
    }


def store_sqlite(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.db"
        start = time.perf_counter()
        fill_sqlite(path, n)
        built = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        url = f"sqlite:///{path}"

        def raw_count() -> None:
            con = sqlite3.connect(path)
            con.execute("SELECT COUNT(*) FROM stage_states").fetchone()
            con.close()

        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute("PRAGMA synchronous=FULL")

        def raw_commit() -> None:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("UPDATE items SET lease_token = lease_token + 1 WHERE id = 'i0000010'")
            raw.execute("COMMIT")

        out: dict[str, Any] = {"items": n, "build_s": round(built, 1), "file_mb": size >> 20}
        out.update(measure(url, n, raw_count, raw_commit))
        raw.close()
        big = rss(url, rss_executions(n))
        path.unlink()
        for p in Path(tmp).iterdir():
            p.unlink()
        small_path = Path(tmp) / "small.db"
        fill_sqlite(small_path, n // 10)
        small = rss(f"sqlite:///{small_path}", rss_executions(n))
    out.update(_rss_figures(big, small, n))
    return out


def store_postgres(n: int) -> dict[str, Any]:
    why = _pg.unavailable()
    if why:
        return {"skipped": why}
    with _pg.scratch_database("big") as url:
        start = time.perf_counter()
        fill_postgres(url, n)
        built = time.perf_counter() - start
        raw = _pg.connect(url)

        def raw_count() -> None:
            with raw.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM stage_states")
                cur.fetchone()
            raw.rollback()

        def raw_commit() -> None:
            with raw.cursor() as cur:
                cur.execute("UPDATE items SET lease_token = lease_token + 1 WHERE id = 'i0000010'")
            raw.commit()

        with raw.cursor() as cur:
            cur.execute("SELECT pg_database_size(current_database())")
            size = cur.fetchone()[0]
        raw.rollback()
        out: dict[str, Any] = {"items": n, "build_s": round(built, 1), "db_mb": size >> 20}
        out.update(measure(url, n, raw_count, raw_commit))
        raw.close()
        big = rss(url, rss_executions(n))
    with _pg.scratch_database("small") as url:
        fill_postgres(url, n // 10)
        small = rss(url, rss_executions(n))
    out.update(_rss_figures(big, small, n))
    return out
