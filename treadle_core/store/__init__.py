"""State stores: the contract, the in-memory store and the SQL store."""

from .base import StateStore
from .memory import MemoryStateStore

__all__ = ["MemoryStateStore", "StateStore"]
