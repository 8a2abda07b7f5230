"""State stores: the contract, the in-memory store and the SQL store."""

from .base import MARK_MEMORY, StateStore, commit_mark
from .memory import MemoryStateStore

__all__ = ["MARK_MEMORY", "MemoryStateStore", "StateStore", "commit_mark"]
