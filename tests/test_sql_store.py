"""SqlStateStore beyond the contract: URLs, SQLite settings, migrations, processes, threads."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest

from treadle_core import Workflow, open_store
from treadle_core.errors import SchemaVersionError, StoreError, StoreUnavailableError
from treadle_core.events import StageStarted
from treadle_core.model import AttemptRecord, ItemState, StageState, StageStatus, utcnow
from treadle_core.store import sql
from treadle_core.store.memory import MemoryStateStore
from treadle_core.store.sql import MIGRATIONS, SqlStateStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state.db"


@pytest.fixture
def store(sqlite_url: str) -> Iterator[SqlStateStore]:
    with SqlStateStore(sqlite_url) as store:
        yield store


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    fixture = "pg_url" if request.param == "postgres" else "mysql_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("pg_url" if request.param == "postgres" else "mysql_url")
    return url


def pragma(store: SqlStateStore, name: str) -> Any:
    return store._run(f"PRAGMA {name}").fetchone()[0]


# --- URLs ---------------------------------------------------------------------------


def test_sqlite_url_with_two_slashes_names_the_fix() -> None:
    with pytest.raises(StoreError, match=r"SQLite URLs take three slashes: sqlite:///x\.db"):
        open_store("sqlite://x.db")


def test_sqlite_url_without_a_file_names_the_fix() -> None:
    with pytest.raises(StoreError, match=r"names no file: use sqlite:///\.treadle/state\.db"):
        open_store("sqlite:///")


def test_url_without_a_scheme_suggests_sqlite() -> None:
    with pytest.raises(StoreError, match=r"has no scheme; .* sqlite:///state\.db"):
        open_store("state.db")


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(StoreError) as err:
        open_store("nosuch://localhost/0")
    message = str(err.value)
    assert "unknown scheme 'nosuch'" in message
    for scheme in ("memory://", "mysql://", "postgres://", "postgresql://", "sqlite://"):
        assert scheme in message


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("synchronous=sometimes", "synchronous='sometimes' is not one of off, normal, full"),
        ("journal=wal", "unknown SQLite option 'journal'; known options: synchronous"),
        ("busy_timeout=soon", "busy_timeout takes seconds"),
    ],
)
def test_bad_sqlite_options_are_refused(tmp_path: Path, query: str, complaint: str) -> None:
    with pytest.raises(StoreError, match=complaint):
        open_store(f"sqlite:///{tmp_path}/state.db?{query}")
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("postgresql://postgres@127.0.0.1:5432", "postgresql://user@localhost:5432/treadle"),
        ("mysql://root@127.0.0.1", "mysql://user@localhost:3306/treadle"),
    ],
)
def test_server_url_without_a_database_names_the_fix(url: str, fix: str) -> None:
    with pytest.raises(StoreError, match=f"names no database: use {fix}"):
        open_store(url)


def test_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peewee, "psycopg2", None)
    monkeypatch.setattr(peewee, "psycopg", None)
    with pytest.raises(StoreError, match=r"psycopg2-binary \(or, .*'\.\[postgres\]'\)"):
        open_store("postgres://u@localhost/db")


def test_missing_mysql_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peewee, "mysql", None)
    with pytest.raises(StoreError, match=r"pymysql \(or, in your clone .*'\.\[mysql\]'\)"):
        open_store("mysql://u@localhost/db")


def test_unreachable_server_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError, match="cannot open store") as err:
        open_store("postgresql://treadle:s3cret@127.0.0.1:1/db?connect_timeout=2")
    assert "s3cret" not in str(err.value)
    assert "treadle:***@127.0.0.1:1" in str(err.value)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some notes\n" * 100)
    with pytest.raises(StoreError, match=r"cannot open store .*notes\.txt.*not a database"):
        open_store(f"sqlite:///{path}")
    assert path.read_text() == "not a database, just some notes\n" * 100


def test_a_directory_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"cannot create the directory .*choose a writable path"):
        open_store(f"sqlite:///{tmp_path}/file/sub/state.db")


def test_memory_url_opens_a_memory_store() -> None:
    assert isinstance(open_store("memory://"), MemoryStateStore)


def test_a_scheme_registered_through_the_hook_opens_with_the_callers_options() -> None:
    from treadle_core import hookimpl
    from treadle_core.hookspecs import StoreBackend
    from treadle_core.plugins import get_plugin_manager

    calls: list[tuple[str, dict[str, Any]]] = []
    made = MemoryStateStore()

    def factory(url: str, **options: Any) -> MemoryStateStore:
        calls.append((url, options))
        return made

    class AcmePlugin:
        @hookimpl
        def register_stores(self, register: Any) -> None:
            register(StoreBackend("acme", factory, "a test backend"))

    pm = get_plugin_manager(load_entry_points=False)
    pm.add_plugin(AcmePlugin(), "acme-store")
    assert open_store("Acme://bucket/x", plugins=pm, region="eu") is made
    assert calls == [("Acme://bucket/x", {"region": "eu"})]
    with pytest.raises(StoreError, match="acme://"):
        open_store("nope://x", plugins=pm)


def test_options_a_backend_does_not_take_are_one_clear_error() -> None:
    with pytest.raises(StoreError, match="memory:// takes no options"):
        open_store("memory://", region="eu")


def test_the_same_memory_url_is_the_same_store_in_the_library_and_the_cli(
    tmp_path: Path,
) -> None:
    """memory://NAME is shared by name within a process, whoever opens it."""
    from treadle_core.cli.context import CliContext
    from treadle_core.plugins import get_plugin_manager

    url = f"memory://shared-{tmp_path.name}"
    mine = open_store(url)
    cli = CliContext(get_plugin_manager(), None, url)
    assert cli.store() is mine
    assert open_store(url) is mine
    assert open_store("memory://") is not open_store("memory://")


