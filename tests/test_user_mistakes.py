"""Every user mistake found by trying Treadle as a newcomer: one line on stderr, exit 1 or 2,
no traceback, and the SQLite store file byte for byte as it was.

Each case is named for the mistake. The CLI runs in-process (click's runner) with
exceptions propagating, so a traceback fails the test; a few cases need a real
process (a full disk, the console script).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from treadle_core import InputError, StoreError, open_store
from treadle_core._fixtures import TreadleCli
from treadle_core.plugins import get_plugin_manager
from treadle_core.validation import check_id, check_json, parse_json

ROOT = Path(__file__).resolve().parent.parent

PIPELINE = """
[pipeline]
name = "m"
store = "sqlite:///state.db"

[stages.fetch]
uses = "stages:fetch"

[stages.approve]
uses = "review"
needs = ["fetch"]

[stages.check]
uses = "review"
needs = ["fetch"]
"""

STAGES = """
from treadle_core import Complete, StageOutput


def fetch(item, ctx):
    return StageOutput(Complete(), artefact={"text": "hello"})
"""


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


@pytest.fixture
def world(pm, tmp_path, monkeypatch):
    """Items a (both reviews waiting) and b (approve waiting, check approved) in state.db."""
    monkeypatch.delenv("TREADLE_STORE", raising=False)
    (tmp_path / "treadle.toml").write_text(PIPELINE)
    (tmp_path / "stages.py").write_text(STAGES)
    cli = TreadleCli(pm, tmp_path)
    assert cli("add", "--id", "a").exit_code == 0
    assert cli("add", "--id", "b").exit_code == 0
    assert cli("run").exit_code == 0
    assert cli("review", "approve", "b", "check", "--reviewer", "ann").exit_code == 0
    return cli


def store_bytes(path: Path) -> dict[str, bytes]:
    """The store's files (the database, and a WAL if one was left)."""
    return {p.name: p.read_bytes() for p in sorted(path.glob("state.db*"))}


def refused(cli: TreadleCli, *args: str, code: int, says: str, input: str | bytes | None = None):
    """Run a mistake: exit ``code``, one ``Error:`` line containing ``says``, store unchanged."""
    before = store_bytes(cli.cwd)
    result = cli(*args, input=input)  # type: ignore[arg-type]
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert says in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert store_bytes(cli.cwd) == before
    return lines[0]


# --- treadle add: files, ids, data ----------------------------------------------------------


def test_add_of_a_file_that_is_not_utf8(world, tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "c", "city": "Zürich"}\n'.encode("latin-1"))
    refused(world, "add", "latin1.jsonl", code=2, says="latin1.jsonl:1: not valid UTF-8 (byte 0xfc")


def test_add_from_stdin_that_is_not_utf8(world):
    refused(world, "add", "-", code=2, says="<stdin>:1: not valid UTF-8", input=b'{"id": "\xff"}\n')


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ('{"id": "\\ud800"}', "id: '\\ud800' is not valid Unicode"),
        ('{"id": "c", "title": "\\udcff"}', "title: '\\udcff' is not valid Unicode"),
        ('{"id": "c", "data": {"\\ud800": 1}}', "key '\\ud800' holds '\\ud800'"),
        ('{"id": "c", "n": ' + "9" * 5000 + "}", "is too large (integers must be within ±2**63)"),
        ('{"id": "c", "n": 1e400}', "the number '1e400' is too large for a float"),
        ('{"id": "c", "n": NaN}', "NaN is not JSON (use null or a string)"),
        ('{"id": "c", "n": -Infinity}', "-Infinity is not JSON"),
        ('{"id": "c", "n": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 100"),
        ('{"id": "c", "n": ' + "[" * 101 + "]" * 101 + "}", "nested more than 100 levels"),
        ('{"id": ""}', "item id is empty"),
        ('{"id": "a\\u0000b"}', "contains a NUL character"),
        ('{"id": "' + "x" * 256 + '"}', "is 256 characters long; at most 255"),
    ],
    ids=[
        "surrogate-in-id",
        "surrogate-in-data",
        "surrogate-in-key",
        "5000-digit-number",
        "float-overflow",
        "nan",
        "infinity",
        "nested-100000-deep",
        "nested-101-deep",
        "empty-id",
        "nul-in-id",
        "256-character-id",
    ],
)
def test_add_refuses_jsonl_no_store_can_hold(world, tmp_path, line, says):
    (tmp_path / "items.jsonl").write_text('{"id": "fine"}\n' + line + "\n", encoding="utf-8")
    message = refused(world, "add", "items.jsonl", code=2, says=says)
    assert message.startswith("Error: items.jsonl:2: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--id", ""], "--id is empty"),
        (["--id", "a\x00b"], "contains a NUL character"),
        (["--id", "\udcff"], "not valid Unicode (is the input UTF-8?)"),
        (["--id", "y" * 300], "is 300 characters long"),
        (["--id", "c", "--data", '{"n": NaN}'], "--data: NaN is not JSON"),
        (["--id", "c", "--data", '{"s": "\\udfff"}'], "--data: s: '\\udfff' is not valid Unicode"),
        (["--glob", "nothing/*.pdf"], "--glob 'nothing/*.pdf' matches no file; nothing added"),
    ],
    ids=["empty", "nul", "surrogate", "too-long", "nan-data", "surrogate-data", "glob-none"],
)
def test_add_refuses_an_id_or_data_no_store_can_hold(world, args, says):
    refused(world, "add", *args, code=2, says=says)


