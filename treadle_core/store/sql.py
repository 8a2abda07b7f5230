"""`SqlStateStore`: the durable store on peewee (SQLite, PostgreSQL, MySQL/MariaDB).

Everything is kept as JSON text and epoch-seconds floats, so one schema serves the
three databases. The schema is versioned: ``MIGRATIONS`` is a plain list of
functions, the version is how many of them have run, and ``treadle_schema`` records
it (the way simonw/llm does it).

Concurrency: each thread gets its own connection (peewee's thread-local state).
SQLite runs in WAL mode, so readers never wait for the writer, and every write
transaction starts with ``BEGIN IMMEDIATE``, so writers in several processes take
turns instead of failing on lock upgrades. PostgreSQL and MySQL lock item rows
with ``SELECT ... FOR UPDATE`` and claim with ``SKIP LOCKED``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee

from ..errors import (
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    UnknownItemError,
)
from ..events import Event, StoredEvent
from ..model import (
    AttemptRecord,
    ItemRecord,
    ItemState,
    Lease,
    PendingReview,
    ReviewRecord,
    StageState,
    StageStatus,
    from_ts,
    to_ts,
    utcnow,
)
from .base import (
    MARK_MEMORY,
    StateStore,
    WorkListener,
    admission,
    commit_mark,
    dumps,
    fence,
    json_text,
)

DEFAULT_URL = "sqlite:///.treadle/state.db"

#: Rows per batch when iterating, and values per ``IN (...)`` list.
_BATCH = 500

_SYNCHRONOUS = ("off", "normal", "full", "extra")
_SQLITE_OPTIONS = ("synchronous", "busy_timeout")


def _now() -> float:
    return utcnow().timestamp()


# --- dialects -----------------------------------------------------------------


def _dialect(db: peewee.Database) -> str:
    if isinstance(db, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgres"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    raise StoreError(f"SqlStateStore does not support {type(db).__name__}")


#: Column types per dialect; JSON may be up to the artefact limit (1 MiB), which
#: MySQL's TEXT (64 KiB) cannot hold.
_TYPES = {
    "sqlite": {
        "text": "TEXT",
        "double": "REAL",
        "serial": "INTEGER PRIMARY KEY",
        # AUTOINCREMENT: an event id is never reused, even after the newest is deleted,
        # so a reader following the journal by id never misses an entry.
        "journal_serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "table": "",
    },
    "postgres": {
        "text": "TEXT",
        "double": "DOUBLE PRECISION",
        "serial": "BIGSERIAL PRIMARY KEY",
        "journal_serial": "BIGSERIAL PRIMARY KEY",
        "table": "",
    },
    "mysql": {
        "text": "LONGTEXT",
        "double": "DOUBLE",
        "serial": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "journal_serial": "BIGINT AUTO_INCREMENT PRIMARY KEY",
        "table": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}",
    },
}

# MySQL cannot roll DDL back, so a migration interrupted there is re-run; these
# errors mean "already done": duplicate column, duplicate index name.
_MYSQL_ALREADY_DONE = {1060, 1061}


def _mysql_collation(db: peewee.Database) -> str:
    """Binary and NO PAD: ids compare exactly ("a", "A" and "a " are three items)."""
    version = db.server_version or (0,)
    if version >= (10,):  # MariaDB
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin" if version >= (8,) else "utf8mb4_bin"


def _ddl(db: peewee.Database, sql: str) -> None:
    """Run one DDL statement; ``{text}``, ``{double}``... are filled in for the dialect."""
    dialect = _dialect(db)
    types = dict(_TYPES[dialect])
    if dialect == "mysql":
        types["table"] = types["table"].format(collation=_mysql_collation(db))
    try:
        db.execute_sql(sql.format(**types))
    except peewee.DatabaseError as exc:
        code = exc.args[0] if exc.args else None
        if dialect == "mysql" and code in _MYSQL_ALREADY_DONE:
            return
        raise


# --- migrations -----------------------------------------------------------------
# Never edit a migration that has shipped: databases out there already ran it.
# Add a new function at the end instead.


#: The review queue's condition, spelled as a literal so the partial index on it is used.
_AWAITING = f"status = '{StageStatus.AWAITING_REVIEW.value}'"


def m001_initial(db: peewee.Database) -> None:
    """Items, stage states, attempts, reviews and the event journal."""
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS items ("
        " id VARCHAR(255) NOT NULL PRIMARY KEY,"
        " data {text} NOT NULL,"
        " state VARCHAR(32) NOT NULL,"
        " due_at {double},"
        " lease_owner VARCHAR(255),"
        " lease_token INTEGER NOT NULL DEFAULT 0,"
        " lease_expires_at {double},"
        " created_at {double} NOT NULL,"
        " updated_at {double} NOT NULL"
        "){table}",
    )
    _ddl(db, "CREATE INDEX items_due_at ON items (due_at)")
    # (state, due_at): next_due_at finds each state's earliest item without a scan.
    _ddl(db, "CREATE INDEX items_state_due ON items (state, due_at)")
    _ddl(db, "CREATE INDEX items_lease ON items (lease_expires_at)")
    _ddl(db, "CREATE INDEX items_created ON items (created_at, id)")
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS stage_states ("
        " item_id VARCHAR(255) NOT NULL,"
        " stage VARCHAR(255) NOT NULL,"
        " status VARCHAR(32) NOT NULL,"
        " attempt INTEGER NOT NULL,"
        " updated_at {double},"
        " data {text} NOT NULL,"
        " PRIMARY KEY (item_id, stage)"
        "){table}",
    )
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS attempts ("
        " id {serial},"
        " item_id VARCHAR(255) NOT NULL,"
        " stage VARCHAR(255) NOT NULL,"
        " data {text} NOT NULL"
        "){table}",
    )
    _ddl(db, "CREATE INDEX attempts_item_stage ON attempts (item_id, stage)")
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS reviews ("
        " id {serial},"
        " item_id VARCHAR(255) NOT NULL,"
        " stage VARCHAR(255) NOT NULL,"
        " data {text} NOT NULL"
        "){table}",
    )
    _ddl(db, "CREATE INDEX reviews_item ON reviews (item_id)")
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS events ("
        " id {journal_serial},"
        " item_id VARCHAR(255) NOT NULL,"
        " stage VARCHAR(255),"
        " type VARCHAR(64) NOT NULL,"
        " at {double} NOT NULL,"
        " data {text} NOT NULL"
        "){table}",
    )
    _ddl(db, "CREATE INDEX events_item ON events (item_id, id)")


def m002_stage_state_queries(db: peewee.Database) -> None:
    """``next_attempt_at`` as a column; indexes for the review queue and the summary."""
    _ddl(db, "ALTER TABLE stage_states ADD COLUMN next_attempt_at {double}")
    _ddl(db, "CREATE INDEX stage_states_review ON stage_states (status, updated_at)")
    _ddl(db, "CREATE INDEX stage_states_summary ON stage_states (stage, status)")
    p = db.param
    after: tuple[str, str] = ("", "")
    while True:
        rows = db.execute_sql(
            "SELECT item_id, stage, data FROM stage_states"
            f" WHERE item_id > {p} OR (item_id = {p} AND stage > {p})"
            f" ORDER BY item_id, stage LIMIT {_BATCH}",
            (after[0], after[0], after[1]),
        ).fetchall()
        if not rows:
            return
        for item_id, stage, data in rows:
            at = json.loads(data).get("next_attempt_at")
            if at is not None:
                db.execute_sql(
                    f"UPDATE stage_states SET next_attempt_at = {p}"
                    f" WHERE item_id = {p} AND stage = {p}",
                    (at, item_id, stage),
                )
        after = (rows[-1][0], rows[-1][1])


def m003_commit_marks(db: peewee.Database) -> None:
    """A mark per committed transaction, so a COMMIT whose reply was lost is never
    applied twice (ids are time-ordered: old marks are deleted by id)."""
    _ddl(db, "CREATE TABLE IF NOT EXISTS commit_marks (id VARCHAR(64) NOT NULL PRIMARY KEY){table}")


def m004_item_priority(db: peewee.Database) -> None:
    """Item priorities: claims take the highest first, then the earliest due."""
    _ddl(db, "ALTER TABLE items ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    _ddl(db, "CREATE INDEX items_priority_due ON items (priority DESC, due_at)")


def m005_stage_limits(db: peewee.Database) -> None:
    """Per-stage flow control: the recent start times and the queue of waiting items."""
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS stage_limits ("
        " stage VARCHAR(255) NOT NULL PRIMARY KEY,"
        " starts {text} NOT NULL,"
        " waiting {text} NOT NULL"
        "){table}",
    )


def m006_definition_and_staleness(db: peewee.Database) -> None:
    """The recorded pipeline definition; a ``stale`` column on stage states."""
    _ddl(
        db,
        "CREATE TABLE IF NOT EXISTS treadle_meta ("
        " name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " value {text} NOT NULL"
        "){table}",
    )
    _ddl(db, "ALTER TABLE stage_states ADD COLUMN stale INTEGER NOT NULL DEFAULT 0")
    if _dialect(db) == "mysql":  # no partial indexes
        _ddl(db, "CREATE INDEX stage_states_stale ON stage_states (stale, stage, item_id)")
    else:
        # Only stale rows are in it: free for the rows the engine writes, and counting or
        # listing stale states never scans the rest.
        _ddl(db, "CREATE INDEX stage_states_stale ON stage_states (stage, item_id) WHERE stale = 1")


def m007_review_queue(db: peewee.Database) -> None:
    """The review queue's index holds only the states waiting for a person, so the
    engine's transitions (every one changes ``updated_at``) never touch it."""
    if _dialect(db) == "mysql":  # no partial indexes: (status, updated_at) stays
        return
    _ddl(db, "DROP INDEX stage_states_review")
    _ddl(
        db,
        "CREATE INDEX stage_states_review ON stage_states (updated_at, item_id, stage)"
        f" WHERE {_AWAITING}",
    )


