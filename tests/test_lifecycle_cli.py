"""Pipelines that live for months (SPEC §10), through the CLI: in-process for the details,
and the real ``treadle`` in subprocesses on SQLite and PostgreSQL for the whole story."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from _util import snapshot
from rich.console import Console
from test_cli_subprocess import treadle_command

from treadle_core import ItemState, StageStatus, Workflow, open_store
from treadle_core._fixtures import TreadleCli
from treadle_core.cli.context import reconcile
from treadle_core.plugins import get_plugin_manager

STAGES = """
from treadle_core import NeedsReview, StageOutput


def a(item, ctx):
    return StageOutput(artefact={"a": item.data.get("n", 0)})


def b(item, ctx):
    return StageOutput(artefact={"b": 1})


def c(item, ctx):
    return None


def ask(item, ctx):
    return StageOutput(NeedsReview("ok?"), artefact=ctx.upstream["a"])
"""


def pipeline(*stages: str, name: str = "docs") -> str:
    """A treadle.toml of ``[stages.X]`` tables given as "name: key = value; key = value"."""
    out = [f'[pipeline]\nname = "{name}"\n']
    for spec in stages:
        stage, _, rest = spec.partition(":")
        out.append(f"[stages.{stage.strip()}]")
        for line in rest.split(";"):
            if line.strip():
                out.append(line.strip())
        out.append("")
    return "\n".join(out)


V1 = pipeline('a: uses = "stages:a"', 'b: uses = "stages:b"; needs = ["a"]')


@pytest.fixture(scope="module")
def pm() -> Any:
    return get_plugin_manager()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("TREADLE_")]:
        monkeypatch.delenv(key)
    (tmp_path / "treadle.toml").write_text(V1)
    (tmp_path / "stages.py").write_text(STAGES)
    return tmp_path


@pytest.fixture
def cli(pm: Any, project: Path) -> TreadleCli:
    return TreadleCli(pm, project)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def url(project: Path) -> str:
    return f"sqlite:///{project}/.treadle/state.db"


def refused(result: Any, code: int, message: str) -> None:
    assert (result.exit_code, result.stderr) == (code, f"Error: {message}\n"), result.stdout


@pytest.fixture
def ran(cli: TreadleCli) -> TreadleCli:
    for n in range(3):
        ok(cli("add", "--id", f"i{n}", "--data", json.dumps({"n": n})))
    ok(cli("run"))
    return cli


# --- rerun and cancel, in-process -------------------------------------------------------------


def test_rerun_one_item_cascades_and_journals(ran: TreadleCli, project: Path) -> None:
    result = ok(ran("rerun", "i0", "a", "--reason", "fixed", "--by", "ann"))
    assert result.stdout == (
        "1 stage back to pending with everything downstream; a worker or 'treadle run' runs them\n"
    )
    events = ok(ran("events", "i0", "--json")).stdout.splitlines()
    resets = [json.loads(e) for e in events if '"StageReset"' in e]
    assert [(e["stage"], e["by"], e["reason"]) for e in resets] == [
        ("a", "ann", "fixed"),
        ("b", "ann", "fixed"),
    ]
    ok(ran("run"))
    status = json.loads(ok(ran("status", "i0", "--json")).stdout)
    assert status["stages"]["b"]["attempt"] == 2 and status["is_complete"]


def test_rerun_no_cascade_marks_downstream_stale(ran: TreadleCli) -> None:
    ok(ran("rerun", "i0", "a", "--no-cascade"))
    status = json.loads(ok(ran("status", "i0", "--json")).stdout)
    assert status["stale_stages"] == ["b"]
    assert (status["stages"]["a"]["status"], status["stages"]["b"]["status"]) == (
        "pending",
        "complete",
    )
    ok(ran("run"))
    assert json.loads(ok(ran("status", "--json")).stdout)["stale"] == {"b": 1}
    result = ok(ran("rerun", "--stage", "b", "--stale", "--json"))
    assert json.loads(result.stdout) == {"reset": [{"item_id": "i0", "stage": "b"}], "skipped": []}


def test_rerun_in_bulk_by_status(ran: TreadleCli, project: Path) -> None:
    with open_store(url(project)) as store:
        st = store.get_stage_state("i1", "b")
        store.save_stage_state("i1", "b", st.replace(status=StageStatus.FAILED))  # type: ignore[union-attr]
    result = ok(ran("rerun", "--stage", "b", "--status", "failed", "--json"))
    assert json.loads(result.stdout)["reset"] == [{"item_id": "i1", "stage": "b"}]
    result = ok(ran("rerun", "--stage", "a", "--all"))
    assert result.stdout.startswith("3 stages back to pending with everything downstream")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give ITEM STAGE, or --stage S with --all, --stale or --status STATUS"),
        (("i0",), "give ITEM STAGE, or --stage S with --all, --stale or --status STATUS"),
        (("--all",), "--all goes with --stage S"),
        (("--stage", "a"), "--stage a needs exactly one of --all, --stale, --status STATUS"),
        (("--stage", "a", "--all", "--stale"), "--stage a needs exactly one of --all"),
        (("i0", "--stage", "a", "--all"), "--stage S takes no ITEM"),
        (("--stage", "a", "--status", "bogus"), "--status: 'bogus' is not a stage status"),
        (("nope", "a"), "unknown item 'nope'"),
        (("i0", "aa"), "workflow 'docs' has no stage 'aa' (did you mean 'a'?)"),
        (("--stage", "aa", "--all"), "workflow 'docs' has no stage 'aa' (did you mean 'a'?)"),
    ],
)
def test_rerun_usage_mistakes_are_one_line_exit_2_and_change_nothing(
    ran: TreadleCli, project: Path, args: tuple[str, ...], message: str
) -> None:
    with open_store(url(project)) as store:
        before = snapshot(store, ["i0", "i1", "i2"], ["a", "b"])
    result = ran("rerun", *args)
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    with open_store(url(project)) as store:
        assert snapshot(store, ["i0", "i1", "i2"], ["a", "b"]) == before


def test_rerun_of_a_running_stage_is_refused_exit_1(ran: TreadleCli, project: Path) -> None:
    with open_store(url(project)) as store:
        st = store.get_stage_state("i0", "b")
        store.save_stage_state("i0", "b", st.replace(status=StageStatus.RUNNING))  # type: ignore[union-attr]
        before = snapshot(store, ["i0"], ["a", "b"])
    result = ran("rerun", "i0", "a")
    refused(
        result,
        1,
        "item 'i0' stage 'b' is running; wait for it to finish, or cancel the item, then re-run",
    )
    with open_store(url(project)) as store:
        assert snapshot(store, ["i0"], ["a", "b"]) == before


def test_cancel_items(cli: TreadleCli, project: Path) -> None:
    (project / "treadle.toml").write_text(
        pipeline('a: uses = "stages:a"', 'ask: uses = "stages:ask"; needs = ["a"]')
    )
    for n in range(3):
        ok(cli("add", "--id", f"i{n}"))
    ok(cli("run"))
    result = ok(cli("cancel", "i0", "i1", "--reason", "withdrawn", "--by", "ann"))
    assert result.stdout == "cancelled 2 items\n"
    status = json.loads(ok(cli("status", "--json")).stdout)
    assert status["items"] == {"cancelled": 2, "awaiting_review": 1}
    listed = json.loads(ok(cli("review", "list", "--json")).stdout)["reviews"]
    assert [r["item_id"] for r in listed] == ["i2"]
    refused(
        cli("cancel", "i0"),
        1,
        "item 'i0' has nothing to cancel: every stage is complete, skipped or cancelled already",
    )
    result = ok(cli("cancel", "i0", "i2", "--json"))
    assert json.loads(result.stdout)["cancelled"] == ["i2"]
    with open_store(url(project)) as store:
        before = snapshot(store, ["i0", "i1", "i2"], ["a", "ask"])
    refused(cli("cancel", "i1", "nope"), 2, "unknown item 'nope'; nothing cancelled")
    no_name = "--by is empty: say who is deciding; nothing saved"
    refused(cli("cancel", "i2", "--by", " "), 2, no_name)
    refused(cli("rerun", "i0", "ask", "--by", ""), 2, no_name)
    with open_store(url(project)) as store:
        assert snapshot(store, ["i0", "i1", "i2"], ["a", "ask"]) == before
    ok(cli("rerun", "i0", "ask"))  # revives it
    assert json.loads(ok(cli("status", "i0", "--json")).stdout)["state"] == "ready"


def test_add_update(ran: TreadleCli, project: Path) -> None:
    result = ok(ran("add", "--id", "i0", "--data", '{"n": 10}'))
    assert "--update replaces their data" in result.stdout
    result = ok(ran("add", "--update", "--id", "i0", "--data", '{"n": 10}', "--json"))
    assert json.loads(result.stdout) == {
        "added": [],
        "updated": ["i0"],
        "unchanged": [],
        "skipped": [],
    }
    result = ok(ran("add", "--update", "--id", "i0", "--data", '{"n": 10}'))
    assert result.stdout == "added 0 items; 1 already in the store with the same data\n"
    assert json.loads(ok(ran("status", "--json")).stdout)["stale"] == {"a": 1, "b": 1}
    ok(ran("rerun", "--stage", "a", "--stale"))
    ok(ran("run"))
    with open_store(url(project)) as store:
        assert store.get_stage_state("i0", "a").artefact == {"a": 10}  # type: ignore[union-attr]


# --- a changed pipeline file, in-process -------------------------------------------------------


def test_status_shows_stale_and_removed_stages(ran: TreadleCli, project: Path) -> None:
    (project / "treadle.toml").write_text(pipeline('a: uses = "stages:a"; version = "2"'))
    result = ok(ran("run"))
    assert result.stderr == (
        "pipeline 'docs' changed: removed b; a version 1 -> 2; 3 items checked; "
        "3 stage states now stale (a)\n"
    )
    text = ok(ran("status")).stdout
    assert "b (removed)" in text and "STALE" in text
    assert "3 stale stage states: re-run them with 'treadle rerun --stage S --stale'" in text
    item = ok(ran("status", "i0")).stdout
    assert "complete (stale)" in item and "b (removed)" in item
    view = json.loads(ok(ran("status", "--json")).stdout)
    assert view["removed_stages"] == {"b": {"complete": 3}}
    assert view["stale"] == {"a": 3}
    assert view["last_change"].startswith("pipeline 'docs' changed: removed b")


def test_a_renamed_from_naming_no_stage_is_exit_2_and_changes_nothing(
    ran: TreadleCli, project: Path
) -> None:
    (project / "treadle.toml").write_text(
        pipeline(
            'a: uses = "stages:a"', 'b2: uses = "stages:b"; needs = ["a"]; renamed_from = "bb"'
        )
    )
    with open_store(url(project)) as store:
        before = (snapshot(store, ["i0"], ["a", "b", "b2"]), store.get_definition())
    refused(
        ran("run"),
        2,
        "stage 'b2' is renamed_from 'bb', which the store never had (its stages: a, b); "
        "fix renamed_from, or drop it for a new stage",
    )
    with open_store(url(project)) as store:
        assert (snapshot(store, ["i0"], ["a", "b", "b2"]), store.get_definition()) == before


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("version = true", "key 'version': expected a version string like \"2\", got True"),
        ("renamed_from = 3", "key 'renamed_from': expected the stage's old name (or a list"),
        ('renamed_from = "a"', "stage 'b' is renamed_from 'a', which is still a stage"),
    ],
)
def test_bad_version_or_renamed_from_in_the_file(
    cli: TreadleCli, project: Path, table: str, message: str
) -> None:
    (project / "treadle.toml").write_text(
        pipeline('a: uses = "stages:a"', f'b: uses = "stages:b"; needs = ["a"]; {table}')
    )
    result = cli("validate")
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_a_progress_bar_shows_while_a_large_store_is_reconciled(project: Path) -> None:
    with open_store(url(project)) as store:
        for n in range(30):
            store.save_work_item_data(f"i{n}", {})
        v1 = Workflow.builder("docs").stage("a", lambda item, ctx: None).build()
        asyncio.run(v1.run(store))
        v2 = Workflow.builder("docs").stage("a", lambda item, ctx: None, version="2").build()
        out = io.StringIO()
        reconcile(v2, store, err=Console(file=out, force_terminal=True, width=100), threshold=10)
        assert "reconciling 'docs'" in out.getvalue()
        quiet = io.StringIO()
        v3 = Workflow.builder("docs").stage("a", lambda item, ctx: None, version="3").build()
        reconcile(v3, store, err=Console(file=quiet, force_terminal=True), threshold=1000)
        assert quiet.getvalue() == ""


# --- the store alone, and --app ---------------------------------------------------------------


def test_commands_work_with_the_store_alone(ran: TreadleCli, pm: Any, project: Path) -> None:
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    cli = TreadleCli(pm, elsewhere)
    store = ["--store", url(project)]
    assert "3 items: 3 complete" in ok(cli(*store, "status")).stdout
    assert json.loads(ok(cli(*store, "status", "i0", "--json")).stdout)["is_complete"]
    assert ok(cli(*store, "graph")).stdout == "docs\n  a  [?]\n  b  [?]  <- a\n"
    assert ok(cli(*store, "review", "list")).stdout == "nothing waits for review\n"
    assert "StageCompleted" in ok(cli(*store, "events", "i0")).stdout
    ok(cli(*store, "rerun", "i0", "b"))
    ok(cli(*store, "cancel", "i0"))
    assert json.loads(ok(cli(*store, "status", "i0", "--json")).stdout)["state"] == "cancelled"
    refused(
        cli(*store, "run"),
        2,
        "treadle.toml: no such file; running stages needs their code "
        "(a treadle.toml, -p PATH or --app pkg.module:attr)",
    )
    refused(
        cli("status"),
        2,
        "treadle.toml: no such file (run 'treadle init' to create one, pass -p PATH, or --app "
        "pkg.module:attr for a pipeline built in Python; --store URL alone reads the store's "
        "pipeline)",
    )
    empty = f"sqlite:///{elsewhere}/empty.db"
    open_store(empty).close()
    result = cli("--store", empty, "status")
    assert result.exit_code == 1 and "has no recorded pipeline yet" in result.stderr


APP = """
from treadle_core import Workflow


