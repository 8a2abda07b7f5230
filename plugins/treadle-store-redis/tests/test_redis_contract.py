"""`RedisStateStore` passes the store contract every `StateStore` passes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from treadle_core.store.base import StateStore
from treadle_core.testing import StoreContract


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, open_redis: Callable[[], StateStore]) -> StateStore:
        return open_redis()

    @pytest.fixture
    def reopen(self, open_redis: Callable[[], StateStore]) -> Callable[[], StateStore]:
        return open_redis
