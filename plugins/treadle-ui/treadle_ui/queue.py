"""The review queue in pages, searched, without loading every waiting review.

The public API gives ``wf.pending_reviews(store, stage, limit=n)`` (the oldest n,
index-ordered) and ``wf.summary(store)`` (grouped counts). So:

- counts and page numbers come from the summary (one grouped query);
- page p asks for the oldest ``p * size`` reviews and shows the last ``size``: bounded
  by how deep the reviewer pages, never by how many wait;
- a search reads at most ``window`` reviews (oldest first) and says so when more wait;
- "mine" (the reviews one person may still vote on: ``pending_reviews(reviewer=)``) is
  read like a search, since the summary cannot count it.

A keyset (``after=``) and a substring filter in ``pending_reviews`` would make deep
pages and searches cost one page each; see the README.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from treadle_core import PendingReview, StateStore, Workflow

PAGE_SIZE = 50
#: The most reviews one request reads: the deepest page, or the reach of a search.
WINDOW = 5000
#: How many reviews after the current one a review page carries, so a decision can open
#: the next one still waiting without reading the queue again.
FOLLOWING = 5


@dataclass(frozen=True)
class Query:
    """What the reviewer asked the queue for: a stage, a search text, a page, and maybe
    only the reviews ``mine`` (a reviewer's name) may still vote on."""

    stage: str | None = None
    q: str = ""
    page: int = 1
    mine: str | None = None

    @property
    def windowed(self) -> bool:
        """Whether the queue is read up to the window and filtered (not counted)."""
        return bool(self.q or self.mine)

    @property
    def keep(self) -> dict[str, str]:
        """The URL parameters that keep the search and the "mine" filter."""
        return {k: v for k, v in (("q", self.q), ("mine", "1" if self.mine else "")) if v}

    def matches(self, r: PendingReview) -> bool:
        """Item id, prompt or stage contains the search text (case-insensitive)."""
        if not self.q:
            return True
        needle = self.q.casefold()
        return any(needle in (text or "").casefold() for text in (r.item_id, r.prompt, r.stage))


@dataclass(frozen=True)
class QueuePage:
    rows: list[PendingReview]
    first: int  # the 0-based position of rows[0] in the (filtered) queue
    page: int
    pages: int
    total: int  # reviews waiting at the stage (all stages without one)
    matched: int | None  # with a search: how many of the searched reviews match
    searched: int | None  # with a search: how many reviews were read
    truncated: bool  # the window stopped a search or the paging short

    @property
    def last(self) -> int:
        return self.first + len(self.rows)


def waiting_counts(summary: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Stage -> reviews waiting there, from the workflow's summary."""
    return {s: c.get("awaiting_review", 0) for s, c in summary.items() if c.get("awaiting_review")}


def queue_page(
    wf: Workflow,
    store: StateStore,
    query: Query,
    counts: Mapping[str, int],
    *,
    size: int = PAGE_SIZE,
    window: int = WINDOW,
) -> QueuePage:
    total = counts.get(query.stage, 0) if query.stage else sum(counts.values())
    if query.windowed:
        read = wf.pending_reviews(store, query.stage, limit=window, reviewer=query.mine)
        found = [r for r in read if query.matches(r)]
        pages = max(1, math.ceil(len(found) / size))
        page = min(max(query.page, 1), pages)
        first = (page - 1) * size
        return QueuePage(
            rows=found[first : first + size],
            first=first,
            page=page,
            pages=pages,
            total=total,
            matched=len(found),
            searched=len(read),
            truncated=len(read) >= window and total > window,
        )
    reachable = max(1, math.ceil(min(total, window) / size))
    page = min(max(query.page, 1), reachable)
    first = (page - 1) * size
    rows = wf.pending_reviews(store, query.stage, limit=first + size)[first:]
    return QueuePage(
        rows=rows,
        first=first,
        page=page,
        pages=reachable,
        total=total,
        matched=None,
        searched=None,
        truncated=total > window,
    )


@dataclass(frozen=True)
class Neighbours:
    """Where a review stands in the queue the reviewer came from."""

    position: int | None  # 0-based, None when it is not in the part of the queue read
    prev: PendingReview | None
    next: PendingReview | None
    following: list[PendingReview]  # up to FOLLOWING reviews after it (next first)


def neighbours(
    wf: Workflow,
    store: StateStore,
    query: Query,
    item_id: str,
    stage: str,
    at: int | None,
    *,
    window: int = WINDOW,
) -> Neighbours:
    """The reviews around (item, stage), reading the queue only as far as ``at`` (its
    position when the reviewer opened it) plus a few, or the search's window."""
    limit = window if query.windowed else min(window, (at or 0) + FOLLOWING + 2)
    read = [
        r
        for r in wf.pending_reviews(store, query.stage, limit=limit, reviewer=query.mine)
        if query.matches(r)
    ]
    keys = [(r.item_id, r.stage) for r in read]
    here = keys.index((item_id, stage)) if (item_id, stage) in keys else None
    if here is None:
        rest = [r for r in read if (r.item_id, r.stage) != (item_id, stage)]
        start = min(at or 0, len(rest))
        after = rest[start:] + rest[:start]
        return Neighbours(None, None, after[0] if after else None, after[:FOLLOWING])
    return Neighbours(
        position=here,
        prev=read[here - 1] if here > 0 else None,
        next=read[here + 1] if here + 1 < len(read) else None,
        following=read[here + 1 : here + 1 + FOLLOWING],
    )


def first_waiting(
    wf: Workflow, store: StateStore, query: Query, skip: Sequence[tuple[str, str]] = ()
) -> PendingReview | None:
    """The oldest review the query shows, other than ``skip``."""
    limit = WINDOW if query.windowed else len(skip) + 1
    for r in wf.pending_reviews(store, query.stage, limit=limit, reviewer=query.mine):
        if query.matches(r) and (r.item_id, r.stage) not in skip:
            return r
    return None