def a(item, ctx):
    return None


wf = Workflow.builder("pyapp").stage("a", a).stage("b", a, needs=["a"]).build()


def build():
    return wf


not_a_workflow = 42
"""


def test_app_runs_and_operates_a_pipeline_built_in_python(pm: Any, tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    cli = TreadleCli(pm, tmp_path)
    ok(cli("--app", "myapp:wf", "add", "--id", "x"))
    ok(cli("--app", "myapp:wf", "run"))
    assert "2 stages" in ok(cli("--app", "myapp:build", "validate")).stdout
    view = json.loads(ok(cli("status", "--json", env={"TREADLE_APP": "myapp:build"})).stdout)
    assert view["items"] == {"complete": 1}
    assert (tmp_path / ".treadle" / "state.db").exists()


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuchmodule:wf", "--app 'nosuchmodule:wf': no module named 'nosuchmodule'"),
        ("myapp:nope", "--app 'myapp:nope': 'myapp' has no attribute 'nope'"),
        ("myapp:not_a_workflow", "--app 'myapp:not_a_workflow' is a int, not a Workflow"),
        ("myapp", "--app 'myapp': expected 'package.module:attribute'"),
    ],
)
def test_a_bad_app_is_one_line_exit_2(pm: Any, tmp_path: Path, ref: str, message: str) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    result = TreadleCli(pm, tmp_path)("--app", ref, "status")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1


# --- the real treadle in subprocesses, on SQLite and PostgreSQL -------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


def treadle(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    return subprocess.run(
        [*treadle_command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def done(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def test_a_pipeline_file_edited_between_runs(tmp_path: Path, store_url: str) -> None:
    (tmp_path / "stages.py").write_text(STAGES)
    toml = tmp_path / "treadle.toml"
    toml.write_text(V1)
    s = ["--store", store_url]
    done(treadle(tmp_path, *s, "add", "--id", "i0"))
    done(treadle(tmp_path, *s, "add", "--id", "i1"))
    done(treadle(tmp_path, *s, "run"))
    # A stage added.
    toml.write_text(V1 + '\n[stages.c]\nuses = "stages:c"\nneeds = ["b"]\n')
    result = done(treadle(tmp_path, *s, "run", "--json"))
    assert (
        result.stderr
        == "pipeline 'docs' changed: added c; 2 items checked; 2 items have new work\n"
    )
    assert json.loads(result.stdout)["stages"]["c"] == {"complete": 2}
    # A stage renamed, and another's version bumped.
    toml.write_text(
        pipeline(
            'a: uses = "stages:a"; version = "2"',
            'bee: uses = "stages:b"; needs = ["a"]; renamed_from = "b"',
            'c: uses = "stages:c"; needs = ["bee"]',
        )
    )
    result = done(treadle(tmp_path, *s, "run"))
    assert result.stderr == (
        "pipeline 'docs' changed: renamed b -> bee; a version 1 -> 2; 2 items checked; "
        "2 stage states renamed; 6 stage states now stale (a, bee, c)\n"
    )
    view = json.loads(done(treadle(tmp_path, *s, "status", "--json")).stdout)
    assert view["stale"] == {"a": 2, "bee": 2, "c": 2}
    item = json.loads(done(treadle(tmp_path, *s, "status", "i0", "--json")).stdout)
    assert item["stages"]["bee"]["attempt"] == 1  # carried over, not run again
    # A stage removed.
    toml.write_text(
        pipeline('a: uses = "stages:a"; version = "2"', 'bee: uses = "stages:b"; needs = ["a"]')
    )
    result = done(treadle(tmp_path, *s, "run"))
    assert result.stderr.startswith("pipeline 'docs' changed: removed c; 2 items checked")
    view = json.loads(done(treadle(tmp_path, *s, "status", "--json")).stdout)
    assert view["removed_stages"] == {"c": {"complete": 2}}
    assert view["items"] == {"complete": 2}
    # Re-run what is stale, from a directory with no pipeline file at all.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done(treadle(elsewhere, *s, "rerun", "--stage", "a", "--stale", "--reason", "v2"))
    done(treadle(tmp_path, *s, "run"))
    view = json.loads(done(treadle(elsewhere, *s, "status", "--json")).stdout)
    assert view["stale"] == {} and view["items"] == {"complete": 2}
    # Bad input: one line, exit 2, no traceback, nothing changed.
    before = done(treadle(elsewhere, *s, "status", "--json")).stdout
    for args, message in [
        (("rerun", "nope", "a"), "unknown item 'nope'"),
        (("rerun", "i0", "zzz"), "workflow 'docs' has no stage 'zzz'"),
        (("cancel", "nope"), "unknown item 'nope'; nothing cancelled"),
    ]:
        result = treadle(elsewhere, *s, *args)
        assert result.returncode == 2 and result.stderr.startswith(f"Error: {message}")
        assert result.stderr.count("\n") == 1
    toml.write_text(
        pipeline(
            'a: uses = "stages:a"; version = "2"',
            'bee: uses = "stages:b"; needs = ["a"]',
            'd: uses = "stages:c"; needs = ["a"]; renamed_from = "zz"',
        )
    )
    result = treadle(tmp_path, *s, "run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "renamed_from 'zz', which the store never had" in result.stderr
    assert done(treadle(elsewhere, *s, "status", "--json")).stdout == before


def test_a_thousand_items_rerun_with_cascade_from_the_cli(tmp_path: Path, store_url: str) -> None:
    (tmp_path / "stages.py").write_text(STAGES)
    (tmp_path / "treadle.toml").write_text(V1 + '\n[stages.c]\nuses = "stages:c"\nneeds = ["b"]\n')
    s = ["--store", store_url]
    lines = "".join(json.dumps({"id": f"i{n:04d}"}) + "\n" for n in range(1000))
    (tmp_path / "items.jsonl").write_text(lines)
    done(treadle(tmp_path, *s, "add", "items.jsonl"))
    done(treadle(tmp_path, *s, "run", "--concurrency", "32"))
    result = done(treadle(tmp_path, *s, "rerun", "--stage", "a", "--all", "--by", "ops"))
    assert result.stdout.startswith("1000 stages back to pending with everything downstream")
    view = json.loads(done(treadle(tmp_path, *s, "status", "--json")).stdout)
    assert view["items"] == {"ready": 1000}
    assert view["stages"] == {s: {"pending": 1000} for s in ("a", "b", "c")}
    done(treadle(tmp_path, *s, "run", "--concurrency", "32"))
    view = json.loads(done(treadle(tmp_path, *s, "status", "--json")).stdout)
    assert view["items"] == {"complete": 1000}
    item = json.loads(done(treadle(tmp_path, *s, "status", "i0999", "--json")).stdout)
    assert [item["stages"][x]["attempt"] for x in ("a", "b", "c")] == [2, 2, 2]


SLOW = """
import asyncio
import time
from pathlib import Path

