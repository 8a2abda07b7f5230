"""The ``http`` stage against a real HTTP server on 127.0.0.1: directly, in a Workflow, and
through a treadle.toml pipeline run by the ``treadle`` console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from treadle_stage_http import HttpStage

from treadle_core import (
    Complete,
    Failed,
    FanOut,
    Item,
    MemoryStateStore,
    Retry,
    RetryBudget,
    StageContext,
    StageStatus,
    Workflow,
)
from treadle_core.plugins import get_plugin_manager, stage_types

ITEM = Item("doc-1", {"kind": "report", "lang": "en", "token": "s3cret"})


def ctx(subtask: str | None = None, metadata: dict | None = None) -> StageContext:
    return StageContext(
        item_id=ITEM.id, stage="fetch", attempt=1, subtask=subtask, metadata=dict(metadata or {})
    )


async def fetch_once(stage: HttpStage, item: Item = ITEM):
    return await stage.execute(item, ctx())


def one_stage(stage: HttpStage, **budget: object) -> Workflow:
    builder = Workflow.builder("http").stage("fetch", stage)
    if budget:
        builder.retry_budget("fetch", RetryBudget(**budget))  # type: ignore[arg-type]
    return builder.build()


# --- one request -----------------------------------------------------------------------


async def test_2xx_completes_with_the_json_response_as_artefact(server):
    out = await fetch_once(HttpStage(f"{server.url}/json/{{item.id}}"))
    assert out.outcome == Complete()
    assert out.artefact["name"] == "doc-1"
    assert out.artefact["method"] == "GET"
    assert "-> 200" in out.summary


async def test_a_text_response_is_the_artefact_as_text(server):
    out = await fetch_once(HttpStage(f"{server.url}/text/{{item.data[lang]}}"))
    assert (out.outcome, out.artefact) == (Complete(), "hello en")


async def test_method_headers_and_json_body_are_templated(server):
    stage = HttpStage(
        f"{server.url}/json/{{item.data[kind]}}",
        method="post",
        headers={"Authorization": "Bearer {item.data[token]}", "X-Item": "{item.id}"},
        json={"id": "{item.id}", "tags": ["{item.data[lang]}", 3], "n": 1, "ok": True},
    )
    out = await fetch_once(stage)
    assert out.outcome == Complete()
    echoed = out.artefact
    assert (echoed["name"], echoed["method"]) == ("report", "POST")
    assert echoed["headers"]["authorization"] == "Bearer s3cret"
    assert echoed["headers"]["x-item"] == "doc-1"
    assert echoed["body"] == {"id": "doc-1", "tags": ["en", 3], "n": 1, "ok": True}


async def test_status_and_final_url_go_into_the_stage_metadata(server):
    c = ctx()
    await HttpStage(f"{server.url}/json/x").execute(ITEM, c)
    assert c.metadata == {"status": 200, "url": f"{server.url}/json/x"}


@pytest.mark.parametrize("code", [500, 502, 503, 408, 429])
async def test_server_errors_timeouts_and_throttling_are_retried(server, code):
    out = await fetch_once(HttpStage(f"{server.url}/status/{code}"))
    assert isinstance(out.outcome, Retry)
    assert f"returned HTTP {code}" in out.outcome.error
    assert out.outcome.error.endswith(f"error body {code}")  # the body's tail


async def test_retry_after_is_reported_and_asked_for_as_the_retry_delay(server):
    out = await fetch_once(HttpStage(f"{server.url}/status/429"))
    assert "(Retry-After: 7)" in out.outcome.error
    assert out.outcome.delay == 7.0


async def test_a_429_is_tried_again_only_when_retry_after_says(server):
    """The server asks for 30 s; the budget's own back-off (none) does not apply."""
    from treadle_core import ManualClock

    clock = ManualClock()
    wf = (
        Workflow.builder("http")
        .stage("fetch", HttpStage(f"{server.url}/throttle/{{item.id}}?after=1&wait=30"))
        .retry_budget("fetch", RetryBudget(max_attempts=3))
        .clock(clock)
        .build()
    )
    store = MemoryStateStore()
    st = (await wf.advance(ITEM, store)).stages["fetch"]
    assert st.status == StageStatus.PENDING
    assert st.next_attempt_at == clock.now() + timedelta(seconds=30)
    clock.advance(29)
    assert (await wf.advance(ITEM, store)).stages["fetch"].status == StageStatus.PENDING
    assert server.hits[f"/throttle/{ITEM.id}"] == 1
    clock.advance(1)
    status = await wf.advance(ITEM, store)
    assert status.is_complete and status.stages["fetch"].artefact["hits"] == 2


