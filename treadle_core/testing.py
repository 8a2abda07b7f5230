"""Test helpers for Treadle users and plugin authors; first of all the store contract.

Every `StateStore` must pass `StoreContract`. Subclass it in a test module and give
it a ``store`` fixture yielding a fresh, empty store; a durable store also
overrides ``reopen`` with a fixture returning a callable that opens another store
object on the same data (as another process would)::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            with MyStore(tmp_path / "db") as store:
                yield store
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from .errors import LeaseLostError, UnknownItemError
from .events import (
    Event,
    FanOutStarted,
    RetryScheduled,
    ReviewRequired,
    StageCompleted,
    StageFailed,
    StageStarted,
    SubTaskFailed,
)
from .model import (
    AttemptRecord,
    ItemState,
    ReviewRecord,
    StageState,
    StageStatus,
    SubTask,
    utcnow,
)
from .quality import CriterionResult, QualityFeedback
from .store.base import StateStore, commit_mark

Reopen = Callable[[], StateStore]


def _wait_until_after(moment: datetime) -> None:
    """Return once the clock has moved past ``moment`` (clocks may tick coarsely)."""
    while utcnow() <= moment:
        time.sleep(0.001)


def _close_to(value: datetime | None, expected: datetime, slack: float = 5.0) -> bool:
    return value is not None and abs((value - expected).total_seconds()) <= slack


class StoreContract:
    """The behaviour every `StateStore` shares; subclass it with a ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Iterator[StateStore]:
        raise NotImplementedError("a StoreContract subclass provides a `store` fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def reopen(self) -> Reopen | None:
        """A callable opening another store on the same data; None: the store is not durable."""
        return None

    # --- helpers ---------------------------------------------------------------------
    @staticmethod
    def add(store: StateStore, *item_ids: str, **data: Any) -> None:
        for item_id in item_ids:
            store.save_work_item_data(item_id, dict(data))

    @staticmethod
    def full_state() -> StageState:
        t = datetime(2024, 5, 17, 9, 30, 15, 123456).astimezone()
        return StageState(
            status=StageStatus.AWAITING_REVIEW,
            attempt=3,
            started_at=t,
            completed_at=t + timedelta(seconds=2.5),
            error="Retry: timed out\nTraceback ...",
            next_attempt_at=t + timedelta(minutes=5),
            subtasks=[
                SubTask(
                    "page-1",
                    StageStatus.COMPLETE,
                    attempt=1,
                    metadata={"pages": [1, 2]},
                    artefact={"text": "héllo"},
                ),
                SubTask(
                    "page-2",
                    StageStatus.FAILED,
                    attempt=2,
                    error="boom",
                    next_attempt_at=t + timedelta(seconds=30),
                    budget_start=1,
                ),
            ],
            metadata={"model": "x-1", "cost": 0.25, "tags": ["a", "b"], "none": None},
            artefact={"summary": "ok", "scores": [1, 2.5, None], "nested": {"deep": True}},
            updated_at=t + timedelta(seconds=3),
            review_deadline=t + timedelta(days=1),
            review_prompt="Is this right?",
            review_context={"diff": "+a\n-b", "n": 2},
            budget_start=2,
            recoveries=1,
            version="3",
            stale=True,
        )

    # --- items --------------------------------------------------------------------------
    def test_new_item_is_ready_and_due_now(self, store: StateStore) -> None:
        before = utcnow()
        store.save_work_item_data("doc-1", {"path": "a.pdf"})
        after = utcnow()
        rec = store.get_item("doc-1")
        assert rec is not None
        assert rec.state == ItemState.READY
        assert rec.due_at is not None and before <= rec.due_at <= after
        assert (rec.lease_owner, rec.lease_token, rec.lease_expires_at) == (None, 0, None)
        assert rec.created_at is not None and before <= rec.created_at
        assert store.get_work_item_data("doc-1") == {"path": "a.pdf"}

    def test_saving_data_again_only_updates_data(self, store: StateStore) -> None:
        self.add(store, "doc-1", v=1)
        later = utcnow() + timedelta(hours=1)
        store.set_item_state("doc-1", ItemState.SCHEDULED, later)
        store.save_work_item_data("doc-1", {"v": 2})
        rec = store.get_item("doc-1")
        assert rec is not None
        assert (rec.state, rec.due_at) == (ItemState.SCHEDULED, later)
        assert store.get_work_item_data("doc-1") == {"v": 2}

    def test_item_data_round_trips_json(self, store: StateStore) -> None:
        data = {"s": "naïve ☃", "n": 3, "f": 0.1, "b": False, "z": None, "l": [1, [2, {"x": "y"}]]}
        store.save_work_item_data("doc-1", data)
        assert store.get_work_item_data("doc-1") == data

    def test_unknown_item_has_no_record_and_no_data(self, store: StateStore) -> None:
        assert store.get_item("nope") is None
        assert store.get_work_item_data("nope") is None
        assert store.get_stage_state("nope", "extract") is None
        assert store.get_all_stage_states("nope") == {}

    def test_item_ids_compare_exactly(self, store: StateStore) -> None:
        ids = ["doc", "Doc", "doc ", "dóc/ü 1", "döc"]
        for item_id in ids:
            self.add(store, item_id, id=item_id)
        assert sorted(store.list_work_items()) == sorted(ids)
        for item_id in ids:
            assert store.get_work_item_data(item_id) == {"id": item_id}
            store.save_stage_state(item_id, "extract", StageState(metadata={"id": item_id}))
        for item_id in ids:
            state = store.get_stage_state(item_id, "extract")
            assert state is not None and state.metadata == {"id": item_id}

    def test_set_item_state_records_state_and_due_at(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        due = utcnow() + timedelta(minutes=3)
        store.set_item_state("doc-1", ItemState.SCHEDULED, due)
        rec = store.get_item("doc-1")
        assert rec is not None and (rec.state, rec.due_at) == (ItemState.SCHEDULED, due)
        store.set_item_state("doc-1", ItemState.COMPLETE, None)
        rec = store.get_item("doc-1")
        assert rec is not None and (rec.state, rec.due_at) == (ItemState.COMPLETE, None)

    def test_set_item_state_of_unknown_item_raises(self, store: StateStore) -> None:
        with pytest.raises(UnknownItemError):
            store.set_item_state("nope", ItemState.RUNNING, None)
        assert store.get_item("nope") is None

    def test_list_work_items_oldest_first(self, store: StateStore) -> None:
        self.add(store, "c", "a", "b")
        assert list(store.list_work_items()) == ["c", "a", "b"]

    def test_list_work_items_filters_by_state(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        store.set_item_state("b", ItemState.FAILED, None)
        assert list(store.list_work_items(ItemState.READY)) == ["a", "c"]
        assert list(store.list_work_items(ItemState.FAILED)) == ["b"]
        assert list(store.list_work_items(ItemState.COMPLETE)) == []

    def test_list_work_items_goes_past_a_thousand(self, store: StateStore) -> None:
        ids = [f"item-{n:05d}" for n in range(1234)]
        with store.transaction():
            self.add(store, *ids)
        assert list(store.list_work_items()) == ids

    def test_count_items_per_state(self, store: StateStore) -> None:
        assert store.count_items() == {}
        self.add(store, "a", "b", "c", "d")
        store.set_item_state("c", ItemState.COMPLETE, None)
        store.set_item_state("d", ItemState.COMPLETE, None)
        assert store.count_items() == {ItemState.READY: 2, ItemState.COMPLETE: 2}

    def test_delete_work_item_removes_everything(self, store: StateStore) -> None:
        for item_id in ("gone", "kept"):
            self.add(store, item_id)
            store.save_stage_state(item_id, "extract", StageState(StageStatus.COMPLETE))
            store.record_attempt(item_id, "extract", AttemptRecord(1, None, None, "complete"))
            store.record_review(item_id, "extract", ReviewRecord("approve", "ann", None, utcnow()))
            store.append_events([StageCompleted(item_id=item_id, stage="extract")])
        store.delete_work_item("gone")
        assert store.get_item("gone") is None
        assert store.get_work_item_data("gone") is None
        assert store.get_all_stage_states("gone") == {}
        assert store.get_attempts("gone", "extract") == []
        assert store.get_reviews("gone") == []
        assert [e.event.item_id for e in store.read_events()] == ["kept"]
        assert list(store.list_work_items()) == ["kept"]
        assert store.summary() == {"extract": {"complete": 1}}
        assert len(store.get_attempts("kept", "extract")) == 1
        assert len(store.get_reviews("kept")) == 1

    def test_delete_unknown_item_does_nothing(self, store: StateStore) -> None:
        self.add(store, "kept")
        store.delete_work_item("nope")
        assert list(store.list_work_items()) == ["kept"]

    # --- stage states ------------------------------------------------------------------
    def test_stage_versions_report_status_and_updated_at(self, store: StateStore) -> None:
        store.save_work_item_data("a", {})
        assert store.get_stage_versions("a") == {}
        at = utcnow()
        store.save_stage_state("a", "s", StageState(status=StageStatus.RUNNING, updated_at=at))
        store.save_stage_state("a", "t", StageState(status=StageStatus.PENDING))
        versions = store.get_stage_versions("a")
        assert versions == {"s": ("running", at.timestamp()), "t": ("pending", None)}
        store.save_stage_state("a", "s", StageState(status=StageStatus.COMPLETE, updated_at=at))
        assert store.get_stage_versions("a")["s"] == ("complete", at.timestamp())

    def test_state_round_trips_every_field(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        state = self.full_state()
        store.save_stage_state("doc-1", "extract", state)
        assert store.get_stage_state("doc-1", "extract") == state
        assert store.get_all_stage_states("doc-1") == {"extract": state}

    def test_artefact_near_the_size_limit_round_trips(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        big = {"text": "x" * 1_000_000}
        store.save_stage_state("doc-1", "extract", StageState(StageStatus.COMPLETE, artefact=big))
        store.record_attempt("doc-1", "extract", AttemptRecord(1, None, None, "ok", artefact=big))
        state = store.get_stage_state("doc-1", "extract")
        assert state is not None and state.artefact == big
        assert store.get_attempts("doc-1", "extract")[0].artefact == big

    def test_save_stage_state_replaces_the_previous_one(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        store.save_stage_state("doc-1", "extract", StageState(StageStatus.RUNNING, attempt=1))
        store.save_stage_state("doc-1", "extract", StageState(StageStatus.FAILED, attempt=2))
        assert store.get_stage_state("doc-1", "extract") == StageState(StageStatus.FAILED, 2)
        assert store.summary() == {"extract": {"failed": 1}}

    def test_save_stage_state_of_unknown_item_raises(self, store: StateStore) -> None:
        with pytest.raises(UnknownItemError):
            store.save_stage_state("nope", "extract", StageState())
        assert store.get_stage_state("nope", "extract") is None
        assert store.summary() == {}

    def test_stored_state_is_a_copy(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        state = StageState(metadata={"n": 1})
        store.save_stage_state("doc-1", "extract", state)
        state.metadata["n"] = 2
        got = store.get_stage_state("doc-1", "extract")
        assert got is not None and got.metadata == {"n": 1}
        got.metadata["n"] = 3
        again = store.get_stage_state("doc-1", "extract")
        assert again is not None and again.metadata == {"n": 1}

    def test_get_all_stage_states_returns_only_that_items_stages(self, store: StateStore) -> None:
        self.add(store, "a", "b")
        store.save_stage_state("a", "extract", StageState(StageStatus.COMPLETE))
        store.save_stage_state("a", "parse", StageState(StageStatus.RUNNING, attempt=1))
        store.save_stage_state("b", "extract", StageState(StageStatus.FAILED))
        assert store.get_all_stage_states("a") == {
            "extract": StageState(StageStatus.COMPLETE),
            "parse": StageState(StageStatus.RUNNING, attempt=1),
        }

    def test_summary_counts_per_stage_and_status(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        store.save_stage_state("a", "extract", StageState(StageStatus.COMPLETE))
        store.save_stage_state("b", "extract", StageState(StageStatus.COMPLETE))
        store.save_stage_state("c", "extract", StageState(StageStatus.FAILED))
        store.save_stage_state("a", "approve", StageState(StageStatus.AWAITING_REVIEW))
        assert store.summary() == {
            "extract": {"complete": 2, "failed": 1},
            "approve": {"awaiting_review": 1},
        }

    def _await_review(self, store: StateStore, item_id: str, stage: str, since: Any) -> None:
        store.save_stage_state(
            item_id,
            stage,
            StageState(
                StageStatus.AWAITING_REVIEW,
                attempt=1,
                updated_at=since,
                review_prompt=f"check {item_id}",
            ),
        )

    def test_pending_reviews_oldest_first(self, store: StateStore) -> None:
        t = utcnow()
        self.add(store, "a", "b", "c", "d")
        self._await_review(store, "a", "approve", t + timedelta(seconds=2))
        self._await_review(store, "b", "approve", t)
        self._await_review(store, "c", "approve", t + timedelta(seconds=1))
        store.save_stage_state("d", "approve", StageState(StageStatus.COMPLETE, updated_at=t))
        found = store.pending_reviews()
        assert [(r.item_id, r.since) for r in found] == [
            ("b", t),
            ("c", t + timedelta(seconds=1)),
            ("a", t + timedelta(seconds=2)),
        ]

    def test_pending_reviews_without_a_time_come_last(self, store: StateStore) -> None:
        t = utcnow()
        self.add(store, "a", "b")
        self._await_review(store, "a", "approve", None)
        self._await_review(store, "b", "approve", t)
        assert [r.item_id for r in store.pending_reviews()] == ["b", "a"]
        assert [r.item_id for r in store.pending_reviews(limit=1)] == ["b"]

    def test_pending_reviews_filter_by_stage_and_limit(self, store: StateStore) -> None:
        t = utcnow()
        self.add(store, "a", "b", "c")
        for n, item_id in enumerate(("a", "b", "c")):
            self._await_review(store, item_id, "approve", t + timedelta(seconds=n))
        self._await_review(store, "a", "legal", t)
        assert [(r.item_id, r.stage) for r in store.pending_reviews("legal")] == [("a", "legal")]
        assert [r.item_id for r in store.pending_reviews("approve", limit=2)] == ["a", "b"]
        assert len(store.pending_reviews()) == 4
        assert store.pending_reviews("nope") == []

    def test_pending_review_carries_prompt_context_and_deadline(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        state = self.full_state()
        store.save_stage_state("doc-1", "approve", state)
        (review,) = store.pending_reviews()
        assert review.item_id == "doc-1" and review.stage == "approve"
        assert review.since == state.updated_at
        assert review.prompt == "Is this right?"
        assert review.context == {"diff": "+a\n-b", "n": 2}
        assert review.deadline == state.review_deadline
        assert review.attempt == 3

    # --- attempts, reviews, journal -----------------------------------------------------
    def test_attempts_round_trip_in_order(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        t = utcnow()
        feedback = QualityFeedback(
            "too short",
            [CriterionResult("min-length", 200, 12, False)],
            guidance={"hint": "include the abstract"},
        )
        records = [
            AttemptRecord(1, t, t + timedelta(seconds=1), "retry", error="Timeout"),
            AttemptRecord(
                2,
                t,
                None,
                "complete",
                summary="12 chars",
                artefact={"text": "short"},
                verdict="rejected",
                feedback=feedback,
            ),
            AttemptRecord(1, t, t, "complete", subtask="page-1"),
        ]
        for rec in records:
            store.record_attempt("doc-1", "extract", rec)
        store.record_attempt("doc-1", "parse", AttemptRecord(1, t, t, "complete"))
        assert store.get_attempts("doc-1", "extract") == records
        assert store.get_attempts("doc-1", "parse") == [AttemptRecord(1, t, t, "complete")]
        assert store.get_attempts("doc-1", "nope") == []

    def test_reviews_round_trip_and_filter_by_stage(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        t = utcnow()
        first = ReviewRecord("reject", "ann", "no", t, reason="wrong total", note="escalated")
        second = ReviewRecord(
            "approve_with_edits", None, None, t + timedelta(seconds=1), edited_artefact={"v": 2}
        )
        third = ReviewRecord("approve", "bob", "fine", t + timedelta(seconds=2))
        store.record_review("doc-1", "approve", first)
        store.record_review("doc-1", "legal", third)
        store.record_review("doc-1", "approve", second)
        assert store.get_reviews("doc-1") == [first, third, second]
        assert store.get_reviews("doc-1", "approve") == [first, second]
        assert store.get_reviews("doc-1", "nope") == []

    def test_events_round_trip_in_order(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        t = utcnow()
        events: list[Event] = [
            StageStarted(item_id="doc-1", stage="extract", at=t, attempt=2),
            RetryScheduled(
                item_id="doc-1",
                stage="extract",
                at=t,
                attempt=2,
                max_attempts=3,
                retry_at=t + timedelta(seconds=4),
            ),
            ReviewRequired(item_id="doc-1", stage="approve", at=t, prompt="ok?", context={"a": 1}),
            FanOutStarted(item_id="doc-1", stage="pages", at=t, subtasks=["p1", "p2"]),
            SubTaskFailed(item_id="doc-1", stage="pages", at=t, subtask="p2", error="bad"),
        ]
        store.append_events(events[:2])
        store.append_events(events[2:])
        stored = store.read_events()
        assert [s.event for s in stored] == events
        ids = [s.id for s in stored]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] > 0

    def test_read_events_after_limit_and_item(self, store: StateStore) -> None:
        self.add(store, "a", "b")
        store.append_events(
            [StageStarted(item_id=i, stage="extract") for i in ("a", "b", "a", "b", "a")]
        )
        store.append_events([])
        all_events = store.read_events()
        assert [e.event.item_id for e in all_events] == ["a", "b", "a", "b", "a"]
        second = all_events[1].id
        assert [e.id for e in store.read_events(after=second)] == [e.id for e in all_events[2:]]
        assert [e.id for e in store.read_events(limit=2)] == [e.id for e in all_events[:2]]
        only_a = store.read_events("a", after=all_events[0].id, limit=1)
        assert [e.id for e in only_a] == [all_events[2].id]
        assert store.read_events(after=all_events[-1].id) == []

    def test_event_ids_keep_growing_after_deletes(self, store: StateStore) -> None:
        self.add(store, "a", "b")
        store.append_events([StageStarted(item_id="a"), StageStarted(item_id="b")])
        last = store.read_events()[-1].id
        store.delete_work_item("b")
        store.append_events([StageCompleted(item_id="a")])
        newest = store.read_events(after=last)
        assert [type(e.event) for e in newest] == [StageCompleted]

    # --- transactions -------------------------------------------------------------------
    def test_transaction_commits_every_write(self, store: StateStore) -> None:
        with store.transaction():
            self.add(store, "doc-1")
            store.save_stage_state("doc-1", "extract", StageState(StageStatus.RUNNING))
            store.append_events([StageStarted(item_id="doc-1", stage="extract")])
        assert store.get_stage_state("doc-1", "extract") == StageState(StageStatus.RUNNING)
        assert len(store.read_events("doc-1")) == 1

    def test_transaction_rolls_back_every_write_on_error(self, store: StateStore) -> None:
        self.add(store, "old")
        store.save_stage_state("old", "extract", StageState(StageStatus.COMPLETE))
        store.append_events([StageCompleted(item_id="old", stage="extract")])
        before_events = store.read_events()
        t = utcnow()
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            self.add(store, "new")
            store.save_work_item_data("old", {"changed": True})
            store.set_item_state("old", ItemState.FAILED, None)
            store.save_stage_state("old", "extract", StageState(StageStatus.FAILED))
            store.save_stage_state("new", "extract", StageState(StageStatus.RUNNING))
            store.record_attempt("old", "extract", AttemptRecord(1, t, t, "failed"))
            store.record_review("old", "extract", ReviewRecord("reject", "ann", None, t))
            store.append_events([StageFailed(item_id="old", stage="extract", error="x")])
            store.claim("w1", 10, 60)
            raise RuntimeError("boom")
        assert store.get_item("new") is None
        assert list(store.list_work_items()) == ["old"]
        rec = store.get_item("old")
        assert rec is not None and rec.state == ItemState.READY and rec.lease_owner is None
        assert store.get_work_item_data("old") == {}
        assert store.get_stage_state("old", "extract") == StageState(StageStatus.COMPLETE)
        assert store.get_attempts("old", "extract") == []
        assert store.get_reviews("old") == []
        assert store.read_events() == before_events
        assert store.summary() == {"extract": {"complete": 1}}

    def test_transaction_rolls_back_a_delete(self, store: StateStore) -> None:
        self.add(store, "doc-1", v=1)
        store.save_stage_state("doc-1", "extract", StageState(StageStatus.COMPLETE))
        store.append_events([StageCompleted(item_id="doc-1", stage="extract")])
        with pytest.raises(RuntimeError), store.transaction():
            store.delete_work_item("doc-1")
            raise RuntimeError("boom")
        assert store.get_work_item_data("doc-1") == {"v": 1}
        assert store.get_stage_state("doc-1", "extract") == StageState(StageStatus.COMPLETE)
        assert len(store.read_events("doc-1")) == 1

    def test_nested_transaction_joins_outer(self, store: StateStore, reopen: Reopen | None) -> None:
        other = None if reopen is None else reopen()
        with pytest.raises(RuntimeError), store.transaction():
            with store.transaction():
                self.add(store, "inner")
            # The inner block's end commits nothing on its own.
            assert store.get_item("inner") is not None
            if other is not None:
                assert other.get_item("inner") is None
            raise RuntimeError("outer fails")
        assert store.get_item("inner") is None
        with store.transaction(), store.transaction():
            self.add(store, "kept")
        assert store.get_item("kept") is not None
        if other is not None:
            assert other.get_item("kept") is not None

    # --- leases ----------------------------------------------------------------------------
    def _due(self, store: StateStore, item_id: str, seconds_from_now: float) -> datetime:
        self.add(store, item_id)
        due = utcnow() + timedelta(seconds=seconds_from_now)
        store.set_item_state(item_id, ItemState.READY, due)
        return due

    def test_claim_leases_due_items_earliest_first(self, store: StateStore) -> None:
        self._due(store, "later", -10)
        self._due(store, "first", -30)
        self._due(store, "second", -20)
        self._due(store, "future", 3600)
        self.add(store, "done")
        store.set_item_state("done", ItemState.COMPLETE, None)
        before = utcnow()
        leases = store.claim("w1", 2, 60)
        assert [(lease.item_id, lease.worker_id, lease.token) for lease in leases] == [
            ("first", "w1", 1),
            ("second", "w1", 1),
        ]
        assert _close_to(leases[0].expires_at, before + timedelta(seconds=60))
        rec = store.get_item("first")
        assert rec is not None
        assert (rec.lease_owner, rec.lease_token) == ("w1", 1)
        assert rec.lease_expires_at == leases[0].expires_at
        assert [lease.item_id for lease in store.claim("w2", 10, 60)] == ["later"]

    def test_claim_takes_the_highest_priority_first_then_the_earliest_due(
        self, store: StateStore
    ) -> None:
        if type(store).set_priority is StateStore.set_priority:
            pytest.skip("optional: this store does not keep item priorities")
        self.add(store, "old-low", "new-high", "newer-high", "mid")
        store.set_priority("new-high", 10)
        store.set_priority("newer-high", 10)
        store.set_priority("mid", 5)
        got = [lease.item_id for lease in store.claim("w", 3, 60)]
        assert got == ["new-high", "newer-high", "mid"]
        rec = store.get_item("mid")
        assert rec is not None and rec.priority == 5
        with pytest.raises(UnknownItemError):
            store.set_priority("ghost", 1)

    def test_claim_skips_items_not_yet_due(self, store: StateStore) -> None:
        self._due(store, "future", 3600)
        self.add(store, "nothing-to-do")
        store.set_item_state("nothing-to-do", ItemState.AWAITING_REVIEW, None)
        assert store.claim("w1", 10, 60) == []
        rec = store.get_item("future")
        assert rec is not None and rec.lease_owner is None and rec.lease_token == 0

    def test_claim_skips_items_under_live_lease(self, store: StateStore) -> None:
        self.add(store, "a", "b")
        (lease,) = store.claim("w1", 1, 60)
        assert lease.item_id == "a"
        assert [lease.item_id for lease in store.claim("w2", 10, 60)] == ["b"]
        assert store.claim("w3", 10, 60) == []
        assert store.claim("w3", 10, 60, item_ids=["a", "b"]) == []
        rec = store.get_item("a")
        assert rec is not None and (rec.lease_owner, rec.lease_token) == ("w1", 1)

    def test_claim_takes_over_expired_lease_with_new_token(self, store: StateStore) -> None:
        self.add(store, "a")
        (old,) = store.claim("w1", 1, 0)  # expires at once
        (new,) = store.claim("w2", 1, 60)
        assert (new.item_id, new.worker_id, new.token) == ("a", "w2", old.token + 1)
        rec = store.get_item("a")
        assert rec is not None and (rec.lease_owner, rec.lease_token) == ("w2", new.token)

    def test_claim_named_items_whether_due_or_not(self, store: StateStore) -> None:
        self._due(store, "a", 3600)
        self._due(store, "b", 3600)
        self.add(store, "c", "held")
        store.set_item_state("c", ItemState.COMPLETE, None)
        store.claim("w0", 1, 60, item_ids=["held"])
        leases = store.claim("w1", 10, 60, item_ids=["b", "nope", "held", "a", "c"])
        assert [(lease.item_id, lease.token) for lease in leases] == [("b", 1), ("a", 1), ("c", 1)]
        assert [x.item_id for x in store.claim("w2", 1, 60, item_ids=["b", "a", "c"])] == []

    def test_claim_named_items_respects_limit(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        leases = store.claim("w1", 2, 60, item_ids=["c", "b", "a"])
        assert [lease.item_id for lease in leases] == ["c", "b"]
        rec = store.get_item("a")
        assert rec is not None and rec.lease_owner is None

    def test_lock_item_returns_the_record_for_the_current_lease(self, store: StateStore) -> None:
        self.add(store, "a")
        (lease,) = store.claim("w1", 1, 60)
        with store.transaction():
            rec = store.lock_item("a", lease)
            plain = store.lock_item("a")
        assert rec == plain == store.get_item("a")
        assert (rec.lease_owner, rec.lease_token) == ("w1", lease.token)

    def test_lock_item_refuses_stale_lease_token(self, store: StateStore) -> None:
        self.add(store, "a")
        (stale,) = store.claim("w1", 1, 0)
        store.claim("w2", 1, 60)
        with pytest.raises(LeaseLostError, match="'a'"), store.transaction():
            store.lock_item("a", stale)
            store.save_stage_state("a", "extract", StageState(StageStatus.COMPLETE))
        assert store.get_stage_state("a", "extract") is None

    def test_lock_item_of_unknown_item_raises(self, store: StateStore) -> None:
        with pytest.raises(UnknownItemError), store.transaction():
            store.lock_item("nope")

    def test_renew_drops_lost_leases(self, store: StateStore) -> None:
        self.add(store, "kept", "lost")
        kept, lost = store.claim("w1", 2, 0)
        (taken,) = store.claim("w2", 1, 60, item_ids=["lost"])
        before = utcnow()
        renewed = store.renew([kept, lost], 120)
        assert [(lease.item_id, lease.token) for lease in renewed] == [("kept", kept.token)]
        assert _close_to(renewed[0].expires_at, before + timedelta(seconds=120))
        rec = store.get_item("kept")
        assert rec is not None and rec.lease_expires_at == renewed[0].expires_at
        rec = store.get_item("lost")
        assert rec is not None
        assert (rec.lease_owner, rec.lease_expires_at) == ("w2", taken.expires_at)
        assert store.renew([], 60) == []

    def test_release_frees_the_item_and_ignores_lost_leases(self, store: StateStore) -> None:
        self.add(store, "a", "b")
        a, b = store.claim("w1", 2, 0)
        (b2,) = store.claim("w2", 1, 60, item_ids=["b"])
        store.release([a, b])
        rec = store.get_item("a")
        assert rec is not None and (rec.lease_owner, rec.lease_expires_at) == (None, None)
        rec = store.get_item("b")
        assert rec is not None and (rec.lease_owner, rec.lease_token) == ("w2", b2.token)
        (again,) = store.claim("w3", 1, 60, item_ids=["a"])
        assert again.token == a.token + 1  # the fencing token never goes back

    @staticmethod
    def _lists_leases(store: StateStore) -> None:
        if type(store).live_leases is StateStore.live_leases:
            pytest.skip("optional: this store does not list leases (no fast local takeover)")

    def test_live_leases_say_who_holds_what_until_when(self, store: StateStore) -> None:
        self._lists_leases(store)
        self.add(store, "a", "b", "c", "gone")
        (b,) = store.claim("w2", 1, 120, item_ids=["b"])
        (a,) = store.claim("w1", 1, 60, item_ids=["a"])
        store.claim("w1", 1, 0, item_ids=["gone"])  # expired at once: not live
        live = store.live_leases()
        assert [(x.item_id, x.worker_id, x.token) for x in live] == [
            ("a", "w1", a.token),
            ("b", "w2", b.token),
        ]
        assert _close_to(live[0].expires_at, a.expires_at, 0.01)
        assert [x.item_id for x in store.live_leases(limit=1)] == ["a"]

    def test_expire_leases_ends_only_those_owners_leases(self, store: StateStore) -> None:
        self._lists_leases(store)
        self.add(store, "a", "b")
        (a,) = store.claim("dead [host/1/1]", 1, 60, item_ids=["a"])
        store.claim("alive", 1, 60, item_ids=["b"])
        assert store.expire_leases(["dead [host/1/1]", "nobody"]) == 1
        assert [x.item_id for x in store.live_leases()] == ["b"]
        (taken,) = store.claim("w3", 2, 60)  # "a" at once; "b" is still held
        assert (taken.item_id, taken.token) == ("a", a.token + 1)
        with pytest.raises(LeaseLostError), store.transaction():
            store.lock_item("a", a)  # the old holder's late write is still refused
        assert store.expire_leases([]) == 0

    @staticmethod
    def _keeps_limits(store: StateStore) -> None:
        if type(store).admit is StateStore.admit:
            pytest.skip("optional: this store does not keep stage limits")

    def _running(self, store: StateStore, *item_ids: str) -> None:
        for item_id in item_ids:
            self.add(store, item_id)
            store.save_stage_state(item_id, "fetch", StageState(status=StageStatus.RUNNING))

    def test_admit_counts_running_attempts_across_items(self, store: StateStore) -> None:
        self._keeps_limits(store)
        self._running(store, "a", "b")
        self.add(store, "c", "d")
        before = utcnow()
        with store.transaction():
            retry_at = store.admit("fetch", "c", concurrency=2, rate=None)
        assert retry_at is not None and retry_at > before  # ask again later
        with store.transaction():
            assert store.admit("fetch", "d", concurrency=2, rate=None) is not None
        assert store.limit_status() == {"fetch": (2, 2)}  # two running, c and d queued
        with store.transaction():
            assert store.admit("other", "c", concurrency=2, rate=None) is None
        store.save_stage_state("a", "fetch", StageState(status=StageStatus.COMPLETE))
        with store.transaction():
            assert store.release_limit("fetch") == "c"  # first come, first woken
        with store.transaction():
            assert store.admit("fetch", "c", concurrency=2, rate=None) is None
        assert store.limit_status()["fetch"] == (1, 1)  # d still waits
        with store.transaction():
            assert store.release_limit("fetch") == "d"
            assert store.release_limit("fetch") is None

    def test_admit_allows_a_rate_in_any_window(self, store: StateStore) -> None:
        self._keeps_limits(store)
        self.add(store, "a", "b", "c")
        with store.transaction():
            assert store.admit("fetch", "a", concurrency=None, rate=(2, 60.0)) is None
        first = utcnow()
        with store.transaction():
            assert store.admit("fetch", "b", concurrency=None, rate=(2, 60.0)) is None
        with store.transaction():
            retry_at = store.admit("fetch", "c", concurrency=None, rate=(2, 60.0))
        # Not before the first of the last two starts leaves the 60 s window.
        assert retry_at is not None and _close_to(retry_at, first + timedelta(seconds=60))

    def test_a_refused_admission_rolls_back_with_its_transaction(self, store: StateStore) -> None:
        self._keeps_limits(store)
        self.add(store, "a")
        with pytest.raises(RuntimeError), store.transaction():
            store.admit("fetch", "a", concurrency=None, rate=(1, 60.0))
            raise RuntimeError("rolled back")
        with store.transaction():
            assert store.admit("fetch", "a", concurrency=None, rate=(1, 60.0)) is None

    def test_a_commit_mark_is_seen_only_once_committed(self, store: StateStore) -> None:
        """The writer marks each transaction; after a COMMIT whose reply was lost it asks
        whether the mark is there before applying anything again."""
        first, second = commit_mark(), commit_mark()
        assert first < second  # time-ordered
        assert not store.committed(first)
        self.add(store, "a")
        with store.transaction():
            store.mark_commit(first)
            store.save_work_item_data("a", {"v": 1})
        assert store.committed(first)
        with pytest.raises(RuntimeError), store.transaction():
            store.mark_commit(second)
            store.save_work_item_data("a", {"v": 2})
            raise RuntimeError("rolled back")
        assert not store.committed(second)
        assert store.get_work_item_data("a") == {"v": 1}

    def test_next_due_at_is_none_without_work(self, store: StateStore) -> None:
        assert store.next_due_at() is None
        self.add(store, "done")
        store.set_item_state("done", ItemState.COMPLETE, None)
        assert store.next_due_at() is None

    def test_next_due_at_respects_live_leases_and_states(self, store: StateStore) -> None:
        leased_due = self._due(store, "leased", -10)
        (lease,) = store.claim("w1", 1, 600, item_ids=["leased"])
        scheduled_due = self._due(store, "scheduled", 300)
        store.set_item_state("scheduled", ItemState.SCHEDULED, scheduled_due)
        self.add(store, "done")
        store.set_item_state("done", ItemState.COMPLETE, None)
        assert leased_due < utcnow()
        # The leased item is claimable only when its lease runs out.
        assert store.next_due_at() == scheduled_due
        assert store.next_due_at({ItemState.READY}) == lease.expires_at
        assert store.next_due_at({ItemState.SCHEDULED}) == scheduled_due
        assert store.next_due_at({ItemState.COMPLETE, ItemState.FAILED}) is None
        # An expired lease no longer holds the item back.
        expired_due = self._due(store, "expired", -5)
        store.claim("w2", 1, 0, item_ids=["expired"])
        assert store.next_due_at() == expired_due

    def test_next_due_at_waits_for_a_due_later_than_the_lease(self, store: StateStore) -> None:
        self.add(store, "a")
        store.claim("w1", 1, 60)
        due = utcnow() + timedelta(seconds=600)
        store.set_item_state("a", ItemState.SCHEDULED, due)
        assert store.next_due_at() == due

    def test_concurrent_claims_never_share_an_item(
        self, store: StateStore, reopen: Reopen | None
    ) -> None:
        ids = [f"item-{n:03d}" for n in range(60)]
        with store.transaction():
            self.add(store, *ids)
        stores = [store] * 4 if reopen is None else [reopen() for _ in range(4)]
        claimed: list[list[str]] = [[] for _ in stores]
        errors: list[BaseException] = []
        start = threading.Barrier(len(stores))

        def work(n: int) -> None:
            try:
                start.wait()
                while leases := stores[n].claim(f"w{n}", 3, 60):
                    claimed[n].extend(lease.item_id for lease in leases)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)
            finally:
                release = getattr(stores[n], "release_thread", None)
                if callable(release):
                    release()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        every = [item_id for per in claimed for item_id in per]
        assert sorted(every) == ids

    # --- housekeeping ---------------------------------------------------------------------
    def test_prune_deletes_only_old_complete_items(self, store: StateStore) -> None:
        self.add(store, "old-1", "old-2", "old-failed", "new", "running")
        for item_id in ("old-1", "old-2"):
            store.set_item_state(item_id, ItemState.COMPLETE, None)
            store.save_stage_state(item_id, "extract", StageState(StageStatus.COMPLETE))
            store.record_attempt(item_id, "extract", AttemptRecord(1, None, None, "complete"))
            store.append_events([StageCompleted(item_id=item_id, stage="extract")])
        store.set_item_state("old-failed", ItemState.FAILED, None)
        cutoff = utcnow()
        _wait_until_after(cutoff)
        store.set_item_state("new", ItemState.COMPLETE, None)
        assert sorted(store.prune(cutoff)) == ["old-1", "old-2"]
        assert list(store.list_work_items()) == ["old-failed", "new", "running"]
        assert store.get_all_stage_states("old-1") == {}
        assert store.get_attempts("old-1", "extract") == []
        assert store.read_events() == []
        assert store.prune(cutoff) == []

    def test_prune_respects_limit(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        for item_id in ("a", "b", "c"):
            store.set_item_state(item_id, ItemState.COMPLETE, None)
        cutoff = utcnow()
        _wait_until_after(cutoff)
        first = store.prune(cutoff, limit=2)
        assert len(first) == 2
        rest = store.prune(cutoff, limit=2)
        assert sorted(first + rest) == ["a", "b", "c"]
        assert store.count_items() == {}

    # --- durability -------------------------------------------------------------------------
    def test_committed_data_survives_reopen(self, store: StateStore, reopen: Reopen | None) -> None:
        if reopen is None:
            pytest.skip("the store is not durable (reopen is None)")
        t = utcnow()
        self.add(store, "doc-1", path="a.pdf")
        state = self.full_state()
        attempt = AttemptRecord(1, t, t, "complete", artefact={"n": 1})
        review = ReviewRecord("approve", "ann", None, t)
        event = StageCompleted(item_id="doc-1", stage="extract", at=t)
        with store.transaction():
            store.save_stage_state("doc-1", "extract", state)
            store.record_attempt("doc-1", "extract", attempt)
            store.record_review("doc-1", "extract", review)
            store.append_events([event])
            (lease,) = store.claim("w1", 1, 60)
        store.close()
        again = reopen()
        assert again.get_work_item_data("doc-1") == {"path": "a.pdf"}
        assert again.get_stage_state("doc-1", "extract") == state
        assert again.get_attempts("doc-1", "extract") == [attempt]
        assert again.get_reviews("doc-1") == [review]
        assert [e.event for e in again.read_events()] == [event]
        with again.transaction():
            rec = again.lock_item("doc-1", lease)
        assert (rec.lease_owner, rec.lease_token) == ("w1", lease.token)

    def test_another_store_sees_commits_not_open_transactions(
        self, store: StateStore, reopen: Reopen | None
    ) -> None:
        if reopen is None:
            pytest.skip("the store is not durable (reopen is None)")
        other = reopen()
        with store.transaction():
            self.add(store, "doc-1")
            assert other.get_item("doc-1") is None
        assert other.get_item("doc-1") is not None
        with pytest.raises(LeaseLostError):
            self._claim_and_lose(store, other)

    def _claim_and_lose(self, store: StateStore, other: StateStore) -> None:
        (stale,) = store.claim("w1", 1, 0, item_ids=["doc-1"])
        other.claim("w2", 1, 60, item_ids=["doc-1"])
        with store.transaction():
            store.lock_item("doc-1", stale)

    # --- the recorded definition, and changing it ---------------------------------------
    def test_definition_round_trips_and_is_replaced(self, store: StateStore) -> None:
        assert store.get_definition() is None
        first = {"name": "docs", "stages": [{"name": "a", "version": "1", "needs": []}]}
        store.save_definition(first)
        assert store.get_definition() == first
        second = {"name": "docs", "stages": [], "note": "héllo", "n": 2.5}
        store.save_definition(second)
        assert store.get_definition() == second

    def test_a_rolled_back_transaction_keeps_the_definition(self, store: StateStore) -> None:
        store.save_definition({"v": 1})
        with pytest.raises(RuntimeError), store.transaction():
            store.save_definition({"v": 2})
            assert store.get_definition() == {"v": 2}
            raise RuntimeError("boom")
        assert store.get_definition() == {"v": 1}

    def test_definition_survives_reopen(self, store: StateStore, reopen: Reopen | None) -> None:
        if reopen is None:
            pytest.skip("the store is not durable (reopen is None)")
        store.save_definition({"name": "docs"})
        store.close()
        assert reopen().get_definition() == {"name": "docs"}

    def test_item_page_walks_every_item_once(self, store: StateStore) -> None:
        ids = [f"doc-{n:04d}" for n in range(1203)]
        with store.transaction():
            self.add(store, *ids)
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = store.item_page(cursor, 500)
            seen += page
            pages += 1
            if pages == 1:
                self.add(store, "zzz-added-meanwhile")
            if cursor is None:
                break
        assert pages == 3
        assert len(seen) == len(set(seen))
        assert set(ids) <= set(seen)
        assert store.item_page(None, 0)[0] == []

    def test_get_items_and_stage_states_many(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        store.save_stage_state("a", "s1", StageState(StageStatus.COMPLETE, attempt=1))
        store.save_stage_state("a", "s2", StageState(StageStatus.FAILED, attempt=2))
        store.save_stage_state("c", "s1", StageState(StageStatus.RUNNING, attempt=1))
        assert sorted(store.get_items(["a", "c", "nope"])) == ["a", "c"]
        assert store.get_items(["b"])["b"].state == ItemState.READY
        many = store.get_stage_states_many(["a", "b", "c", "nope"])
        assert sorted(many) == ["a", "c"]
        assert many["a"] == store.get_all_stage_states("a")
        assert many["c"]["s1"].status == StageStatus.RUNNING
        full = self.full_state()
        store.save_stage_state("b", "s9", full)
        (brief,) = store.get_stage_states_many(["b"], brief=True)["b"].values()
        assert (brief.status, brief.next_attempt_at, brief.review_deadline) == (
            full.status,
            full.next_attempt_at,
            full.review_deadline,
        )

    def test_set_item_states_changes_only_the_given_states(self, store: StateStore) -> None:
        self.add(store, "done", "failed", "ready", "other")
        store.set_item_state("done", ItemState.COMPLETE, None)
        store.set_item_state("failed", ItemState.FAILED, None)
        due = utcnow()
        n = store.set_item_states(
            ["done", "failed", "ready"], ItemState.READY, due, only=[ItemState.COMPLETE]
        )
        assert n == 1
        done = store.get_item("done")
        assert done is not None and done.state == ItemState.READY and _close_to(done.due_at, due)
        assert store.get_item("failed").state == ItemState.FAILED  # type: ignore[union-attr]
        assert store.set_item_states(["failed", "other"], ItemState.COMPLETE, None) == 2
        assert store.count_items() == {ItemState.READY: 2, ItemState.COMPLETE: 2}
        assert store.next_due_at([ItemState.COMPLETE]) is None

    def test_rename_stage_moves_state_attempts_and_reviews(self, store: StateStore) -> None:
        t = utcnow()
        self.add(store, "a", "b")
        state = StageState(StageStatus.AWAITING_REVIEW, attempt=2, updated_at=t)
        for item_id in ("a", "b"):
            store.save_stage_state(item_id, "old", state)
            store.save_stage_state(item_id, "keep", StageState(StageStatus.COMPLETE, attempt=1))
            store.record_attempt(item_id, "old", AttemptRecord(1, t, t, "retry"))
            store.record_attempt(item_id, "old", AttemptRecord(2, t, t, "needs_review"))
            store.record_review(item_id, "old", ReviewRecord("reject", "ann", None, t))
            store.record_review(item_id, "keep", ReviewRecord("approve", "bob", None, t))
        assert store.rename_stage(["a"], "old", "new") == 1
        assert store.get_all_stage_states("a") == {
            "new": state,
            "keep": StageState(StageStatus.COMPLETE, attempt=1),
        }
        assert [r.attempt for r in store.get_attempts("a", "new")] == [1, 2]
        assert store.get_attempts("a", "old") == []
        assert [r.reviewer for r in store.get_reviews("a", "new")] == ["ann"]
        assert [r.reviewer for r in store.get_reviews("a", "keep")] == ["bob"]
        assert store.get_reviews("a", "old") == []
        assert store.summary()["new"] == {"awaiting_review": 1}
        assert store.summary()["old"] == {"awaiting_review": 1}
        waiting = {(r.item_id, r.stage) for r in store.pending_reviews()}
        assert waiting == {("a", "new"), ("b", "old")}
        assert store.get_stage_state("b", "old") == state  # not in the batch

    def test_rename_stage_leaves_an_item_that_has_the_new_stage(self, store: StateStore) -> None:
        self.add(store, "a")
        store.save_stage_state("a", "old", StageState(StageStatus.COMPLETE, attempt=1))
        store.save_stage_state("a", "new", StageState(StageStatus.FAILED, attempt=4))
        assert store.rename_stage(["a", "nope"], "old", "new") == 0
        assert store.get_stage_state("a", "old") == StageState(StageStatus.COMPLETE, attempt=1)
        assert store.get_stage_state("a", "new") == StageState(StageStatus.FAILED, attempt=4)

    def test_a_rolled_back_rename_changes_nothing(self, store: StateStore) -> None:
        self.add(store, "a")
        store.save_stage_state("a", "old", StageState(StageStatus.COMPLETE, attempt=1))
        with pytest.raises(RuntimeError), store.transaction():
            store.rename_stage(["a"], "old", "new")
            raise RuntimeError("boom")
        assert store.get_stage_state("a", "old") == StageState(StageStatus.COMPLETE, attempt=1)
        assert store.get_stage_state("a", "new") is None

    def test_mark_stale_marks_only_complete_states(self, store: StateStore) -> None:
        self.add(store, "a", "b", "c")
        for item_id in ("a", "b", "c"):
            store.save_stage_state(item_id, "s1", StageState(StageStatus.COMPLETE, attempt=1))
            store.save_stage_state(item_id, "s2", StageState(StageStatus.FAILED, attempt=1))
            store.save_stage_state(item_id, "s3", StageState(StageStatus.COMPLETE, attempt=1))
        # A stage's own data that happens to say "stale" is not staleness.
        store.save_stage_state(
            "c", "s4", StageState(StageStatus.COMPLETE, attempt=1, metadata={"stale": True})
        )
        assert store.count_stale() == {}
        assert store.mark_stale(["a", "b"], ["s1", "s2"]) == 2
        assert store.mark_stale(["a", "b"], ["s1", "s2"]) == 0
        assert store.get_stage_state("a", "s1") == StageState(
            StageStatus.COMPLETE, attempt=1, stale=True
        )
        assert store.get_all_stage_states("b")["s1"].stale
        assert not store.get_stage_state("a", "s2").stale  # type: ignore[union-attr]
        assert not store.get_stage_state("c", "s1").stale  # type: ignore[union-attr]
        assert store.count_stale() == {"s1": 2}
        # A stage saved again (re-run, then completed) is fresh.
        store.save_stage_state("a", "s1", StageState(StageStatus.COMPLETE, attempt=2))
        assert store.count_stale() == {"s1": 1}
        assert not store.get_stage_states_many(["a"])["a"]["s1"].stale

    def test_list_stage_items_filters_by_status_and_staleness(self, store: StateStore) -> None:
        ids = [f"doc-{n:04d}" for n in range(1100)]
        with store.transaction():
            self.add(store, *ids)
            for n, item_id in enumerate(ids):
                status = StageStatus.FAILED if n % 10 == 0 else StageStatus.COMPLETE
                store.save_stage_state(item_id, "s1", StageState(status, attempt=1))
        store.mark_stale(ids[1:4], ["s1"])
        everything = list(store.list_stage_items("s1"))
        assert sorted(everything) == ids and len(set(everything)) == len(ids)
        failed = list(store.list_stage_items("s1", statuses=[StageStatus.FAILED]))
        assert sorted(failed) == ids[::10]
        assert sorted(store.list_stage_items("s1", stale=True)) == ids[1:4]
        stale_complete = store.list_stage_items("s1", statuses=[StageStatus.COMPLETE], stale=True)
        assert sorted(stale_complete) == ids[1:4]
        assert len(list(store.list_stage_items("s1", stale=False))) == 1097
        assert list(store.list_stage_items("nope")) == []
        assert list(store.list_stage_items("s1", statuses=[])) == []

    def test_list_stage_items_can_write_while_iterating(self, store: StateStore) -> None:
        ids = [f"doc-{n:04d}" for n in range(700)]
        with store.transaction():
            self.add(store, *ids)
            for item_id in ids:
                store.save_stage_state(item_id, "s1", StageState(StageStatus.FAILED, attempt=1))
        seen = []
        for item_id in store.list_stage_items("s1", statuses=[StageStatus.FAILED]):
            store.save_stage_state(item_id, "s1", StageState(StageStatus.PENDING, attempt=1))
            seen.append(item_id)
        assert sorted(seen) == ids

    def test_revoke_lease_refuses_its_holder(self, store: StateStore) -> None:
        self.add(store, "doc-1")
        (lease,) = store.claim("w1", 1, 60)
        with store.transaction():
            store.lock_item("doc-1")
            store.revoke_lease("doc-1")
        rec = store.get_item("doc-1")
        assert rec is not None and rec.lease_owner is None and rec.lease_expires_at is None
        assert rec.lease_token == lease.token + 1
        with pytest.raises(LeaseLostError), store.transaction():
            store.lock_item("doc-1", lease)
        assert store.renew([lease], 60) == []
        (again,) = store.claim("w2", 1, 60, item_ids=["doc-1"])
        assert again.token == lease.token + 2
        with pytest.raises(UnknownItemError), store.transaction():
            store.revoke_lease("nope")


# The pytest fixtures plugin authors use (this module is a `pytest11` plugin, so they are
# available in any test once treadle is installed).
from ._fixtures import (  # noqa: E402
    EventRecorder,
    TreadleCli,
    treadle_cli,
    treadle_events,
    treadle_plugin_manager,
    treadle_store,
)

__all__ = [
    "EventRecorder",
    "StoreContract",
    "TreadleCli",
    "treadle_cli",
    "treadle_events",
    "treadle_plugin_manager",
    "treadle_store",
]