MIGRATIONS: list[Callable[[peewee.Database], None]] = [
    m001_initial,
    m002_stage_state_queries,
    m003_commit_marks,
    m004_item_priority,
    m005_stage_limits,
    m006_definition_and_staleness,
    m007_review_queue,
]


# --- URLs -------------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _sqlite_path(url: str) -> str:
    rest = url.partition(":")[2]
    rest = rest.split("?", 1)[0]
    if not rest.startswith("///"):
        name = rest.lstrip("/") or "state.db"
        raise StoreError(
            f"store URL {url!r}: SQLite URLs take three slashes: sqlite:///{name} "
            f"(relative path) or sqlite:////abs/path/{name.rsplit('/', 1)[-1]} (absolute)"
        )
    path = unquote(rest[3:])
    if not path:
        raise StoreError(
            f"store URL {url!r} names no file: use sqlite:///.treadle/state.db, "
            "or sqlite:///:memory: for a throwaway database"
        )
    return path


def _options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """The URL's query parameters, overridden by keyword options."""
    merged: dict[str, Any] = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    merged.update(options)
    return merged


def _sqlite_database(url: str, options: dict[str, Any]) -> tuple[peewee.Database, bool]:
    path = _sqlite_path(url)
    opts = _options(url, options)
    unknown = sorted(set(opts) - set(_SQLITE_OPTIONS))
    if unknown:
        raise StoreError(
            f"store URL {_redact(url)!r}: unknown SQLite option {unknown[0]!r}; "
            f"known options: {', '.join(_SQLITE_OPTIONS)}"
        )
    synchronous = str(opts.get("synchronous", "full")).lower()
    if synchronous not in _SYNCHRONOUS:
        raise StoreError(
            f"store URL {_redact(url)!r}: synchronous={synchronous!r} is not one of "
            f"{', '.join(_SYNCHRONOUS)} (full is the default and survives power loss)"
        )
    try:
        busy_timeout = float(opts.get("busy_timeout", 30))
    except ValueError:
        raise StoreError(
            f"store URL {_redact(url)!r}: busy_timeout takes seconds, "
            f"like busy_timeout=30, not {opts['busy_timeout']!r}"
        ) from None
    memory = path == ":memory:"
    pragmas = [("busy_timeout", int(busy_timeout * 1000)), ("synchronous", synchronous.upper())]
    if memory:
        # One connection shared by every thread (each new connection to ":memory:"
        # would be a new, empty database); the store serialises its use.
        db = peewee.SqliteDatabase(
            ":memory:",
            pragmas=pragmas,
            thread_safe=False,
            timeout=busy_timeout,
            check_same_thread=False,
        )
        return db, True
    file = Path(path).expanduser()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"store URL {url!r}: cannot create the directory {str(file.parent)!r} "
            f"({exc.strerror}); choose a writable path"
        ) from exc
    db = peewee.SqliteDatabase(
        str(file),
        pragmas=pragmas,
        timeout=busy_timeout,
        # close() may close a connection another thread opened.
        check_same_thread=False,
    )
    return db, False