@pytest.mark.parametrize(
    "header, seconds",
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_header_forms(header, seconds):
    from treadle_stage_http import retry_after_seconds

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after_seconds(header, now) == seconds


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
async def test_other_client_errors_fail_without_retry(server, code):
    out = await fetch_once(HttpStage(f"{server.url}/status/{code}"))
    assert isinstance(out.outcome, Failed)
    assert f"GET {server.url}/status/{code} returned HTTP {code}" in out.outcome.error


async def test_ok_status_decides_what_completes(server):
    out = await fetch_once(HttpStage(f"{server.url}/status/404", ok_status=[200, 404]))
    assert (out.outcome, out.artefact) == (Complete(), "error body 404")
    out = await fetch_once(HttpStage(f"{server.url}/json/x", ok_status=[201]))
    assert isinstance(out.outcome, Failed)


async def test_a_slow_server_is_a_retry_after_the_timeout(server):
    out = await fetch_once(HttpStage(f"{server.url}/slow", timeout=0.2))
    assert isinstance(out.outcome, Retry)
    assert "timed out after 0.2 s" in out.outcome.error


async def test_connection_refused_is_a_retry(server):
    url = server.url
    server.shutdown()
    server.server_close()
    out = await fetch_once(HttpStage(f"{url}/json/x", timeout=2))
    assert isinstance(out.outcome, Retry)
    assert "ConnectError" in out.outcome.error


async def test_a_missing_template_value_fails_the_item(server):
    out = await fetch_once(HttpStage(f"{server.url}/json/{{item.data[nope]}}"))
    assert isinstance(out.outcome, Failed)
    assert "item.data[nope]" in out.outcome.error


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of url"),
        ({"url": "http://x", "urls": ["http://y"]}, "exactly one of url"),
        ({"urls": "http://x"}, "list of URL templates"),
        ({"url": "http://x/{other.id}"}, "not allowed"),
        ({"url": "http://x/{item.id"}, "template"),
        ({"url": "http://x", "method": "FETCH"}, "method 'FETCH'"),
        ({"url": "http://x", "headers": {"A": "{other}"}}, "not allowed"),
        ({"url": "http://x", "json": {"a": ["{bad}"]}}, "not allowed"),
        ({"url": "http://x", "timeout": 0}, "timeout"),
        ({"url": "http://x", "ok_status": []}, "ok_status"),
        ({"url": "http://x", "ok_status": [True]}, "ok_status"),
        ({"url": "http://x", "ok_status": [1000]}, "ok_status"),
    ],
)
def test_bad_options_are_refused_when_the_stage_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HttpStage(**kwargs)


# --- through a Workflow ------------------------------------------------------------------


async def test_a_workflow_retries_a_flaky_server_within_the_budget(server):
    wf = one_stage(HttpStage(f"{server.url}/flaky/{{item.id}}?fail=2"), max_attempts=3)
    store = MemoryStateStore()
    status = await wf.advance(ITEM, store)
    assert status.is_complete
    state = store.get_stage_state("doc-1", "fetch")
    assert state.artefact == {"key": "doc-1", "hits": 3}
    attempts = store.get_attempts("doc-1", "fetch")
    assert [a.outcome for a in attempts] == ["retry", "retry", "complete"]
    assert "HTTP 503" in attempts[0].error and "busy, try later" in attempts[0].error


async def test_a_workflow_fails_a_4xx_on_the_first_attempt(server):
    wf = one_stage(HttpStage(f"{server.url}/status/404"), max_attempts=3)
    store = MemoryStateStore()
    status = await wf.advance(ITEM, store)
    assert status.failed_stages == ["fetch"]
    assert len(store.get_attempts("doc-1", "fetch")) == 1
    assert server.hits["/status/404"] == 1


async def test_a_workflow_gives_up_when_the_budget_is_spent(server):
    wf = one_stage(HttpStage(f"{server.url}/status/500"), max_attempts=2)
    store = MemoryStateStore()
    status = await wf.advance(ITEM, store)
    assert status.failed_stages == ["fetch"]
    assert "HTTP 500" in (store.get_stage_state("doc-1", "fetch").error or "")
    assert server.hits["/status/500"] == 2


# --- fan-out ------------------------------------------------------------------------------


async def test_urls_fan_out_into_one_subtask_per_url(server):
    stage = HttpStage(
        urls=[f"{server.url}/json/a-{{item.id}}", f"{server.url}/text/b", f"{server.url}/text/b"]
    )
    out = await fetch_once(stage)
    assert isinstance(out.outcome, FanOut)
    ids = [t.id for t in out.outcome.subtasks]
    assert ids == [f"{server.url}/json/a-doc-1", f"{server.url}/text/b"]  # duplicates once
    assert out.outcome.subtasks[0].metadata == {"url": ids[0]}
    assert server.hits == {}  # nothing fetched until the subtasks run


async def test_a_fanned_out_stage_collects_every_response(server):
    urls = [f"{server.url}/json/{{item.id}}", f"{server.url}/flaky/one?fail=1"]
    wf = one_stage(HttpStage(urls=urls), max_attempts=2)
    store = MemoryStateStore()
    status = await wf.advance(ITEM, store)
    assert status.is_complete
    state = store.get_stage_state("doc-1", "fetch")
    first, second = f"{server.url}/json/doc-1", f"{server.url}/flaky/one?fail=1"
    assert set(state.artefact) == {first, second}
    assert state.artefact[first]["name"] == "doc-1"
    assert state.artefact[second] == {"key": "one", "hits": 2}
    assert {t.id: t.attempt for t in state.subtasks} == {first: 1, second: 2}
    assert server.hits["/json/doc-1"] == 1  # the good URL was not fetched again


