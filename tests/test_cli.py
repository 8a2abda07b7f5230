"""The treadle CLI in-process (click's runner on create_cli(pm)) against real SQLite stores."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from treadle_core import open_store
from treadle_core._fixtures import TreadleCli
from treadle_core.cli.context import TIME_KEYS
from treadle_core.cli.starter import FILES
from treadle_core.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
[pipeline]
name = "t"
store = "sqlite:///state.db"

[stages.fetch]
uses = "stages:fetch"

[stages.check]
uses = "stages:check"
needs = ["fetch"]
gate = { uses = "min-length", chars = 5 }
retry = { max_attempts = 2 }

[stages.approve]
uses = "review"
needs = ["check"]
prompt = "Ship {item.id}?"

[stages.publish]
uses = "stages:publish"
needs = ["approve"]

[[sinks]]
uses = "jsonl"
path = "events.jsonl"
"""

STAGES = """
from treadle_core import Complete, Failed, StageOutput


def fetch(item, ctx):
    if item.data.get("fail"):
        return Failed("no such document")
    return StageOutput(Complete(), artefact={"text": item.data.get("text", "hello world")})


def check(item, ctx):
    return StageOutput(Complete(), artefact=ctx.upstream["fetch"]["text"], summary="checked")


def publish(item, ctx):
    return StageOutput(Complete(), artefact={"published": ctx.upstream["approve"]})
"""


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


@pytest.fixture
def cli(pm, tmp_path, monkeypatch):
    monkeypatch.delenv("TREADLE_STORE", raising=False)
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(STAGES)
    return TreadleCli(pm, tmp_path)


def ok(result):
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def js(result):
    return json.loads(ok(result).stdout)


def add(cli, *items):
    lines = "".join(json.dumps(i) + "\n" for i in items)
    return ok(cli("add", "-", input=lines))


@pytest.fixture
def ran(cli):
    """Three items run: a, b waiting for review; bad failed (gate: too short).

    a runs on its own first, so its review is the older one: "oldest first" listings
    have one right order (two reviews made in the same run may come in either).
    """
    add(cli, {"id": "a"}, {"id": "b", "text": "lorem ipsum"}, {"id": "bad", "text": "hi"})
    ok(cli("run", "--item", "a"))
    assert cli("run").exit_code == 1
    return cli


# --- init, validate, graph --------------------------------------------------------------------


