"""The AI document pipeline: load -> summarise (a fake LLM, judged by gates) -> export.

`fake_llm` stands in for a language model: deterministic, offline, and (like a
real one) it writes a better summary when the prompt says what was wrong with the
last one. Swap it for a real client and nothing else changes.
"""

from __future__ import annotations

import re
from pathlib import Path

from treadle_core import (
    Accepted,
    Complete,
    CriterionResult,
    QualityFeedback,
    QualityGate,
    Rejected,
    StageOutput,
)


def load(item, ctx):
    """Read the document; the first markdown heading (if any) is its title."""
    text = Path(item.data["path"]).read_text(encoding="utf-8")
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), item.id)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    return StageOutput(Complete(), artefact={"title": title, "text": body})


def fake_llm(prompt: str, source: str) -> str:
    """A deterministic 'model': terse by default, follows the instructions in the prompt."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", source) if s.strip()]
    if "headings" not in prompt:
        return sentences[0]  # the lazy first answer: one sentence, no structure
    points = 2 if "longer" not in prompt else len(sentences)
    lines = ["## Summary", "", sentences[0], "", "## Key points", ""]
    lines += [f"- {s}" for s in sentences[1 : 1 + points]]
    return "\n".join(lines)


async def summarise(item, ctx):
    """Ask the model for a summary; on a retry, tell it what the quality gates said."""
    doc = ctx.upstream["load"]
    prompt = f"Summarise the document titled {doc['title']!r}."
    if ctx.feedback is not None:
        failed = {c.name for c in ctx.feedback.failed_criteria}
        prompt += f" Your last answer was rejected: {ctx.feedback.summary}."
        # One fix per attempt, as a chatty model would manage it.
        if any(name.startswith("heading") for name in failed):
            prompt += " Use the headings ## Summary and ## Key points."
        elif "min words" in failed:
            prompt += " Write a longer summary, with headings."
    summary = fake_llm(prompt, doc["text"])
    words = len(summary.split())
    return StageOutput(
        Complete(),
        artefact={"title": doc["title"], "markdown": summary, "prompt": prompt},
        summary=f"{words} words",
    )


class RequiredHeadings(QualityGate):
    """The markdown has every heading in ``headings`` (a gate written for this pipeline)."""

    def __init__(self, headings: list[str]):
        self.headings = headings

    async def evaluate(self, item, stage, output, ctx):
        text = output.artefact["markdown"]
        missing = [h for h in self.headings if not re.search(rf"(?m)^#+ {re.escape(h)}\s*$", text)]
        if not missing:
            return Accepted()
        return Rejected(
            QualityFeedback(
                f"missing headings: {', '.join(missing)}",
                [CriterionResult(f"heading {h}", "present", "missing", False) for h in missing],
            )
        )


def export(item, ctx):
    """Write exports/<name>.md (overwriting: running it twice gives the same file)."""
    summary = ctx.upstream["summarise"]
    out = Path("exports") / (Path(item.data["path"]).stem + ".md")
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"# {summary['title']}\n\n{summary['markdown']}\n", encoding="utf-8")
    return StageOutput(Complete(), artefact={"path": str(out)})