async def test_urls_from_reads_the_list_from_item_data(server):
    item = Item("doc-2", {"links": [f"{server.url}/text/x", f"{server.url}/text/y"]})
    wf = one_stage(HttpStage(urls_from="links"))
    store = MemoryStateStore()
    assert (await wf.advance(item, store)).is_complete
    artefact = store.get_stage_state("doc-2", "fetch").artefact
    assert artefact == {f"{server.url}/text/x": "hello x", f"{server.url}/text/y": "hello y"}


async def test_a_failed_subtask_fails_the_stage_and_retry_refetches_only_it(server):
    good, bad = f"{server.url}/json/g", f"{server.url}/status/404"
    item = Item("doc-3", {"links": [good, bad]})
    wf = one_stage(HttpStage(urls_from="links"))
    store = MemoryStateStore()
    status = await wf.advance(item, store)
    assert status.failed_stages == ["fetch"]
    state = store.get_stage_state("doc-3", "fetch")
    assert bad in (state.error or "")
    assert {t.id: t.status for t in state.subtasks} == {
        good: StageStatus.COMPLETE,
        bad: StageStatus.FAILED,
    }
    await wf.retry_stage("doc-3", "fetch", store)
    await wf.advance(item, store)
    assert (server.hits["/json/g"], server.hits["/status/404"]) == (1, 2)


async def test_urls_from_that_is_not_a_list_fails_the_item(server):
    out = await fetch_once(HttpStage(urls_from="kind"))
    assert isinstance(out.outcome, Failed)
    assert "item.data['kind'] must be a list of URLs" in out.outcome.error


async def test_an_empty_url_list_completes_with_an_empty_artefact():
    out = await fetch_once(HttpStage(urls_from="links"), Item("x", {"links": []}))
    assert (out.outcome, out.artefact) == (Complete(), {})


# --- as a plugin: entry point, stages list, treadle.toml + `treadle run` ------------------


def test_the_entry_point_registers_the_http_stage_type():
    pm = get_plugin_manager()
    assert stage_types(pm)["http"].factory is HttpStage
    assert pm.stage_types().owners["http"] == "treadle-stage-http"


def treadle(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("treadle")
    argv = [str(script)] if script.exists() else [shutil.which("treadle") or "treadle"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    return subprocess.run(
        [*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_stages_list_shows_http_with_its_plugin(tmp_path):
    result = treadle("stages", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout) if r["type"] == "http"]
    assert row["plugin"] == "treadle-stage-http"
    assert {"url", "urls", "urls_from", "method", "ok_status"} <= set(row["options"])


def test_a_pipeline_file_runs_http_stages_with_treadle_run(server, tmp_path):
    (tmp_path / "treadle.toml").write_text(
        textwrap.dedent(
            f"""
            [pipeline]
            name = "fetcher"

            [stages.fetch]
            uses = "http"
            url = "{server.url}/json/{{item.id}}"
            method = "POST"
            headers = {{ X-Lang = "{{item.data[lang]}}" }}
            json = {{ id = "{{item.id}}" }}
            timeout = "5s"

            [stages.links]
            uses = "http"
            urls_from = "links"
            needs = ["fetch"]
            retry = {{ max_attempts = 2 }}
            """
        )
    )
    links = [f"{server.url}/text/a", f"{server.url}/flaky/b?fail=1"]
    line = json.dumps({"id": "doc-1", "data": {"lang": "fr", "links": links}})
    (tmp_path / "items.jsonl").write_text(line + "\n")
    assert treadle("add", "items.jsonl", cwd=tmp_path).returncode == 0
    run = treadle("run", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    result = treadle("status", "doc-1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    assert stages["fetch"]["status"] == "complete"
    assert stages["links"]["status"] == "complete"
    from treadle_core import open_store

    with open_store(f"sqlite:///{tmp_path}/.treadle/state.db") as store:
        fetched = store.get_stage_state("doc-1", "fetch").artefact
        assert fetched["body"] == {"id": "doc-1"}
        assert fetched["headers"]["x-lang"] == "fr"
        assert store.get_stage_state("doc-1", "links").artefact == {
            links[0]: "hello a",
            links[1]: {"key": "b", "hits": 2},
        }


def test_a_bad_option_in_a_pipeline_file_is_one_clear_line(tmp_path):
    (tmp_path / "treadle.toml").write_text(
        '[pipeline]\nname = "x"\n\n[stages.fetch]\nuses = "http"\nurl = "http://x"\n'
        'method = "FETCH"\n'
    )
    result = treadle("validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "method 'FETCH' is not one of" in result.stderr
    assert "Traceback" not in result.stderr
