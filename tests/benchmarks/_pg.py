"""Scratch PostgreSQL databases for the benchmarks (created, then dropped)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

#: A server the benchmarks may create databases on (trust auth or a password in the URL).
ADMIN_URL = os.environ.get(
    "TREADLE_BENCH_POSTGRES",
    os.environ.get("TREADLE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
)


def connect(url: str):  # -> psycopg2 connection
    import psycopg2

    parts = urlsplit(url)
    return psycopg2.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username,
        password=parts.password,
        dbname=parts.path.lstrip("/"),
    )


def unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can."""
    try:
        connect(ADMIN_URL).close()
    except Exception as exc:  # no driver, no server: the PG benchmarks are skipped
        return f"PostgreSQL at {ADMIN_URL} unavailable ({type(exc).__name__}: {exc})".strip()
    return None


def _admin(sql: str, wait: float = 60.0) -> object:
    """Run one statement on the admin database, waiting out a server restart."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = connect(ADMIN_URL)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def server_started() -> object:
    """When the server last started: a change means it restarted meanwhile."""
    return _admin("SELECT pg_postmaster_start_time()")


def retry_on_restart(fn: Callable[[], T], what: str, attempts: int = 3) -> tuple[T, int]:
    """``fn()`` and how many times it was re-run because the server restarted under it.

    The server is shared (other test suites restart it); a run it restarted under is
    not a measurement, so it is repeated.
    """
    for attempt in range(attempts):
        before = server_started()
        try:
            result = fn()
        except Exception:
            if server_started() == before or attempt == attempts - 1:
                raise
            continue
        if server_started() == before:
            return result, attempt
    raise RuntimeError(f"{what}: the PostgreSQL server restarted during each of {attempts} runs")


@contextmanager
def scratch_database(tag: str) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped (with its connections) afterwards."""
    name = f"treadle_bench_{tag}_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(ADMIN_URL)._replace(path=f"/{name}").geturl()
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