def test_init_writes_a_working_starter_and_refuses_to_overwrite(pm, tmp_path):
    cli = TreadleCli(pm, tmp_path)
    ok(cli("init"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "items.jsonl",
        "stages.py",
        "treadle.toml",
    ]
    assert "OK" in ok(cli("validate")).stdout
    (tmp_path / "stages.py").write_text("# mine\n")
    result = cli("init")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: treadle.toml, stages.py, items.jsonl already exist")
    assert (tmp_path / "stages.py").read_text() == "# mine\n"


def test_examples_hello_is_what_init_writes():
    for name, text in FILES.items():
        assert (ROOT / "examples" / "hello" / name).read_text() == text


def test_validate_reports_the_pipeline(cli, tmp_path):
    assert ok(cli("validate")).stdout == (
        "treadle.toml: OK: pipeline 't', 4 stages (fetch, check, approve, publish)\n"
    )
    assert js(cli("validate", "--json")) == {
        "ok": True,
        "pipeline": "t",
        "sinks": ["jsonl"],
        "stages": ["fetch", "check", "approve", "publish"],
        "store": f"sqlite:///{tmp_path}/state.db",
        "warnings": [],
    }
    assert not (tmp_path / "state.db").exists()


def test_graph_formats(cli):
    text = ok(cli("graph")).stdout
    assert "  check    [stages:check]  <- fetch" in text
    assert ok(cli("graph", "--format", "mermaid")).stdout.startswith("graph TD")
    assert '"fetch" -> "check";' in ok(cli("graph", "--format", "dot")).stdout
    stages = js(cli("graph", "--format", "json"))["stages"]
    assert stages[2] == {"name": "approve", "needs": ["check"], "uses": "review"}


def test_a_missing_pipeline_file_is_one_line_and_exit_2(pm, tmp_path):
    result = TreadleCli(pm, tmp_path)("run")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: treadle.toml: no such file (run 'treadle init' to create one, pass -p PATH, "
        "or --app pkg.module:attr for a pipeline built in Python)\n"
    )


def test_pipeline_option_points_at_another_file(pm, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "flow.toml").write_text(PIPELINE)
    (sub / "stages.py").write_text(STAGES)
    cli = TreadleCli(pm, tmp_path)
    ok(cli("-p", "sub/flow.toml", "add", "--id", "x"))
    assert (sub / "state.db").exists()  # relative store URLs follow the pipeline file


# --- add ---------------------------------------------------------------------------------------


def test_add_reads_jsonl_with_data_or_other_keys(cli, tmp_path):
    (tmp_path / "items.jsonl").write_text(
        '{"id": "one", "data": {"text": "first"}}\n\n{"id": "two", "text": "second", "n": 2}\n'
    )
    assert js(cli("add", "items.jsonl", "--json")) == {"added": ["one", "two"], "skipped": []}
    with open_store(f"sqlite:///{tmp_path}/state.db") as store:
        assert store.get_work_item_data("one") == {"text": "first"}
        assert store.get_work_item_data("two") == {"text": "second", "n": 2}


def test_add_one_item_and_skip_existing_ones(cli, tmp_path):
    ok(cli("add", "--id", "x", "--data", '{"text": "hello there"}'))
    result = ok(cli("add", "--id", "x", "--data", '{"text": "changed"}'))
    assert result.stdout == (
        "added 0 items; 1 already in the store (left unchanged; --update replaces their data)\n"
    )
    with open_store(f"sqlite:///{tmp_path}/state.db") as store:
        assert store.get_work_item_data("x") == {"text": "hello there"}


def test_add_glob_makes_one_item_per_file(cli, tmp_path):
    (tmp_path / "docs").mkdir()
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / "docs" / name).write_text(name)
    assert js(cli("add", "--glob", "docs/*.txt", "--json"))["added"] == [
        "docs/a.txt",
        "docs/b.txt",
    ]
    with open_store(f"sqlite:///{tmp_path}/state.db") as store:
        assert store.get_work_item_data("docs/a.txt") == {"path": "docs/a.txt"}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"id": "a"}\n{"id": "b",\n', "Error: <stdin>:2: not valid JSON: "),
        ('{"id": "a"}\n[1, 2]\n', 'Error: <stdin>:2: expected a JSON object with an "id"'),
        ('{"data": {}}\n', 'Error: <stdin>:1: missing "id" (a non-empty string)'),
        ('{"id": "a"}\n{"id": "a"}\n', "Error: <stdin>:2: item 'a' appears twice"),
        ('{"id": "a", "data": 3}\n', 'Error: <stdin>:1: "data" must be a JSON object'),
    ],
)
def test_add_refuses_bad_input_and_adds_nothing(cli, tmp_path, lines, message):
    ok(cli("add", "--id", "existing"))
    result = cli("add", "-", input=lines)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.splitlines()) == 1
    with open_store(f"sqlite:///{tmp_path}/state.db") as store:
        assert list(store.list_work_items()) == ["existing"]


def test_add_needs_exactly_one_source(cli):
    result = cli("add", "x.jsonl", "--id", "a")
    assert result.exit_code == 2
    assert "give exactly one of" in result.stderr
    assert cli("add", "--data", "{}").exit_code == 2


# --- run and status ----------------------------------------------------------------------------


def test_run_exits_0_when_everything_is_complete_or_waiting_for_review(cli, tmp_path):
    add(cli, {"id": "a"}, {"id": "b"})
    result = js(cli("run", "--json"))
    assert result == {
        "errors": {},
        "failed": 0,
        "items": {"awaiting_review": 2},
        "stages": {
            "fetch": {"complete": 2},
            "check": {"complete": 2},
            "approve": {"awaiting_review": 2},
            "publish": {"pending": 2},
        },
    }
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "StageStarted"  # the jsonl sink saw the run


def test_run_exits_1_when_something_failed_and_prints_the_summary(ran):
    result = ran("run")
    assert result.exit_code == 1
    assert "STAGE" in result.stdout and "FAILED" in result.stdout
    assert "1 failed" in result.stdout


def test_run_one_item_only(cli):
    add(cli, {"id": "a"}, {"id": "b"})
    ok(cli("run", "--item", "a", "--concurrency", "1"))
    assert js(cli("status", "b", "--json"))["stages"]["fetch"]["status"] == "pending"
    assert js(cli("status", "a", "--json"))["review_stages"] == ["approve"]