# --- SQLite files and settings ------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_full_sync(
    store: SqlStateStore, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "state.db") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    seen: list[tuple[Any, Any]] = []

    def in_thread() -> None:  # each thread's own connection gets the same settings
        seen.append((pragma(store, "busy_timeout"), pragma(store, "synchronous")))
        store.release_thread()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert (pragma(store, "busy_timeout"), pragma(store, "synchronous")) == (30000, 2)
    assert seen == [(30000, 2)]


def test_url_and_options_override_sqlite_settings(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/a.db?synchronous=normal") as a:
        assert isinstance(a, SqlStateStore) and pragma(a, "synchronous") == 1
    with open_store(f"sqlite:///{tmp_path}/b.db", synchronous="off", busy_timeout=2) as b:
        assert isinstance(b, SqlStateStore)
        assert (pragma(b, "synchronous"), pragma(b, "busy_timeout")) == (0, 2000)


def test_default_store_is_dot_treadle_state_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TREADLE_STORE", raising=False)
    with open_store() as store:
        assert isinstance(store, SqlStateStore) and store.durable
        store.save_work_item_data("a", {})
    assert (tmp_path / ".treadle" / "state.db").is_file()


def test_treadle_store_variable_names_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TREADLE_STORE", "sqlite:///elsewhere/x.db")
    with open_store():
        pass
    assert (tmp_path / "elsewhere" / "x.db").is_file()
    assert not (tmp_path / ".treadle").exists()


def test_relative_and_absolute_paths_and_missing_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel/deeper/r.db"):
        pass
    assert (tmp_path / "rel" / "deeper" / "r.db").is_file()
    absolute = tmp_path / "abs" / "a.db"
    with open_store(f"sqlite:///{absolute}"):  # the path itself starts with "/"
        pass
    assert absolute.is_file()


def test_in_memory_sqlite_is_one_database_for_every_thread() -> None:
    with SqlStateStore("sqlite:///:memory:") as store:
        assert not store.durable
        store.save_work_item_data("a", {"n": 1})
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(store.get_work_item_data("a")))
        thread.start()
        thread.join()
        assert seen == [{"n": 1}]


# --- migrations ----------------------------------------------------------------------------

