"""Placeholder: SqlStateStore is being written."""
from __future__ import annotations

from typing import Any

from .base import StateStore


class SqlStateStore(StateStore):  # type: ignore[misc]
    pass


def open_store(url: str | None = None, **kw: Any) -> StateStore:
    raise NotImplementedError