def test_a_file_name_that_is_not_utf8_is_refused_as_an_id(world, tmp_path):
    (tmp_path / "docs").mkdir()
    try:
        (tmp_path / "docs" / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    refused(world, "add", "--glob", "docs/*", code=2, says="which is not valid Unicode")


# --- item ids anywhere ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status", "\udcff"],
        ["events", "a\x00"],
        ["retry", ""],
        ["run", "--item", "x" * 256],
        ["review", "show", "\ud800"],
        ["review", "approve", "", "approve"],
    ],
    ids=["status", "events", "retry", "run", "review-show", "review-approve"],
)
def test_an_id_no_store_takes_is_refused_by_every_command(world, args):
    refused(world, *args, code=2, says="item id")


# --- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["review", "list", "--limit", "99999999999999999999"],
            "is not in the range 1<=x<=1000000",
        ),
        (["events", "--after", "99999999999999999999"], "--after"),
        (["events", "--interval", "nan"], "--interval"),
        (["events", "--interval", "-1"], "--interval"),
        (["prune", "--completed-before", "1d", "--batch", "99999999999999999999"], "--batch"),
        (["prune", "--completed-before", "99999999999d"], "too long (at most 3650d, ten years)"),
        (["run", "--concurrency", "99999999999999999999"], "--concurrency"),
        (["run", "--concurrency", "0"], "--concurrency"),
        (["worker", "--lease", "99999999999d"], "--lease: '99999999999d' is too long"),
        (["worker", "--poll", "0s"], "--poll: '0s' must be more than zero"),
        (["worker", "--concurrency", "10001"], "--concurrency"),
    ],
    ids=[
        "review-list-limit",
        "events-after",
        "events-interval-nan",
        "events-interval-negative",
        "prune-batch",
        "prune-age",
        "run-concurrency-huge",
        "run-concurrency-zero",
        "worker-lease",
        "worker-poll",
        "worker-concurrency",
    ],
)
def test_every_numeric_option_is_bounded(world, args, says):
    message = refused(world, *args, code=2, says=says)
    assert "(see '" in message or message.startswith("Error: --")


# --- reviews ---------------------------------------------------------------------------------


def test_review_edit_refuses_an_artefact_no_store_can_hold(world, tmp_path):
    (tmp_path / "nan.json").write_text('{"total": NaN}')
    refused(
        world,
        *("review", "edit", "a", "approve", "--file", "nan.json"),
        code=2,
        says="nan.json: NaN is not JSON (use null or a string); nothing saved",
    )
    (tmp_path / "latin1.json").write_bytes('"Zürich"'.encode("latin-1"))
    refused(
        world,
        *("review", "edit", "a", "approve", "--file", "latin1.json"),
        code=2,
        says="latin1.json: not valid UTF-8",
    )


def test_review_show_without_stage_picks_the_one_that_waits(world):
    shown = json.loads(world("review", "show", "b", "--json").stdout)
    assert (shown["item_id"], shown["stage"], shown["status"]) == (
        "b",
        "approve",
        "awaiting_review",
    )


