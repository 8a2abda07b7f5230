"""People in the loop through the CLI (SPEC §11): choices, forms from treadle.toml (inline
or a JSON Schema file), approvers and required approvals, branch, request changes,
checked edits, and a reviewer named on every decision."""

from __future__ import annotations

import json

import pytest

from treadle_core._fixtures import TreadleCli
from treadle_core.plugins import get_plugin_manager

PIPELINE = """
[pipeline]
name = "news"
store = "sqlite:///state.db"

[stages.draft]
uses = "stages:draft"
gate = { uses = "stages:TitleGate" }

[stages.year]
uses = "review"
needs = ["draft"]
stage = "draft"
prompt = "Sources disagree on the year of {item.id}"
choices = ["2021", "2022"]

[stages.rate]
uses = "review"
needs = ["year"]
form = "rate.schema.json"
approvers = ["ana", "bo", "cy"]
required_approvals = 2

[stages.route]
uses = "review"
needs = ["rate"]
prompt = "Where does {item.id} go?"
branch = { web = ["web"], print = ["print"] }

[stages.web]
uses = "stages:web"
needs = ["route"]

[stages.print]
uses = "stages:printed"
needs = ["route"]
"""

STAGES = """
from treadle_core import Accepted, Complete, QualityFeedback, Rejected, StageOutput
from treadle_core.quality import QualityGate


def draft(item, ctx):
    said = ctx.feedback.summary if ctx.feedback else None
    return StageOutput(Complete(), artefact={"title": "T", "text": "x", "feedback": said})


class TitleGate(QualityGate):
    async def evaluate(self, item, stage, output, ctx):
        if isinstance(output.artefact, dict) and output.artefact.get("title"):
            return Accepted()
        return Rejected(QualityFeedback("a draft needs its title"))


def web(item, ctx):
    return StageOutput(Complete(), artefact={"year": ctx.reviews["year"].choice})


def printed(item, ctx):
    return StageOutput(Complete())
"""

SCHEMA = {
    "type": "object",
    "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["stars"],
}


def ok(result):
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def js(result):
    return json.loads(ok(result).stdout)


def refused(result, text):
    """One clear line, a non-zero exit, no traceback."""
    assert result.exit_code != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    return result


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.delenv("TREADLE_STORE", raising=False)
    monkeypatch.delenv("TREADLE_REVIEWER", raising=False)
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(STAGES)
    (tmp_path / "rate.schema.json").write_text(json.dumps(SCHEMA))
    cli = TreadleCli(get_plugin_manager(), tmp_path)
    ok(cli("add", "-", input='{"id": "a"}\n'))
    ok(cli("run"))
    return cli


def stage_of(cli, stage):
    return js(cli("status", "a", "--json"))["stages"][stage]


def test_a_choice_from_the_cli_and_what_is_refused(cli):
    shown = js(cli("review", "show", "a", "year", "--json"))
    assert shown["choices"] == ["2021", "2022"]
    assert "Choices: 2021, 2022" in ok(cli("review", "show", "a", "year")).stdout
    refused(cli("review", "approve", "a", "year", "--reviewer", "ana"), "choose one of: 2021, 2022")
    refused(
        cli("review", "approve", "a", "year", "--choice", "2023", "--reviewer", "ana"),
        "'2023' is not one of the choices (2021, 2022)",
    )
    assert stage_of(cli, "year")["status"] == "awaiting_review"
    assert js(cli("review", "show", "a", "year", "--json"))["reviews"] == []
    ok(cli("review", "approve", "a", "year", "--choice", "2022", "--reviewer", "ana"))
    [record] = js(cli("review", "show", "a", "year", "--json"))["reviews"]
    assert (record["choice"], record["reviewer"]) == ("2022", "ana")


def test_a_form_and_two_approvers_from_the_file(cli):
    ok(cli("review", "approve", "a", "year", "--choice", "2021", "--reviewer", "ana"))
    ok(cli("run"))
    listed = js(cli("review", "list", "--json"))["reviews"]
    assert [(r["stage"], r["form"]) for r in listed] == [("rate", SCHEMA)]
    refused(
        cli("review", "approve", "a", "rate", "--values", '{"stars": 9}', "--reviewer", "ana"),
        "form field 'stars': 9 is greater than the maximum of 5",
    )
    refused(
        cli("review", "approve", "a", "rate", "--values", '{"stars": 4}', "--reviewer", "eve"),
        "'eve' is not one of its approvers (ana, bo, cy)",
    )
    refused(
        cli("review", "approve", "a", "rate", "--values", "[1]", "--reviewer", "ana"), "JSON object"
    )
    ok(cli("review", "approve", "a", "rate", "--values", '{"stars": 4}', "--reviewer", "ana"))
    refused(
        cli("review", "approve", "a", "rate", "--values", '{"stars": 5}', "--reviewer", "ana"),
        "'ana' has already approved it",
    )
    shown = js(cli("review", "show", "a", "rate", "--json"))
    assert [v["reviewer"] for v in shown["votes"]] == ["ana"]
    assert (shown["approvers"], shown["required_approvals"]) == (["ana", "bo", "cy"], 2)
    assert js(cli("review", "list", "--for", "ana", "--json"))["reviews"] == []
    assert len(js(cli("review", "list", "--for", "bo", "--json"))["reviews"]) == 1
    assert "1 approval so far" in ok(cli("review", "list")).stdout
    ok(
        cli("review", "approve", "a", "rate", "--values", "@vals.json", "--reviewer", "bo"),
    ) if False else None
    (cli.cwd / "vals.json").write_text('{"stars": 3}')
    ok(cli("review", "approve", "a", "rate", "--values", "@vals.json", "--reviewer", "bo"))
    assert stage_of(cli, "rate")["status"] == "complete"


