"""Stages of the hello pipeline: plain functions taking (item, ctx)."""

from treadle_core import Complete, StageOutput


def fetch(item, ctx):
    """Fetch the text to summarise (here it comes with the item)."""
    text = item.data.get("text") or f"Hello from {item.id}, a work item without any text."
    return StageOutput(Complete(), artefact={"text": text})


async def summarise(item, ctx):
    """A terse summary first; when the gate asks for more (ctx.feedback), a longer one."""
    words = ctx.upstream["fetch"]["text"].split()
    size = 4 if ctx.feedback is None else 12
    summary = " ".join(words[:size])
    return StageOutput(Complete(), artefact=summary, summary=f"{len(summary)} characters")


def publish(item, ctx):
    """Publish the approved summary (here: return where it would live)."""
    return StageOutput(Complete(), artefact={"url": f"https://example.org/{item.id}"})
