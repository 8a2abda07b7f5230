"""A layered left-to-right drawing of the workflow DAG whose edges go around the boxes.

The Sugiyama recipe, small: a stage's layer is its longest path from a root; an edge
that spans several layers gets a waypoint (a "dummy" slot) in each layer it crosses, so
it owns a horizontal lane in every column it passes; slots are ordered within their
column by barycentre sweeps, keeping the order with the fewest crossings. An edge is
then a horizontal run through each column (in its own lane) and a curve through each
gap between columns, where there are no boxes, so no edge passes through a box.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations, pairwise

from treadle_core import Workflow

NODE_H = 52
LANE_H = 10  # the height a waypoint takes in its column
GAP_X = 72
GAP_Y = 18
PAD = 12
CHAR_W = 7.6  # average glyph width of the 13px UI font, for sizing boxes
MAX_LABEL = 24
SWEEPS = 8
ARROW = 6  # edges stop this short of a box: the arrowhead ends at its border

#: Which status colours a node, most urgent first.
URGENCY = ("failed", "awaiting_review", "running", "pending", "skipped", "complete")


@dataclass(frozen=True)
class Node:
    name: str
    label: str
    x: float
    y: float
    w: float
    h: float
    tone: str
    detail: str
    awaiting: int

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass(frozen=True)
class Edge:
    path: str
    source: str
    target: str


@dataclass(frozen=True)
class Graph:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]


#: A slot in a column: a stage's name, or a waypoint ``(source, target, layer)``.
Slot = str | tuple[str, str, int]


def _detail(counts: Mapping[str, int]) -> str:
    parts = []
    for status, word in (
        ("awaiting_review", "review"),
        ("failed", "failed"),
        ("running", "running"),
        ("pending", "pending"),
        ("complete", "done"),
        ("skipped", "skipped"),
    ):
        if counts.get(status):
            parts.append(f"{counts[status]} {word}")
    return " · ".join(parts[:3]) or "no items"


def _chains(wf: Workflow, layer: Mapping[str, int]) -> dict[tuple[str, str], list[Slot]]:
    """Each edge as the slots it visits: its source, a waypoint per layer crossed, its target."""
    chains: dict[tuple[str, str], list[Slot]] = {}
    for name in wf.stages:
        for dep in wf.dependencies(name):
            between: list[Slot] = [(dep, name, k) for k in range(layer[dep] + 1, layer[name])]
            chains[(dep, name)] = [dep, *between, name]
    return chains


def _crossings(left: list[Slot], right: list[Slot], links: list[tuple[Slot, Slot]]) -> int:
    li = {s: i for i, s in enumerate(left)}
    ri = {s: i for i, s in enumerate(right)}
    pairs = [(li[a], ri[b]) for a, b in links if a in li and b in ri]
    return sum(1 for (a1, b1), (a2, b2) in combinations(pairs, 2) if (a1 - a2) * (b1 - b2) < 0)


def _order(columns: list[list[Slot]], links: list[tuple[Slot, Slot]]) -> list[list[Slot]]:
    """Barycentre sweeps down and up the layers; the order with the fewest crossings wins."""
    preds: dict[Slot, list[Slot]] = {}
    succs: dict[Slot, list[Slot]] = {}
    for a, b in links:
        succs.setdefault(a, []).append(b)
        preds.setdefault(b, []).append(a)

    def total(cols: list[list[Slot]]) -> int:
        return sum(_crossings(cols[k], cols[k + 1], links) for k in range(len(cols) - 1))

    def sweep(cols: list[list[Slot]], ks: range, nbrs: dict[Slot, list[Slot]], ref: int) -> None:
        for k in ks:
            pos = {s: i for i, s in enumerate(cols[k + ref])}
            here = {s: i for i, s in enumerate(cols[k])}

            def centre(s: Slot, pos: dict[Slot, int] = pos, here: dict[Slot, int] = here) -> float:
                near = [pos[n] for n in nbrs.get(s, []) if n in pos]
                return sum(near) / len(near) if near else float(here[s])

            cols[k].sort(key=centre)  # stable: ties keep their order

    best = [list(c) for c in columns]
    best_n = total(best)
    cols = [list(c) for c in columns]
    for _ in range(SWEEPS):
        if best_n == 0:
            break
        sweep(cols, range(1, len(cols)), preds, -1)
        sweep(cols, range(len(cols) - 2, -1, -1), succs, +1)
        n = total(cols)
        if n < best_n:
            best, best_n = [list(c) for c in cols], n
    return best


def layout(wf: Workflow, summary: Mapping[str, Mapping[str, int]]) -> Graph:
    """Boxes in layers left to right, edges routed through lanes and the gaps between layers."""
    layer: dict[str, int] = {}
    for name in wf.stages:  # topological order
        layer[name] = 1 + max((layer[d] for d in wf.dependencies(name)), default=-1)
    chains = _chains(wf, layer)
    columns: list[list[Slot]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in wf.stages:
        columns[layer[name]].append(name)
    for chain in chains.values():
        for slot in chain[1:-1]:
            assert isinstance(slot, tuple)
            columns[slot[2]].append(slot)
    links = [(a, b) for chain in chains.values() for a, b in pairwise(chain)]
    columns = _order(columns, links)

    labels = {n: n if len(n) <= MAX_LABEL else n[: MAX_LABEL - 1] + "…" for n in wf.stages}
    details = {n: _detail(summary.get(n, {})) for n in wf.stages}
    widths = {
        n: max(120.0, CHAR_W * max(len(labels[n]), len(details[n]) * 0.85) + 32) for n in wf.stages
    }

    def size(slot: Slot) -> float:
        return NODE_H if isinstance(slot, str) else LANE_H

    heights = [sum(size(s) for s in c) + GAP_Y * max(len(c) - 1, 0) for c in columns]
    height = max(heights, default=0) + 2 * PAD
    nodes: dict[str, Node] = {}
    lane: dict[Slot, float] = {}  # a waypoint's y
    span: list[tuple[float, float]] = []  # each column's left and right x
    x = float(PAD)
    for column, col_h in zip(columns, heights, strict=True):
        col_w = max((widths[s] for s in column if isinstance(s, str)), default=40.0)
        y = (height - col_h) / 2
        for slot in column:
            if isinstance(slot, str):
                counts = summary.get(slot, {})
                nodes[slot] = Node(
                    name=slot,
                    label=labels[slot],
                    x=x + (col_w - widths[slot]) / 2,
                    y=y,
                    w=widths[slot],
                    h=NODE_H,
                    tone=next((s for s in URGENCY if counts.get(s)), "empty"),
                    detail=details[slot],
                    awaiting=counts.get("awaiting_review", 0),
                )
            else:
                lane[slot] = y + LANE_H / 2
            y += size(slot) + GAP_Y
        span.append((x, x + col_w))
        x += col_w + GAP_X
    width = x - GAP_X + PAD if columns else 2 * PAD

    edges = []
    for (dep, name), chain in chains.items():
        a, b = nodes[dep], nodes[name]
        # Out of the source box, along its row to the column's edge; then for each layer
        # crossed, a curve through the gap and a run along the waypoint's lane; then a
        # curve into the target's column and a run along its row to the box.
        points = [(a.x + a.w, a.cy), (span[layer[dep]][1], a.cy)]
        for slot in chain[1:-1]:
            assert isinstance(slot, tuple)
            left, right = span[slot[2]]
            points += [(left, lane[slot]), (right, lane[slot])]
        end = b.x - ARROW
        points.append((min(span[layer[name]][0], end), b.cy))
        points.append((end, b.cy))
        edges.append(Edge(path=_path(points), source=dep, target=name))
    return Graph(width=width, height=height, nodes=list(nodes.values()), edges=edges)


def _path(points: list[tuple[float, float]]) -> str:
    """Runs (even steps) as lines, gaps (odd steps) as curves whose x never leaves the gap."""
    (x0, y0), rest = points[0], points[1:]
    out = [f"M{x0:.1f},{y0:.1f}"]
    prev = points[0]
    for i, (x, y) in enumerate(rest):
        if i % 2 == 0:
            if (x, y) != prev:
                out.append(f"L{x:.1f},{y:.1f}")
        else:
            mid = (prev[0] + x) / 2
            out.append(f"C{mid:.1f},{prev[1]:.1f} {mid:.1f},{y:.1f} {x:.1f},{y:.1f}")
        prev = (x, y)
    return " ".join(out)
