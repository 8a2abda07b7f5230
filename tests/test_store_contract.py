"""Every built-in store passes the store contract (`treadle_core.testing.StoreContract`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from treadle_core.store.base import StateStore
from treadle_core.store.memory import MemoryStateStore
from treadle_core.store.sql import SqlStateStore
from treadle_core.testing import StoreContract


class _SqlContract(StoreContract):
    """Runs the contract on one database URL; ``reopen`` opens more stores on it."""

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def opened(self) -> Iterator[list[StateStore]]:
        stores: list[StateStore] = []
        yield stores
        for store in stores:
            store.close()

    @pytest.fixture
    def store(self, url: str, opened: list[StateStore]) -> StateStore:
        store = SqlStateStore(url)
        opened.append(store)
        return store

    @pytest.fixture
    def reopen(self, url: str, opened: list[StateStore]) -> Callable[[], StateStore]:
        def open_again() -> StateStore:
            store = SqlStateStore(url)
            opened.append(store)
            return store

        return open_again


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[StateStore]:
        with MemoryStateStore() as store:
            yield store


class TestSqliteInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[StateStore]:
        with SqlStateStore("sqlite:///:memory:") as store:
            yield store


class TestSqliteFileStore(_SqlContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/state.db"


@pytest.mark.postgres
class TestPostgresStore(_SqlContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url


@pytest.mark.mysql
class TestMySQLStore(_SqlContract):
    @pytest.fixture
    def url(self, mysql_url: str) -> str:
        return mysql_url
