"""A layered left-to-right layout of the workflow DAG, drawn as SVG by a template."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from treadle_core import Workflow

NODE_H = 52
GAP_X = 64
GAP_Y = 20
PAD = 12
CHAR_W = 7.6  # average glyph width of the 13px UI font, for sizing boxes
MAX_LABEL = 24

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


def layout(wf: Workflow, summary: Mapping[str, Mapping[str, int]]) -> Graph:
    """Layer = longest path from a root; within a layer, order by the mean row of the inputs."""
    layer: dict[str, int] = {}
    for name in wf.stages:  # topological order
        layer[name] = 1 + max((layer[d] for d in wf.dependencies(name)), default=-1)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in wf.stages:
        columns[layer[name]].append(name)
    row: dict[str, float] = {}
    for k, column in enumerate(columns):
        if k:
            column.sort(
                key=lambda n: (
                    sum(row[d] for d in wf.dependencies(n)) / max(len(wf.dependencies(n)), 1)
                )
            )
        for i, name in enumerate(column):
            row[name] = i

    labels = {n: n if len(n) <= MAX_LABEL else n[: MAX_LABEL - 1] + "…" for n in wf.stages}
    details = {n: _detail(summary.get(n, {})) for n in wf.stages}
    widths = {
        n: max(120.0, CHAR_W * max(len(labels[n]), len(details[n]) * 0.85) + 32) for n in wf.stages
    }
    tallest = max((len(c) for c in columns), default=0)
    height = tallest * NODE_H + max(tallest - 1, 0) * GAP_Y + 2 * PAD
    nodes: dict[str, Node] = {}
    x = float(PAD)
    for column in columns:
        col_w = max(widths[n] for n in column)
        col_h = len(column) * NODE_H + (len(column) - 1) * GAP_Y
        y0 = (height - col_h) / 2
        for i, name in enumerate(column):
            counts = summary.get(name, {})
            tone = next((s for s in URGENCY if counts.get(s)), "empty")
            nodes[name] = Node(
                name=name,
                label=labels[name],
                x=x + (col_w - widths[name]) / 2,
                y=y0 + i * (NODE_H + GAP_Y),
                w=widths[name],
                h=NODE_H,
                tone=tone,
                detail=details[name],
                awaiting=counts.get("awaiting_review", 0),
            )
        x += col_w + GAP_X
    width = x - GAP_X + PAD if columns else 2 * PAD

    edges = []
    for name in wf.stages:
        for dep in wf.dependencies(name):
            a, b = nodes[dep], nodes[name]
            x1, y1 = a.x + a.w, a.y + a.h / 2
            x2, y2 = b.x - 6, b.y + b.h / 2  # stop short: the arrowhead ends at the box
            mid = (x1 + x2) / 2
            path = f"M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            edges.append(Edge(path=path, source=dep, target=name))
    return Graph(width=width, height=height, nodes=list(nodes.values()), edges=edges)