# The schema as Treadle's first release wrote it, in plain SQLite.
V1_SCHEMA = """
CREATE TABLE treadle_schema (version INTEGER NOT NULL);
INSERT INTO treadle_schema (version) VALUES (1);
CREATE TABLE items (id VARCHAR(255) NOT NULL PRIMARY KEY, data TEXT NOT NULL,
  state VARCHAR(32) NOT NULL, due_at REAL, lease_owner VARCHAR(255),
  lease_token INTEGER NOT NULL DEFAULT 0, lease_expires_at REAL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX items_due_at ON items (due_at);
CREATE INDEX items_state_due ON items (state, due_at);
CREATE INDEX items_lease ON items (lease_expires_at);
CREATE INDEX items_created ON items (created_at, id);
CREATE TABLE stage_states (item_id VARCHAR(255) NOT NULL, stage VARCHAR(255) NOT NULL,
  status VARCHAR(32) NOT NULL, attempt INTEGER NOT NULL, updated_at REAL,
  data TEXT NOT NULL, PRIMARY KEY (item_id, stage));
CREATE TABLE attempts (id INTEGER PRIMARY KEY, item_id VARCHAR(255) NOT NULL,
  stage VARCHAR(255) NOT NULL, data TEXT NOT NULL);
CREATE INDEX attempts_item_stage ON attempts (item_id, stage);
CREATE TABLE reviews (id INTEGER PRIMARY KEY, item_id VARCHAR(255) NOT NULL,
  stage VARCHAR(255) NOT NULL, data TEXT NOT NULL);
CREATE INDEX reviews_item ON reviews (item_id);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, item_id VARCHAR(255) NOT NULL,
  stage VARCHAR(255), type VARCHAR(64) NOT NULL, at REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX events_item ON events (item_id, id);
"""


def _v1_rows(t: float) -> list[tuple[str, tuple[Any, ...]]]:
    state = StageState(
        StageStatus.PENDING, attempt=1, next_attempt_at=utcnow(), updated_at=utcnow()
    )
    return [
        (
            "INSERT INTO items VALUES (?, ?, 'scheduled', ?, NULL, 3, NULL, ?, ?)",
            ("doc-1", '{"path": "a.pdf"}', t + 60, t, t),
        ),
        (
            "INSERT INTO stage_states VALUES ('doc-1', 'extract', 'pending', 1, ?, ?)",
            (t, json.dumps(state.to_dict())),
        ),
    ]


def test_v1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    t = utcnow().timestamp()
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
        for statement, params in _v1_rows(t):
            old.execute(statement, params)
    old.close()
    with SqlStateStore(f"sqlite:///{path}") as store:
        assert store.schema_version() == len(MIGRATIONS) >= 2
        rec = store.get_item("doc-1")
        assert rec is not None and (rec.state, rec.lease_token) == (ItemState.SCHEDULED, 3)
        assert store.get_work_item_data("doc-1") == {"path": "a.pdf"}
        state = store.get_stage_state("doc-1", "extract")
        assert state is not None and state.attempt == 1
        assert store.next_due_at() == rec.due_at
    with sqlite3.connect(path) as plain:
        (backfilled,) = plain.execute("SELECT next_attempt_at FROM stage_states").fetchone()
        indexes = {row[1] for row in plain.execute("PRAGMA index_list(stage_states)")}
    plain.close()
    assert state.next_attempt_at is not None and backfilled == state.next_attempt_at.timestamp()
    assert {"stage_states_review", "stage_states_summary"} <= indexes
    with sqlite3.connect(path) as plain:  # m007 made the review queue's index partial
        (review,) = plain.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'stage_states_review'"
        ).fetchone()
    plain.close()
    assert "WHERE status = 'awaiting_review'" in review


