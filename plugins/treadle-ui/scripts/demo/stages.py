"""Stages of the screenshot pipeline: made-up lookups, a person settling the year when
the sources disagree, a draft, a fact check."""

from treadle_core import Complete, FanOut, NeedsReview, StageOutput, SubTask

SOURCES = ("wire", "archive", "agency")


def sources(item, ctx):
    """Look the story up in three places at once; the archive times out once."""
    if ctx.subtask is None:
        return FanOut([SubTask(s) for s in SOURCES])
    if ctx.subtask == "archive" and ctx.attempt == 1:
        raise ConnectionError("archive.example.org refused the connection (port 443)")
    year = 2021 if ctx.subtask == "wire" and item.data.get("disputed") else 2022
    found = {
        "source": ctx.subtask,
        "year": year,
        "url": f"https://{ctx.subtask}.example.org/stories/{item.id}?ref=treadle&utm_source=console",
    }
    return StageOutput(Complete(), artefact=found, summary=f"found in {ctx.subtask}")


def year(item, ctx):
    """Ask a person which year is right, only when the sources disagree."""
    found = ctx.upstream["sources"]
    years = sorted({str(v["year"]) for v in found.values()})
    if len(years) == 1:
        return StageOutput(Complete(), artefact={"year": int(years[0])})
    said = {name: v["year"] for name, v in sorted(found.items())}
    question = NeedsReview("The sources disagree on the year. Which is right?", said, years)
    return StageOutput(question, artefact=said)


def draft(item, ctx):
    found = ctx.upstream["sources"]
    chosen = ctx.reviews.get("year")
    year = chosen.choice if chosen else ctx.upstream["year"]["year"]
    text = item.data.get("text", item.id)
    body = (
        f"# {text}\n\n"
        f"Reported by {len(found)} sources ({', '.join(sorted(found))}) in {year}. "
        "The wire report came first; the archive copy adds the photographs."
    )
    return StageOutput(Complete(), artefact=body, summary=f"{len(body)} characters")


def check(item, ctx):
    years = sorted({v["year"] for v in ctx.upstream["sources"].values()})
    return StageOutput(
        Complete(),
        artefact={"claims_checked": 4, "disputed": {"year": years}, "verdict": "needs a person"},
    )


def publish(item, ctx):
    return StageOutput(Complete(), artefact={"published": ctx.upstream["approve"]})
