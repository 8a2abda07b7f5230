"""The recorded definition and what changed between two (engine/definition.py): pure, by table."""

from __future__ import annotations

from typing import Any

import pytest

from treadle_core import DefinitionError, Workflow, WorkflowError
from treadle_core.engine.definition import Change, describe, diff, plan_from, removed_after, same


def noop(item: Any, ctx: Any) -> None:
    return None


def wf(*stages: tuple[str, list[str]] | tuple[str, list[str], dict[str, Any]], name: str = "p"):
    b = Workflow.builder(name)
    for entry in stages:
        stage, needs = entry[0], entry[1]
        extra: dict[str, Any] = entry[2] if len(entry) > 2 else {}  # type: ignore[misc]
        b.stage(stage, noop, needs=needs, **extra)
    return b.build()


BASE = wf(("a", []), ("b", ["a"]), ("c", ["b"]))


def change(new: Workflow, old: Workflow = BASE, removed: dict[str, Any] | None = None) -> Change:
    return diff(describe(old.plan), removed or {}, new.plan)


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (BASE, Change()),
        (
            wf(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["c"])),
            Change(added=("d",)),
        ),
        (
            wf(("a", []), ("x", ["a"]), ("b", ["x"]), ("c", ["b"])),
            Change(added=("x",), rewired=("b",), stale=("b", "c")),
        ),
        (
            wf(("a", []), ("c", ["a"])),
            Change(removed=("b",), rewired=("c",), stale=("c",)),
        ),
        (
            wf(("a", []), ("b2", ["a"], {"renamed_from": "b"}), ("c", ["b2"])),
            Change(renamed={"b": "b2"}),
        ),
        (
            wf(("a", [], {"version": "2"}), ("b", ["a"]), ("c", ["b"])),
            Change(versions={"a": ("1", "2")}, stale=("a", "b", "c")),
        ),
        (
            wf(("a", []), ("b", ["a"], {"version": 3}), ("c", ["b"])),
            Change(versions={"b": ("1", "3")}, stale=("b", "c")),
        ),
        (
            wf(("a", []), ("b", ["a"], {"version": "1"}), ("c", ["b"])),
            Change(),  # "1" is the version of a stage that declares none
        ),
        (
            wf(("a", []), ("b2", ["a"], {"renamed_from": "b", "version": "2"}), ("c", ["b2"])),
            Change(renamed={"b": "b2"}, versions={"b2": ("1", "2")}, stale=("b2", "c")),
        ),
        (
            wf(("a", []), ("b", ["a"]), ("c", ["b"]), name="q"),
            Change(name=("p", "q")),
        ),
    ],
    ids=[
        "same",
        "stage-added-at-the-end",
        "stage-inserted",
        "stage-removed",
        "stage-renamed",
        "root-version-bumped",
        "version-as-int",
        "explicit-default-version",
        "renamed-and-bumped",
        "pipeline-renamed",
    ],
)
def test_what_changed(new: Workflow, expected: Change) -> None:
    assert change(new) == expected


