"""`treadle -v` / `-vv` / `--log-level`: Treadle's log on stderr, one format, before or
after the command; warnings by default; other libraries stay at warnings."""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path

import click
import pytest

from treadle_core import hookimpl
from treadle_core._fixtures import TreadleCli
from treadle_core.cli.context import StderrHandler
from treadle_core.plugins import get_plugin_manager

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ([A-Z]+) ([\w.]+): (.*)$")


def probe_plugin() -> types.ModuleType:
    """A plugin whose ``probe`` command logs one record at each level."""

    def register_commands(cli: click.Group) -> None:
        @cli.command()
        def probe() -> None:
            """Log one record per level."""
            ours = logging.getLogger("treadle.probe")
            ours.debug("debug from treadle")
            ours.info("info from treadle")
            ours.warning("warning from treadle")
            ours.error("error from treadle")
            other = logging.getLogger("somelib")
            other.info("info from somelib")
            other.warning("warning from somelib")
            click.echo("probed")

    module = types.ModuleType("probe")
    module.register_commands = hookimpl(register_commands)  # type: ignore[attr-defined]
    return module


@pytest.fixture
def cli(tmp_path: Path) -> TreadleCli:
    pm = get_plugin_manager(load_entry_points=False)
    pm.add_plugin(probe_plugin(), "probe", version="1.0")
    return TreadleCli(pm, tmp_path)


def logged(stderr: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of each log line; every stderr line must be one."""
    out = []
    for line in stderr.splitlines():
        m = LINE.match(line)
        assert m, f"not a log line: {line!r}"
        out.append((m[1], m[2], m[3]))
    return out


def levels(stderr: str, logger: str = "treadle.probe") -> list[str]:
    return [level for level, name, _ in logged(stderr) if name == logger]


def test_by_default_warnings_and_errors_show_once_in_one_format(cli: TreadleCli) -> None:
    result = cli("probe")
    assert result.exit_code == 0 and result.stdout == "probed\n"
    assert logged(result.stderr) == [
        ("WARNING", "treadle.probe", "warning from treadle"),
        ("ERROR", "treadle.probe", "error from treadle"),
        ("WARNING", "somelib", "warning from somelib"),
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-v", "probe"], ["INFO", "WARNING", "ERROR"]),
        (["probe", "-v"], ["INFO", "WARNING", "ERROR"]),
        (["--verbose", "probe"], ["INFO", "WARNING", "ERROR"]),
        (["-vv", "probe"], ["DEBUG", "INFO", "WARNING", "ERROR"]),
        (["-v", "probe", "-v"], ["DEBUG", "INFO", "WARNING", "ERROR"]),
        (["--log-level", "error", "probe"], ["ERROR"]),
        (["probe", "--log-level", "DEBUG"], ["DEBUG", "INFO", "WARNING", "ERROR"]),
        (["-vv", "--log-level", "warning", "probe"], ["WARNING", "ERROR"]),  # --log-level wins
        (["--log-level", "error", "probe", "-v"], ["ERROR"]),
    ],
)
def test_v_and_log_level_before_or_after_the_command(
    cli: TreadleCli, args: list[str], expected: list[str]
) -> None:
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert levels(result.stderr) == expected
    # other libraries keep to warnings whatever Treadle's level
    assert levels(result.stderr, "somelib") == ["WARNING"]


def test_the_environment_sets_the_level_and_v_overrides_it(cli: TreadleCli) -> None:
    quiet = cli("probe", env={"TREADLE_LOG_LEVEL": "error"})
    assert levels(quiet.stderr) == ["ERROR"]
    loud = cli("-v", "probe", env={"TREADLE_LOG_LEVEL": "error"})
    assert levels(loud.stderr) == ["INFO", "WARNING", "ERROR"]


def test_an_unknown_level_is_one_line_and_exit_2(cli: TreadleCli) -> None:
    result = cli("--log-level", "loud", "probe")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error', 'critical'" in result.stderr


def test_each_invocation_leaves_logging_as_it_found_it(cli: TreadleCli) -> None:
    treadle = logging.getLogger("treadle")
    before = (treadle.level, list(logging.getLogger().handlers))
    for _ in range(3):
        result = cli("-vv", "probe")
        assert levels(result.stderr).count("WARNING") == 1  # never printed twice
    assert (treadle.level, list(logging.getLogger().handlers)) == before
    assert not any(isinstance(h, StderrHandler) for h in logging.getLogger().handlers)


def test_global_options_show_in_help(cli: TreadleCli) -> None:
    text = cli("--help").stdout
    assert "-v, --verbose" in text and "--log-level" in text