def test_run_unknown_item_is_exit_2(cli):
    add(cli, {"id": "a"})
    result = cli("run", "--item", "nope")
    assert result.exit_code == 2
    assert result.stderr == "Error: unknown item 'nope' (add it with 'treadle add')\n"


def test_status_summary_and_one_item(ran):
    summary = js(ran("status", "--json"))
    assert summary["items"] == {"awaiting_review": 2, "failed": 1}
    assert summary["stages"]["check"] == {"complete": 2, "failed": 1}
    text = ok(ran("status")).stdout
    assert "3 items: 2 awaiting review, 1 failed" in text
    item = js(ran("status", "bad", "--json"))
    assert item["failed_stages"] == ["check"]
    assert item["stages"]["check"]["attempt"] == 2
    table = ok(ran("status", "bad")).stdout
    assert "check" in table and "failed" in table and "quality gate rejected" in table


def test_status_of_an_unknown_item_is_exit_2(ran):
    result = ran("status", "nope")
    assert result.exit_code == 2
    assert result.stderr == "Error: unknown item 'nope'\n"


def test_read_commands_do_not_create_a_store(cli, tmp_path):
    result = cli("status")
    assert result.exit_code == 1
    assert "no store at" in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_store_option_and_env_override_the_pipeline_store(cli, tmp_path):
    ok(cli("--store", f"sqlite:///{tmp_path}/other.db", "add", "--id", "a"))
    ok(cli("add", "--id", "b", env={"TREADLE_STORE": f"sqlite:///{tmp_path}/env.db"}))
    assert (tmp_path / "other.db").exists() and (tmp_path / "env.db").exists()
    assert not (tmp_path / "state.db").exists()
    result = cli("--store", "nosuch://x", "add", "--id", "c")
    assert result.exit_code == 1
    assert "unknown scheme 'nosuch'" in result.stderr


