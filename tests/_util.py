"""Helpers shared by the engine tests."""

from __future__ import annotations

from typing import Any

from treadle_core import ItemState, StageState, StateStore


def snapshot(store: StateStore, item_ids: list[str], stages: list[str]) -> dict[str, Any]:
    """Everything a refused operation must leave as it was (lease bookkeeping aside)."""
    out: dict[str, Any] = {}
    for item_id in item_ids:
        rec = store.get_item(item_id)
        out[item_id] = {
            # A READY item is due "now", whenever now is: only later due times are compared.
            "item": None
            if rec is None
            else (rec.state, None if rec.state == ItemState.READY else rec.due_at),
            "data": store.get_work_item_data(item_id),
            # No stored state and a default one both mean PENDING, never run.
            "states": {
                k: v.to_dict()
                for k, v in store.get_all_stage_states(item_id).items()
                if v != StageState()
            },
            "attempts": {s: [a.to_dict() for a in store.get_attempts(item_id, s)] for s in stages},
            "reviews": [r.to_dict() for r in store.get_reviews(item_id)],
        }
    return out


def journal(store: StateStore, item_id: str | None = None) -> list[str]:
    return [e.event.kind for e in store.read_events(item_id)]
