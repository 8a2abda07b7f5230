"""A base for event sinks that do slow I/O: a bounded queue and one delivery thread.

The engine calls a sink synchronously for every committed event, so a sink that
talks to a server must not do it in the call. `QueuedSink` keeps the call to
putting a job on a bounded in-memory queue; a daemon thread delivers the jobs in
order. It uses the standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import ClassVar, Generic, TypeVar

Job = TypeVar("Job")

_STOP = None  # the sentinel that ends the delivery thread, queued by close(): jobs are never None


class QueuedSink(Generic[Job]):
    """Delivers jobs from a bounded queue on a daemon thread; the caller never waits.

    A subclass implements ``__call__(event)``, deciding what to queue with
    ``self._submit(job)``, and ``_deliver(job)``, which runs on the delivery thread
    and returns True when the job was delivered, False when it was given up on
    (after logging why). An exception from ``_deliver`` counts as failed and is
    logged; it never ends the thread. Retries should wait with
    ``self._abandon.wait(delay)``, which returns True once ``close()`` gives up.
    A subclass that holds jobs back takes ``self._lock``, checks ``self._closed``
    and queues with ``self._enqueue(job)``; ``_before_close()`` queues what it still
    holds when the sink closes.

    When ``queue_size`` jobs wait, further ones are dropped, counted in
    ``dropped`` and logged once per run of drops. ``close()`` delivers what is
    queued for at most ``close_timeout`` seconds, then leaves the thread behind
    (a daemon never holds up exit) and logs how many jobs were left.

    Call ``super().__init__`` after checking the subclass's own options: it starts
    the thread. Logs go to the class attribute ``log``, so set it to the plugin's
    logger; ``noun`` and ``unfinished`` word the closing warning.
    """

    log: ClassVar[logging.Logger] = logging.getLogger("treadle.sinks")
    #: What a job is, plural, in log lines ("events", "messages").
    noun: ClassVar[str] = "jobs"
    #: What the jobs left at close are ("undelivered", "unsent").
    unfinished: ClassVar[str] = "undelivered"

    def __init__(self, *, name: str, queue_size: int, close_timeout: float):
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            # queue.Queue(maxsize=0) is unbounded: exactly what this class is here to avoid.
            raise ValueError(f"queue_size must be a whole number of at least 1, got {queue_size!r}")
        if not isinstance(close_timeout, int | float) or close_timeout < 0:
            raise ValueError(f"close_timeout must be a positive duration, got {close_timeout!r}")
        #: How log lines and the thread name this sink.
        self.name = name
        self.close_timeout = float(close_timeout)
        #: Jobs delivered, given up on (or raised), and dropped because the queue was full.
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._accepted = 0
        self._dropping = 0  # drops since the queue last had room
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        # Held while queueing and while closing, so nothing is queued after the stop.
        self._lock = threading.Lock()
        self._closed = False
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"treadle {name}", daemon=True)
        self._thread.start()

    # --- for subclasses --------------------------------------------------------------------
    def _deliver(self, job: Job) -> bool:
        """Deliver ``job`` (on the delivery thread): True if delivered, False if given up on."""
        raise NotImplementedError

    def _what(self, job: Job) -> str:
        """How a log line names ``job``."""
        return type(job).__name__

    def _before_close(self) -> None:
        """Called once by ``close()``, holding the lock, before it waits: queue what waits here."""

    # --- on the engine's path: queue only --------------------------------------------------
    def _submit(self, job: Job) -> None:
        """Queue ``job`` for delivery, or drop it if the queue is full; ignored once closed."""
        with self._lock:
            if not self._closed:
                self._enqueue(job)

    def _enqueue(self, job: Job) -> None:
        """`_submit` for a caller already holding ``self._lock`` (and that checked ``_closed``)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            self._dropping += 1
            if self._dropping == 1:  # one line per run of drops, not one per event
                self.log.warning(
                    "%s: queue full (%d %s waiting); dropping %s until it drains",
                    self.name,
                    self._queue.maxsize,
                    self.noun,
                    self.noun,
                )
            return
        self._accepted += 1
        if self._dropping:
            self.log.warning(
                "%s: dropped %d %s while the queue was full (%d in all)",
                self.name,
                self._dropping,
                self.noun,
                self.dropped,
            )
            self._dropping = 0

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued, waiting at most ``timeout`` (default ``close_timeout``) s.

        Later calls of the sink are ignored; closing again does nothing.
        """
        wait = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._before_close()
        with contextlib.suppress(queue.Full):  # still full at the deadline: abandoned below
            self._queue.put(_STOP, timeout=wait)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()  # it stops at its next step (a daemon: never holds up exit)
            if self.pending:
                self.log.warning(
                    "%s: closed with %d %s %s after waiting %g s",
                    self.name,
                    self.pending,
                    self.noun,
                    self.unfinished,
                    wait,
                )

    @property
    def pending(self) -> int:
        """Jobs accepted and not yet delivered or given up on (queued or in flight)."""
        return self._accepted - self.delivered - self.failed

    # --- the delivery thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP or self._abandon.is_set():
                return
            try:
                delivered = self._deliver(job)
            except Exception:  # never let one job end the thread
                self.failed += 1
                self.log.exception("%s: delivering %s failed", self.name, self._what(job))
                continue
            if delivered:
                self.delivered += 1
            else:
                self.failed += 1
