"""Built-in stage types: ``review`` (always asks a person) and ``python`` (an importable object)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..hookspecs import Option, StageType, hookimpl
from ..model import NeedsReview, StageContext, StageOutput, WorkItem
from ..stage import Stage
from ..templating import check, render


class ReviewStage(Stage):
    """Pause for a person; the artefact under review is the nearest upstream stage's."""

    description = "Always asks a person to approve, reject or edit"

    def __init__(self, prompt: str = "Review {item.id}", stage: str | None = None):
        check(prompt)
        self.prompt = prompt
        self.stage = stage

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageOutput:
        upstream = dict(ctx.upstream)
        if self.stage is not None:
            if self.stage not in upstream:
                raise ValueError(
                    f"review stage {ctx.stage!r}: {self.stage!r} is not a completed upstream stage"
                )
            source: str | None = self.stage
        else:
            source = next(reversed(upstream), None) if upstream else None
        artefact = upstream.get(source) if source is not None else None
        context: dict[str, Any] = {"stage": source}
        data = getattr(item, "data", None)
        if isinstance(data, dict):
            context["data"] = data
        return StageOutput(NeedsReview(render(self.prompt, item), context), artefact=artefact)


def python_stage(object: str, options: dict[str, Any] | None = None) -> Any:
    """The stage named by ``object`` ("pkg.mod:name"): a Stage, a Stage subclass, or a function."""
    from ..pipeline import stage_from_object

    return stage_from_object(object, options or {})


@hookimpl
def register_stage_types(register: Callable[[StageType], None]) -> None:
    register(
        StageType(
            "review",
            ReviewStage,
            ReviewStage.description,
            {
                "prompt": Option(
                    str, default="Review {item.id}", description="Question shown to the reviewer"
                ),
                "stage": Option(
                    str, description="Upstream stage whose artefact is reviewed (default: nearest)"
                ),
            },
        )
    )
    register(
        StageType(
            "python",
            python_stage,
            "A Stage instance, Stage subclass or function imported from pkg.mod:name",
            {
                "object": Option(str, required=True, description='"pkg.mod:name" to import'),
                "options": Option(dict, default={}, description="Keyword arguments for a class"),
            },
        )
    )