def test_review_show_without_stage_lists_them_when_several_wait(world):
    refused(
        world,
        *("review", "show", "a"),
        code=2,
        says="2 stages of 'a' await review (approve, check); give one as STAGE",
    )


def test_review_show_without_stage_when_none_waits(world):
    assert world("review", "approve", "b", "approve", "--reviewer", "ann").exit_code == 0
    refused(world, "review", "show", "b", code=2, says="no stage of 'b' awaits review")


# --- the command line itself -----------------------------------------------------------------


def test_a_mistyped_command_is_one_line_with_a_suggestion(world):
    refused(world, "stauts", code=2, says="no such command 'stauts' (did you mean 'status'?)")


def test_a_usage_error_is_one_line_with_the_help_hint(world):
    refused(world, "status", "--jsn", code=2, says="Did you mean '--json'? (see '")


def test_global_options_are_accepted_after_the_command(world, tmp_path):
    other = f"sqlite:///{tmp_path}/other.db"
    assert world("add", "--id", "z", "--store", other).exit_code == 0
    counts = json.loads(world("status", "--json", "--store", other).stdout)
    assert counts["items"] == {"ready": 1}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "treadle.toml").write_text('[stages.only]\nuses = "review"\n')
    graph = json.loads(world("graph", "--format", "json", "-p", "sub").stdout)
    assert [s["name"] for s in graph["stages"]] == ["only"]


def test_pipeline_option_takes_a_directory(world, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "treadle.toml").write_text('[stages.only]\nuses = "review"\n')
    assert world("-p", "p", "validate").stdout.startswith(
        f"{Path('p') / 'treadle.toml'}: OK: pipeline 'p', 1 stage (only)"
    )
    (tmp_path / "empty").mkdir()
    refused(world, "-p", "empty", "validate", code=2, says="treadle.toml: no such file")


def test_a_toml_nested_100000_deep_is_one_line(world, tmp_path):
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(world, "-p", "deep.toml", "validate", code=2, says="deep.toml: not valid TOML")


def test_a_gate_option_its_class_does_not_take(world, tmp_path):
    (tmp_path / "gates.py").write_text(
        "from treadle_core import Accepted, QualityGate\n"
        "class Short(QualityGate):\n"
        "    def __init__(self, chars=10):\n"
        "        self.chars = chars\n"
        "    async def evaluate(self, item, stage, output, ctx):\n"
        "        return Accepted()\n"
    )
    (tmp_path / "g.toml").write_text(
        '[stages.x]\nuses = "stages:fetch"\ngate = { uses = "gates:Short", char = 3 }\n'
    )
    refused(
        world,
        *("-p", "g.toml", "run"),
        code=2,
        says="[stages.x] key 'gate.char': gates:Short does not take an option 'char' "
        "(did you mean 'chars'?)",
    )


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("[pipeline]\nconcurrency = 9223372036854775807", "must be from 1 to 10,000"),
        ('[stages.fetch.retry]\ndelay = "99999999999d"', "is too long (at most 3650d"),
        ("[stages.fetch.retry]\nbackoff = 1e308", "must be more than 0 and at most 1000"),
    ],
    ids=["concurrency", "delay", "backoff"],
)
def test_validate_refuses_numbers_that_would_crash_run(world, tmp_path, setting, says):
    text = PIPELINE.replace('[pipeline]\nname = "m"\nstore = "sqlite:///state.db"\n', "")
    (tmp_path / "n.toml").write_text(setting + "\n" + text)
    refused(world, "-p", "n.toml", "validate", code=2, says=says)
    refused(world, "-p", "n.toml", "run", code=2, says=says)


def test_neds_is_suggested_as_needs(world, tmp_path):
    (tmp_path / "t.toml").write_text(PIPELINE.replace('needs = ["fetch"]', 'neds = ["fetch"]', 1))
    refused(world, "-p", "t.toml", "validate", code=2, says="(did you mean 'needs'?)")


# --- the store -------------------------------------------------------------------------------


def test_a_store_in_a_folder_that_cannot_be_made(world, tmp_path):
    (tmp_path / "plain-file").write_text("not a directory")
    url = f"sqlite:///{tmp_path}/plain-file/new/state.db"
    refused(world, "add", "--id", "c", "--store", url, code=1, says="choose a writable path")


