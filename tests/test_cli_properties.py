"""Property tests of the CLI's door: whatever arguments, JSONL items or treadle.toml a user
gives, ``treadle`` exits 0, 1 or 2, never prints a traceback, and leaves the SQLite store
file byte for byte as it was whenever it refuses.

Each example runs in a fresh copy of one small pipeline directory (two items waiting for
review, one failed). Examples are derandomised so CI sees the same ones every run; the
bounds keep the whole module well under a minute.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treadle_core._fixtures import TreadleCli
from treadle_core.plugins import get_plugin_manager

PIPELINE = """
[pipeline]
name = "p"
store = "sqlite:///state.db"

[stages.fetch]
uses = "stages:fetch"

[stages.approve]
uses = "review"
needs = ["fetch"]
"""

STAGES = """
from treadle_core import Complete, Failed, StageOutput


def fetch(item, ctx):
    if item.data.get("fail"):
        return Failed("asked to fail")
    return StageOutput(Complete(), artefact={"n": len(item.id)})
"""

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """The pipeline directory every example starts from."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "treadle.toml").write_text(PIPELINE)
        (root / "stages.py").write_text(STAGES)
        (root / "plain-file").write_text("not a directory")
        cli = TreadleCli(get_plugin_manager(), root)
        items = '{"id": "a"}\n{"id": "b", "x": [1, 2.5, null]}\n{"id": "f", "fail": true}\n'
        assert cli("add", "-", input=items).exit_code == 0
        assert cli("run").exit_code == 1
        yield root


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


class Sandbox:
    """A fresh copy of the template for one example."""

    def __init__(self, template: Path, pm) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.root = Path(self._tmp.name) / "p"
        shutil.copytree(template, self.root)
        self.cli = TreadleCli(pm, self.root)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def store(self) -> bytes:
        return (self.root / "state.db").read_bytes()

    def run(self, *args: str, input: str | bytes | None = None):
        # $EDITOR that changes nothing: `review edit` without --file never waits for a person.
        result = self.cli(*args, input=input, env={"EDITOR": "true", "TREADLE_STORE": None})  # type: ignore[arg-type]
        assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
        assert "Traceback" not in result.output, (args, result.output)
        return result


#: Any text, lone surrogates and NUL included (plain st.text() never makes surrogates).
def texts(max_size: int) -> st.SearchStrategy[str]:
    alphabet = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr), st.just("\x00"))
    return st.text(alphabet, max_size=max_size)


# --- CLI arguments ---------------------------------------------------------------------------

#: Commands that wait forever (worker, ui, events --follow) are left out.
COMMANDS = [
    ["init"],
    ["validate"],
    ["graph"],
    ["add"],
    ["run"],
    ["status"],
    ["retry"],
    ["events"],
    ["prune"],
    ["review", "list"],
    ["review", "show"],
    ["review", "approve"],
    ["review", "reject"],
    ["review", "edit"],
    ["plugins", "list"],
    ["stages", "list"],
    ["stores", "list"],
    ["plugin", "new"],
]
WORDS = [
    "a",
    "b",
    "f",
    "fetch",
    "approve",
    "--json",
    "--id",
    "--data",
    "--glob",
    "--limit",
    "--after",
    "--batch",
    "--concurrency",
    "--item",
    "--stage",
    "--all",
    "--failed",
    "--reason",
    "--file",
    "--completed-before",
    "--dry-run",
    "--format",
    "--kind",
    "--hook",
    "--no-wait",
    "-p",
    "--store",
    "-",
    "99999999999999999999",
    "-1",
    "0",
    "nan",
    "1e308",
    "99999999999d",
    "",
    "\x00",
    "\udcff",
    "{}",
    '{"n": NaN}',
    "[[[[",
    "plain-file",
    "sqlite:///plain-file/x.db",
    "sqlite:///other.db",
    "memory://",
    "nosuch://x",
]
FOREVER = {"-f", "--follow", "worker", "ui", "--max-polls"}

