"""Stages of the people-in-the-loop test pipeline."""

from treadle_core import Complete, StageOutput


def draft(item, ctx):
    """A small document; the words of a request for changes end up in its `note`."""
    note = ctx.feedback.summary if ctx.feedback else None
    return StageOutput(Complete(), artefact={"title": item.id, "note": note})
