"""Built-in store backends: ``memory://`` and the SQL schemes, resolved by `open_store`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import StoreError
from ..hookspecs import StoreBackend, hookimpl
from ..store.base import StateStore
from ..store.memory import MemoryStateStore

#: ``memory://NAME`` stores, shared by name within one process (CLI tests use them).
_named: dict[str, MemoryStateStore] = {}
_named_lock = threading.Lock()


def open_memory_store(url: str, **options: Any) -> StateStore:
    if options:
        raise StoreError(f"memory:// takes no options (got {', '.join(sorted(options))})")
    name = url.partition(":")[2].strip("/")
    if not name:
        return MemoryStateStore()
    with _named_lock:
        store = _named.get(name)
        if store is None:
            store = _named[name] = MemoryStateStore()
        return store


def _open_sql(url: str, **options: Any) -> StateStore:
    from ..store.sql import SqlStateStore

    return SqlStateStore(url, **options)


SQL_SCHEMES: dict[str, str] = {
    "sqlite": "SQLite file (sqlite:///relative/path.db, sqlite:////absolute/path.db)",
    "postgresql": "PostgreSQL (postgresql://user:pass@host:5432/db)",
    "postgres": "PostgreSQL (alias of postgresql://)",
    "mysql": "MySQL 8 / MariaDB (mysql://user:pass@host:3306/db)",
}


@hookimpl
def register_stores(register: Callable[[StoreBackend], None]) -> None:
    register(
        StoreBackend(
            "memory",
            open_memory_store,
            "In-process store; memory://NAME is shared by name within one process",
        )
    )
    for scheme, description in SQL_SCHEMES.items():
        register(StoreBackend(scheme, _open_sql, description))
