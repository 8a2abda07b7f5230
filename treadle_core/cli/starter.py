"""The files ``treadle init`` writes (examples/hello holds the same three files)."""

from __future__ import annotations

TREADLE_TOML = """\
# A small pipeline: fetch -> summarise (checked by a quality gate) -> approve (a person) -> publish.
#   treadle add items.jsonl && treadle run
#   treadle review list && treadle review approve --all --stage approve && treadle run

[pipeline]
name = "hello"
store = "sqlite:///.treadle/state.db"   # relative to this file; TREADLE_STORE overrides
concurrency = 4

[stages.fetch]
uses = "stages:fetch"                   # a function in stages.py next to this file

[stages.summarise]
uses = "stages:summarise"
needs = ["fetch"]
retry = { max_attempts = 3, delay = "100ms", on_exhausted = "escalate" }
gate = { uses = "min-length", chars = 40 }

[stages.approve]
uses = "review"                         # built in: always asks a person
needs = ["summarise"]
prompt = "Publish this summary of {item.id}?"

[stages.publish]
uses = "stages:publish"
needs = ["approve"]

[[sinks]]
uses = "jsonl"
path = ".treadle/events.jsonl"
"""

STAGES_PY = '''\
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
'''

ITEMS_JSONL = """\
{"id": "greeting", "data": {"text": "Hello world: the first item going through a pipeline."}}
{"id": "weather", "text": "Sunny in the morning, clouds after lunch, rain by the evening."}
{"id": "recipe", "data": {"text": "Whisk two eggs with salt, pour into a hot pan, fold gently."}}
"""

FILES: dict[str, str] = {
    "treadle.toml": TREADLE_TOML,
    "stages.py": STAGES_PY,
    "items.jsonl": ITEMS_JSONL,
}
