"""Pieces the benchmarks share: the no-op pipeline, as a Workflow and as a project."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from treadle_core import Workflow


def build(n_stages: int, fn) -> Workflow:
    """A chain s0 -> s1 -> ... of ``n_stages`` stages, each running ``fn``."""
    b = Workflow.builder("bench")
    for i in range(n_stages):
        b.stage(f"s{i}", fn, needs=[f"s{i - 1}"] if i else [])
    return b.build()


async def noop(item, ctx):
    return None


async def sleepy(item, ctx):
    await asyncio.sleep(0.02)


def write_project(root: Path, url: str, n_stages: int, concurrency: int = 8) -> Path:
    """``treadle.toml`` + ``stages.py`` for the same chain of no-op stages, in ``root``."""
    (root / "stages.py").write_text("async def noop(item, ctx):\n    return None\n")
    stages = "".join(
        f'\n[stages.s{i}]\nuses = "stages:noop"\n' + (f'needs = ["s{i - 1}"]\n' if i else "")
        for i in range(n_stages)
    )
    toml = textwrap.dedent(
        f"""\
        [pipeline]
        name = "bench"
        store = "{url}"
        concurrency = {concurrency}
        """
    )
    (root / "treadle.toml").write_text(toml + stages)
    return root
