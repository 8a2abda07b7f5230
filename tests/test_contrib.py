"""treadle_contrib: the shell stage, the jsonl and console sinks, and the four gates."""

from __future__ import annotations

import io
import json
import sys

import pytest
from treadle_contrib.gates import CommandGate, JsonSchemaGate, MinLength, RegexGate
from treadle_contrib.shell import ShellStage
from treadle_contrib.sinks import ConsoleSink, JsonlSink

from treadle_core import (
    Accepted,
    Complete,
    CriterionResult,
    Item,
    QualityContext,
    Rejected,
    Retry,
    StageContext,
    StageOutput,
    StageStarted,
    Uncertain,
    Workflow,
)
from treadle_core.quality import QualityFeedback
from treadle_core.testing import EventRecorder

PY = sys.executable
ITEM = Item("doc-1", {"path": "a b.txt", "lang": "en"})


def ctx(stage="s", attempt=1, feedback=None):
    return StageContext(item_id=ITEM.id, stage=stage, attempt=attempt, feedback=feedback)


def qctx():
    return QualityContext(item_id=ITEM.id, stage="s", attempt=1, max_attempts=3)


async def judge(gate, artefact):
    return await gate.evaluate(ITEM, "s", StageOutput(Complete(), artefact=artefact), qctx())


# --- shell -----------------------------------------------------------------------------------


async def test_shell_templates_argv_and_captures_stdout():
    stage = ShellStage(
        [PY, "-c", "import sys; print(sys.argv[1:])", "{item.id}", "{item.data[path]}"]
    )
    out = await stage.execute(ITEM, ctx())
    assert out.outcome == Complete()
    assert out.artefact == "['doc-1', 'a b.txt']"  # one argument, spaces and all: no shell


async def test_shell_nonzero_exit_is_a_retry_with_the_stderr_tail():
    code = "import sys; sys.stderr.write('x' * 5000 + 'the real error'); sys.exit(3)"
    out = await ShellStage([PY, "-c", code]).execute(ITEM, ctx())
    assert isinstance(out.outcome, Retry)
    assert out.outcome.error.startswith(f"{PY} exited with status 3: xxx")
    assert out.outcome.error.endswith("the real error")
    assert len(out.outcome.error) < 2100


async def test_shell_timeout_kills_the_command():
    out = await ShellStage([PY, "-c", "import time; time.sleep(30)"], timeout=0.2).execute(
        ITEM, ctx()
    )
    assert out.outcome == Retry(f"{PY} timed out after 0.2 s")


async def test_shell_passes_item_stage_attempt_and_feedback_in_the_environment():
    code = (
        "import os; print(os.environ['TREADLE_ITEM_ID'], os.environ['TREADLE_ATTEMPT'], "
        "os.environ['TREADLE_FEEDBACK'], os.environ['EXTRA'])"
    )
    stage = ShellStage([PY, "-c", code], env={"EXTRA": 1})
    out = await stage.execute(ITEM, ctx(attempt=2, feedback=QualityFeedback("too short")))
    assert out.artefact == "doc-1 2 too short 1"


async def test_shell_missing_program_is_a_retry():
    out = await ShellStage(["/nonexistent/prog"]).execute(ITEM, ctx())
    assert isinstance(out.outcome, Retry)
    assert "cannot run '/nonexistent/prog'" in out.outcome.error


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("ls -l", "a shell string is not accepted"),
        ([], "non-empty list"),
        (["echo", "{os.system}"], "not allowed"),
        (["echo", "{item.data[x]"], "template"),
    ],
)
def test_shell_refuses_bad_commands(command, message):
    with pytest.raises(ValueError, match=message):
        ShellStage(command)


async def test_shell_stage_in_a_workflow(treadle_store):
    wf = (
        Workflow.builder("w").stage("echo", ShellStage([PY, "-c", "print('hi {item.id}')"])).build()
    )
    status = await wf.advance(Item("x"), treadle_store)
    assert status.is_complete
    assert status.stages["echo"].artefact == "hi x"


# --- sinks -----------------------------------------------------------------------------------


async def test_jsonl_sink_appends_one_event_per_line(tmp_path, treadle_store, treadle_events):
    path = tmp_path / "deep" / "events.jsonl"
    sink = JsonlSink(path)
    wf = Workflow.builder("w").stage("one", lambda item, ctx: None).build()
    wf.bus.add_listener(sink)
    treadle_events.attach(wf)
    await wf.advance(Item("a"), treadle_store)
    sink.close()
    sink(StageStarted(item_id="late"))  # after close: ignored, never raises
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == treadle_events.kinds()
    assert lines[0]["item_id"] == "a"
    JsonlSink(path)(StageStarted(item_id="b", stage="one"))  # append, never truncate
    assert len(path.read_text().splitlines()) == len(lines) + 1


