"""treadle-store-redis: a `StateStore` on Redis, registered for ``redis://`` and ``rediss://``."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from treadle_core.hookspecs import StoreBackend, hookimpl

from .store import RedisStateStore, parse_url

try:
    __version__ = version("treadle-store-redis")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"


def open_redis_store(url: str) -> RedisStateStore:
    """``redis://[:password@]host:port/db?prefix=treadle`` -> an open `RedisStateStore`."""
    return RedisStateStore(url)


@hookimpl
def register_stores(register: Callable[[StoreBackend], None]) -> None:
    register(
        StoreBackend(
            "redis",
            open_redis_store,
            "Redis (redis://host:6379/0?prefix=treadle); durability is Redis's persistence",
        )
    )
    register(StoreBackend("rediss", open_redis_store, "Redis over TLS (alias of redis://)"))


__all__ = ["RedisStateStore", "open_redis_store", "parse_url", "register_stores"]
