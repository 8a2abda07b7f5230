"""Stages of the UI test pipeline."""

from treadle_core import Complete, Failed, FanOut, StageOutput, SubTask


def sources(item, ctx):
    """Two lookups at once; with `flaky`, the archive's first attempt fails."""
    if ctx.subtask is None:
        return FanOut([SubTask("wire"), SubTask("archive")])
    if item.data.get("flaky") and ctx.subtask == "archive" and ctx.attempt == 1:
        raise ConnectionError(str(item.data["flaky"]))
    return StageOutput(Complete(), artefact={"source": ctx.subtask, "id": item.id})


def draft(item, ctx):
    """The item's `artefact` (any JSON), or a small document; `fail` fails the stage."""
    if item.data.get("fail"):
        return StageOutput(Failed(str(item.data["fail"])))
    artefact = item.data.get("artefact", {"title": item.id, "words": 3})
    return StageOutput(Complete(), artefact=artefact, summary="drafted")


def publish(item, ctx):
    """What downstream sees: the (maybe edited) reviewed artefact."""
    return StageOutput(Complete(), artefact={"published": ctx.upstream["review"]})