def test_console_sink_prints_a_line_per_event():
    out = io.StringIO()
    ConsoleSink(file=out)(StageStarted(item_id="a", stage="one", attempt=2))
    assert "a/one StageStarted attempt=2" in out.getvalue()


def test_event_recorder_fixture(treadle_events):
    treadle_events(StageStarted(item_id="a", stage="s"))
    assert treadle_events.kinds() == ["StageStarted"]
    assert treadle_events.of(StageStarted)[0].item_id == "a"
    assert isinstance(treadle_events, EventRecorder)


# --- gates -----------------------------------------------------------------------------------


async def test_min_length_counts_chars_and_words():
    gate = MinLength(chars=10, words=3)
    assert await judge(gate, "one two three four") == Accepted()
    verdict = await judge(gate, "tiny")
    assert isinstance(verdict, Rejected)
    assert verdict.feedback.failed_criteria == [
        CriterionResult("min chars", 10, 4, False),
        CriterionResult("min words", 3, 1, False),
    ]
    assert verdict.feedback.summary == (
        "output too short: 4 chars, need at least 10; 1 words, need at least 3"
    )


async def test_gates_judge_one_field_of_a_mapping():
    gate = MinLength(chars=3, field="body.text")
    assert await judge(gate, {"body": {"text": "long enough"}}) == Accepted()
    verdict = await judge(gate, {"body": {}})
    assert verdict.feedback.failed_criteria == [
        CriterionResult("field body.text", "present", "missing", False)
    ]


async def test_regex_must_match_or_must_not_match():
    assert await judge(RegexGate(r"^Summary:", ignore_case=True), "summary: ok") == Accepted()
    verdict = await judge(RegexGate(r"^Summary:"), "nothing")
    assert verdict.feedback.failed_criteria == [
        CriterionResult("regex", "matches /^Summary:/", "no match", False)
    ]
    verdict = await judge(RegexGate(r"TODO|FIXME", must_match=False), "done, TODO later")
    assert verdict.feedback.failed_criteria == [
        CriterionResult("regex", "no match for /TODO|FIXME/", "TODO", False)
    ]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexGate("(")


async def test_json_schema_gate_reports_each_violation(tmp_path):
    schema = {
        "type": "object",
        "required": ["title", "tags"],
        "properties": {"title": {"type": "string"}, "tags": {"type": "array"}},
    }
    gate = JsonSchemaGate(schema)
    assert await judge(gate, {"title": "t", "tags": []}) == Accepted()
    verdict = await judge(gate, {"title": 3})
    assert isinstance(verdict, Rejected)
    names = [c.name for c in verdict.feedback.failed_criteria]
    assert names == ["schema /", "schema /title"]
    assert verdict.feedback.failed_criteria[1].expected == 'type: "string"'
    assert verdict.feedback.failed_criteria[1].actual == 3
    assert "'tags' is a required property" in verdict.feedback.summary
    (tmp_path / "s.json").write_text(json.dumps(schema))
    assert await judge(JsonSchemaGate(schema_file=tmp_path / "s.json"), {"x": 1}) != Accepted()
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        JsonSchemaGate({"type": "nonsense"})
    with pytest.raises(ValueError, match="exactly one of"):
        JsonSchemaGate()


async def test_command_gate_judges_by_exit_code_with_stdout_as_feedback():
    script = (
        "import sys; text = sys.stdin.read(); "
        "print('needs a title') if 'title' not in text else None; "
        "sys.exit(0 if 'title' in text else 1)"
    )
    gate = CommandGate([PY, "-c", script])
    assert await judge(gate, {"title": "x"}) == Accepted()
    verdict = await judge(gate, "no heading")
    assert isinstance(verdict, Rejected)
    assert verdict.feedback.summary == "needs a title"
    assert verdict.feedback.failed_criteria == [
        CriterionResult(f"command {PY}", "exit status 0", "exit status 1", False)
    ]


async def test_command_gate_uncertain_status_and_timeout():
    unsure = CommandGate(
        [PY, "-c", "print('ask a person'); raise SystemExit(3)"], uncertain_status=3
    )
    assert await judge(unsure, "x") == Uncertain("ask a person")
    slow = CommandGate([PY, "-c", "import time; time.sleep(30)"], timeout=0.2)
    assert await judge(slow, "x") == Uncertain(f"gate command {PY} timed out after 0.2 s")
