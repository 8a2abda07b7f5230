"""`open_store(url)`: the one way to open a store by URL, library and CLI alike.

Every scheme resolves through the ``register_stores`` hook. The built-in backends
(``memory://``, ``sqlite://``, ``postgresql://``, ``mysql://``) are plugins of the
core registered through that same hook; a scheme they do not know is looked up in
the installed plugins (``redis://`` from treadle-store-redis, ...).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, TreadleError
from .base import StateStore
from .sql import DEFAULT_URL
from .sql import _redact as redact

if TYPE_CHECKING:
    from ..plugins import TreadlePluginManager


@functools.cache
def _builtins() -> TreadlePluginManager:
    """The built-in plugins alone: enough for the built-in schemes, with no entry point
    imported (opening a SQLite file never imports every installed plugin)."""
    from ..plugins import get_plugin_manager

    return get_plugin_manager(load_entry_points=False)


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition(":")
    if not sep or not scheme.isascii() or len(scheme) < 2:
        # No scheme, or a Windows drive letter ("C:\..."): most likely a file path.
        raise StoreError(
            f"store URL {url!r} has no scheme; for a SQLite file write sqlite:///{url} "
            "(or memory://, postgresql://..., mysql://...)"
        )
    return scheme.lower()


def open_store(
    url: str | None = None, *, plugins: TreadlePluginManager | None = None, **options: Any
) -> StateStore:
    """The store a URL names; default ``$TREADLE_STORE``, else ``sqlite:///.treadle/state.db``.

    ``plugins`` is the plugin manager whose ``register_stores`` backends resolve the
    scheme (default: the built-ins, then every installed plugin). ``options`` go to the
    backend's factory (``synchronous="normal"`` for SQLite, ...).
    """
    url = url or os.environ.get("TREADLE_STORE") or DEFAULT_URL
    scheme = _scheme(url)
    manager = plugins if plugins is not None else _builtins()
    backend = manager.store_backends().get(scheme)
    if backend is None and plugins is None:
        from ..plugins import get_plugin_manager

        manager = get_plugin_manager()
        backend = manager.store_backends().get(scheme)
    if backend is None:
        known = ", ".join(f"{s}://" for s in sorted(manager.store_backends().names()))
        raise StoreError(
            f"store URL {redact(url)!r}: unknown scheme {scheme!r}; known schemes: {known} "
            "(a plugin may add more: pip install treadle-store-<name>)"
        )
    try:
        return backend.factory(url, **options)
    except TreadleError:
        raise
    except NotImplementedError:
        raise StoreError(f"the {scheme}:// store is not available in this build") from None
    except TypeError as exc:
        if options:
            raise StoreError(
                f"store URL {redact(url)!r}: the {scheme}:// store does not take the "
                f"options {', '.join(sorted(options))} ({exc})"
            ) from None
        raise StoreError(f"cannot open store {redact(url)!r}: TypeError: {exc}") from None
    except Exception as exc:
        raise StoreError(
            f"cannot open store {redact(url)!r}: {type(exc).__name__}: {exc}"
        ) from None


__all__ = ["DEFAULT_URL", "open_store"]