from treadle_core import StageOutput

HERE = Path(__file__).parent


def first(item, ctx):
    return None


async def slow_async(item, ctx):
    (HERE / "async.started").touch()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        (HERE / "async.cancelled").touch()
        raise


def slow_sync(item, ctx):
    (HERE / "sync.started").touch()
    deadline = time.monotonic() + 60
    while not (HERE / "sync.release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    (HERE / "sync.returned").touch()
    return StageOutput(artefact={"late": True})


def last(item, ctx):
    return None
"""

SLOW_TOML = """
[pipeline]
name = "slow"

[stages.first]
uses = "stages:first"

[stages.aio]
uses = "stages:slow_async"
needs = ["first"]

[stages.thread]
uses = "stages:slow_sync"
needs = ["first"]

[stages.last]
uses = "stages:last"
needs = ["aio", "thread"]
"""


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_cancel_stops_async_and_sync_stages_running_in_a_worker(
    tmp_path: Path, store_url: str
) -> None:
    (tmp_path / "stages.py").write_text(SLOW)
    (tmp_path / "treadle.toml").write_text(SLOW_TOML)
    s = ["--store", store_url]
    done(treadle(tmp_path, *s, "add", "--id", "x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    worker = subprocess.Popen(
        [*treadle_command(), *s, "worker", "--lease", "1s", "--poll", "100ms", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(tmp_path / "async.started")
        _wait_for(tmp_path / "sync.started")
        result = done(treadle(tmp_path, *s, "cancel", "x", "--reason", "stop", "--by", "ann"))
        assert result.stdout == "cancelled 1 item\n"
        _wait_for(tmp_path / "async.cancelled", 30)  # the worker noticed within its lease
        (tmp_path / "sync.release").touch()
        _wait_for(tmp_path / "sync.returned", 30)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert json.loads(out)["lost_leases"] == []
    item = json.loads(done(treadle(tmp_path, *s, "status", "x", "--json")).stdout)
    assert item["state"] == "cancelled"
    assert {n: v["status"] for n, v in item["stages"].items()} == {
        "first": "complete",
        "aio": "cancelled",
        "thread": "cancelled",
        "last": "cancelled",
    }
    assert item["stages"]["thread"]["artefact"] is None  # the sync result was dropped
    with open_store(store_url) as store:
        for name in ("aio", "thread"):
            (record,) = store.get_attempts("x", name)
            assert (record.outcome, record.error) == ("cancelled", "cancelled by ann: stop")
        assert store.get_item("x").state == ItemState.CANCELLED  # type: ignore[union-attr]
        kinds = [e.event.kind for e in store.read_events("x")]
        assert kinds[-1] == "ItemCancelled"


def test_app_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    done(treadle(tmp_path, "--app", "myapp:wf", "add", "--id", "x"))
    done(treadle(tmp_path, "--app", "myapp:build", "run"))
    view = json.loads(done(treadle(tmp_path, "--app", "myapp:wf", "status", "--json")).stdout)
    assert view["items"] == {"complete": 1}
    result = treadle(tmp_path, "--app", "myapp:not_a_workflow", "run")
    assert result.returncode == 2
    assert result.stderr == (
        "Error: --app 'myapp:not_a_workflow' is a int, not a Workflow (name the built "
        "workflow, or a function returning one)\n"
    )