def test_only_additions_take_the_fast_path() -> None:
    added = change(wf(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", ["a"])))
    assert added.only_added and added.reshaped and added.touches_items
    removed = change(wf(("a", []), ("b", ["a"])))
    assert removed.reshaped and not removed.only_added
    bumped = change(wf(("a", [], {"version": "2"}), ("b", ["a"]), ("c", ["b"])))
    assert not bumped.reshaped and bumped.touches_items
    assert not change(wf(("a", []), ("b", ["a"]), ("c", ["b"]), name="q")).touches_items


def test_a_removed_stage_comes_back_with_its_old_version() -> None:
    gone = change(wf(("a", []), ("b", ["a"])))
    removed = removed_after(describe(BASE.plan), {}, gone)
    assert list(removed) == ["c"]
    back = diff(
        describe(wf(("a", []), ("b", ["a"])).plan),
        removed,
        wf(("a", []), ("b", ["a"]), ("c", ["b"], {"version": "2"})).plan,
    )
    assert back.restored == ("c",) and back.added == ()
    assert back.versions == {"c": ("1", "2")} and back.stale == ("c",)


def test_renamed_from_a_removed_stage_restores_its_history() -> None:
    removed = {"old": {"name": "old", "version": "1", "needs": ["a"]}}
    new = wf(("a", []), ("b", ["a"]), ("c", ["b"]), ("fresh", ["a"], {"renamed_from": "old"}))
    got = diff(describe(BASE.plan), removed, new.plan)
    assert got.renamed == {"old": "fresh"} and got.restored == ("fresh",)
    assert "old" not in removed_after(describe(BASE.plan), removed, got)


def test_renamed_from_lists_older_names_newest_first() -> None:
    new = wf(("a", []), ("b3", ["a"], {"renamed_from": ["b2", "b"]}), ("c", ["b3"]))
    assert change(new).renamed == {"b": "b3"}


def test_renamed_from_after_the_rename_was_applied_does_nothing() -> None:
    renamed = wf(("a", []), ("b2", ["a"], {"renamed_from": "b"}), ("c", ["b2"]))
    assert change(renamed, old=renamed) == Change()


def test_renamed_from_a_stage_the_store_never_had_is_refused() -> None:
    new = wf(("a", []), ("b2", ["a"], {"renamed_from": "bb"}), ("c", ["b2"]))
    with pytest.raises(DefinitionError) as info:
        change(new)
    assert str(info.value) == (
        "stage 'b2' is renamed_from 'bb', which the store never had (its stages: a, b, c); "
        "fix renamed_from, or drop it for a new stage"
    )


def test_renamed_from_on_a_new_store_is_ignored() -> None:
    new = wf(("a", []), ("b2", ["a"], {"renamed_from": "b"}))
    assert diff(None, {}, new.plan) == Change(added=("a", "b2"))


def test_a_store_without_a_recorded_definition_is_judged_by_its_stages() -> None:
    new = wf(("a", []), ("b2", ["a"], {"renamed_from": "b"}))
    got = diff(None, {}, new.plan, seen=["a", "b", "gone"])
    assert got == Change(removed=("gone",), renamed={"b": "b2"})
    with pytest.raises(DefinitionError, match="never had"):
        diff(None, {}, wf(("x", [], {"renamed_from": "y"})).plan, seen=["a"])


def test_another_pipelines_store_is_refused() -> None:
    other = wf(("x", []), ("y", ["x"]), name="invoices")
    with pytest.raises(DefinitionError, match="the store holds pipeline 'p'"):
        change(other)
    # Same name, all stages replaced: a deliberate rewrite, allowed.
    assert change(wf(("x", []), ("y", ["x"]))).added == ("x", "y")


@pytest.mark.parametrize(
    ("renamed_from", "message"),
    [
        ("a", "stage 'b' is renamed_from 'a', which is still a stage"),
        ("b", "stage 'b' is renamed_from itself"),
    ],
)
def test_renamed_from_a_current_stage_is_a_build_error(renamed_from: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        wf(("a", []), ("b", ["a"], {"renamed_from": renamed_from}))


def test_two_stages_cannot_both_be_renamed_from_one() -> None:
    with pytest.raises(WorkflowError, match="are both renamed_from 'old'"):
        wf(("a", [], {"renamed_from": "old"}), ("b", ["a"], {"renamed_from": "old"}))


def test_the_note_says_what_changed() -> None:
    c = change(wf(("a", [], {"version": "2"}), ("b2", ["a"], {"renamed_from": "b"}), ("d", ["b2"])))
    assert c.describe() == ("added d; removed c; renamed b -> b2; a version 1 -> 2")
    assert Change.from_dict(c.to_dict()) == c


def test_a_plan_from_a_definition_has_its_stages_and_no_code() -> None:
    plan = plan_from(describe(BASE.plan))
    assert plan.order == ["a", "b", "c"] and plan.deps["c"] == ["b"]
    assert same(describe(plan), describe(BASE.plan))
    assert not same(describe(plan), describe(wf(("a", []), ("b", ["a"])).plan))
