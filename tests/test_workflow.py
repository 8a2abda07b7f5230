"""Building and validating workflows (SPEC §3.1)."""

from __future__ import annotations

import pytest

from treadle_core import (
    Complete,
    CycleError,
    DuplicateStageError,
    RetryBudget,
    ReviewPolicy,
    SelfDependencyError,
    Stage,
    StageContext,
    UnknownDependencyError,
    UnknownStageError,
    Workflow,
    WorkflowError,
    WorkItem,
    stage,
)


async def noop(item, ctx):
    return Complete()


class Noop(Stage):
    async def execute(self, item: WorkItem, ctx: StageContext) -> Complete:
        return Complete()


def diamond() -> Workflow:
    return (
        Workflow.builder("docs")
        .stage("parse", noop)
        .stage("left", Noop())
        .stage("right", noop)
        .stage("join", noop)
        .dependency("left", "parse")
        .dependency("right", "parse")
        .dependency("join", "left")
        .dependency("join", "right")
        .build()
    )


def test_stages_are_in_topological_order():
    wf = (
        Workflow.builder()
        .stage("export", noop)
        .stage("review", noop)
        .stage("parse", noop)
        .dependency("review", "parse")
        .dependency("export", "review")
        .build()
    )
    assert wf.stages == ["parse", "review", "export"]


def test_introspection_of_dependencies_roots_and_leaves():
    wf = diamond()
    assert wf.dependencies("join") == ["left", "right"]
    assert wf.dependents("parse") == ["left", "right"]
    assert wf.root_stages() == ["parse"]
    assert wf.leaf_stages() == ["join"]
    assert wf.ancestors("join") == ["parse", "left", "right"]


def test_cycle_is_reported_with_its_stages_in_order():
    b = (
        Workflow.builder()
        .stage("a", noop)
        .stage("b", noop)
        .stage("c", noop)
        .dependency("b", "a")
        .dependency("c", "b")
        .dependency("a", "c")
    )
    with pytest.raises(CycleError) as err:
        b.build()
    message = str(err.value)
    assert "a -> b -> c -> a" in message
    assert isinstance(err.value, WorkflowError)


def test_unknown_dependency_names_the_closest_stage():
    b = Workflow.builder().stage("extract", noop).stage("load", noop).dependency("load", "extrac")
    with pytest.raises(
        UnknownDependencyError, match=r"'extrac' is not a stage \(did you mean 'extract'\?\)"
    ):
        b.build()


def test_duplicate_stage_is_refused():
    b = Workflow.builder().stage("a", noop).stage("a", noop)
    with pytest.raises(DuplicateStageError, match="'a' is defined twice"):
        b.build()


def test_self_dependency_is_refused():
    b = Workflow.builder().stage("a", noop).dependency("a", "a")
    with pytest.raises(SelfDependencyError, match="'a' depends on itself"):
        b.build()


@pytest.mark.parametrize(
    "configure",
    [
        lambda b: b.quality_gate("nope", object()),
        lambda b: b.retry_budget("nope", RetryBudget()),
        lambda b: b.review_policy("nope", ReviewPolicy.ALWAYS),
        lambda b: b.review_timeout("nope", 10),
    ],
    ids=["gate", "budget", "policy", "timeout"],
)
def test_policy_for_unknown_stage_is_refused(configure):
    """A build error like any other (WorkflowError), and an unknown stage."""
    b = Workflow.builder().stage("a", noop)
    configure(b)
    with pytest.raises(WorkflowError, match="'nope', which is not a stage") as caught:
        b.build()
    assert isinstance(caught.value, UnknownStageError)


def test_stage_must_be_a_stage_or_function():
    with pytest.raises(TypeError, match="stage 'x': expected a Stage instance or a function"):
        Workflow.builder().stage("x", 42)
    with pytest.raises(TypeError, match=r"pass an instance \(Noop\(\)\)"):
        Workflow.builder().stage("x", Noop)


def test_decorated_function_and_needs_keyword():
    @stage("fetch")
    def fetch(item, ctx):
        """Fetch the thing."""

    wf = Workflow.builder().stage("fetch", fetch).stage("use", noop, needs=["fetch"]).build()
    assert wf.dependencies("use") == ["fetch"]
    assert wf.specs["fetch"].stage.description == "Fetch the thing."


def test_to_mermaid_lists_nodes_and_edges():
    text = diamond().to_mermaid()
    assert text.splitlines()[0] == "graph TD"
    assert 's0["parse"]' in text
    assert "s0 --> s1" in text and "s0 --> s2" in text
    assert "s1 --> s3" in text and "s2 --> s3" in text


def test_to_dot_is_a_digraph_with_every_edge():
    text = diamond().to_dot()
    assert text.startswith('digraph "docs" {')
    for edge in [
        '"parse" -> "left"',
        '"parse" -> "right"',
        '"left" -> "join"',
        '"right" -> "join"',
    ]:
        assert edge in text


def test_unknown_stage_in_introspection_suggests_a_name():
    with pytest.raises(UnknownStageError, match="did you mean 'parse'"):
        diamond().dependencies("pars")