def test_review_queue_index_holds_only_states_waiting_for_a_person(any_url: str) -> None:
    """Transitions change every state's updated_at: only a review's is in the queue's
    index (SQLite, PostgreSQL), and the queue's query reads that index in order."""
    with SqlStateStore(any_url) as store:
        t0, statuses = utcnow(), [*StageStatus, StageStatus.AWAITING_REVIEW]
        for n, status in enumerate(statuses):
            store.save_work_item_data(f"i{n}", {})
            at = t0 - timedelta(seconds=n)  # later items wait longer: first in the queue
            store.save_stage_state(f"i{n}", "s", StageState(status, updated_at=at))
        waiting = [f"i{n}" for n, s in enumerate(statuses) if s == StageStatus.AWAITING_REVIEW]
        assert [r.item_id for r in store.pending_reviews()] == waiting[::-1]
        assert [r.item_id for r in store.pending_reviews(limit=1)] == waiting[-1:]
        if store.dialect == "mysql":
            return  # no partial indexes there: the full (status, updated_at) index stays
        query = (
            "SELECT item_id FROM stage_states WHERE status = 'awaiting_review'"
            " AND updated_at IS NOT NULL ORDER BY updated_at, item_id, stage"
        )
        if store.dialect == "sqlite":
            (definition,) = store._run(
                "SELECT sql FROM sqlite_master WHERE name = 'stage_states_review'"
            ).fetchone()
            plan = str(store._run(f"EXPLAIN QUERY PLAN {query}").fetchall())
        else:
            (definition,) = store._run(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'stage_states_review'"
            ).fetchone()
            store._run("SET enable_seqscan = off")  # a tiny table: make the choice visible
            plan = str(store._run(f"EXPLAIN {query}").fetchall())
        assert "WHERE" in definition and "awaiting_review" in definition, definition
        assert "stage_states_review" in plan and "TEMP B-TREE" not in plan.upper(), plan


def test_fresh_database_records_the_current_version(store: SqlStateStore, sqlite_url: str) -> None:
    assert store.schema_version() == len(MIGRATIONS)
    store.save_work_item_data("a", {})
    with SqlStateStore(sqlite_url) as again:  # opening again runs nothing
        assert again.schema_version() == len(MIGRATIONS)
        assert again.get_work_item_data("a") == {}


def _set_version(path: Path, version: int) -> None:
    with sqlite3.connect(path) as plain:
        plain.execute("UPDATE treadle_schema SET version = ?", (version,))
    plain.close()


def test_newer_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with SqlStateStore(f"sqlite:///{path}") as store:
        store.save_work_item_data("a", {"n": 1})
    _set_version(path, len(MIGRATIONS) + 3)
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError) as err:
        SqlStateStore(f"sqlite:///{path}")
    assert str(err.value) == (
        f"database at sqlite:///{path} has schema version {len(MIGRATIONS) + 3}, this Treadle "
        f"understands up to {len(MIGRATIONS)}; upgrade treadle (pip install -U treadle)"
    )
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_newer_rollback_journal_database_is_not_switched_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as plain:
        plain.executescript(V1_SCHEMA)
    plain.close()
    _set_version(path, 99)
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        open_store(f"sqlite:///{path}")
    assert path.read_bytes() == before
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    plain.close()