def test_branch_from_the_file_and_ctx_reviews(cli):
    ok(cli("review", "approve", "a", "year", "--choice", "2021", "--reviewer", "ana"))
    ok(cli("run"))
    for who in ("ana", "cy"):
        ok(cli("review", "approve", "a", "rate", "--values", '{"stars": 2}', "--reviewer", who))
    ok(cli("run"))
    ok(cli("review", "approve", "a", "route", "--choice", "web", "--reviewer", "ana"))
    ok(cli("run"))
    assert stage_of(cli, "web")["artefact"] == {"year": "2021"}
    assert stage_of(cli, "print")["status"] == "skipped"


def test_request_changes_from_the_cli(cli):
    refused(cli("review", "changes", "a", "year", "--feedback", " ", "--reviewer", "ana"), "empty")
    ok(cli("review", "changes", "a", "year", "--feedback", "check the year", "--reviewer", "ana"))
    assert stage_of(cli, "draft")["status"] == "pending"
    ok(cli("run"))
    assert stage_of(cli, "draft")["artefact"]["feedback"] == "check the year"
    assert stage_of(cli, "draft")["attempt"] == 2
    events = [json.loads(line) for line in ok(cli("events", "--json")).stdout.splitlines()]
    changed = [e for e in events if e["type"] == "ChangesRequested"]
    assert [(e["stage"], e["feedback"], e["reviewer"]) for e in changed] == [
        ("draft", "check the year", "ana")
    ]


def test_an_edit_is_checked_by_the_gate_unless_forced(cli, tmp_path):
    (cli.cwd / "no-title.json").write_text('{"text": "y"}')
    refused(
        cli("review", "edit", "a", "year", "--file", "no-title.json", "--reviewer", "ana"),
        "asks for a choice",
    )
    # A pipeline whose review stage asks nothing: the edit meets the gate of "draft".
    head = PIPELINE.split("[stages.year]")[0].replace("state.db", "edit.db")
    review = '[stages.check]\nuses = "review"\nneeds = ["draft"]\nstage = "draft"\n'
    (tmp_path / "edit.toml").write_text(head + review)
    ok(cli("-p", "edit.toml", "add", "-", input='{"id": "e"}\n'))
    ok(cli("-p", "edit.toml", "run"))
    edit = ("-p", "edit.toml", "review", "edit", "e", "check", "--file", "no-title.json")
    refused(
        cli(*edit, "--reviewer", "ana"),
        "fails the quality gate of stage 'draft': a draft needs its title",
    )
    shown = js(cli("-p", "edit.toml", "review", "show", "e", "check", "--json"))
    assert shown["status"] == "awaiting_review" and shown["reviews"] == []
    ok(cli(*edit, "--force", "--reviewer", "ana"))
    [record] = js(cli("-p", "edit.toml", "review", "show", "e", "check", "--json"))["reviews"]
    assert (record["decision"], record["forced"]) == ("approve_with_edits", True)
    text = ok(cli("-p", "edit.toml", "review", "show", "e", "check")).stdout
    assert "edit forced past the quality gate" in text


def test_every_decision_names_its_reviewer(cli, monkeypatch):
    import getpass

    def nobody():
        raise OSError("no login name")

    for var in ("USER", "LOGNAME", "USERNAME", "LNAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(getpass, "getuser", nobody)
    result = cli("review", "approve", "a", "year", "--choice", "2021")
    refused(result, "who is deciding? give --reviewer NAME or set $TREADLE_REVIEWER")
    assert result.exit_code == 2
    assert stage_of(cli, "year")["status"] == "awaiting_review"
    ok(cli("review", "approve", "a", "year", "--choice", "2021", env={"TREADLE_REVIEWER": "dee"}))
    assert js(cli("review", "show", "a", "year", "--json"))["reviews"][0]["reviewer"] == "dee"


def test_a_rejection_with_an_empty_reason_is_refused(cli):
    result = refused(
        cli("review", "reject", "a", "year", "--reason", "", "--reviewer", "ana"), "empty"
    )
    assert result.exit_code == 2
    assert stage_of(cli, "year")["status"] == "awaiting_review"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('form = { type = "nope" }', "key 'form': the schema: not a valid JSON Schema"),
        ('form = "missing.json"', "key 'form': cannot read"),
        ("form = 3", "key 'form': expected a JSON Schema"),
        ('choices = ["a", "a"]', "distinct non-empty strings"),
        ("approvers = []", "key 'approvers': expected a list of reviewer names"),
        ('approvers = ["ana"]\nrequired_approvals = 2', "2 approvals required from 1 approver"),
        ("required_approvals = 0", "key 'required_approvals': must be from 1"),
        ('branch = { yes = ["nope"] }', "lists 'nope', which does not depend on 'ask'"),
        ("branch = { yes = [1] }", "key 'branch.yes': expected a list of stage names"),
    ],
)
def test_bad_review_settings_in_the_file_are_one_line(tmp_path, table, problem):
    after = '[stages.next]\nuses = "review"\nneeds = ["ask"]\n'
    (tmp_path / "treadle.toml").write_text(f'[stages.ask]\nuses = "review"\n{table}\n\n{after}')
    cli = TreadleCli(get_plugin_manager(), tmp_path)
    result = cli("validate")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], result.stderr
