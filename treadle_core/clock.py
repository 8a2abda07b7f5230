"""Where the engine's "now" comes from, and how it waits for a time to come.

The engine asks one `Clock` for the time of every decision (retry delays, review
deadlines, readiness, event times). Tests give a workflow a `ManualClock` and move
it by hand, so a one-hour back-off or review deadline is tested without sleeping.
Leases are not on this clock: they are shared with other processes, so they stay on
the wall clock the store keeps.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from .model import utcnow


@runtime_checkable
class Clock(Protocol):
    """The engine's source of time."""

    def now(self) -> datetime:
        """The current time (timezone-aware, UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The wall clock: `utcnow` and `asyncio.sleep`."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; waiting on it moves it forward at once."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start if start is not None else utcnow()
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds``; the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, not by {seconds} s")
        self._now += timedelta(seconds=seconds)
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


SYSTEM_CLOCK = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]