def test_failed_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
    old.close()

    def broken(db: peewee.Database) -> None:
        db.execute_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration 3 broke")

    monkeypatch.setattr(sql, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration 3 broke"):
        SqlStateStore(f"sqlite:///{path}")
    with sqlite3.connect(path) as plain:
        assert plain.execute("SELECT version FROM treadle_schema").fetchall() == [(1,)]
        tables = {row[0] for row in plain.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in plain.execute("PRAGMA table_info(stage_states)")}
    plain.close()
    assert "half_done" not in tables and "next_attempt_at" not in columns


def test_server_database_at_v1_is_migrated_in_place(server_url: str) -> None:
    store = SqlStateStore(server_url)
    store.save_work_item_data("doc-1", {"path": "a.pdf"})
    store.save_stage_state("doc-1", "extract", StageState(StageStatus.RUNNING, attempt=1))
    # Take the database back to version 1: drop what the later migrations added.
    db = store._db

    def drop_index(table: str, index: str) -> None:
        db.execute_sql(
            f"DROP INDEX {index} ON {table}" if store.dialect == "mysql" else f"DROP INDEX {index}"
        )

    for index in ("stage_states_review", "stage_states_summary", "stage_states_stale"):
        drop_index("stage_states", index)
    drop_index("items", "items_priority_due")
    for table in ("commit_marks", "stage_limits", "treadle_meta"):
        db.execute_sql(f"DROP TABLE {table}")
    for table, column in (
        ("stage_states", "next_attempt_at"),
        ("stage_states", "stale"),
        ("items", "priority"),
    ):
        db.execute_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute_sql("UPDATE treadle_schema SET version = 1")
    store.close()
    with SqlStateStore(server_url) as again:
        assert again.schema_version() == len(MIGRATIONS)
        assert again.get_work_item_data("doc-1") == {"path": "a.pdf"}
        assert again.summary() == {"extract": {"running": 1}}
        again._run("SELECT next_attempt_at FROM stage_states").fetchall()


def test_newer_server_database_is_refused(server_url: str) -> None:
    with SqlStateStore(server_url) as store:
        store._run("UPDATE treadle_schema SET version = 42")
    with pytest.raises(SchemaVersionError, match="has schema version 42, this Treadle"):
        SqlStateStore(server_url)


# --- statements per call ------------------------------------------------------------


def test_hot_path_calls_are_one_statement_each(any_url: str) -> None:
    with SqlStateStore(any_url) as store:
        store.save_work_item_data("a", {})
        (lease,) = store.claim("w1", 1, 60)
        statements: list[str] = []
        store._db.query_hooks.append(lambda event: statements.append(event.sql))

        def count(call: Callable[[], object]) -> int:
            del statements[:]
            call()
            return len(statements)

        attempt = AttemptRecord(1, None, None, "complete")
        events = [StageStarted(item_id="a", stage="x")] * 3
        with store.transaction():
            transition = [
                count(lambda: store.lock_item("a", lease)),
                count(lambda: store.save_stage_state("a", "x", StageState())),
                count(lambda: store.record_attempt("a", "x", attempt)),
                count(lambda: store.get_all_stage_states("a")),
                count(lambda: store.set_item_state("a", ItemState.RUNNING, None)),
                count(lambda: store.append_events(events)),
            ]
        queries = [count(store.summary), count(store.count_items), count(store.next_due_at)]
    assert transition == [1] * 6
    assert queries == [1] * 3


async def test_a_chain_of_stages_writes_the_items_row_only_when_its_state_changes(
    sqlite_url: str,
) -> None:
    """While an item stays RUNNING under one lease it keeps its due_at, so its row (and
    the due_at indexes) is written when it starts and when it completes, not per stage."""

    async def step(item, ctx):
        return None

    builder = Workflow.builder("chain")
    for n in range(4):
        builder.stage(f"s{n}", step, needs=[f"s{n - 1}"] if n else [])
    wf = builder.build()
    with SqlStateStore(sqlite_url) as store:
        store.save_work_item_data("a", {})
        statements: list[str] = []
        store._db.query_hooks.append(lambda event: statements.append(event.sql))
        await wf.run(store)
        assert wf.summary(store) == {f"s{n}": {"complete": 1} for n in range(4)}
    item_updates = [sql for sql in statements if sql.startswith("UPDATE items SET state")]
    assert len(item_updates) == 2, item_updates  # RUNNING, then COMPLETE


# --- processes and threads --------------------------------------------------------------

# Each process opens its store, then waits for the go file, so their work overlaps.
START = """
import os, sys, time
from treadle_core.store.sql import SqlStateStore

store = SqlStateStore(sys.argv[1])
while not os.path.exists(sys.argv[-1]):
    time.sleep(0.001)
"""

CLAIMER = START + textwrap.dedent(
    """
    import json
    claimed = []
    while leases := store.claim(sys.argv[2], 2, 60):
        claimed.extend(lease.item_id for lease in leases)
        time.sleep(0.001)  # a worker's other work: lets the others in
    store.close()
    print(json.dumps(claimed))
    """
)

COUNTER = START + textwrap.dedent(
    """
    for _ in range(int(sys.argv[2])):
        with store.transaction():
            store.lock_item("counter")
            n = store.get_work_item_data("counter")["n"]
            store.save_work_item_data("counter", {"n": n + 1})
    store.close()
    """
)


def _run_processes(go: Path, script: str, *argv_lists: list[str]) -> list[str]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argv_lists
    ]
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


