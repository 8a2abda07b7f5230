"""Shared fixtures: clean PostgreSQL and MySQL/MariaDB databases for the store tests.

Each server gets one uniquely named database per test session (dropped at the
end); every test starts with its tables dropped. Servers default to the local
ones (127.0.0.1, trust auth); point elsewhere with ``TREADLE_TEST_POSTGRES`` /
``TREADLE_TEST_MYSQL`` (an admin URL). An unreachable server skips its tests,
except under ``CI=true``, where it fails them: CI must run every store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ADMIN_URL = os.environ.get("TREADLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("TREADLE_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def _unavailable(what: str, url: str, exc: BaseException) -> NoReturn:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{what} not reachable at {url} ({type(exc).__name__}: {first_line})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(f"{reason}; start it, or set CI=true to make this a failure")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _pg_connect(url: str) -> Any:
    import psycopg2

    parts = urlsplit(url)
    conn = psycopg2.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        dbname=parts.path.lstrip("/"),
        connect_timeout=5,
    )
    conn.autocommit = True
    return conn


def _mysql_connect(url: str) -> Any:
    import pymysql

    parts = urlsplit(url)
    return pymysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        database=parts.path.lstrip("/") or None,
        connect_timeout=5,
        autocommit=True,
    )


def _session_database(
    what: str,
    admin_url: str,
    connect: Callable[[str], Any],
    create: str,
    drop: str,
) -> Iterator[str]:
    name = f"treadle_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = connect(admin_url)
    except Exception as exc:
        _unavailable(what, admin_url, exc)
    try:
        with admin.cursor() as cur:
            cur.execute(create.format(name=name))
        yield _with_database(admin_url, name)
    finally:
        try:
            with admin.cursor() as cur:
                cur.execute(drop.format(name=name))
        except Exception:  # the server was restarted under us (a resilience test)
            admin = connect(admin_url)
            with admin.cursor() as cur:
                cur.execute(drop.format(name=name))
        admin.close()


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[str]:
    yield from _session_database(
        "PostgreSQL",
        PG_ADMIN_URL,
        _pg_connect,
        'CREATE DATABASE "{name}"',
        'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
    )


@pytest.fixture(scope="session")
def _mysql_database() -> Iterator[str]:
    yield from _session_database(
        "MySQL/MariaDB",
        MYSQL_ADMIN_URL,
        _mysql_connect,
        "CREATE DATABASE `{name}`",  # the server's default collation, as a user's would be
        "DROP DATABASE IF EXISTS `{name}`",
    )


@pytest.fixture
def pg_url(_pg_database: str) -> str:
    """A PostgreSQL store URL whose database holds no tables."""
    conn = _pg_connect(_pg_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for (table,) in cur.fetchall():
                cur.execute(f'DROP TABLE "{table}" CASCADE')
    finally:
        conn.close()
    return _pg_database


@pytest.fixture
def mysql_url(_mysql_database: str) -> str:
    """A MySQL/MariaDB store URL whose database holds no tables."""
    conn = _mysql_connect(_mysql_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            for (table,) in cur.fetchall():
                cur.execute(f"DROP TABLE `{table}`")
    finally:
        conn.close()
    return _mysql_database


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[[], Any]]:
    """Makes fresh stores of one kind: the memory store, then a SQLite file (each test
    that asks for it runs on both)."""
    from treadle_core import MemoryStateStore, open_store

    stores: list[Any] = []

    def make() -> Any:
        if request.param == "memory":
            store: Any = MemoryStateStore()
        else:
            store = open_store(f"sqlite:///{tmp_path}/store-{len(stores)}.db")
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
