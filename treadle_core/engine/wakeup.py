"""What a claim loop waits for besides its own items: the next due time, a stop, and (on
PostgreSQL) a NOTIFY that work appeared — an item added, a review decided, a retry —
so an idle worker starts at once instead of at its next poll."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Any

from ..clock import Clock
from ..store.base import StateStore, WorkListener

log = logging.getLogger("treadle.engine")


class WakeUps:
    """A stop event, the store's work notifications, and the clock, waited on together."""

    def __init__(self, store: StateStore, clock: Clock, stop: asyncio.Event | None, listen: bool):
        self.store = store
        self.clock = clock
        self.stop = stop
        self.listen = listen
        self.work = asyncio.Event()
        self._listener: WorkListener | None = None
        if listen:
            self._open()

    def _open(self) -> None:
        listener = self.store.listen()
        if listener is None:
            return
        try:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._readable)
        except (OSError, NotImplementedError, ValueError):
            listener.close()  # a loop that cannot watch it: poll instead
            return
        self._listener = listener

    def _readable(self) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            if listener.drain():
                self.work.set()
        except Exception:  # the connection is gone: poll, and listen again when idle
            log.debug("work notifications lost; listening again later", exc_info=True)
            self._drop()
            self.work.set()

    def _drop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()

    def close(self) -> None:
        self._drop()

    async def wait(
        self, timeout: float | None, tasks: Collection[asyncio.Task[Any]], *, work: bool = True
    ) -> set[Any]:
        """Until one of ``tasks`` finishes, work is notified (with ``work``), the loop is
        stopped, or ``timeout`` seconds passed on the clock (None: no limit); the
        finished tasks."""
        if self.listen and self._listener is None and not tasks:
            self._open()  # listen again after a lost connection, while idle
        waits: list[asyncio.Future[Any]] = list(tasks)
        extra: list[asyncio.Future[Any]] = []
        if work and self._listener is not None:
            extra.append(asyncio.ensure_future(self.work.wait()))
        if self.stop is not None:
            extra.append(asyncio.ensure_future(self.stop.wait()))
        if timeout is not None and not tasks:
            extra.append(asyncio.ensure_future(self.clock.sleep(timeout)))
        if not waits and not extra:
            return set()
        try:
            done, _ = await asyncio.wait(
                [*waits, *extra],
                timeout=timeout if tasks else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for fut in extra:
                fut.cancel()
            await asyncio.gather(*extra, return_exceptions=True)
        self.work.clear()
        return {t for t in done if t in set(waits)}