def test_claims_from_processes_never_share_an_item(
    store: SqlStateStore, sqlite_url: str, tmp_path: Path
) -> None:
    ids = [f"item-{n:03d}" for n in range(300)]
    with store.transaction():
        for item_id in ids:
            store.save_work_item_data(item_id, {})
    outputs = _run_processes(tmp_path / "go", CLAIMER, *([sqlite_url, f"w{n}"] for n in range(4)))
    per_process = [json.loads(out) for out in outputs]
    assert sorted(i for claimed in per_process for i in claimed) == ids
    assert sum(1 for claimed in per_process if claimed) >= 2, "the processes never overlapped"


def test_write_transactions_from_processes_lose_no_update(
    store: SqlStateStore, sqlite_url: str, tmp_path: Path
) -> None:
    store.save_work_item_data("counter", {"n": 0})
    _run_processes(tmp_path / "go", COUNTER, *([sqlite_url, "40"] for _ in range(4)))
    assert store.get_work_item_data("counter") == {"n": 160}


def test_claims_from_threads_sharing_a_store_never_share_an_item(any_url: str) -> None:
    ids = [f"item-{n:03d}" for n in range(200)]
    with SqlStateStore(any_url) as store:
        with store.transaction():
            for item_id in ids:
                store.save_work_item_data(item_id, {})
        claimed: list[list[str]] = [[] for _ in range(6)]
        errors: list[BaseException] = []
        start = threading.Barrier(len(claimed))

        def work(n: int) -> None:
            try:
                start.wait()
                while leases := store.claim(f"w{n}", 1, 60):
                    claimed[n].extend(lease.item_id for lease in leases)
            except BaseException as exc:
                errors.append(exc)
            finally:
                store.release_thread()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(len(claimed))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert sorted(i for per in claimed for i in per) == ids


def test_claim_skips_an_item_a_writer_has_locked(server_url: str) -> None:
    with SqlStateStore(server_url) as store:
        store.save_work_item_data("busy", {})
        store.save_work_item_data("free", {})
        locked, go_on = threading.Event(), threading.Event()

        def writer() -> None:
            with store.transaction():
                store.lock_item("busy")
                locked.set()
                go_on.wait(30)
            store.release_thread()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert locked.wait(30)
            # SKIP LOCKED: no waiting for the writer, and no double claim.
            assert [lease.item_id for lease in store.claim("w1", 10, 60)] == ["free"]
        finally:
            go_on.set()
            thread.join()
        assert [lease.item_id for lease in store.claim("w1", 10, 60)] == ["busy"]


def test_reads_do_not_wait_for_an_open_write_transaction(sqlite_url: str) -> None:
    with SqlStateStore(sqlite_url, busy_timeout=1) as store:
        store.save_work_item_data("a", {"v": 1})
        seen: list[Any] = []
        with store.transaction():
            store.save_work_item_data("a", {"v": 2})
            thread = threading.Thread(target=lambda: seen.append(store.get_work_item_data("a")))
            thread.start()
            thread.join()
        assert seen == [{"v": 1}]
        assert store.get_work_item_data("a") == {"v": 2}


def test_release_thread_closes_only_the_callers_connection(store: SqlStateStore) -> None:
    store.save_work_item_data("a", {})
    closed: list[bool] = []

    def in_thread() -> None:
        store.get_item("a")
        store.release_thread()
        closed.append(store._db.is_closed())
        assert store.get_item("a") is not None  # opens a new one on demand
        store.release_thread()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert closed == [True]
    assert not store._db.is_closed()


