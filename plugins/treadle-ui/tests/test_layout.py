"""The DAG layout and the artefact rendering."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from treadle_ui.layout import Graph, Node, layout
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


def skip_edge() -> Workflow:
    """The shape the old drawing got wrong: `draft -> approve` was drawn behind `check`."""
    return (
        Workflow.builder("skip")
        .stage("draft", noop)
        .stage("check", noop, needs=["draft"])
        .stage("approve", noop, needs=["draft", "check"])
        .stage("publish", noop, needs=["approve"])
        .build()
    )


def random_dag(seed: int, n: int = 14) -> Workflow:
    rng = random.Random(seed)
    b = Workflow.builder(f"random-{seed}")
    for i in range(n):
        earlier = [f"s{j}" for j in range(i)]
        needs = rng.sample(earlier, k=min(len(earlier), rng.choice([0, 1, 1, 2, 3])))
        b.stage(f"s{i}", noop, needs=needs)
    return b.build()


def polyline(path: str) -> list[tuple[float, float]]:
    """The points of an edge's SVG path (M, L and C commands), each curve cut into 32 pieces."""
    tokens = re.findall(r"[MLC]|-?\d+(?:\.\d+)?", path)
    points: list[tuple[float, float]] = []
    i = 0
    while i < len(tokens):
        cmd = tokens[i]
        if cmd in ("M", "L"):
            points.append((float(tokens[i + 1]), float(tokens[i + 2])))
            i += 3
        elif cmd == "C":
            (x0, y0), c = points[-1], [float(t) for t in tokens[i + 1 : i + 7]]
            for k in range(1, 33):
                t = k / 32
                u = 1 - t
                points.append(
                    (
                        u**3 * x0 + 3 * u * u * t * c[0] + 3 * u * t * t * c[2] + t**3 * c[4],
                        u**3 * y0 + 3 * u * u * t * c[1] + 3 * u * t * t * c[3] + t**3 * c[5],
                    )
                )
            i += 7
        else:
            raise AssertionError(f"unexpected path command {cmd!r} in {path!r}")
    return points


def crosses(a: tuple[float, float], b: tuple[float, float], box: Node) -> bool:
    """Whether segment a-b meets the box (Liang-Barsky clipping)."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = x1 - x0, y1 - y0
    lo, hi = 0.0, 1.0
    for p, q in (
        (-dx, x0 - box.x),
        (dx, box.x + box.w - x0),
        (-dy, y0 - box.y),
        (dy, box.y + box.h - y0),
    ):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            lo = max(lo, q / p)
        else:
            hi = min(hi, q / p)
        if lo > hi:
            return False
    return True


def edges_through_boxes(g: Graph) -> list[tuple[str, str, str]]:
    bad = []
    for e in g.edges:
        points = polyline(e.path)
        for n in g.nodes:
            if n.name in (e.source, e.target):
                continue
            if any(crosses(p, q, n) for p, q in itertools.pairwise(points)):
                bad.append((e.source, e.target, n.name))
    return bad


def test_an_edge_that_skips_a_layer_goes_around_the_box_in_between() -> None:
    g = layout(skip_edge(), {})
    assert edges_through_boxes(g) == []
    # And it really is drawn: from draft's right side to approve's left side.
    [e] = [e for e in g.edges if (e.source, e.target) == ("draft", "approve")]
    nodes = {n.name: n for n in g.nodes}
    start, end = polyline(e.path)[0], polyline(e.path)[-1]
    assert start == pytest.approx((nodes["draft"].x + nodes["draft"].w, nodes["draft"].cy), abs=0.1)
    assert end[0] < nodes["approve"].x and end[1] == pytest.approx(nodes["approve"].cy, abs=0.1)


@pytest.mark.parametrize("shape", ["diamond", "skip", *(f"random-{s}" for s in range(12))])
def test_no_edge_segment_meets_a_box_that_is_not_its_end(shape: str) -> None:
    wf = {"diamond": diamond, "skip": skip_edge}.get(shape)
    g = layout(wf() if wf else random_dag(int(shape.split("-")[1])), {})
    assert edges_through_boxes(g) == []
    for e in g.edges:  # every edge moves left to right, inside the canvas
        xs = [x for x, _ in polyline(e.path)]
        ys = [y for _, y in polyline(e.path)]
        assert xs == sorted(xs)
        assert min(ys) >= 0 and max(ys) <= g.height


def test_the_geometric_check_sees_a_line_through_a_box() -> None:
    box = Node("check", "check", 100, 40, 120, 52, "empty", "", 0)
    assert crosses((0, 66), (400, 66), box)  # straight through, as the old drawing did
    assert crosses((150, 0), (150, 200), box)
    assert not crosses((0, 20), (400, 20), box)  # above it
    assert not crosses((0, 0), (90, 200), box)  # beside it


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
