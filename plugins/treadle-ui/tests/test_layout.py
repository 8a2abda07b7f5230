"""The DAG layout and the artefact rendering."""

from __future__ import annotations

from treadle_ui.layout import layout
from treadle_ui.render import render_value

from treadle_core import Workflow


def noop(item: object, ctx: object) -> None:
    return None


def diamond() -> Workflow:
    return (
        Workflow.builder("d")
        .stage("fetch", noop)
        .stage("left", noop, needs=["fetch"])
        .stage("right", noop, needs=["fetch"])
        .stage("join", noop, needs=["left", "right"])
        .stage("late", noop, needs=["fetch", "join"])
        .build()
    )


def test_stages_are_layered_by_their_longest_path_from_a_root() -> None:
    g = layout(diamond(), {})
    x = {n.name: n.x for n in g.nodes}
    assert x["fetch"] < x["left"] == x["right"] < x["join"] < x["late"]
    assert len(g.edges) == 6


def test_nodes_never_overlap_and_fit_the_canvas() -> None:
    g = layout(diamond(), {})
    for a in g.nodes:
        assert a.x >= 0 and a.x + a.w <= g.width and a.y >= 0 and a.y + a.h <= g.height
        for b in g.nodes:
            if a is not b:
                apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
                assert apart, (a.name, b.name)


def test_node_colour_follows_the_most_urgent_status() -> None:
    g = layout(diamond(), {"left": {"complete": 3, "failed": 1}, "join": {"awaiting_review": 2}})
    tone = {n.name: n.tone for n in g.nodes}
    assert (tone["left"], tone["join"], tone["fetch"]) == ("failed", "awaiting_review", "empty")
    assert next(n for n in g.nodes if n.name == "join").detail == "2 review"


def test_artefacts_render_by_kind() -> None:
    assert render_value(None).kind == "empty"
    assert render_value({"a": [1]}).text == '{\n  "a": [\n    1\n  ]\n}'
    assert render_value("just words").kind == "text"
    md = render_value("## Notes\n\n- one <i>x</i>")
    assert md.kind == "markdown" and md.html is not None
    assert "<h2>Notes</h2>" in md.html and "&lt;i&gt;x&lt;/i&gt;" in md.html
