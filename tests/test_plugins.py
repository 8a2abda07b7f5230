"""Plugins (SPEC §7): hooks, the manager, registries, errors; meta-tests keep the surface honest."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import click
import pytest

from treadle_core import (
    GateType,
    MemoryStateStore,
    Option,
    PluginError,
    QualityFeedback,
    QualityGate,
    Rejected,
    SinkType,
    StageType,
    StoreBackend,
    hookimpl,
)
from treadle_core import hookspecs as hookspecs_module
from treadle_core._fixtures import (  # noqa: F401 - fixtures
    EventRecorder,
    TreadleCli,
    treadle_cli,
    treadle_plugin_manager,
)
from treadle_core.plugins import (
    BUILTIN_PLUGINS,
    get_plugin_manager,
    plugin_infos,
    stage_types,
    store_backends,
)

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name
    for name, fn in vars(hookspecs_module).items()
    if inspect.isfunction(fn) and hasattr(fn, "treadle_spec")
)


def plugin(name: str, **hooks: object) -> types.ModuleType:
    """A plugin module made on the spot: ``plugin("acme", register_stage_types=fn)``."""
    module = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(module, hook, hookimpl(fn))  # type: ignore[arg-type]
    return module


def manager(*plugins: tuple[str, types.ModuleType]):
    pm = get_plugin_manager(load_entry_points=False)
    for name, module in plugins:
        pm.add_plugin(module, name, version="9.9")
    return pm


def write_pipeline(path: Path, body: str, stages_py: str | None = None) -> None:
    (path / "treadle.toml").write_text(textwrap.dedent(body))
    if stages_py is not None:
        (path / "stages.py").write_text(textwrap.dedent(stages_py))


async def noop(item, ctx):
    return None


# --- meta-tests ------------------------------------------------------------------------------


def test_the_hooks_are_those_of_the_spec():
    assert HOOKS == [
        "prepare_workflow",
        "register_commands",
        "register_event_sinks",
        "register_quality_gates",
        "register_stage_types",
        "register_stores",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    source = Path(__file__).read_text()
    assert re.search(rf"def test_hook_{hook}\b", source), f"write test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(hook):
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs_module, hook)).parameters)
    heading = f"## `{hook}({params})`"
    assert heading in docs, f"docs/plugin-hooks.md needs a section headed {heading}"
    section = docs.split(heading, 1)[1].split("\n## ", 1)[0]
    assert "@hookimpl" in section, f"the {hook} section needs an example"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_one_line_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs_module, hook))
    assert doc and "\n" not in doc.strip()


# --- one test per hook ----------------------------------------------------------------------


def test_hook_register_stage_types(tmp_path):
    made = []

    def factory(image: str, pull: bool = False):
        made.append((image, pull))
        return noop

    def register_stage_types(register):
        register(StageType("docker", factory, "Run a container", {"image": _opt(str, True)}))

    pm = manager(("acme-stages", plugin("acme", register_stage_types=register_stage_types)))
    assert stage_types(pm)["docker"].description == "Run a container"
    write_pipeline(tmp_path, '[stages.build]\nuses = "docker"\nimage = "alpine"\n')
    result = TreadleCli(pm, tmp_path)("stages", "list", "--json")
    rows = {r["type"]: r for r in json.loads(result.stdout)}
    assert rows["docker"]["plugin"] == "acme-stages"
    assert rows["docker"]["options"]["image"]["required"] is True
    assert TreadleCli(pm, tmp_path)("validate").exit_code == 0
    assert made == [("alpine", False)]


def _opt(t, required=False):
    from treadle_core import Option

    return Option(t, required=required)


def test_hook_register_stores(tmp_path):
    opened = []

    def open_acme(url):
        opened.append(url)
        return MemoryStateStore()

    def register_stores(register):
        register(StoreBackend("acme", open_acme, "Acme's store"))

    pm = manager(("treadle-store-acme", plugin("acme", register_stores=register_stores)))
    assert store_backends(pm)["acme"].description == "Acme's store"
    assert {"memory", "sqlite", "postgresql", "mysql"} <= set(store_backends(pm))
    result = TreadleCli(pm, tmp_path)("--store", "acme://db1", "add", "--id", "a")
    assert result.exit_code == 0, result.stderr
    assert opened == ["acme://db1"]


def test_hook_register_quality_gates(tmp_path):
    class NeverGood(QualityGate):
        async def evaluate(self, item, stage, output, ctx):
            return Rejected(QualityFeedback("never good enough"))

    def register_quality_gates(register):
        register(GateType("never", lambda: NeverGood(), "Rejects everything"))

    pm = manager(("acme-gates", plugin("acme", register_quality_gates=register_quality_gates)))
    write_pipeline(
        tmp_path,
        """
        [pipeline]
        store = "sqlite:///state.db"
        [stages.one]
        uses = "stages:one"
        gate = { uses = "never" }
        """,
        "def one(item, ctx):\n    return None\n",
    )
    cli = TreadleCli(pm, tmp_path)
    assert cli("add", "--id", "a").exit_code == 0
    result = cli("run")
    assert result.exit_code == 1
    status = json.loads(cli("status", "a", "--json").stdout)
    assert status["stages"]["one"]["status"] == "failed"
    assert "never good enough" in status["stages"]["one"]["error"]


def test_hook_register_event_sinks(tmp_path):
    recorders: list[EventRecorder] = []

    def make(label: str = "x"):
        recorder = EventRecorder()
        recorders.append(recorder)
        return recorder

    def register_event_sinks(register):
        register(SinkType("memory", make, "Keeps events", {"label": _opt(str)}))

    pm = manager(("acme-sinks", plugin("acme", register_event_sinks=register_event_sinks)))
    write_pipeline(
        tmp_path,
        """
        [pipeline]
        store = "sqlite:///state.db"
        [stages.one]
        uses = "stages:one"
        [[sinks]]
        uses = "memory"
        label = "mine"
        """,
        "def one(item, ctx):\n    return None\n",
    )
    cli = TreadleCli(pm, tmp_path)
    cli("add", "--id", "a")
    assert cli("run").exit_code == 0
    [recorder] = recorders
    assert recorder.kinds() == ["StageStarted", "StageCompleted", "WorkflowCompleted"]


def test_hook_register_commands(tmp_path):
    def register_commands(cli):
        @cli.command()
        @click.argument("name")
        def hello(name):
            """Say hello."""
            click.echo(f"hello {name}")

    pm = manager(("acme-cli", plugin("acme", register_commands=register_commands)))
    result = TreadleCli(pm, tmp_path)("hello", "world")
    assert result.exit_code == 0
    assert result.stdout == "hello world\n"
    [info] = [i for i in plugin_infos(pm) if i.name == "acme-cli"]
    assert info.provides == ["command:hello"]


def test_hook_prepare_workflow(tmp_path):
    seen = {}

    def prepare_workflow(builder, config):
        seen["config"] = config["plugins"]["acme"]
        builder.stage("audit", noop, needs=["one"])

    pm = manager(("acme", plugin("acme", prepare_workflow=prepare_workflow)))
    write_pipeline(
        tmp_path,
        """
        [stages.one]
        uses = "stages:one"
        [plugins.acme]
        level = 3
        """,
        "def one(item, ctx):\n    return None\n",
    )
    result = TreadleCli(pm, tmp_path)("graph", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)["stages"]] == ["one", "audit"]
    assert seen["config"] == {"level": 3}


# --- the manager ----------------------------------------------------------------------------


def test_an_implementation_may_accept_fewer_arguments_than_the_spec(tmp_path):
    calls = []

    def prepare_workflow(builder):
        calls.append(builder.name)

    pm = manager(("acme", plugin("acme", prepare_workflow=prepare_workflow)))
    write_pipeline(tmp_path, '[pipeline]\nname = "p"\n[stages.r]\nuses = "review"\n')
    assert TreadleCli(pm, tmp_path)("validate").exit_code == 0
    assert calls == ["p"]


def test_a_name_registered_by_two_plugins_is_an_error_naming_both(tmp_path):
    def one(register):
        register(StageType("docker", lambda: noop))

    pm = manager(
        ("treadle-stage-docker", plugin("a", register_stage_types=one)),
        ("acme-stages", plugin("b", register_stage_types=one)),
    )
    expected = (
        'Stage type "docker" is registered by both "treadle-stage-docker" and "acme-stages"; '
        "uninstall one or set TREADLE_LOAD_PLUGINS"
    )
    with pytest.raises(PluginError) as info:
        pm.stage_types().get("docker")
    assert str(info.value) == expected
    infos = {i.name: i for i in plugin_infos(pm)}
    assert infos["acme-stages"].error == expected
    assert infos["treadle-stage-docker"].error == expected
    write_pipeline(tmp_path, '[stages.x]\nuses = "docker"\n')
    result = TreadleCli(pm, tmp_path)("validate")
    assert result.exit_code == 2
    assert expected in result.stderr


def test_a_plugin_raising_in_a_hook_is_recorded_and_the_rest_keep_working():
    def bad(register):
        raise RuntimeError("cannot reach the registry")

    def good(register):
        register(StageType("fine", lambda: noop))

    pm = manager(
        ("bad-plugin", plugin("bad", register_stage_types=bad)),
        ("good-plugin", plugin("good", register_stage_types=good)),
    )
    assert "fine" in stage_types(pm)
    infos = {i.name: i for i in plugin_infos(pm)}
    assert infos["bad-plugin"].error == (
        "register_stage_types: RuntimeError: cannot reach the registry"
    )
    assert infos["good-plugin"].error is None


def test_a_misspelled_hook_is_reported_with_the_right_name():
    pm = manager(("typo", plugin("typo", register_stage_type=lambda register: None)))
    [info] = [i for i in plugin_infos(pm) if i.name == "typo"]
    assert info.error == (
        "unknown hook 'register_stage_type' (did you mean 'register_stage_types'?)"
    )
    pm.check_pending()  # the offender is unregistered; the rest is sound


def test_registering_a_wrong_value_is_an_error_of_that_plugin():
    pm = manager(("odd", plugin("odd", register_stage_types=lambda register: register("x"))))
    [info] = [i for i in plugin_infos(pm) if i.name == "odd"]
    assert info.error == "register_stage_types: registered str, expected StageType"


def _plain_string_options(register):
    register(StageType("shout", lambda field="text": noop, "Upper-case", {"field": "text"}))


@pytest.mark.parametrize(
    ("registration", "error"),
    [
        (
            _plain_string_options,
            "register_stage_types: StageType 'shout': option 'field' is str 'text', not an "
            "Option (write Option(str, description=...))",
        ),
        (
            lambda register: register(StageType("", lambda: noop)),
            "register_stage_types: StageType name must be a non-empty string, not ''",
        ),
        (
            lambda register: register(StageType("x", "not callable")),
            "register_stage_types: StageType 'x': factory 'not callable' is not callable",
        ),
        (
            lambda register: register(StageType("x", lambda: noop, options=["a"])),
            "register_stage_types: StageType 'x': options must map names to Option, not list",
        ),
        (
            lambda register: register(StageType("x", lambda: noop, options={"a": Option("str")})),
            "register_stage_types: StageType 'x': option 'a' has type 'str', which is not a type",
        ),
    ],
)
def test_a_malformed_registration_is_that_plugins_error_and_the_rest_keep_working(
    tmp_path, registration, error
):
    pm = manager(
        ("broken", plugin("broken", register_stage_types=registration)),
        (
            "fine",
            plugin(
                "fine",
                register_stage_types=lambda register: register(
                    StageType("ok", lambda: noop, "works", {"n": Option(int)})
                ),
            ),
        ),
    )
    infos = {i.name: i for i in plugin_infos(pm)}
    assert infos["broken"].error == error
    assert infos["fine"].error is None
    assert "ok" in stage_types(pm) and "shout" not in stage_types(pm)
    cli = TreadleCli(pm, tmp_path)
    listed = cli("stages", "list")
    assert listed.exit_code == 0 and "ok" in listed.stdout
    listed = {p["name"]: p for p in json.loads(cli("plugins", "list", "--json").stdout)}
    assert listed["broken"]["error"] == error
    assert "ERROR: register_stage_types" in cli("plugins", "list").stdout


def test_validate_and_run_warn_about_a_broken_plugin(tmp_path):
    pm = manager(("broken", plugin("broken", register_stage_types=_plain_string_options)))
    write_pipeline(tmp_path, '[pipeline]\nstore = "sqlite:///s.db"\n[stages.x]\nuses = "review"\n')
    cli = TreadleCli(pm, tmp_path)
    warning = "warning: plugin broken: register_stage_types: StageType 'shout': option 'field'"
    validated = cli("validate")
    assert validated.exit_code == 0 and validated.stderr.startswith(warning)
    assert len(validated.stderr.splitlines()) == 1
    assert json.loads(cli("validate", "--json").stdout)["warnings"][0].startswith("plugin broken:")
    ran = cli("run")
    assert ran.exit_code == 0 and ran.stderr.startswith(warning)


def test_plugins_list_hook_implemented_only_by_builtins_says_so(tmp_path):
    cli = TreadleCli(manager(), tmp_path)
    result = cli("plugins", "list", "--hook", "register_stores")
    assert result.exit_code == 0
    assert result.stdout == (
        "no installed plugin implements register_stores; "
        "built-in: treadle_core.builtins.stores (--all lists them)\n"
    )


def test_each_manager_is_fresh_and_lists_the_builtins():
    one, two = get_plugin_manager(), get_plugin_manager()
    assert one is not two
    names = {i.name for i in plugin_infos(one) if i.builtin}
    assert names == set(BUILTIN_PLUGINS)
    assert {"python", "review"} <= set(stage_types(one))


def test_contrib_registers_only_through_entry_points():
    bare = get_plugin_manager(load_entry_points=False)
    assert "shell" not in stage_types(bare)
    full = get_plugin_manager()
    assert "shell" in stage_types(full)
    assert full.stage_types().owners["shell"] == "treadle-contrib-shell"


def test_load_plugins_env_loads_only_those(monkeypatch):
    monkeypatch.setenv("TREADLE_LOAD_PLUGINS", "treadle-contrib-shell, not-installed")
    infos = {i.name: i for i in plugin_infos(get_plugin_manager(), include_builtins=False)}
    assert set(infos) == {"treadle-contrib-shell", "not-installed"}
    assert infos["not-installed"].error == "not installed (named in TREADLE_LOAD_PLUGINS)"
    monkeypatch.setenv("TREADLE_LOAD_PLUGINS", "")
    assert plugin_infos(get_plugin_manager(), include_builtins=False) == []


def test_trace_plugins_env_traces_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("TREADLE_TRACE_PLUGINS", "1")
    get_plugin_manager(load_entry_points=False).stage_types()
    assert "register_stage_types [treadle_core.builtins.stages]" in capsys.readouterr().err


def test_plugins_list_hides_builtins_unless_all(tmp_path):
    pm = manager(("acme", plugin("acme", register_stage_types=lambda register: None)))
    cli = TreadleCli(pm, tmp_path)
    listed = json.loads(cli("plugins", "list", "--json").stdout)
    assert [p["name"] for p in listed] == ["acme"]
    assert listed[0] == {
        "builtin": False,
        "error": None,
        "hooks": ["register_stage_types"],
        "name": "acme",
        "provides": [],
        "version": "9.9",
    }
    everything = json.loads(cli("plugins", "list", "--all", "--json").stdout)
    assert {p["name"] for p in everything} == {"acme", *BUILTIN_PLUGINS}
    commands = next(p for p in everything if p["name"] == "treadle_core.builtins.commands")
    assert "command:run" in commands["provides"]


def test_plugins_list_filters_by_hook_and_refuses_unknown_hooks(tmp_path):
    cli = TreadleCli(manager(), tmp_path)
    result = cli("plugins", "list", "--all", "--hook", "register_stores", "--json")
    listed = json.loads(result.stdout)
    assert [p["name"] for p in listed] == ["treadle_core.builtins.stores"]
    result = cli("plugins", "list", "--hook", "register_stage")
    assert result.exit_code == 2
    assert "unknown hook 'register_stage'" in result.stderr


def test_plugins_list_table_shows_errors(tmp_path):
    def bad(register):
        raise ValueError("boom")

    cli = TreadleCli(manager(("bad", plugin("bad", register_event_sinks=bad))), tmp_path)
    result = cli("plugins", "list")
    assert result.exit_code == 0
    assert "ERROR: register_event_sinks: ValueError: boom" in result.stdout


def test_a_command_name_taken_twice_keeps_the_first(tmp_path):
    def register_commands(cli):
        @cli.command("run")
        def fake_run():
            click.echo("not the real run")

    pm = manager(("rogue", plugin("rogue", register_commands=register_commands)))
    cli = TreadleCli(pm, tmp_path)
    assert "not the real run" not in cli("run", "--help").stdout
    [info] = [i for i in plugin_infos(pm) if i.name == "rogue"]
    assert info.error == (
        'Command "run" is registered by both "treadle_core.builtins.commands" and "rogue"; '
        "uninstall one or set TREADLE_LOAD_PLUGINS"
    )


def test_importing_treadle_core_loads_no_plugins():
    code = (
        "import sys, treadle_core; "
        "print(sorted(m for m in sys.modules if m.startswith(('treadle_contrib', "
        "'treadle_core.plugins', 'treadle_core.builtins', 'treadle_core.cli'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- real entry points in a subprocess ---------------------------------------------------------

DIST = {
    "throwaway_plugin": (
        "throwaway-plugin",
        """
        from treadle_core import StageType, hookimpl

        async def run_docker(item, ctx):
            return None

        @hookimpl
        def register_stage_types(register):
            register(StageType("docker", lambda image="x": run_docker, "Containers"))
        """,
    ),
    "acme_stages": (
        "acme-stages",
        """
        from treadle_core import StageType, hookimpl

        @hookimpl
        def register_stage_types(register):
            register(StageType("docker", lambda: None, "Acme's containers"))
            register(StageType("acme", lambda: None, "Acme's own"))
        """,
    ),
    "broken_plugin": ("broken-plugin", "raise ImportError('missing libfoo')\n"),
    "raising_plugin": (
        "raising-plugin",
        """
        from treadle_core import hookimpl

        @hookimpl
        def register_quality_gates(register):
            raise RuntimeError("gate registry exploded")
        """,
    ),
}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """Throwaway distributions (dist-info + module) in a directory to put on PYTHONPATH."""
    root = tmp_path_factory.mktemp("site")
    for module, (dist, source) in DIST.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        info = root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[treadle]\n{dist} = {module}\n")
    return root


def run_treadle(args, cwd, plugin_path, **env):
    environ = {**os.environ, "PYTHONPATH": str(plugin_path), **env}
    if "TREADLE_LOAD_PLUGINS" not in env:
        environ.pop("TREADLE_LOAD_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_entry_point_plugins_are_discovered_with_their_errors(tmp_path, plugin_path):
    result = run_treadle(["plugins", "list", "--json"], tmp_path, plugin_path)
    assert result.returncode == 0, result.stderr
    infos = {p["name"]: p for p in json.loads(result.stdout)}
    assert infos["broken-plugin"]["error"] == (
        "cannot import 'broken_plugin': ImportError: missing libfoo"
    )
    assert infos["raising-plugin"]["error"] == (
        "register_quality_gates: RuntimeError: gate registry exploded"
    )
    conflict = (
        'Stage type "docker" is registered by both "acme-stages" and "throwaway-plugin"; '
        "uninstall one or set TREADLE_LOAD_PLUGINS"
    )
    assert infos["throwaway-plugin"]["error"] == conflict
    assert infos["acme-stages"]["provides"] == ["stage:acme", "stage:docker"]
    assert infos["throwaway-plugin"]["version"] == "1.0"
    assert infos["treadle-contrib-shell"]["error"] is None  # the rest keep working
    assert infos["treadle-contrib-gates"]["provides"]  # despite raising-plugin's gates

    (tmp_path / "treadle.toml").write_text('[stages.build]\nuses = "docker"\n')
    result = run_treadle(["validate"], tmp_path, plugin_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"Error: treadle.toml: [stages.build] key 'uses': {conflict}"


def test_load_plugins_env_resolves_a_conflict(tmp_path, plugin_path):
    (tmp_path / "treadle.toml").write_text('[stages.build]\nuses = "docker"\n')
    result = run_treadle(
        ["validate"], tmp_path, plugin_path, TREADLE_LOAD_PLUGINS="throwaway-plugin"
    )
    assert result.returncode == 0, result.stderr
    only = {"TREADLE_LOAD_PLUGINS": "throwaway-plugin"}
    result = run_treadle(["plugins", "list", "--json"], tmp_path, plugin_path, **only)
    assert [p["name"] for p in json.loads(result.stdout)] == ["throwaway-plugin"]