def _server_params(url: str, options: dict[str, Any], example: str) -> dict[str, Any]:
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise StoreError(f"store URL {_redact(url)!r} names no database: use {example}")
    params: dict[str, Any] = {"database": database}
    if parts.hostname:
        params["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise StoreError(f"store URL {_redact(url)!r} has a bad port: use {example}") from None
    if port:
        params["port"] = port
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password is not None:
        params["password"] = unquote(parts.password)
    for key, value in _options(url, options).items():
        params[key] = int(value) if isinstance(value, str) and value.isdigit() else value
    return params


def _postgres_database(url: str, options: dict[str, Any]) -> peewee.Database:
    if getattr(peewee, "psycopg2", None) is None and getattr(peewee, "psycopg", None) is None:
        raise StoreError(
            f"store URL {_redact(url)!r} needs a PostgreSQL driver: pip install psycopg2-binary "
            "(or, in your clone of Treadle, pip install '.[postgres]')"
        )
    params = _server_params(url, options, "postgresql://user@localhost:5432/treadle")
    return peewee.PostgresqlDatabase(params.pop("database"), **params)


def _mysql_database(url: str, options: dict[str, Any]) -> peewee.Database:
    if getattr(peewee, "mysql", None) is None:
        raise StoreError(
            f"store URL {_redact(url)!r} needs a MySQL driver: pip install pymysql "
            "(or, in your clone of Treadle, pip install '.[mysql]')"
        )
    params = _server_params(url, options, "mysql://user@localhost:3306/treadle")
    if "client_flag" not in params:
        from pymysql.constants import CLIENT  # the driver peewee found above

        # Affected rows = rows matched (as on SQLite and PostgreSQL), not rows changed.
        params["client_flag"] = CLIENT.FOUND_ROWS
    # READ COMMITTED, as on PostgreSQL: locking reads take no gap locks, so claims
    # never block inserts of new items.
    params.setdefault("init_command", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return peewee.MySQLDatabase(params.pop("database"), **params)


# --- the store --------------------------------------------------------------------

_ITEM_COLUMNS = (
    "id, state, due_at, lease_owner, lease_token, lease_expires_at, created_at, updated_at,"
    " priority"
)


def _item(row: Sequence[Any]) -> ItemRecord:
    return ItemRecord(
        id=row[0],
        state=ItemState(row[1]),
        due_at=from_ts(row[2]),
        lease_owner=row[3],
        lease_token=row[4],
        lease_expires_at=from_ts(row[5]),
        created_at=from_ts(row[6]),
        updated_at=from_ts(row[7]),
        priority=row[8],
    )


def _state(data: str, stale: Any) -> StageState:
    d = json.loads(data)
    d["stale"] = bool(stale)
    return StageState.from_dict(d)


_STATUSES = {s.value: s for s in StageStatus}


def _brief(status: str, next_attempt_at: float | None, data: str | None) -> StageState:
    deadline = None if data is None else json.loads(data).get("review_deadline")
    return StageState(
        _STATUSES[status],
        next_attempt_at=from_ts(next_attempt_at),
        review_deadline=from_ts(deadline),
    )


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(values), _BATCH):
        yield values[i : i + _BATCH]


class SqlStateStore(StateStore):
    """The durable store: ``sqlite:///path``, ``postgresql://...`` or ``mysql://...``."""

    durable = True

    def __init__(self, url: str | None = None, **options: Any) -> None:
        url = url or os.environ.get("TREADLE_STORE") or DEFAULT_URL
        self.url = url
        scheme = url.partition(":")[0].lower()
        self._shared = False
        self._db: peewee.Database
        if scheme == "sqlite":
            self._db, self._shared = _sqlite_database(url, options)
        elif scheme in ("postgresql", "postgres"):
            self._db = _postgres_database(url, options)
        elif scheme == "mysql":
            self._db = _mysql_database(url, options)
        else:
            raise StoreError(
                f"SqlStateStore cannot open {_redact(url)!r}: it takes sqlite:///, "
                "postgresql:// or mysql:// URLs (open_store() knows the others)"
            )
        self.dialect = _dialect(self._db)
        #: SQLite statements go to the sqlite3 connection directly (`_run`).
        self._direct = self.dialect == "sqlite"
        self.durable = not self._shared
        #: How long reads wait for an unreachable server before giving up.
        self.outage_seconds = 60.0
        # A ":memory:" database has one connection for all threads: take turns on it.
        self._guard: AbstractContextManager[Any] = (
            threading.RLock() if self._shared else nullcontext()
        )
        self._connections: dict[int, Any] = {}
        self._connections_lock = threading.Lock()
        self._created_lock = threading.Lock()
        self._last_created = 0.0
        self._marks_made = 0
        #: Per thread: a NOTIFY is due when the current transaction commits.
        self._wake = threading.local()
        self._prepare_sql()
        try:
            self._connect()
            self._migrate()
        except peewee.DatabaseError as exc:
            reason = _sqlite_failure(exc) or self._damage() or exc
            self.close()
            raise StoreError(f"cannot open store {_redact(url)!r}: {reason}") from exc
        except BaseException:
            self.close()
            raise

    def _damage(self) -> str | None:
        """Why a SQLite file that failed to open is unusable (a corrupt schema makes the
        migration fail with an unrelated error), or None."""
        if self.dialect != "sqlite":
            return None
        try:
            rows = self._db.execute_sql("PRAGMA quick_check(1)").fetchall()
        except peewee.DatabaseError as exc:
            return _sqlite_failure(exc) or _SQLITE_FAILURES["database disk image is malformed"]
        return None if rows == [("ok",)] else _SQLITE_FAILURES["database disk image is malformed"]

    def __enter__(self) -> SqlStateStore:
        return self

    def __repr__(self) -> str:
        return f"SqlStateStore({_redact(self.url)!r})"

    # --- connections -----------------------------------------------------------
    def _connect(self) -> None:
        try:
            self._open_thread_connection()
        except peewee.DatabaseError as exc:
            raise StoreError(f"cannot open store {_redact(self.url)!r}: {exc}") from exc
        if self.dialect == "mysql":
            version = self._db.server_version or (0,)
            is_maria = version >= (10,)
            self._skip_locked = version >= ((10, 6) if is_maria else (8, 0, 1))
        else:
            self._skip_locked = True
        self._prepare_locking()

    def _track(self, conn: Any) -> None:
        """Remember each thread's connection so ``close()`` can close them all."""
        ident = threading.get_ident()
        with self._connections_lock:
            alive = {t.ident for t in threading.enumerate()}
            for other in [i for i in self._connections if i not in alive or i == ident]:
                stale = self._connections.pop(other)
                if stale is not conn:
                    _close_quietly(stale)
            self._connections[ident] = conn

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        db = self._db
        if self._direct and not db.query_hooks:
            # The hot path: the thread's open sqlite3 connection directly, without
            # peewee's per-statement bookkeeping (a few µs each, several statements per
            # transition); peewee's query hooks, when someone added one, still see every
            # statement. A statement that fails changed nothing: it runs again through
            # peewee, where its failure is reported as everywhere else.
            state = db._state  # type: ignore[attr-defined]
            if state.conn is not None and not state.closed:
                try:
                    return state.conn.execute(sql, params)
                except sqlite3.Error:
                    pass
        return self._run_through_peewee(sql, params)

    def _run_through_peewee(self, sql: str, params: Sequence[Any]) -> Any:
        db = self._db
        try:
            if db.is_closed():  # reconnecting may fail too: handled like the statement
                self._open_thread_connection()
            return db.execute_sql(sql, params)
        except (peewee.OperationalError, peewee.InterfaceError, peewee.DatabaseError) as exc:
            if self.dialect == "sqlite":
                failure = _sqlite_failure(exc)
                if failure is None:
                    raise
            else:
                if not isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
                    raise
                if db.in_transaction():
                    raise  # transaction() turns it into StoreUnavailableError for the whole
                # A server connection dropped (restart, MySQL's wait_timeout): reconnect and
                # repeat a read, with back-off while the server is away; never repeat a
                # write whose fate is unknown.
                if not sql.lstrip().upper().startswith("SELECT"):
                    self._drop_connection()
                    raise StoreUnavailableError(self._unavailable(exc)) from exc
                return self._retry_read(sql, params, exc)
        # A full disk, a corrupt or read-only file: one line naming the file. Raised
        # outside the handler, so no traceback keeps SQLite's failed statement (and with
        # it the connection and its WAL files) alive after the store is closed.
        raise StoreError(f"store {self.url!r}: {failure}")

    def _unavailable(self, exc: BaseException) -> str:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"store {_redact(self.url)!r} is unavailable: {first}"

    def _drop_connection(self) -> None:
        """Forget this thread's (broken) connection; the next use reconnects."""
        with suppress(Exception):
            self._db.close()

    def _retry_read(self, sql: str, params: Sequence[Any], first: BaseException) -> Any:
        delay, deadline = 0.05, time.monotonic() + self.outage_seconds
        last: BaseException = first
        while True:
            self._drop_connection()
            try:
                self._open_thread_connection()
                return self._db.execute_sql(sql, params)
            except (peewee.OperationalError, peewee.InterfaceError) as exc:
                last = exc
            if time.monotonic() + delay > deadline:
                raise StoreUnavailableError(self._unavailable(last)) from last
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _reconnect_if_dead(self) -> bool:
        """Replace this thread's server connection if it is dead; whether it was."""
        if self.dialect == "sqlite" or self._db.is_connection_usable():
            return False
        with suppress(Exception):
            self._db.close()
        self._open_thread_connection()
        return True

    def _open_thread_connection(self) -> None:
        self._db.connect(reuse_if_open=True)
        self._track(self._db.connection())

    def release_thread(self) -> None:
        """Close the calling thread's connection (a thread that stops using the store)."""
        if self._shared or self._db.is_closed() or self._db.in_transaction():
            return
        conn = self._db.connection()
        with self._connections_lock:
            if self._connections.get(threading.get_ident()) is conn:
                del self._connections[threading.get_ident()]
        self._db.close()

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        with self._connections_lock:
            conns, self._connections = list(self._connections.values()), {}
        own = None if self._db.is_closed() else self._db.connection()
        for conn in conns:
            if conn is not own:
                _close_quietly(conn)
        if own is not None:
            if self._db.in_transaction():
                self._db.rollback()
            self._db.close()

    # --- SQL text ------------------------------------------------------------------
    def _prepare_sql(self) -> None:
        """The hot statements, written once per store in the dialect's parameter style."""
        d = self.dialect
        q = self._q
        values = "?, ?, ?, ?, ?, ?, ?, ?"
        if d == "mysql":
            self._sql_save_item = q(
                "INSERT INTO items (id, data, state, due_at, lease_token, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?, ?) ON DUPLICATE KEY UPDATE data = VALUES(data)"
            )
            self._sql_save_state = q(
                "INSERT INTO stage_states"
                " (item_id, stage, status, attempt, updated_at, next_attempt_at, data, stale)"
                f" SELECT {values} FROM DUAL WHERE EXISTS (SELECT 1 FROM items WHERE id = ?)"
                " ON DUPLICATE KEY UPDATE status = VALUES(status), attempt = VALUES(attempt),"
                " updated_at = VALUES(updated_at), next_attempt_at = VALUES(next_attempt_at),"
                " data = VALUES(data), stale = VALUES(stale)"
            )
        else:
            self._sql_save_item = q(
                "INSERT INTO items (id, data, state, due_at, lease_token, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data"
            )
            self._sql_save_state = q(
                "INSERT INTO stage_states"
                " (item_id, stage, status, attempt, updated_at, next_attempt_at, data, stale)"
                f" SELECT {values} WHERE EXISTS (SELECT 1 FROM items WHERE id = ?)"
                " ON CONFLICT (item_id, stage) DO UPDATE SET status = excluded.status,"
                " attempt = excluded.attempt, updated_at = excluded.updated_at,"
                " next_attempt_at = excluded.next_attempt_at, data = excluded.data,"
                " stale = excluded.stale"
            )
        self._sql_get_item = q(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?")
        self._sql_set_state = q(
            "UPDATE items SET state = ?, due_at = ?, updated_at = ? WHERE id = ?"
        )
        # ``stale`` is read from its column: `mark_stale` sets the column alone.
        self._sql_get_state = q(
            "SELECT data, stale FROM stage_states WHERE item_id = ? AND stage = ?"
        )
        self._sql_all_states = q("SELECT stage, data, stale FROM stage_states WHERE item_id = ?")
        self._sql_stage_versions = q(
            "SELECT stage, status, updated_at FROM stage_states WHERE item_id = ?"
        )
        self._sql_record_attempt = q("INSERT INTO attempts (item_id, stage, data) VALUES (?, ?, ?)")
        self._sql_mark = q("INSERT INTO commit_marks (id) VALUES (?)")
        self._sql_notify = q("SELECT pg_notify(?, '')")
        self._sql_record_review = q("INSERT INTO reviews (item_id, stage, data) VALUES (?, ?, ?)")
        self._sql_event_row = q("(?, ?, ?, ?, ?)")
        self._sql_renew = q(
            "UPDATE items SET lease_expires_at = ? WHERE id = ? AND lease_token = ?"
        )
        self._sql_release = q(
            "UPDATE items SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE id = ? AND lease_token = ?"
        )

    def _prepare_locking(self) -> None:
        if self.dialect == "sqlite":
            # BEGIN IMMEDIATE already holds the database's write lock.
            self._for_update = self._for_update_skip = ""
        else:
            self._for_update = " FOR UPDATE"
            self._for_update_skip = (
                " FOR UPDATE SKIP LOCKED" if self._skip_locked else " FOR UPDATE"
            )
        self._sql_lock_item = self._q(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?{self._for_update}"
        )
        self._sql_claim_due = self._q(
            "SELECT id, lease_token FROM items WHERE due_at <= ?"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
            f" ORDER BY priority DESC, due_at LIMIT ?{self._for_update_skip}"
        )

    def _q(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", self._db.param)

    def _plain(self, column: str, *, number: bool = False) -> str:
        """``column`` in a form no index serves: for the batch queries that name their items
        (``item_id IN (...)``, ``item_id > ?``), so the planner walks the primary key
        instead of an index on the column (which would visit every item, every batch)."""
        if number:
            return f"({column} + 0)"
        if self.dialect == "sqlite":
            return f"+{column}"
        if self.dialect == "mysql":
            return f"CONCAT({column}, '')"
        return f"({column} || '')"

    def _marks(self, n: int) -> str:
        return ", ".join([self._db.param] * n)

    # --- schema ----------------------------------------------------------------------
    def _read_version(self) -> int | None:
        """The recorded schema version; None when there is no ``treadle_schema`` table."""
        try:
            row = self._run("SELECT MAX(version) FROM treadle_schema").fetchone()
        except peewee.DatabaseError:
            return None
        return int(row[0] or 0)

    def _check_version(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise SchemaVersionError(
                f"database at {_redact(self.url)} has schema version {version}, this Treadle "
                f"understands up to {len(MIGRATIONS)}; upgrade treadle (pip install -U treadle)"
            )

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.dialect == "mysql":
            # MySQL commits DDL implicitly: a named lock serialises migrating processes,
            # and the version is recorded after each migration.
            got = self._run("SELECT GET_LOCK('treadle_schema', 300)").fetchone()[0]
            if got != 1:
                raise StoreError(
                    f"store {_redact(self.url)!r}: timed out waiting for another process "
                    "to finish migrating the schema; try again"
                )
            try:
                yield
            finally:
                self._run("SELECT RELEASE_LOCK('treadle_schema')")
            return
        with self.transaction():
            if self.dialect == "postgres":
                self._run("SELECT pg_advisory_xact_lock(7265340)")
            yield

    def _migrate(self) -> None:
        version = self._read_version()
        if version is not None:
            self._check_version(version)
        if version != len(MIGRATIONS):
            with self._migration_lock():
                self._run("CREATE TABLE IF NOT EXISTS treadle_schema (version INTEGER NOT NULL)")
                version = self._read_version() or 0
                self._check_version(version)
                for n in range(version, len(MIGRATIONS)):
                    MIGRATIONS[n](self._db)
                    self._run("DELETE FROM treadle_schema")
                    self._run(self._q("INSERT INTO treadle_schema (version) VALUES (?)"), (n + 1,))
        if self.dialect == "sqlite" and not self._shared:
            # Persistent in the file; set only once the schema is known to be ours.
            self._run("PRAGMA journal_mode=WAL")

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return self._read_version() or 0

    # --- transactions -------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._guard:
            outermost = self._db.is_closed() or not self._db.in_transaction()
            # peewee's transaction() joins an enclosing one (no savepoints): the
            # outermost block commits or rolls back everything, as in MemoryStateStore.
            try:
                with self._begun(outermost):
                    yield
            except (peewee.OperationalError, peewee.InterfaceError, peewee.DatabaseError) as exc:
                failure = self._failure(exc, outermost)
                if failure is exc:
                    raise
                raise failure from exc

    @contextmanager
    def _begun(self, outermost: bool) -> Iterator[None]:
        db = self._db
        if db.is_closed():
            self._open_thread_connection()
        with ExitStack() as stack:
            try:
                stack.enter_context(self._begin())
            except (peewee.OperationalError, peewee.InterfaceError):
                if db.in_transaction() or not self._reconnect_if_dead():
                    raise
                stack.enter_context(self._begin())  # nothing was sent yet: again
            if outermost:
                self._wake.pending = False
            yield
            if outermost and self._wake.pending:  # NOTIFY once, as it commits
                self._run(self._sql_notify, (WORK_CHANNEL,))

    def _failure(self, exc: BaseException, outermost: bool) -> BaseException:
        """What a database error inside a transaction means, as the error to raise."""
        if isinstance(exc, peewee.DataError):  # PostgreSQL/MySQL refusing a value (an id)
            return StoreError(f"store {_redact(self.url)!r} refused a value: {_first(exc)}")
        if self.dialect == "sqlite":
            # A full disk, a corrupt or read-only file: one line naming the file (SQLite
            # rolls back by itself, so peewee's ROLLBACK error hides why).
            failure = _sqlite_failure(exc)
            return exc if failure is None else StoreError(f"store {self.url!r}: {failure}")
        if not outermost or not isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
            return exc
        # The server went away or aborted the transaction (restart, deadlock): nothing of
        # it was applied unless the connection died during COMMIT.
        self._drop_connection()
        return StoreUnavailableError(self._unavailable(exc))

    def _begin(self) -> AbstractContextManager[Any]:
        if self.dialect == "sqlite":
            return self._db.transaction(lock_type="IMMEDIATE")
        return self._db.transaction()

    # --- items -------------------------------------------------------------------------
    def _created_at(self, now: float) -> float:
        """Creation times strictly increase within a store, so "oldest first" is exact."""
        with self._created_lock:
            now = max(now, self._last_created + 1e-6)
            self._last_created = now
            return now

    def save_work_item_data(self, item_id: str, data: dict[str, Any]) -> None:
        now = _now()
        created = self._created_at(now)
        with self._guard:
            self._run(
                self._sql_save_item,
                (item_id, dumps(data), ItemState.READY.value, now, created, created),
            )
        self.notify_work()  # a new item is work: wake idle workers

    def set_priority(self, item_id: str, priority: int) -> None:
        with self._guard:
            cur = self._run(
                self._q("UPDATE items SET priority = ? WHERE id = ?"), (priority, item_id)
            )
        if cur.rowcount == 0:
            raise UnknownItemError(f"unknown item {item_id!r}")

    def get_work_item_data(self, item_id: str) -> dict[str, Any] | None:
        with self._guard:
            row = self._run(self._q("SELECT data FROM items WHERE id = ?"), (item_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def delete_work_item(self, item_id: str) -> None:
        with self.transaction():
            self._delete_items([item_id])

    def _delete_items(self, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids):
            marks = self._marks(len(chunk))
            for table in ("stage_states", "attempts", "reviews", "events"):
                self._run(f"DELETE FROM {table} WHERE item_id IN ({marks})", chunk)
            self._run(f"DELETE FROM items WHERE id IN ({marks})", chunk)

    def list_work_items(self, state: ItemState | None = None) -> Iterator[str]:
        where = "" if state is None else "state = ? AND "
        first = self._q(
            f"SELECT id, created_at FROM items {'' if state is None else 'WHERE state = ?'}"
            f" ORDER BY created_at, id LIMIT {_BATCH}"
        )
        more = self._q(
            f"SELECT id, created_at FROM items WHERE {where}"
            "(created_at > ? OR (created_at = ? AND id > ?))"
            f" ORDER BY created_at, id LIMIT {_BATCH}"
        )
        prefix: tuple[Any, ...] = () if state is None else (state.value,)
        with self._guard:
            rows = self._run(first, prefix).fetchall()
        while rows:
            for row in rows:
                yield row[0]
            if len(rows) < _BATCH:
                return
            last_id, last_created = rows[-1]
            with self._guard:
                rows = self._run(more, (*prefix, last_created, last_created, last_id)).fetchall()

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._guard:
            row = self._run(self._sql_get_item, (item_id,)).fetchone()
        return None if row is None else _item(row)

    def set_item_state(self, item_id: str, state: ItemState, due_at: datetime | None) -> None:
        with self._guard:
            cur = self._run(self._sql_set_state, (state.value, to_ts(due_at), _now(), item_id))
        if cur.rowcount == 0:
            raise UnknownItemError(f"unknown item {item_id!r}")

    def count_items(self) -> dict[ItemState, int]:
        with self._guard:
            rows = self._run("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        return {ItemState(state): int(n) for state, n in rows}

    def next_due_at(self, states: Collection[ItemState] | None = None) -> datetime | None:
        now = _now()
        # An item without a live lease is claimable at due_at: one index-ordered MIN per
        # state. One under a live lease (there are few) when both due and expired.
        free = (
            "SELECT MIN(due_at) FROM items WHERE {where} due_at IS NOT NULL"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
        )
        leased = (
            "SELECT MIN({when} CASE WHEN lease_expires_at > due_at THEN lease_expires_at"
            " ELSE due_at END {end}) FROM items WHERE lease_expires_at > ? AND due_at IS NOT NULL"
        )
        parts: list[str] = []
        params: list[Any] = []
        if states is None:
            parts += [free.format(where=""), leased.format(when="", end="")]
            params += [now, now]
        else:
            values = sorted({ItemState(s).value for s in states})
            if not values:
                return None
            for value in values:
                parts.append(free.format(where="state = ? AND"))
                params += [value, now]
            # The state test sits inside MIN, not in WHERE, so the lease index is used.
            when = f"CASE WHEN state IN ({', '.join('?' * len(values))}) THEN"
            parts.append(leased.format(when=when, end="END"))
            params += [*values, now]
        sql = self._q("SELECT " + ", ".join(f"({part})" for part in parts))
        with self._guard:
            row = self._run(sql, params).fetchone()
        found = [t for t in row if t is not None]
        return from_ts(min(found)) if found else None

    # --- stage states -----------------------------------------------------------------
    def save_stage_state(self, item_id: str, stage: str, state: StageState) -> None:
        with self._guard:
            cur = self._run(
                self._sql_save_state,
                (
                    item_id,
                    stage,
                    state.status.value,
                    state.attempt,
                    to_ts(state.updated_at),
                    to_ts(state.next_attempt_at),
                    json_text(state),
                    1 if state.stale else 0,
                    item_id,
                ),
            )
        if cur.rowcount == 0:
            raise UnknownItemError(f"unknown item {item_id!r}")

    def get_stage_state(self, item_id: str, stage: str) -> StageState | None:
        with self._guard:
            row = self._run(self._sql_get_state, (item_id, stage)).fetchone()
        return None if row is None else _state(row[0], row[1])

    def get_all_stage_states(self, item_id: str) -> dict[str, StageState]:
        with self._guard:
            rows = self._run(self._sql_all_states, (item_id,)).fetchall()
        return {stage: _state(data, stale) for stage, data, stale in rows}

    def get_stage_versions(self, item_id: str) -> dict[str, tuple[str, float | None]]:
        with self._guard:
            rows = self._run(self._sql_stage_versions, (item_id,)).fetchall()
        return {stage: (status, updated) for stage, status, updated in rows}

    def summary(self) -> dict[str, dict[str, int]]:
        with self._guard:
            rows = self._run(
                "SELECT stage, status, COUNT(*) FROM stage_states GROUP BY stage, status"
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for stage, status, n in rows:
            out.setdefault(stage, {})[status] = int(n)
        return out

    def pending_reviews(
        self, stage: str | None = None, limit: int | None = None
    ) -> list[PendingReview]:
        # Two index-ordered queries instead of one "NULLS LAST" sort, which each
        # database spells (and optimises) differently: dated entries, then undated.
        params: tuple[Any, ...] = ()
        where = _AWAITING  # a literal: the partial index `stage_states_review` applies
        if stage is not None:
            where += " AND stage = ?"
            params += (stage,)
        found: list[PendingReview] = []
        for dated in (True, False):
            remaining = None if limit is None else limit - len(found)
            if remaining is not None and remaining <= 0:
                break
            sql = (
                f"SELECT item_id, stage, data FROM stage_states WHERE {where} AND updated_at"
                + (" IS NOT NULL ORDER BY updated_at, item_id, stage" if dated else " IS NULL")
                + ("" if dated else " ORDER BY item_id, stage")
                + ("" if remaining is None else f" LIMIT {int(remaining)}")
            )
            with self._guard:
                rows = self._run(self._q(sql), params).fetchall()
            for item_id, name, data in rows:
                found.append(
                    PendingReview.of(item_id, name, StageState.from_dict(json.loads(data)))
                )
        return found

    # --- attempts, reviews, journal -----------------------------------------------------
    def record_attempt(self, item_id: str, stage: str, record: AttemptRecord) -> None:
        with self._guard:
            self._run(self._sql_record_attempt, (item_id, stage, json_text(record)))

    def get_attempts(self, item_id: str, stage: str) -> list[AttemptRecord]:
        with self._guard:
            rows = self._run(
                self._q("SELECT data FROM attempts WHERE item_id = ? AND stage = ? ORDER BY id"),
                (item_id, stage),
            ).fetchall()
        return [AttemptRecord.from_dict(json.loads(row[0])) for row in rows]

    def record_review(self, item_id: str, stage: str, record: ReviewRecord) -> None:
        with self._guard:
            self._run(self._sql_record_review, (item_id, stage, dumps(record.to_dict())))

    def get_reviews(self, item_id: str, stage: str | None = None) -> list[ReviewRecord]:
        sql = "SELECT data FROM reviews WHERE item_id = ?"
        params: tuple[str, ...] = (item_id,)
        if stage is not None:
            sql += " AND stage = ?"
            params += (stage,)
        sql += " ORDER BY id"
        with self._guard:
            rows = self._run(self._q(sql), params).fetchall()
        return [ReviewRecord.from_dict(json.loads(row[0])) for row in rows]

    def append_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [(e.item_id, e.stage, e.kind, e.at.timestamp(), json_text(e)) for e in events]
        # SQLite allows 32766 parameters per statement: 5 per row stays well under.
        per = 200
        with self._guard:
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                self._run(
                    "INSERT INTO events (item_id, stage, type, at, data) VALUES "
                    + ", ".join([self._sql_event_row] * len(chunk)),
                    [v for row in chunk for v in row],
                )

    def read_events(
        self, item_id: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        sql = "SELECT id, data FROM events WHERE id > ?"
        params: tuple[Any, ...] = (after,)
        if item_id is not None:
            sql += " AND item_id = ?"
            params += (item_id,)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._guard:
            rows = self._run(self._q(sql), params).fetchall()
        return [StoredEvent(int(id_), Event.from_dict(json.loads(data))) for id_, data in rows]

    # --- leases ---------------------------------------------------------------------------
    def lock_item(self, item_id: str, lease: Lease | None = None) -> ItemRecord:
        with self._guard:
            row = self._run(self._sql_lock_item, (item_id,)).fetchone()
        return fence(None if row is None else _item(row), item_id, lease)

    def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        item_ids: Sequence[str] | None = None,
    ) -> list[Lease]:
        if limit <= 0 or (item_ids is not None and not item_ids):
            return []
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        now_ts = now.timestamp()
        with self.transaction():
            if item_ids is None:
                found = self._run(self._sql_claim_due, (now_ts, now_ts, limit)).fetchall()
            else:
                wanted = list(dict.fromkeys(item_ids))
                tokens: dict[str, int] = {}
                for chunk in _chunks(wanted):
                    sql = self._q(
                        f"SELECT id, lease_token FROM items WHERE id IN ({self._marks(len(chunk))})"
                        " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
                    )
                    rows = self._run(sql + self._for_update_skip, (*chunk, now_ts)).fetchall()
                    tokens.update((item_id, token) for item_id, token in rows)
                found = [(i, tokens[i]) for i in wanted if i in tokens][:limit]
            if not found:
                return []
            ids = [item_id for item_id, _ in found]
            for chunk in _chunks(ids):
                self._run(
                    self._q(
                        "UPDATE items SET lease_owner = ?, lease_token = lease_token + 1,"
                        " lease_expires_at = ?"
                    )
                    + f" WHERE id IN ({self._marks(len(chunk))})",
                    (worker_id, expires.timestamp(), *chunk),
                )
        return [Lease(item_id, worker_id, token + 1, expires) for item_id, token in found]

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> list[Lease]:
        if not leases:
            return []
        expires = utcnow() + timedelta(seconds=lease_seconds)
        renewed: list[Lease] = []
        with self.transaction():
            for lease in leases:
                cur = self._run(self._sql_renew, (expires.timestamp(), lease.item_id, lease.token))
                if cur.rowcount:
                    renewed.append(Lease(lease.item_id, lease.worker_id, lease.token, expires))
        return renewed

    def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        with self.transaction():
            for lease in leases:
                self._run(self._sql_release, (lease.item_id, lease.token))

    # --- exactly once --------------------------------------------------------------
    def mark_commit(self, mark: str) -> None:
        with self._guard:
            self._run(self._sql_mark, (mark,))
            self._marks_made += 1
            if self._marks_made % 1000 == 0:  # forget marks older than MARK_MEMORY
                cutoff = commit_mark(time.time() - MARK_MEMORY)
                self._run(self._q("DELETE FROM commit_marks WHERE id < ?"), (cutoff,))

    def committed(self, mark: str) -> bool:
        with self._guard:
            row = self._run(self._q("SELECT 1 FROM commit_marks WHERE id = ?"), (mark,)).fetchone()
        return row is not None

    # --- stage limits ----------------------------------------------------------------
    def _limit_row(self, stage: str) -> tuple[list[float], list[str]]:
        """Inside a transaction: the stage's limit row, locked (made on first use)."""
        insert = (
            "INSERT IGNORE INTO stage_limits (stage, starts, waiting) VALUES (?, '[]', '[]')"
            if self.dialect == "mysql"
            else "INSERT INTO stage_limits (stage, starts, waiting) VALUES (?, '[]', '[]')"
            " ON CONFLICT (stage) DO NOTHING"
        )
        self._run(self._q(insert), (stage,))
        row = self._run(
            self._q(f"SELECT starts, waiting FROM stage_limits WHERE stage = ?{self._for_update}"),
            (stage,),
        ).fetchone()
        return json.loads(row[0]), json.loads(row[1])

    def _save_limit_row(self, stage: str, starts: list[float], waiting: list[str]) -> None:
        self._run(
            self._q("UPDATE stage_limits SET starts = ?, waiting = ? WHERE stage = ?"),
            (dumps(starts), dumps(waiting), stage),
        )

    def admit(
        self,
        stage: str,
        item_id: str,
        *,
        concurrency: int | None,
        rate: tuple[int, float] | None,
    ) -> datetime | None:
        with self._guard, self.transaction():
            starts, waiting = self._limit_row(stage)
            running = 0
            if concurrency is not None:
                running = self._run(
                    self._q("SELECT COUNT(*) FROM stage_states WHERE stage = ? AND status = ?"),
                    (stage, StageStatus.RUNNING.value),
                ).fetchone()[0]
            kept, retry = admission(starts, running, _now(), concurrency=concurrency, rate=rate)
            if retry is None:
                waiting = [i for i in waiting if i != item_id]
            elif item_id not in waiting:
                waiting.append(item_id)
            self._save_limit_row(stage, kept, waiting)
        return None if retry is None else from_ts(retry)

    def release_limit(self, stage: str) -> str | None:
        with self._guard, self.transaction():
            starts, waiting = self._limit_row(stage)
            if not waiting:
                return None
            self._save_limit_row(stage, starts, waiting[1:])
            return waiting[0]

    def limit_status(self) -> dict[str, tuple[int, int]]:
        with self._guard:
            rows = self._run("SELECT stage, waiting FROM stage_limits").fetchall()
            if not rows:
                return {}
            running = dict(
                self._run(
                    self._q(
                        "SELECT stage, COUNT(*) FROM stage_states WHERE status = ?"
                        f" AND stage IN ({self._marks(len(rows))}) GROUP BY stage"
                    ),
                    (StageStatus.RUNNING.value, *(stage for stage, _ in rows)),
                ).fetchall()
            )
        return {stage: (int(running.get(stage, 0)), len(json.loads(w))) for stage, w in rows}

    # --- wake-ups (PostgreSQL LISTEN/NOTIFY) ----------------------------------------------
    def notify_work(self) -> None:
        if self.dialect != "postgres":
            return
        if self._db.in_transaction():
            self._wake.pending = True  # NOTIFY once, as the transaction commits
        else:
            with self._guard:
                self._run(self._sql_notify, (WORK_CHANNEL,))

    def listen(self) -> WorkListener | None:
        driver = getattr(peewee, "psycopg2", None)
        if self.dialect != "postgres" or driver is None:
            return None
        try:
            return _PgListener(driver.connect(dbname=self._db.database, **self._db.connect_params))
        except peewee.DatabaseError:
            return None  # the server is away: poll, and listen again later
        except Exception as exc:  # the driver's own errors, same meaning
            if type(exc).__module__.startswith("psycopg2"):
                return None
            raise

    def live_leases(self, limit: int = 100) -> list[Lease]:
        sql = self._q(
            "SELECT id, lease_owner, lease_token, lease_expires_at FROM items"
            f" WHERE lease_expires_at > ? ORDER BY lease_expires_at, id LIMIT {int(limit)}"
        )
        with self._guard:
            rows = self._run(sql, (_now(),)).fetchall()
        return [Lease(i, owner or "", token, from_ts(exp)) for i, owner, token, exp in rows]  # type: ignore[arg-type]

    def expire_leases(self, owners: Sequence[str]) -> int:
        if not owners:
            return 0
        now = _now()
        n = 0
        with self.transaction():
            for chunk in _chunks(list(owners)):
                cur = self._run(
                    self._q("UPDATE items SET lease_expires_at = ?")
                    + f" WHERE lease_owner IN ({self._marks(len(chunk))})"
                    + self._q(" AND lease_expires_at > ?"),
                    (now, *chunk, now),
                )
                n += cur.rowcount
        return n

    def prune(self, completed_before: datetime, limit: int = 500) -> list[str]:
        if limit <= 0:
            return []
        with self.transaction():
            rows = self._run(
                self._q(
                    "SELECT id FROM items WHERE state = ? AND updated_at < ?"
                    f" LIMIT ?{self._for_update_skip}"
                ),
                (ItemState.COMPLETE.value, completed_before.timestamp(), limit),
            ).fetchall()
            ids = [row[0] for row in rows]
            self._delete_items(ids)
        return ids

    # --- the recorded definition, and changing it ----------------------------------------
    def get_definition(self) -> dict[str, Any] | None:
        sql = "SELECT value FROM treadle_meta WHERE name = ?"
        if self._db.in_transaction():
            sql += self._for_update  # reconcilers take turns on it
        with self._guard:
            row = self._run(self._q(sql), ("definition",)).fetchone()
        return None if row is None else json.loads(row[0])

    def save_definition(self, definition: dict[str, Any]) -> None:
        if self.dialect == "mysql":
            sql = (
                "INSERT INTO treadle_meta (name, value) VALUES (?, ?)"
                " ON DUPLICATE KEY UPDATE value = VALUES(value)"
            )
        else:
            sql = (
                "INSERT INTO treadle_meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            )
        with self.transaction():
            self._run(self._q(sql), ("definition", dumps(definition)))

    def item_page(self, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        if limit <= 0:
            return [], None
        params: tuple[Any, ...]
        if cursor is None:
            sql, params = "SELECT id FROM items ORDER BY id LIMIT ?", (limit,)
        else:
            sql, params = "SELECT id FROM items WHERE id > ? ORDER BY id LIMIT ?", (cursor, limit)
        with self._guard:
            ids = [row[0] for row in self._run(self._q(sql), params).fetchall()]
        return ids, (ids[-1] if ids and len(ids) == limit else None)

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        found: dict[str, ItemRecord] = {}
        for chunk in _chunks(list(item_ids)):
            sql = f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({self._marks(len(chunk))})"
            with self._guard:
                for row in self._run(sql, chunk).fetchall():
                    found[row[0]] = _item(row)
        return found

    def get_stage_states_many(
        self, item_ids: Sequence[str], *, brief: bool = False
    ) -> dict[str, dict[str, StageState]]:
        found: dict[str, dict[str, StageState]] = {}
        if brief:  # from the columns; the JSON only of states waiting for review
            columns = (
                "item_id, stage, status, next_attempt_at,"
                " CASE WHEN status = 'awaiting_review' THEN data END"
            )
        else:
            columns = "item_id, stage, data, stale"
        for chunk in _chunks(list(item_ids)):
            sql = f"SELECT {columns} FROM stage_states WHERE item_id IN ({self._marks(len(chunk))})"
            with self._guard:
                rows = self._run(sql, chunk).fetchall()
            if brief:
                for item_id, stage, status, next_at, data in rows:
                    found.setdefault(item_id, {})[stage] = _brief(status, next_at, data)
            else:
                for item_id, stage, data, stale in rows:
                    found.setdefault(item_id, {})[stage] = _state(data, stale)
        return found

    def set_item_states(
        self,
        item_ids: Sequence[str],
        state: ItemState,
        due_at: datetime | None,
        *,
        only: Collection[ItemState] | None = None,
    ) -> int:
        n = 0
        where = ""
        extra: tuple[Any, ...] = ()
        if only is not None:
            values = sorted({ItemState(s).value for s in only})
            if not values:
                return 0
            where = f" AND {self._plain('state')} IN ({self._marks(len(values))})"
            extra = tuple(values)
        with self.transaction():
            for chunk in _chunks(list(item_ids)):
                sql = (
                    self._q("UPDATE items SET state = ?, due_at = ?, updated_at = ?")
                    + f" WHERE id IN ({self._marks(len(chunk))}){where}"
                )
                params = (state.value, to_ts(due_at), _now(), *chunk, *extra)
                n += self._run(sql, params).rowcount
        return n

    def rename_stage(self, item_ids: Sequence[str], old: str, new: str) -> int:
        moved = 0
        with self.transaction():
            for chunk in _chunks(list(item_ids)):
                marks = self._marks(len(chunk))
                taken = {
                    row[0]
                    for row in self._run(
                        self._q("SELECT item_id FROM stage_states WHERE stage = ?")
                        + f" AND item_id IN ({marks})",
                        (new, *chunk),
                    ).fetchall()
                }
                free = [i for i in chunk if i not in taken]
                if not free:
                    continue
                marks = self._marks(len(free))
                for table in ("stage_states", "attempts", "reviews"):
                    cur = self._run(
                        self._q(f"UPDATE {table} SET stage = ? WHERE stage = ?")
                        + f" AND item_id IN ({marks})",
                        (new, old, *free),
                    )
                    if table == "stage_states":
                        moved += cur.rowcount
        return moved

    def mark_stale(self, item_ids: Sequence[str], stages: Collection[str]) -> int:
        names = sorted(set(stages))
        if not names:
            return 0
        n = 0
        with self.transaction():
            for chunk in _chunks(list(item_ids)):
                sql = (
                    self._q(
                        f"UPDATE stage_states SET stale = 1 WHERE {self._plain('status')} = ?"
                        f" AND {self._plain('stale', number=True)} = 0"
                    )
                    + f" AND {self._plain('stage')} IN ({self._marks(len(names))})"
                    + f" AND item_id IN ({self._marks(len(chunk))})"
                )
                n += self._run(sql, (StageStatus.COMPLETE.value, *names, *chunk)).rowcount
        return n

    def count_stale(self) -> dict[str, int]:
        with self._guard:
            rows = self._run(
                "SELECT stage, COUNT(*) FROM stage_states WHERE stale = 1 GROUP BY stage"
            ).fetchall()
        return {stage: int(n) for stage, n in rows}

    def list_stage_items(
        self,
        stage: str,
        *,
        statuses: Collection[StageStatus] | None = None,
        stale: bool | None = None,
    ) -> Iterator[str]:
        # Stale states have an index of their own; anything else walks the primary key
        # (item_id, stage) in order, so each page continues where the last one stopped.
        indexed = stale is True
        where = ("stage" if indexed else self._plain("stage")) + " = ?"
        params: tuple[Any, ...] = (stage,)
        if statuses is not None:
            values = sorted({StageStatus(s).value for s in statuses})
            if not values:
                return
            where += f" AND {self._plain('status')} IN ({', '.join('?' * len(values))})"
            params += tuple(values)
        if stale is not None:
            column = "stale" if indexed else self._plain("stale", number=True)
            where += f" AND {column} = {1 if stale else 0}"
        first = self._q(f"SELECT item_id FROM stage_states WHERE {where} ORDER BY item_id LIMIT ?")
        more = self._q(
            f"SELECT item_id FROM stage_states WHERE {where} AND item_id > ?"
            " ORDER BY item_id LIMIT ?"
        )
        with self._guard:
            rows = self._run(first, (*params, _BATCH)).fetchall()
        while rows:
            for row in rows:
                yield row[0]
            if len(rows) < _BATCH:
                return
            with self._guard:
                rows = self._run(more, (*params, rows[-1][0], _BATCH)).fetchall()

    def revoke_lease(self, item_id: str) -> None:
        with self._guard:
            cur = self._run(
                self._q(
                    "UPDATE items SET lease_owner = NULL, lease_expires_at = NULL,"
                    " lease_token = lease_token + 1 WHERE id = ?"
                ),
                (item_id,),
            )
        if cur.rowcount == 0:
            raise UnknownItemError(f"unknown item {item_id!r}")


#: SQLite errors that no retry mends, each with what to do (the file is named by the caller).
_SQLITE_FAILURES = {
    "database or disk is full": "the disk is full; free some space and try again",
    "disk I/O error": "disk I/O error (is the disk full or failing?)",
    "database disk image is malformed": "the database file is corrupt (restore it from a backup)",
    "file is not a database": "the file is not a Treadle database (or it is corrupt)",
    "attempt to write a readonly database": "the database file is read-only",
    "unable to open database file": "cannot open the database file (is its directory writable?)",
}


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _sqlite_failure(exc: BaseException | None) -> str | None:
    """What a SQLite error (or one it caused) says about the file, in words; None if
    nothing the user must mend."""
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc)
        for needle, words in _SQLITE_FAILURES.items():
            if needle in text:
                return words
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


#: The channel `notify_work` and listeners use (notifications are per database).
WORK_CHANNEL = "treadle_work"


class _PgListener(WorkListener):
    """A connection of its own that LISTENs for `notify_work` (autocommit)."""

    def __init__(self, conn: Any):
        self.conn = conn
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {WORK_CHANNEL}")

    def fileno(self) -> int:
        return int(self.conn.fileno())

    def drain(self) -> int:
        self.conn.poll()
        n = len(self.conn.notifies)
        self.conn.notifies.clear()
        return n

    def close(self) -> None:
        _close_quietly(self.conn)


def _close_quietly(conn: Any) -> None:
    # Already closed, or its server is gone: nothing is left to release.
    with suppress(Exception):
        conn.close()


__all__ = ["DEFAULT_URL", "MIGRATIONS", "SqlStateStore"]
