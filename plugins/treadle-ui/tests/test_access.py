"""Who may decide: per-reviewer tokens, sessions, CSRF tokens that outlive a restart."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_app import BASE, SECRET, client, csrf, decide, status, workflow
from treadle_ui.app import create_app
from treadle_ui.security import SecretFileError, load_secret
from treadle_ui.users import (
    Users,
    UsersFileError,
    add_user,
    hash_token,
    read_users,
    verify_token,
)

from treadle_core import StageStatus, Workflow
from treadle_core.cli import create_cli
from treadle_core.plugins import get_plugin_manager


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "reviewers.json"


@pytest.fixture
def tokens(users_file: Path) -> dict[str, str]:
    return {name: add_user(users_file, name) for name in ("ada", "grace")}


def users_client(wf: Workflow, store: Any, users_file: Path, **options: Any) -> TestClient:
    app = create_app(wf, store, users=Users(users_file), secret=SECRET, **options)
    return TestClient(app, base_url=BASE, follow_redirects=False)


def sign_in(c: TestClient, name: str, token: str) -> Any:
    return c.post(
        "/signin", data={"csrf": csrf(c, "/signin"), "name": name, "token": token, "next": "/"}
    )


# --- the users file ------------------------------------------------------------------


def test_a_token_is_kept_only_as_a_salted_scrypt_hash(users_file: Path) -> None:
    token = add_user(users_file, "ada")
    text = users_file.read_text()
    assert token not in text
    stored = json.loads(text)["users"]["ada"]["token_hash"]
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_token(token, stored) and not verify_token(token + "x", stored)
    assert hash_token(token) != hash_token(token)  # a new salt every time
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600


def test_users_add_prints_a_new_token_once_and_refuses_a_second_add(users_file: Path) -> None:
    cli = create_cli(get_plugin_manager())
    runner = CliRunner()
    first = runner.invoke(cli, ["ui", "users", "add", "ada", "--file", str(users_file)])
    assert first.exit_code == 0, first.output
    token = first.stdout.strip()
    assert token.startswith("tdl_") and Users(users_file).verify("ada", token)
    again = runner.invoke(cli, ["ui", "users", "add", "ada", "--file", str(users_file)])
    assert again.exit_code == 2
    assert "'ada' already has a token (--replace gives them a new one" in again.output
    assert Users(users_file).verify("ada", token)  # unchanged
    replaced = runner.invoke(
        cli, ["ui", "users", "add", "ada", "--file", str(users_file), "--replace"]
    )
    assert replaced.exit_code == 0
    assert not Users(users_file).verify("ada", token)
    assert Users(users_file).verify("ada", replaced.stdout.strip())
    listed = runner.invoke(cli, ["ui", "users", "list", "--file", str(users_file)])
    assert listed.stdout.split("\t")[0] == "ada"
    removed = runner.invoke(cli, ["ui", "users", "remove", "ada", "--file", str(users_file)])
    assert removed.exit_code == 0 and read_users(users_file) == {}


def test_an_empty_name_is_refused(users_file: Path) -> None:
    result = CliRunner().invoke(
        create_cli(get_plugin_manager()), ["ui", "users", "add", "  ", "--file", str(users_file)]
    )
    assert result.exit_code == 2
    assert "a reviewer's name cannot be empty" in result.output
    assert not users_file.exists()


def test_a_malformed_users_file_is_one_clear_line(users_file: Path) -> None:
    users_file.write_text('{"users": {"ada": {"token_hash": "plain-token"}}}')
    with pytest.raises(UsersFileError, match="user 'ada' has no valid token_hash"):
        Users(users_file)
    users_file.write_text("{nope")
    with pytest.raises(UsersFileError, match="not valid JSON"):
        read_users(users_file)
    with pytest.raises(UsersFileError, match=r"no such file .*treadle ui users add NAME"):
        Users(users_file.with_name("missing.json"))


def test_users_and_a_shared_token_do_not_go_together(
    users_file: Path, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        create_cli(get_plugin_manager()),
        ["ui", "--users", str(users_file), "--token", "t"],
    )
    assert result.exit_code == 2
    assert "--users and --token do not go together" in result.output


# --- signing in ----------------------------------------------------------------------


def test_with_users_nothing_but_the_sign_in_page_answers_before_signing_in(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    r = c.get("/review?item=a&stage=check")
    assert r.status_code == 303
    assert r.headers["location"] == "/signin?next=%2Freview%3Fitem%3Da%26stage%3Dcheck"
    assert c.get("/live/overview", headers={"X-Requested-With": "fetch"}).status_code == 401
    assert c.get("/signin").status_code == 200
    assert c.get("/static/ui.css").status_code == 200  # the sign-in page needs it
    r = c.post("/decide", data={"item": "a", "stage": "check", "action": "approve"})
    assert r.status_code == 401
    assert status(store, "a") == StageStatus.AWAITING_REVIEW


def test_a_wrong_token_or_an_unknown_name_gets_the_same_refusal(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    for name, token in (("ada", tokens["grace"]), ("nobody", tokens["ada"]), ("ada", "")):
        r = sign_in(c, name, token)
        assert r.status_code == 401
        assert "That name and token do not match." in r.text
    assert c.get("/").status_code == 303  # still not signed in


def test_the_signed_in_name_is_recorded_and_the_page_cannot_change_it(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file, reviewer="operator")
    r = sign_in(c, "grace", tokens["grace"])
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = c.get("/").text
    assert 'Signed in as <strong id="signed-in-as">grace</strong>' in page
    assert 'action="/reviewer"' not in page  # no name field to change
    assert c.post("/reviewer", data={"csrf": csrf(c), "reviewer": "ada"}).status_code == 403
    c.cookies.set("treadle_ui_reviewer", "ada")  # the name cookie of the no-users mode
    r = decide(c, "a", action="approve", reviewer="ada")  # an extra field: ignored
    assert r.status_code == 303
    assert [rec.reviewer for rec in store.get_reviews("a", "check")] == ["grace"]


def test_signing_in_starts_a_new_session(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    before = csrf(c, "/signin")
    sign_in(c, "ada", tokens["ada"])
    assert csrf(c) != before  # a session id planted before signing in is not kept


def test_a_new_token_or_removing_the_user_ends_their_sessions(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    sign_in(c, "ada", tokens["ada"])
    assert c.get("/").status_code == 200
    add_user(users_file, "ada", replace=True)  # while the console runs
    assert c.get("/").status_code == 303
    other = users_client(wf, store, users_file)
    sign_in(other, "grace", tokens["grace"])
    users = read_users(users_file)
    del users["grace"]
    users_file.write_text(json.dumps({"users": users}))
    assert other.get("/").status_code == 303


def test_a_tampered_session_cookie_signs_nobody_in(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    sign_in(c, "ada", tokens["ada"])
    cookie = c.cookies["treadle_ui_session"]
    payload, rest = cookie.split(".", 1)
    forged = TestClient(c.app, base_url=BASE, follow_redirects=False)
    forged.cookies.set("treadle_ui_session", payload[:-2] + "xx." + rest)
    assert forged.get("/").status_code == 303


def test_signing_out_ends_the_session(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    sign_in(c, "ada", tokens["ada"])
    r = c.post("/signout", data={"csrf": csrf(c)})
    assert r.headers["location"] == "/signin"
    assert c.get("/").status_code == 303


def test_sign_in_goes_back_only_to_a_page_of_this_console(
    wf: Workflow, store: Any, users_file: Path, tokens: dict[str, str]
) -> None:
    c = users_client(wf, store, users_file)
    token = csrf(c, "/signin")
    r = c.post(
        "/signin",
        data={"csrf": token, "name": "ada", "token": tokens["ada"], "next": "//evil.example/"},
    )
    assert r.headers["location"] == "/"


# --- CSRF and the secret -------------------------------------------------------------


def test_a_page_opened_before_a_restart_can_still_post(wf: Workflow, store: Any) -> None:
    before = client(wf, store)
    token = csrf(before)
    cookies = dict(before.cookies)
    after = client(wf, store)  # a new process with the same persisted secret
    after.cookies.update(cookies)
    r = after.post(
        "/decide", data={"csrf": token, "item": "a", "stage": "check", "action": "approve"}
    )
    assert r.status_code == 303
    assert status(store, "a") == StageStatus.COMPLETE
    other = client(wf, store, secret="another-secret-" + "y" * 32)  # the secret was replaced
    other.cookies.update(cookies)
    r = other.post(
        "/decide", data={"csrf": token, "item": "b", "stage": "check", "action": "approve"}
    )
    assert r.status_code == 403
    assert status(store, "b") == StageStatus.AWAITING_REVIEW


def test_a_csrf_token_belongs_to_its_session(wf: Workflow, store: Any) -> None:
    mine, theirs = client(wf, store), client(wf, store)
    r = theirs.post(
        "/decide", data={"csrf": csrf(mine), "item": "a", "stage": "check", "action": "approve"}
    )
    assert r.status_code == 403
    assert status(store, "a") == StageStatus.AWAITING_REVIEW


def test_the_secret_file_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ui-secret"
    first = load_secret(path)
    assert load_secret(path) == first and len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="readable by others"):
        load_secret(path)


def test_the_secret_lives_beside_the_sqlite_store(tmp_path: Path) -> None:
    from treadle_ui.command import default_secret_file

    from treadle_core.cli.context import CliContext

    state = CliContext(get_plugin_manager(), None, f"sqlite:///{tmp_path / 'db' / 'state.db'}")
    assert default_secret_file(state, None) == tmp_path / "db" / "ui-secret"
    state = CliContext(get_plugin_manager(), None, "postgresql://db.example/treadle")
    users = tmp_path / "etc" / "reviewers.json"
    assert default_secret_file(state, users) == tmp_path / "etc" / "ui-secret"


@pytest.fixture
def wf() -> Workflow:
    return workflow()


@pytest.fixture
def store(wf: Workflow) -> Any:
    from test_app import make_store

    return make_store(wf)