def test_every_time_in_json_output_is_iso_8601_utc(ran):
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")

    def times(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from times(v, k)
        elif isinstance(value, list):
            for v in value:
                yield from times(v, key)
        elif key in TIME_KEYS and value is not None:
            yield key, value

    outputs = [
        js(ran("status", "a", "--json")),
        js(ran("review", "show", "bad", "check", "--json")),
        js(ran("review", "list", "--json")),
        [json.loads(line) for line in ok(ran("events", "--json")).stdout.splitlines()],
    ]
    found = [pair for out in outputs for pair in times(out)]
    assert {k for k, _ in found} >= {"at", "started_at", "completed_at", "updated_at", "since"}
    assert all(isinstance(v, str) and iso.match(v) for _, v in found), found


def test_counts_are_singular_for_one(cli, tmp_path):
    (tmp_path / "one.toml").write_text('[stages.only]\nuses = "review"\n')
    assert ", 1 stage (only)" in ok(cli("-p", "one.toml", "validate")).stdout
    add(cli, {"id": "solo"})
    assert "1 item:" in ok(cli("status")).stdout


# --- review ------------------------------------------------------------------------------------


def test_review_list(ran):
    listed = js(ran("review", "list", "--json"))
    assert [(r["item_id"], r["stage"], r["prompt"]) for r in listed["reviews"]] == [
        ("a", "approve", "Ship a?"),
        ("b", "approve", "Ship b?"),
    ]
    assert (listed["shown"], listed["total"], listed["truncated"]) == (2, 2, False)
    text = ok(ran("review", "list")).stdout
    assert "Ship a?" in text and "2 awaiting review" in text


def test_review_list_says_when_it_shows_only_some(ran):
    limited = js(ran("review", "list", "--limit", "1", "--json"))
    assert [r["item_id"] for r in limited["reviews"]] == ["a"]
    assert (limited["shown"], limited["total"], limited["truncated"]) == (1, 2, True)
    text = ok(ran("review", "list", "--limit", "1")).stdout
    assert "showing 1 of 2 awaiting review" in text


def test_review_show_prints_every_attempt_with_verdict_and_feedback(ran):
    shown = js(ran("review", "show", "bad", "check", "--json"))
    assert shown["status"] == "failed"
    assert [a["verdict"] for a in shown["attempts"]] == ["rejected", "rejected"]
    criteria = shown["attempts"][0]["feedback"]["failed_criteria"]
    assert criteria == [{"name": "min chars", "expected": 5, "actual": 2, "passed": False}]
    text = ok(ran("review", "show", "bad", "check")).stdout
    assert "Attempt 2: complete, verdict rejected" in text
    assert "min chars: expected 5, got 2 (FAILED)" in text
    prompt = js(ran("review", "show", "a", "approve", "--json"))
    assert prompt["prompt"] == "Ship a?"
    assert prompt["artefact"] == "hello world"


def test_review_approve_one_then_run_completes_it(ran):
    result = ok(ran("review", "approve", "a", "approve", "--reviewer", "ann", "--comment", "fine"))
    assert result.stdout == "approved a / approve\n"
    ran("run")
    status = js(ran("status", "a", "--json"))
    assert status["is_complete"] is True
    assert status["stages"]["publish"]["artefact"] == {"published": "hello world"}
    reviews = js(ran("review", "show", "a", "approve", "--json"))["reviews"]
    assert [(r["decision"], r["reviewer"], r["comment"]) for r in reviews] == [
        ("approve", "ann", "fine")
    ]


def test_review_approve_all_for_a_stage(ran):
    assert js(ran("review", "approve", "--all", "--stage", "approve", "--json")) == {
        "decision": "approve",
        "decided": [{"item_id": "a", "stage": "approve"}, {"item_id": "b", "stage": "approve"}],
        "skipped": [],
    }
    assert js(ran("review", "list", "--json"))["reviews"] == []


def test_review_reject_needs_a_reason_and_fails_the_stage(ran):
    assert ran("review", "reject", "a", "approve").exit_code == 2
    ok(ran("review", "reject", "a", "approve", "--reason", "off topic", "--reviewer", "bo"))
    status = js(ran("status", "a", "--json"))
    assert status["failed_stages"] == ["approve"]
    assert "off topic" in status["stages"]["approve"]["error"]


def test_review_of_an_unknown_stage_or_item_is_exit_2(ran):
    result = ran("review", "approve", "a", "aprove")
    assert result.exit_code == 2
    assert "did you mean 'approve'?" in result.stderr
    result = ran("review", "approve", "zzz", "approve")
    assert (result.exit_code, result.stderr) == (2, "Error: unknown item 'zzz'\n")


def test_review_approve_a_stage_not_awaiting_review_is_refused(ran):
    result = ran("review", "approve", "a", "fetch")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1


def test_review_edit_from_a_file(ran, tmp_path):
    (tmp_path / "edited.json").write_text('"a better summary"')
    ok(ran("review", "edit", "a", "approve", "--file", "edited.json", "--note", "reworded"))
    ran("run")
    published = js(ran("status", "a", "--json"))["stages"]["publish"]["artefact"]
    assert published == {"published": "a better summary"}


def test_review_edit_refuses_invalid_json_and_saves_nothing(ran, tmp_path):
    (tmp_path / "edited.json").write_text('{"oops": ')
    result = ran("review", "edit", "a", "approve", "--file", "edited.json")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: edited.json: not valid JSON: Expecting value")
    assert result.stderr.rstrip().endswith("nothing saved")
    assert js(ran("status", "a", "--json"))["review_stages"] == ["approve"]


def test_review_edit_in_the_editor(ran, tmp_path):
    script = tmp_path / "editor.py"
    script.write_text(
        "import json, sys\n"
        "path = sys.argv[1]\n"
        "value = json.load(open(path))\n"
        "json.dump(value.upper(), open(path, 'w'))\n"
    )
    ok(ran("review", "edit", "b", "approve", env={"EDITOR": f"{sys.executable} {script}"}))
    ran("run")
    published = js(ran("status", "b", "--json"))["stages"]["publish"]["artefact"]
    assert published == {"published": "LOREM IPSUM"}


# --- retry, events, prune ------------------------------------------------------------------------


def test_retry_one_item_and_all_failed(ran):
    assert js(ran("retry", "bad", "--json")) == {"retried": [{"item_id": "bad", "stage": "check"}]}
    assert js(ran("status", "bad", "--json"))["stages"]["check"]["status"] == "pending"
    assert ran("run").exit_code == 1  # still too short
    assert js(ran("retry", "--failed", "--stage", "check", "--json"))["retried"] == [
        {"item_id": "bad", "stage": "check"}
    ]
    assert js(ran("retry", "--failed", "--stage", "fetch", "--json"))["retried"] == []


def test_retry_refuses_what_has_not_failed(ran):
    result = ran("retry", "a", "check")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    result = ran("retry", "a")
    assert result.stderr == "Error: item 'a' has no failed stage\n"
    assert ran("retry").exit_code == 2


def test_events_replay_the_journal(ran):
    lines = [json.loads(line) for line in ok(ran("events", "a", "--json")).stdout.splitlines()]
    assert [e["type"] for e in lines[:2]] == ["StageStarted", "StageCompleted"]
    assert {e["item_id"] for e in lines} == {"a"}
    assert lines == sorted(lines, key=lambda e: e["id"])
    text = ok(ran("events")).stdout
    assert "bad  check  QualityCheckFailed" in text
    after = ok(ran("events", "--after", str(lines[-1]["id"]), "--json")).stdout.splitlines()
    assert all(json.loads(line)["id"] > lines[-1]["id"] for line in after)


def test_events_follow_polls_for_new_events(ran):
    result = ok(ran("events", "a", "--follow", "--interval", "0.01", "--max-polls", "2", "--json"))
    assert result.stdout.splitlines()


def test_events_of_an_unknown_item_is_exit_2(ran):
    assert ran("events", "nope").exit_code == 2


def test_prune_dry_run_then_delete(ran):
    ok(ran("review", "approve", "--all", "--stage", "approve"))
    ran("run")
    assert js(ran("prune", "--completed-before", "0s", "--dry-run", "--json")) == {
        "dry_run": True,
        "items": ["a", "b"],
    }
    assert js(ran("status", "--json"))["items"] == {"complete": 2, "failed": 1}
    assert js(ran("prune", "--completed-before", "30d", "--json"))["items"] == []
    assert sorted(js(ran("prune", "--completed-before", "0s", "--json"))["items"]) == ["a", "b"]
    assert js(ran("status", "--json"))["items"] == {"failed": 1}
    result = ran("prune", "--completed-before", "a month")
    assert result.exit_code == 2
    assert "is not a duration" in result.stderr


# --- listings ------------------------------------------------------------------------------------


def test_stages_gates_sinks_stores_list(cli):
    stages = {r["type"]: r for r in js(cli("stages", "list", "--json"))}
    assert set(stages) >= {"python", "review", "shell"}
    assert stages["shell"]["options"]["timeout"]["type"] == "duration"
    assert stages["review"]["plugin"] == "treadle_core.builtins.stages"
    # Subsets: installed plugin distributions (treadle-sink-webhook, ...) may add more.
    gates = [r["type"] for r in js(cli("gates", "list", "--json"))]
    assert {"command", "json-schema", "min-length", "regex"} <= set(gates)
    assert gates == sorted(gates)
    sinks = [r["type"] for r in js(cli("sinks", "list", "--json"))]
    assert {"console", "jsonl"} <= set(sinks) and sinks == sorted(sinks)
    schemes = [r["scheme"] for r in js(cli("stores", "list", "--json"))]
    assert {"memory", "sqlite", "postgresql", "mysql"} <= set(schemes)
    assert "shell" in ok(cli("stages", "list")).stdout


def test_every_listing_has_json(pm):
    from treadle_core.cli import create_cli

    cli = create_cli(pm)
    listings = [
        ("plugins", "list"),
        ("stages", "list"),
        ("gates", "list"),
        ("sinks", "list"),
        ("stores", "list"),
        ("review", "list"),
        ("review", "show"),
        ("status",),
        ("events",),
        ("validate",),
        ("add",),
        ("run",),
        ("retry",),
        ("prune",),
    ]
    for path in listings:
        command = cli
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        assert any("--json" in p.opts for p in command.params), path


def test_console_sink_prints_events(pm, tmp_path):
    (tmp_path / "treadle.toml").write_text(
        textwrap.dedent(
            """
            [pipeline]
            store = "sqlite:///state.db"
            [stages.one]
            uses = "review"
            [[sinks]]
            uses = "console"
            stderr = false
            """
        )
    )
    cli = TreadleCli(pm, tmp_path)
    ok(cli("add", "--id", "a"))
    assert "a/one ReviewRequired" in ok(cli("run")).stdout
