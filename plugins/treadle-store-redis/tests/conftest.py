"""The Redis server the tests use: ``TREADLE_TEST_REDIS`` or redis://127.0.0.1:6379/15.

Each test gets its own key prefix (a fresh, empty store) and its keys are deleted
afterwards. An unreachable server skips the tests, except under ``CI=true``,
where it fails them: CI must run every store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

REDIS_URL = os.environ.get("TREADLE_TEST_REDIS", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The server's URL, once it answered PING."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        reason = f"Redis not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(f"{reason}; start redis-server, or set CI=true to make this a failure")
    return REDIS_URL


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A store URL with a prefix of its own; every key under it is deleted afterwards."""
    prefix = f"treadle-test-{uuid.uuid4().hex[:12]}"
    yield f"{redis_server}?prefix={prefix}"
    with redis.Redis.from_url(redis_server) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for n in range(0, len(keys), 500):
            client.unlink(*keys[n : n + 500])


@pytest.fixture
def open_redis(redis_url: str) -> Iterator[Callable[[], object]]:
    """Opens `RedisStateStore` objects on ``redis_url``; closes them all afterwards."""
    from treadle_store_redis import RedisStateStore

    opened: list[RedisStateStore] = []

    def open_one() -> RedisStateStore:
        store = RedisStateStore(redis_url)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
