"""Built-in stage types: ``review`` (always asks a person) and ``python`` (an importable object)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..hookspecs import JsonSchema, Option, StageType, hookimpl
from ..model import NeedsReview, StageContext, StageOutput, WorkItem
from ..stage import Stage
from ..templating import check, render


class ReviewStage(Stage):
    """Pause for a person; the artefact under review is the nearest upstream stage's."""

    description = "Always asks a person to approve, reject or edit"

    def __init__(
        self,
        prompt: str = "Review {item.id}",
        stage: str | None = None,
        choices: Sequence[str] = (),
        form: dict[str, Any] | None = None,
    ):
        check(prompt)
        self.prompt = prompt
        self.stage = stage
        # Checked now, so a bad pipeline file fails when it loads, not at the first item.
        self.choices = NeedsReview(choices=tuple(choices), form=form).choices
        self.form = form

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
        question = NeedsReview(render(self.prompt, item), context, self.choices, self.form)
        return StageOutput(question, artefact=artefact)


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
                "choices": Option(list, description="Answers of which the reviewer picks one"),
                "form": Option(
                    JsonSchema,
                    description="JSON Schema of the reviewer's answers (inline, or a JSON file)",
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