def test_a_corrupt_database_is_one_line_naming_the_file(world, tmp_path):
    db = tmp_path / "state.db"
    with db.open("r+b") as fh:  # keep the header, ruin the pages after it
        fh.seek(4096)
        fh.write(b"\xa5" * (db.stat().st_size - 4096))
    for args in (["status"], ["status", "a"], ["review", "list"], ["run"], ["add", "--id", "c"]):
        refused(
            world,
            *args,
            code=1,
            says=f"store 'sqlite:///{db}': the database file is corrupt (restore it from a backup)",
        )
    db.write_bytes(b"this is not a database" * 300)
    refused(world, "status", code=1, says=f"store 'sqlite:///{db}': file is not a database")


def test_the_hello_pipeline_on_a_file_that_cannot_grow(tmp_path):
    """RLIMIT_FSIZE makes every write past the limit fail (EFBIG): a disk full for this
    process alone. ``run`` says so in one line naming the file; no traceback."""
    shutil.copytree(
        ROOT / "examples" / "hello", tmp_path / "h", ignore=shutil.ignore_patterns(".*")
    )
    many = "".join(json.dumps({"id": f"i{n}", "text": "x" * 200}) + "\n" for n in range(400))
    (tmp_path / "h" / "many.jsonl").write_text(many)
    script = shutil.which("treadle", path=str(Path(sys.executable).parent))
    assert script is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    added = subprocess.run([script, "add", "many.jsonl"], cwd=tmp_path / "h", env=env)
    assert added.returncode == 0
    size = (tmp_path / "h" / ".treadle" / "state.db").stat().st_size

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64 * 1024, size + 64 * 1024))

    result = subprocess.run(
        [script, "run"],
        cwd=tmp_path / "h",
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: store 'sqlite:///{tmp_path}/h/.treadle/state.db': "
        "disk I/O error (is the disk full or failing?)"
    ]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """A real ENOSPC: the hello pipeline on a 1 MiB tmpfs that fills up while it runs."""
    script = shutil.which("treadle", path=str(Path(sys.executable).parent))
    assert script is not None
    disk = tmp_path / "disk"
    disk.mkdir()
    many = "".join(json.dumps({"id": f"i{n}", "text": "x" * 200}) + "\n" for n in range(300))
    (tmp_path / "many.jsonl").write_text(many)
    shell = (
        f"mount -t tmpfs -o size=1m none {disk} && cp {ROOT}/examples/hello/*.* {disk}/ && "
        f"cd {disk} && {script} add {tmp_path}/many.jsonl >/dev/null && "
        "head -c 700000 /dev/zero > filler; "
        f"{script} run > {tmp_path}/out 2> {tmp_path}/err; echo $? > {tmp_path}/rc"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    subprocess.run(["unshare", "--mount", "sh", "-c", shell], env=env, check=True, timeout=120)
    assert (tmp_path / "rc").read_text().strip() == "1"
    assert (tmp_path / "err").read_text().splitlines() == [
        f"Error: store 'sqlite:///{disk}/.treadle/state.db': "
        "the disk is full; free some space and try again"
    ]


@pytest.mark.postgres
def test_postgresql_ids_are_refused_at_the_door_and_by_the_store(world, pg_url):
    for bad in ("x" * 256, "a\x00b"):
        result = world("add", "--id", bad, "--store", pg_url)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(result.stderr.splitlines()) == 1
    store = open_store(pg_url)
    try:
        with (
            pytest.raises(StoreError, match="refused a value: value too long"),
            store.transaction(),
        ):
            store.save_work_item_data("x" * 300, {})
        assert list(store.list_work_items()) == []
    finally:
        store.close()


# --- the functions behind the door -----------------------------------------------------------


def test_the_checks_are_plain_functions_with_one_line_messages():
    assert check_id("invoice-7") == "invoice-7"
    assert parse_json(b'{"a": [1, 2.5, "\\u00e9", null]}', "x") == {"a": [1, 2.5, "é", None]}
    with pytest.raises(InputError, match=r"^item 'x': data\.tags\[1\]: inf is not JSON"):
        check_json({"tags": [1, float("inf")]}, "item 'x'", root="data")
    with pytest.raises(InputError, match="review id is empty"):
        check_id("", "review id")
    with pytest.raises(InputError) as deep:
        parse_json("[" * 5000 + "]" * 5000, "y")
    assert str(deep.value) == "y: nested more than 100 levels deep"