arguments = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(
        st.one_of(
            st.sampled_from(WORDS),
            texts(8).filter(lambda t: t not in FOREVER),
            st.integers(min_value=-(2**70), max_value=2**70).map(str),
        ),
        max_size=5,
    ),
)


@SETTINGS
@given(arguments)
def test_any_arguments_exit_0_1_or_2_without_traceback(template, pm, command_and_args):
    command, args = command_and_args
    with Sandbox(template, pm) as box:
        before = box.store()
        result = box.run(*command, *args)
        if result.exit_code == 2:
            assert box.store() == before, (command, args, result.output)


# --- JSONL items -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts(10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(texts(5), children, max_size=3)
    ),
    max_leaves=10,
)
ids = st.one_of(texts(12), st.integers(), st.none(), st.just("x" * 300))
item_lines = st.one_of(
    st.builds(lambda i, d: json.dumps({"id": i, "data": d}), ids, json_values),
    st.builds(lambda i, d: json.dumps({"id": i, "v": d}), ids, json_values),
    texts(20),
    st.just('{"id": "deep", "v": ' + "[" * 3000 + "]" * 3000 + "}"),
    st.just('{"id": "big", "v": ' + "7" * 5000 + "}"),
)


@SETTINGS
@given(st.lists(item_lines, min_size=1, max_size=4), st.binary(max_size=8))
def test_any_jsonl_is_added_whole_or_refused_whole(template, pm, lines, tail):
    with Sandbox(template, pm) as box:
        (box.root / "items.jsonl").write_bytes(
            "\n".join(lines).encode("utf-8", "surrogatepass") + tail
        )
        before = box.store()
        result = box.run("add", "items.jsonl", "--json")
        if result.exit_code != 0:
            assert box.store() == before
            return
        # What was stored can be read back by every command that prints it.
        for args in (["status", "--json"], ["events", "--json"], ["review", "list", "--json"]):
            assert box.run(*args).exit_code == 0
        for item_id in json.loads(result.stdout)["added"]:  # "--": ids may start with "-"
            assert box.run("status", "--json", "--", item_id).exit_code == 0


# --- treadle.toml documents ------------------------------------------------------------------

toml_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats().map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(f), repr(f))),
    texts(12).map(lambda t: json.dumps(t)),
    st.sampled_from(['"2s"', '"99999999999d"', '"1h30m"', "true", "[]", '["fetch"]', '"review"']),
)
keys = st.sampled_from(
    [
        "uses",
        "needs",
        "neds",
        "concurrency",
        "max_attempts",
        "delay",
        "backoff",
        "max_delay",
        "timeout",
        "gate",
        "review",
        "review_timeout",
        "prompt",
        "chars",
        "x",
    ]
)
toml_lines = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", keys, toml_values),
    st.builds(lambda v: f"retry = {{ max_attempts = {v}, backoff = {v} }}", toml_values),
    st.builds(lambda v: f'gate = {{ uses = "min-length", chars = {v} }}', toml_values),
    st.sampled_from(
        [
            "[pipeline]",
            "[stages.fetch]",
            "[stages.approve]",
            "[stages.new]",
            '[[sinks]]\nuses = "jsonl"',
            'uses = "stages:fetch"',
            'uses = "review"',
            "a = " + "[" * 2000 + "]" * 2000,
        ]
    ),
    texts(15),
)


@SETTINGS
@given(st.lists(toml_lines, max_size=8))
def test_any_pipeline_file_is_loaded_or_refused_in_one_line(template, pm, lines):
    with Sandbox(template, pm) as box:
        (box.root / "t.toml").write_text(
            "\n".join(lines) + "\n", encoding="utf-8", errors="replace"
        )
        before = box.store()
        validated = box.run("-p", "t.toml", "validate")
        assert box.store() == before
        if validated.exit_code != 0:
            assert len(validated.stderr.splitlines()) == 1, validated.stderr
        ran = box.run("-p", "t.toml", "run", "--no-wait", "--store", "sqlite:///state.db")
        if ran.exit_code == 2:
            assert box.store() == before
