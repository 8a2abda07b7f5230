"""The real ``treadle`` console script in a subprocess: the README demo and clean failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def treadle_command() -> list[str]:
    script = shutil.which("treadle", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "treadle_core.cli"]


def treadle(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    return subprocess.run(
        [*treadle_command(), *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def hello(tmp_path):
    target = tmp_path / "hello"
    shutil.copytree(ROOT / "examples" / "hello", target, ignore=shutil.ignore_patterns(".treadle"))
    return target


def test_the_readme_demo(hello):
    script = treadle_command()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    if Path(script).name == "treadle":
        env["PATH"] = f"{Path(script).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", str(hello / "demo.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "added 3 items" in result.stdout
    assert "3 awaiting review" in result.stdout
    assert "approved 3 reviews" in result.stdout
    assert result.stdout.count("3 complete") == 1
    assert "greeting: 100% done (complete)" in result.stdout
    events = (hello / ".treadle" / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["type"] == "WorkflowCompleted"


def test_a_malformed_file_exits_2_with_one_line_and_no_traceback(hello):
    toml = hello / "treadle.toml"
    toml.write_text(toml.read_text().replace('delay = "100ms"', 'delay = "2 sec"'))
    result = treadle("run", cwd=hello)
    assert result.returncode == 2
    assert result.stderr == (
        "Error: treadle.toml: [stages.summarise] key 'retry.delay': '2 sec' is not a duration "
        "(use 500ms, 2s, 5m, 1h)\n"
    )
    assert result.stdout == ""
    assert not (hello / ".treadle").exists()


def test_unknown_item_is_exit_2_without_traceback(hello):
    treadle("add", "items.jsonl", cwd=hello)
    result = treadle("review", "show", "nope", "approve", cwd=hello)
    assert (result.returncode, result.stderr) == (2, "Error: unknown item 'nope'\n")


def test_python_dash_m_and_version(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "treadle_core.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("treadle, version ")
