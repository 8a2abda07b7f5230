"""Events: what happened, to subscribers (bounded queues) and to the store's journal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from .model import from_ts, to_ts, utcnow

log = logging.getLogger("treadle.events")


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event: which item, which stage (where it applies), when."""

    item_id: str
    stage: str | None = None
    at: datetime = field(default_factory=utcnow)

    registry: ClassVar[dict[str, type[Event]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        Event.registry[cls.__name__] = cls

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            d[name] = to_ts(value) if isinstance(value, datetime) else value
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Event:
        cls = Event.registry.get(d.get("type", ""), UnknownEvent)
        kwargs: dict[str, Any] = {}
        names = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key == "type" or key not in names:
                continue
            if key == "at" or (key in _TIME_FIELDS and value is not None):
                value = from_ts(value)
            kwargs[key] = value
        if cls is UnknownEvent:
            kwargs["type_name"] = d.get("type", "")
            kwargs["payload"] = {k: v for k, v in d.items() if k not in names and k != "type"}
        return cls(**kwargs)


_TIME_FIELDS = {"at", "retry_at"}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


@dataclass(frozen=True, kw_only=True)
class StageStarted(Event):
    attempt: int = 1


@dataclass(frozen=True, kw_only=True)
class StageCompleted(Event):
    pass


@dataclass(frozen=True, kw_only=True)
class StageFailed(Event):
    error: str


@dataclass(frozen=True, kw_only=True)
class ReviewRequired(Event):
    prompt: str = ""
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ReviewResolved(Event):
    decision: str
    reviewer: str | None = None
    #: The choice the reviewer picked, when choices were offered.
    choice: str | None = None


@dataclass(frozen=True, kw_only=True)
class ReviewVoted(Event):
    """One approval of a review that needs several; the stage still waits."""

    reviewer: str
    approvals: int
    required: int


@dataclass(frozen=True, kw_only=True)
class ChangesRequested(Event):
    """A reviewer sent the work back: ``stage`` runs again with this feedback."""

    reviewer: str | None = None
    feedback: str = ""
    #: The stage whose review asked for it (``stage`` itself, or a review stage after it).
    reviewed_at: str | None = None


@dataclass(frozen=True, kw_only=True)
class StageSkipped(Event):
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class StageRetried(Event):
    attempt: int
    error: str | None = None
    #: The fan-out subtask this is about (None: the stage itself).
    subtask: str | None = None


@dataclass(frozen=True, kw_only=True)
class RetryScheduled(Event):
    attempt: int
    max_attempts: int
    retry_at: datetime | None = None  # when the next attempt is due
    #: The fan-out subtask this is about (None: the stage itself).
    subtask: str | None = None


@dataclass(frozen=True, kw_only=True)
class RetryAttempt(Event):
    attempt: int
    max_attempts: int
    feedback_summary: str | None = None
    #: The fan-out subtask this is about (None: the stage itself).
    subtask: str | None = None


@dataclass(frozen=True, kw_only=True)
class QualityCheckPassed(Event):
    attempt: int
    #: The fan-out subtask this is about (None: the stage itself).
    subtask: str | None = None


@dataclass(frozen=True, kw_only=True)
class QualityCheckFailed(Event):
    attempt: int
    feedback_summary: str = ""
    #: The fan-out subtask this is about (None: the stage itself).
    subtask: str | None = None


@dataclass(frozen=True, kw_only=True)
class Escalated(Event):
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class FanOutStarted(Event):
    subtasks: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class SubTaskStarted(Event):
    subtask: str


@dataclass(frozen=True, kw_only=True)
class SubTaskCompleted(Event):
    subtask: str


@dataclass(frozen=True, kw_only=True)
class SubTaskFailed(Event):
    subtask: str
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class WorkflowCompleted(Event):
    pass


@dataclass(frozen=True, kw_only=True)
class StageReset(Event):
    """``rerun`` put the stage back to PENDING (``by``: who asked, ``reason``: why)."""

    reason: str | None = None
    by: str | None = None
    #: The stage's status before the reset.
    previous: str = ""


@dataclass(frozen=True, kw_only=True)
class ItemCancelled(Event):
    """``cancel`` stopped the item: ``stages`` are the ones it cancelled."""

    reason: str | None = None
    by: str | None = None
    stages: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ItemUpdated(Event):
    """``add --update`` replaced the item's data (its COMPLETE stages are now stale)."""

    by: str | None = None
    stale: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """A journal entry of a type this version does not know (written by a newer one)."""

    type_name: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lagged:
    """Marker for a subscriber that fell behind: ``missed`` events were dropped for it."""

    missed: int


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from the journal, with its position."""

    id: int
    event: Event


@dataclass
class _Gap:
    missed: int


class Subscription:
    """An async iterator over events; bounded, so a slow reader never blocks the engine."""

    def __init__(self, bus: EventBus, maxsize: int):
        self._bus = bus
        self._maxsize = maxsize
        self._queue: deque[Event | _Gap] = deque()
        self._markers = 0
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _push(self, event: Event) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._queue) - self._markers >= self._maxsize:
                # Dropped where it happened, so the reader learns of the gap in order.
                tail = self._queue[-1] if self._queue else None
                if isinstance(tail, _Gap):
                    tail.missed += 1
                else:
                    self._queue.append(_Gap(1))
                    self._markers += 1
            else:
                self._queue.append(event)
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            loop = waiter.get_loop()
            with contextlib.suppress(RuntimeError):  # its loop is closed
                loop.call_soon_threadsafe(_set_done, waiter)

    def close(self) -> None:
        """Stop receiving; a pending ``async for`` ends."""
        with self._lock:
            self._closed = True
            self._wake()
        self._bus._unsubscribe(self)

    def get_nowait(self) -> Event | Lagged | None:
        """The next event (or Lagged marker) if one is queued, else None."""
        with self._lock:
            if not self._queue:
                return None
            head = self._queue.popleft()
            if isinstance(head, _Gap):
                self._markers -= 1
                return Lagged(head.missed)
            return head

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | Lagged:
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            with self._lock:
                if self._closed:
                    raise StopAsyncIteration
                if self._queue:
                    continue
                self._waiter = asyncio.get_running_loop().create_future()
                waiter = self._waiter
            await waiter

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class EventBus:
    """Fans committed events out to subscriptions and listeners (event sinks)."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, maxsize: int = 1024) -> Subscription:
        sub = Subscription(self, maxsize)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for each committed event (exceptions are logged, not raised)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    @property
    def has_receivers(self) -> bool:
        return bool(self._subs or self._listeners)

    def publish(self, events: list[Event]) -> None:
        if not events or not (self._subs or self._listeners):
            return
        with self._lock:
            subs = list(self._subs)
            listeners = list(self._listeners)
        for event in events:
            for sub in subs:
                sub._push(event)
            for listener in listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("event listener %r failed on %s", listener, event.kind)


EVENT_TYPES: tuple[type[Event], ...] = (
    StageStarted,
    StageCompleted,
    StageFailed,
    ReviewRequired,
    ReviewResolved,
    ReviewVoted,
    ChangesRequested,
    StageSkipped,
    StageRetried,
    RetryScheduled,
    RetryAttempt,
    QualityCheckPassed,
    QualityCheckFailed,
    Escalated,
    FanOutStarted,
    SubTaskStarted,
    SubTaskCompleted,
    SubTaskFailed,
    WorkflowCompleted,
    StageReset,
    ItemCancelled,
    ItemUpdated,
)