def test_close_closes_the_connections_of_every_thread(sqlite_url: str, tmp_path: Path) -> None:
    store = SqlStateStore(sqlite_url)
    store.save_work_item_data("a", {})
    threads = [threading.Thread(target=store.get_item, args=("a",)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal = tmp_path / "state.db-wal"
    assert wal.exists()
    store.close()
    # SQLite removes the WAL file when the last connection to the database closes.
    assert not wal.exists()


def _kill_connection(store: SqlStateStore, url: str) -> None:
    """End the store's (this thread's) server connection from outside, as a restart would."""
    (backend,) = store._run(
        "SELECT pg_backend_pid()" if store.dialect == "postgres" else "SELECT CONNECTION_ID()"
    ).fetchone()
    with SqlStateStore(url) as admin:
        if store.dialect == "postgres":
            admin._run(f"SELECT pg_terminate_backend({int(backend)})")
        else:
            admin._run(f"KILL {int(backend)}")


def test_a_dropped_server_connection_is_replaced(server_url: str) -> None:
    with SqlStateStore(server_url) as store:
        store.save_work_item_data("a", {"n": 1})
        _kill_connection(store, server_url)
        assert store.get_work_item_data("a") == {"n": 1}  # a read is simply repeated
        _kill_connection(store, server_url)
        with store.transaction():  # so is BEGIN
            store.save_work_item_data("a", {"n": 2})
        assert store.get_work_item_data("a") == {"n": 2}


def test_a_write_on_a_dropped_connection_is_not_repeated(server_url: str) -> None:
    with SqlStateStore(server_url) as store:
        store.save_work_item_data("a", {})
        _kill_connection(store, server_url)
        with pytest.raises(StoreUnavailableError, match="is unavailable"):
            store.record_attempt("a", "x", AttemptRecord(1, None, None, "complete"))
        store.record_attempt("a", "x", AttemptRecord(2, None, None, "complete"))
        assert [a.attempt for a in store.get_attempts("a", "x")] == [2]


def test_a_transaction_on_a_dropped_connection_is_unavailable_and_applies_nothing(
    server_url: str,
) -> None:
    with SqlStateStore(server_url) as store:
        store.save_work_item_data("a", {})
        with store.transaction():
            store.set_item_state("a", ItemState.FAILED, None)
        with pytest.raises(StoreUnavailableError, match="is unavailable"), store.transaction():
            store.set_item_state("a", ItemState.COMPLETE, None)
            _kill_connection(store, server_url)  # the server drops it mid-transaction
            store.save_work_item_data("b", {})
        assert store.get_item("a").state == ItemState.FAILED  # reconnects for the read
        assert store.get_item("b") is None
        with store.transaction():  # and the next transaction begins on a new connection
            store.set_item_state("a", ItemState.COMPLETE, None)
        assert store.get_item("a").state == ItemState.COMPLETE


def test_a_stage_state_round_trips_through_its_stored_form() -> None:
    """Stores keep `StageState.to_stored` (fields at their default left out): every field,
    set away from its default, comes back; and no field has a default that is truthy
    (which leaving out a falsy value would lose)."""
    import dataclasses
    import json
    from datetime import UTC, datetime

    from treadle_core.model import QualityFeedback, SubTask

    defaults = StageState()
    for f in dataclasses.fields(StageState):
        if f.name not in ("status",):
            assert not getattr(defaults, f.name), f"{f.name} has a truthy default"
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    odd = {
        datetime: at,
        int: 3,
        bool: True,
    }
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(StageState):
        kind = str(f.type)
        if f.name == "status":
            changes[f.name] = StageStatus.AWAITING_REVIEW
        elif f.name == "subtasks":
            changes[f.name] = [SubTask("s1", metadata={"k": 1})]
        elif f.name == "feedback":
            changes[f.name] = QualityFeedback("fb", guidance={"g": 1})
        elif "datetime" in kind:
            changes[f.name] = odd[datetime]
        elif kind.startswith("bool"):
            changes[f.name] = odd[bool]
        elif kind.startswith("int"):
            changes[f.name] = odd[int]
        elif kind.startswith("str"):
            changes[f.name] = f"{f.name}!"
        elif kind.startswith("list"):
            changes[f.name] = [{"x": f.name}] if "dict" in kind else [f.name]
        else:
            changes[f.name] = {"x": f.name}
    full = StageState(**changes)
    assert StageState.from_dict(json.loads(json.dumps(full.to_stored()))) == full
    assert StageState.from_dict(json.loads(json.dumps(defaults.to_stored()))) == defaults
