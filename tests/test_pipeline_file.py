"""Pipeline files (SPEC §8): what treadle.toml accepts, and one clear line for every mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treadle_core import (
    Approve,
    ExhaustedAction,
    Option,
    PipelineFileError,
    Reject,
    RetryBudget,
    ReviewPolicy,
    SinkType,
    Stage,
    hookimpl,
)
from treadle_core._fixtures import TreadleCli
from treadle_core.pipeline import load_pipeline, loads_pipeline, parse_duration
from treadle_core.plugins import get_plugin_manager
from treadle_core.stage import FunctionStage

SPEC_EXAMPLE = """
[pipeline]
name = "documents"
store = "sqlite:///.treadle/state.db"
concurrency = 8

[stages.extract]
uses = "shell"
command = ["pdftotext", "{item.data[path]}", "-"]
retry = { max_attempts = 3, delay = "2s", backoff = 2, timeout = "2m", on_exhausted = "escalate" }
gate = { uses = "min-length", chars = 200 }

[stages.approve]
uses = "review"
needs = ["extract"]

[[sinks]]
uses = "jsonl"
path = ".treadle/events.jsonl"
"""


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


@pytest.fixture
def load(pm, tmp_path):
    def load(text: str, stages_py: str | None = None):
        if stages_py is not None:
            (tmp_path / "stages.py").write_text(textwrap.dedent(stages_py))
        return loads_pipeline(textwrap.dedent(text), pm, path=tmp_path / "treadle.toml")

    return load


@pytest.fixture
def error(load):
    def error(text: str, stages_py: str | None = None) -> str:
        with pytest.raises(PipelineFileError) as info:
            load(text, stages_py)
        message = str(info.value)
        assert "\n" not in message
        return message

    return error


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 sec", "", "s", "-1s", "1w", True, -3, "1e3s", None, [1]])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


# --- what loads ------------------------------------------------------------------------------


def test_the_spec_example_loads(load, tmp_path):
    p = load(SPEC_EXAMPLE)
    assert p.name == "documents"
    assert p.concurrency == 8
    assert p.store_url == f"sqlite:///{tmp_path}/.treadle/state.db"
    wf = p.workflow
    assert wf.stages == ["extract", "approve"]
    assert wf.dependencies("approve") == ["extract"]
    spec = wf.specs["extract"]
    assert spec.budget == RetryBudget(
        max_attempts=3,
        delay=2.0,
        backoff=2.0,
        attempt_timeout=120.0,
        on_exhausted=ExhaustedAction.ESCALATE,
    )
    assert type(spec.gate).__name__ == "MinLength"
    assert spec.stage.command == ["pdftotext", "{item.data[path]}", "-"]
    assert [s.uses for s in p.sinks] == ["jsonl"]
    assert p.sinks[0].options == {"path": tmp_path / ".treadle" / "events.jsonl"}


def test_review_policy_timeout_and_gate_lists(load):
    p = load(
        """
        [stages.draft]
        uses = "review"
        review = "on_escalation_or_uncertain"
        review_timeout = { after = "1h", decision = "approve" }
        gate = [{ uses = "min-length", chars = 5 }, { uses = "regex", pattern = "^ok" }]
        [stages.sign]
        uses = "review"
        needs = "draft"
        review_timeout = { after = "90m", reason = "nobody answered" }
        """
    )
    draft, sign = p.workflow.specs["draft"], p.workflow.specs["sign"]
    assert draft.policy == ReviewPolicy.ON_ESCALATION_OR_UNCERTAIN
    assert (draft.review_timeout.seconds, draft.review_timeout.on_timeout) == (3600.0, Approve())
    assert [type(g).__name__ for g in draft.gate.gates] == ["MinLength", "RegexGate"]
    assert sign.review_timeout.on_timeout == Reject("nobody answered")
    assert sign.review_timeout.seconds == 5400.0


def test_uses_an_object_function_stage_instance_or_stage_class(load):
    p = load(
        """
        [stages.a]
        uses = "stages:plain"
        [stages.b]
        uses = "stages:INSTANCE"
        [stages.c]
        uses = "stages:Shout"
        word = "hey"
        [stages.d]
        uses = "python"
        object = "stages:Shout"
        options = { word = "ho" }
        """,
        """
        from treadle_core import Stage

        def plain(item, ctx):
            return None

        class Shout(Stage):
            def __init__(self, word="hi"):
                self.word = word

            async def execute(self, item, ctx):
                return None

        INSTANCE = Shout("instance")
        """,
    )
    specs = p.workflow.specs
    assert isinstance(specs["a"].stage, FunctionStage)
    assert specs["b"].stage.word == "instance"
    assert specs["c"].stage.word == "hey"
    assert specs["d"].stage.word == "ho"
    assert isinstance(specs["d"].stage, Stage)


def test_a_file_without_pipeline_table_gets_defaults(load, tmp_path):
    p = load('[stages.only]\nuses = "review"\n')
    assert p.name == tmp_path.name
    assert p.concurrency == 8
    assert p.store_url == f"sqlite:///{tmp_path}/.treadle/state.db"


def test_loading_a_missing_file_says_how_to_make_one(pm, tmp_path):
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(tmp_path / "nope.toml", pm, label="nope.toml")
    assert str(info.value) == (
        "nope.toml: no such file (run 'treadle init' to create one, or pass -p PATH)"
    )


# --- every mistake, one line -----------------------------------------------------------------


def test_bad_duration_names_file_table_and_key(error):
    text = SPEC_EXAMPLE.replace('delay = "2s"', 'delay = "2 sec"')
    assert error(text) == (
        "treadle.toml: [stages.extract] key 'retry.delay': '2 sec' is not a duration "
        "(use 500ms, 2s, 5m, 1h)"
    )


def test_unknown_uses_lists_the_known_types_and_the_plugin_hint(error):
    message = error('[stages.x]\nuses = "dockr"\n')
    assert message.startswith("treadle.toml: [stages.x] key 'uses': unknown stage type 'dockr'; ")
    known = message.split("known: ", 1)[1].split(" (", 1)[0].split(", ")
    assert {"python", "review", "shell"} <= set(known)  # plus any plugins installed here
    assert known == sorted(known)
    assert "pip install treadle-stage-dockr" in message


def test_missing_needs_target_suggests_the_closest_name(error):
    message = error(
        '[stages.extract]\nuses = "review"\n[stages.parse]\nuses = "review"\nneeds = ["extrac"]\n'
    )
    assert message == (
        "treadle.toml: [stages.parse] key 'needs': 'extrac' is not a stage "
        "(did you mean 'extract'?)"
    )


def test_a_cycle_is_named_in_order(error):
    message = error(
        """
        [stages.a]
        uses = "review"
        needs = ["c"]
        [stages.b]
        uses = "review"
        needs = ["a"]
        [stages.c]
        uses = "review"
        needs = ["b"]
        """
    )
    assert message.startswith("treadle.toml: [stages] dependency cycle: ")
    assert message.count("->") == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[stage.x]\nuses = "review"\n', "unknown table or key 'stage' (did you mean 'stages'?)"),
        (
            '[pipeline]\nnam = "x"\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'nam': unknown key (did you mean 'name'?)",
        ),
        (
            '[pipeline]\nconcurrency = "8"\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'concurrency': expected an integer, got '8' (a string)",
        ),
        (
            '[pipeline]\nconcurrency = 0\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'concurrency': must be from 1 to 10,000, not 0",
        ),
        (
            '[pipeline]\nstore = "state.db"\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'store': 'state.db' is not a store URL",
        ),
        ("[pipeline]\n", "[stages] no stages defined"),
        ("[stages.x]\nneeds = []\n", "[stages.x] key 'uses': missing"),
        (
            '[stages.x]\nuses = "review"\npromt = "?"\n',
            "[stages.x] key 'promt': stage type 'review' has no option 'promt' (did you mean 'prompt'?)",  # noqa: E501
        ),
        (
            '[stages.x]\nuses = "shell"\ncommand = "ls -l"\n',
            "[stages.x] key 'command': expected a list, got 'ls -l' (a string)",
        ),
        (
            '[stages.x]\nuses = "shell"\n',
            "[stages.x] key 'command': missing; stage type 'shell' requires it",
        ),
        (
            '[stages.x]\nuses = "shell"\ncommand = ["ls"]\ntimeout = "soon"\n',
            "[stages.x] key 'timeout': 'soon' is not a duration",
        ),
        (
            '[stages.x]\nuses = "review"\nneeds = ["x"]\n',
            "[stages.x] key 'needs': a stage cannot need itself",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { attempts = 3 }\n',
            "[stages.x] key 'retry.attempts': unknown key (did you mean 'max_attempts'?)",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { max_attempts = 0 }\n',
            "[stages.x] key 'retry.max_attempts': must be from 1 to 1,000, not 0",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { on_exhausted = "panic" }\n',
            "[stages.x] key 'retry.on_exhausted': 'panic' is not one of fail, escalate",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { backoff = -1 }\n',
            "[stages.x] key 'retry.backoff': must be more than 0 and at most 1000, not -1",
        ),
        (
            '[stages.x]\nuses = "review"\nreview = "sometimes"\n',
            "[stages.x] key 'review': 'sometimes' is not a review policy (use never, always, on_escalation, on_uncertain, on_escalation_or_uncertain)",  # noqa: E501
        ),
        (
            '[stages.x]\nuses = "review"\nreview_timeout = { decision = "approve" }\n',
            "[stages.x] key 'review_timeout.after': missing",
        ),
        (
            '[stages.x]\nuses = "review"\nreview_timeout = { after = "1h", decision = "maybe" }\n',
            "[stages.x] key 'review_timeout.decision': 'maybe' is not a decision (use approve or reject)",  # noqa: E501
        ),
        (
            '[stages.x]\nuses = "review"\nreview_timeout = "0s"\n',
            "[stages.x] key 'review_timeout': '0s' must be longer than zero",
        ),
        (
            '[stages.x]\nuses = "review"\ngate = { uses = "min-lenght", chars = 3 }\n',
            "[stages.x] key 'gate.uses': unknown gate type 'min-lenght' (did you mean 'min-length'?)",  # noqa: E501
        ),
        (
            '[stages.x]\nuses = "review"\ngate = { uses = "min-length", chars = "3" }\n',
            "[stages.x] key 'gate.chars': expected an integer, got '3' (a string)",
        ),
        (
            '[stages.x]\nuses = "review"\ngate = [{ uses = "regex" }]\n',
            "[stages.x] key 'gate[0].pattern': missing; gate type 'regex' requires it",
        ),
        (
            '[stages.x]\nuses = "review"\ngate = { uses = "regex", pattern = "(" }\n',
            "[stages.x] key 'gate': gate type 'regex': ValueError: pattern '(' is not a valid regular expression",  # noqa: E501
        ),
        (
            '[stages.x]\nuses = "review"\n[[sinks]]\nuses = "jsnl"\n',
            "[sinks[0]] key 'uses': unknown sink type 'jsnl' (did you mean 'jsonl'?)",
        ),
        (
            '[stages.x]\nuses = "review"\n[[sinks]]\nuses = "jsonl"\n',
            "[sinks[0]] key 'path': missing; sink type 'jsonl' requires it",
        ),
        (
            '[stages.x]\nuses = "review"\nsinks = 3\n',
            "[stages.x] key 'sinks': stage type 'review' has no option 'sinks'",
        ),
        (
            'sinks = 3\n[stages.x]\nuses = "review"\n',
            "[sinks] expected [[sinks]] tables, got 3 (an integer)",
        ),
        ("[stages.x\n", "not valid TOML: "),
        (
            '[stages.x]\nuses = "nomodule_here:fn"\n',
            "[stages.x] cannot import 'nomodule_here': no module named 'nomodule_here'",
        ),
        (
            '[stages.x]\nuses = "stages:fech"\n',
            "[stages.x] 'stages' has no attribute 'fech' (did you mean 'fetch'?)",
        ),
        (
            '[stages.x]\nuses = "stages:fetch"\nspeed = 3\n',
            "[stages.x] key 'speed': stages:fetch is not a Stage class, so it takes no options",
        ),
        (
            '[stages.x]\nuses = "stages:Slow"\nspeed = 3\n',
            "[stages.x] key 'speed': stages:Slow does not take an option 'speed' (it takes: none)",
        ),
        (
            '[stages.x]\nuses = "stages:NUMBER"\n',
            "[stages.x] stages:NUMBER is a int, not a Stage, Stage subclass or function",
        ),
        (
            '[stages.x]\nuses = "stages:"\n',
            "[stages.x] 'stages:' is not an object reference (use 'package.module:name')",
        ),
        # Numbers every run would choke on are refused by validate already.
        (
            '[pipeline]\nconcurrency = 9223372036854775807\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'concurrency': must be from 1 to 10,000, not 9223372036854775807",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { delay = "99999999999d" }\n',
            "[stages.x] key 'retry.delay': '99999999999d' is too long (at most 3650d, ten years)",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { backoff = 1' + "0" * 400 + " }\n",
            "[stages.x] key 'retry.backoff': 1" + "0" * 56 + "... is out of range",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { backoff = 1e308 }\n',
            "[stages.x] key 'retry.backoff': must be more than 0 and at most 1000, not 1e+308",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { backoff = inf }\n',
            "[stages.x] key 'retry.backoff': inf is not a usable number",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { timeout = nan }\n',
            "[stages.x] key 'retry.timeout': nan is not a duration",
        ),
        (
            '[stages.x]\nuses = "review"\nretry = { max_attempts = 1000, backoff = 1000 }\n',
            "[stages.x] key 'retry': backoff 1000 over 1000 attempts grows past any number",
        ),
        (
            '[stages.x]\nuses = "review"\n'
            'retry = { max_attempts = 20, delay = "1d", backoff = 4 }\n',
            "(more than ten years); set max_delay to cap it",
        ),
        (
            '[stages.x]\nuses = "review"\nreview_timeout = "99999999999d"\n',
            "[stages.x] key 'review_timeout': '99999999999d' is too long",
        ),
        (
            '[pipeline]\nmax_artefact_bytes = 99999999999999\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'max_artefact_bytes': must be from 1 to 1,073,741,824",
        ),
        # A typo of a stage key is named as one.
        (
            '[stages.a]\nuses = "review"\n[stages.x]\nuses = "review"\nneds = ["a"]\n',
            "[stages.x] key 'neds': stage type 'review' has no option 'neds' "
            "(did you mean 'needs'?)",
        ),
        (
            '[stages.a]\nuses = "review"\n[stages.x]\nuses = "stages:fetch"\nneds = ["a"]\n',
            "[stages.x] key 'neds': stages:fetch is not a Stage class, so it takes no options "
            "(did you mean 'needs'?)",
        ),
        # An option the class does not take names the table and the key.
        (
            '[stages.x]\nuses = "stages:fetch"\ngate = { uses = "stages:Gate", colour = "red" }\n',
            "[stages.x] key 'gate.colour': stages:Gate does not take an option 'colour' "
            "(it takes: words)",
        ),
        (
            '[stages.x]\nuses = "stages:fetch"\ngate = { uses = "stages:GATE", words = 1 }\n',
            "[stages.x] key 'gate.words': stages:GATE is a gate object, not a class, "
            "so it takes no options",
        ),
        (
            '[stages.x]\nuses = "stages:fetch"\ngate = { uses = "min-length", char = 3 }\n',
            "[stages.x] key 'gate.char': gate type 'min-length' has no option 'char' "
            "(did you mean 'chars'?)",
        ),
        # Stage and pipeline names are ids every store takes.
        (
            '[stages."a\\u0000b"]\nuses = "review"\n',
            "[stages] a stage name 'a\\x00b' contains a NUL character",
        ),
        (
            f'[stages.{"s" * 256}]\nuses = "review"\n',
            "is 256 characters long; at most 255 are allowed",
        ),
        (
            '[pipeline]\nname = ""\n[stages.x]\nuses = "review"\n',
            "[pipeline] key 'name': the pipeline's name is empty",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_where(error, text, expected):
    stages_py = """
        from treadle_core import Accepted, QualityGate, Stage

        NUMBER = 3

        def fetch(item, ctx):
            return None

        class Slow(Stage):
            async def execute(self, item, ctx):
                return None

        class Gate(QualityGate):
            def __init__(self, words=()):
                self.words = words

            async def evaluate(self, item, stage, output, ctx):
                return Accepted()

        GATE = Gate()
        """
    message = error(text, stages_py)
    assert message.startswith("treadle.toml: ")
    assert expected in message


def test_a_toml_nested_100000_deep_is_one_line(error):
    message = error("a = " + "[" * 100_000 + "]" * 100_000 + '\n[stages.x]\nuses = "review"\n')
    assert message in (
        "treadle.toml: not valid TOML: nested too deeply",
        # A tomllib that bounds nesting itself says so in its own words, on one line.
        message.splitlines()[0],
    )
    assert message.startswith("treadle.toml: not valid TOML: ")


def test_a_sink_option_its_factory_does_not_take_names_the_key(tmp_path):
    class Sinks:
        @hookimpl
        def register_event_sinks(self, register):
            register(
                SinkType("tape", lambda path: print, "", {"path": Option(str), "x": Option(int)})
            )

    pm = get_plugin_manager(load_entry_points=False)
    pm.add_plugin(Sinks(), "tape-sink")
    text = '[stages.x]\nuses = "review"\n[[sinks]]\nuses = "tape"\npath = "p"\nx = 1\n'
    with pytest.raises(PipelineFileError) as info:
        loads_pipeline(text, pm, path=tmp_path / "treadle.toml")
    assert str(info.value) == (
        "treadle.toml: [sinks[0]] key 'x': sink type 'tape' does not take an option 'x' "
        "(it takes: path)"
    )


def test_a_stage_module_that_raises_on_import_is_a_pipeline_error(error):
    message = error('[stages.x]\nuses = "stages:fetch"\n', "1 / 0\n")
    assert message == (
        "treadle.toml: [stages.x] importing 'stages' failed: ZeroDivisionError: division by zero"
    )


def test_prepare_workflow_that_raises_names_the_plugin(tmp_path):
    class Strict:
        @hookimpl
        def prepare_workflow(self, builder, config):
            raise ValueError("no review stage")

    pm = get_plugin_manager(load_entry_points=False)
    pm.add_plugin(Strict(), "strict-review")
    with pytest.raises(PipelineFileError) as info:
        loads_pipeline('[stages.x]\nuses = "review"\n', pm, path=tmp_path / "treadle.toml")
    assert str(info.value) == (
        'treadle.toml: plugin "strict-review" failed in prepare_workflow: ValueError: no review stage'  # noqa: E501
    )


def test_stage_modules_are_imported_from_the_pipeline_directory(pm, tmp_path):
    for name, word in (("one", "first"), ("two", "second")):
        d = tmp_path / name
        d.mkdir()
        (d / "stages.py").write_text(f"def fn(item, ctx):\n    return {word!r}\n")
        (d / "treadle.toml").write_text('[stages.x]\nuses = "stages:fn"\n')
    first = load_pipeline(tmp_path / "one" / "treadle.toml", pm).workflow.specs["x"].stage
    second = load_pipeline(tmp_path / "two" / "treadle.toml", pm).workflow.specs["x"].stage
    assert (first.fn(None, None), second.fn(None, None)) == ("first", "second")


# --- generated malformed files through the CLI ------------------------------------------------

VALID = {
    "pipeline": '[pipeline]\nname = "p"\nstore = "sqlite:///state.db"\n',
    "fetch": '[stages.fetch]\nuses = "review"\n',
    "parse": '[stages.parse]\nuses = "review"\nneeds = ["fetch"]\n',
}

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_not_duration = st.text(min_size=1, max_size=12).filter(
    lambda s: _safe_toml(s) and _bad_duration(s)
)


def _safe_toml(s: str) -> bool:
    return all(c.isprintable() and c not in '"\\' for c in s)


def _bad_duration(s: str) -> bool:
    try:
        parse_duration(s)
    except ValueError:
        return True
    return False


@st.composite
def malformed(draw) -> str:
    kind = draw(
        st.sampled_from(
            [
                "unknown_key",
                "bad_duration",
                "unknown_uses",
                "missing_need",
                "cycle",
                "wrong_type",
                "bad_toml",
                "bad_policy",
            ]
        )
    )
    parts = dict(VALID)
    if kind == "unknown_key":
        key = draw(_word.filter(lambda k: k not in ("uses", "needs", "prompt", "stage")))
        parts["fetch"] += f"{key} = 1\n"
    elif kind == "bad_duration":
        parts["fetch"] += f'retry = {{ delay = "{draw(_not_duration)}" }}\n'
    elif kind == "unknown_uses":
        name = draw(_word.filter(lambda n: n not in ("review", "python", "shell")))
        parts["fetch"] = f'[stages.fetch]\nuses = "{name}"\n'
    elif kind == "missing_need":
        name = draw(_word.filter(lambda n: n not in ("fetch", "parse")))
        parts["parse"] = f'[stages.parse]\nuses = "review"\nneeds = ["{name}"]\n'
    elif kind == "cycle":
        parts["fetch"] += 'needs = ["parse"]\n'
    elif kind == "wrong_type":
        value = draw(st.sampled_from(['"8"', "true", "[1]", "1.5", "-2"]))
        parts["pipeline"] += f"concurrency = {value}\n"
    elif kind == "bad_toml":
        parts["parse"] += draw(st.sampled_from(["[stages.parse\n", "x = \n", "= 3\n", "a = [1,\n"]))
    else:
        policy = draw(_word.filter(lambda w: w not in [p.value for p in ReviewPolicy]))
        parts["fetch"] += f'review = "{policy}"\n'
    order = draw(st.permutations(list(parts)))
    return "".join(parts[k] for k in order)


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("malformed")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=malformed())
def test_malformed_files_exit_2_with_one_line_and_leave_the_store_alone(cli_dir, pm, text):
    (cli_dir / "treadle.toml").write_text(text)
    cli = TreadleCli(pm, cli_dir)
    for args in (["validate"], ["add", "--id", "a"], ["run"], ["status"]):
        result = cli(*args)
        assert result.exit_code == 2, (text, args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Error: treadle.toml: ")
        assert "Traceback" not in result.stderr + result.stdout
        assert not (cli_dir / "state.db").exists()
        assert not (cli_dir / ".treadle").exists()


def test_generated_files_are_valid_without_the_mistake(pm, tmp_path):
    text = "".join(VALID.values())
    assert loads_pipeline(text, pm, path=tmp_path / "treadle.toml").workflow.stages == [
        "fetch",
        "parse",
    ]
    assert Path(tmp_path / "state.db").exists() is False
