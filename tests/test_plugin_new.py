"""``treadle plugin new``: the scaffolds install, show up in ``plugins list`` and pass their tests.

The end-to-end test makes a fresh venv that sees this environment's packages
(treadle, pytest, setuptools) through a ``.pth`` file — so nothing is downloaded —
installs the four scaffolds into it with pip (editable, from their own
pyproject.toml), and runs ``treadle plugins list`` and the scaffolds' own tests
with the venv's interpreter.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from treadle_core._fixtures import TreadleCli
from treadle_core.cli.plugin_new import KINDS, scaffold, treadle_checkout
from treadle_core.plugins import get_plugin_manager


@pytest.fixture
def cli(tmp_path: Path) -> TreadleCli:
    return TreadleCli(get_plugin_manager(load_entry_points=False), tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_scaffold_declares_the_entry_point_named_after_the_distribution(kind: str) -> None:
    files = scaffold("pdf-lite", kind)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    dist = f"treadle-{kind}-pdf-lite"
    assert project["name"] == dist
    assert project["entry-points"]["treadle"] == {dist: dist.replace("-", "_")}
    assert f"{dist.replace('-', '_')}/__init__.py" in files
    assert "@hookimpl" in files[f"{dist.replace('-', '_')}/__init__.py"]


@pytest.mark.parametrize("kind", KINDS)
def test_scaffold_python_compiles(kind: str) -> None:
    for rel, text in scaffold("ocr", kind).items():
        if rel.endswith(".py"):
            compile(text, rel, "exec")


@pytest.mark.parametrize("kind", KINDS)
def test_scaffold_leaves_no_placeholder(kind: str) -> None:
    for rel, text in scaffold("word-count", kind).items():
        assert re.findall(r"__[A-Z]+__", text) == [], rel
    readme = scaffold("word-count", kind)["README.md"]
    assert "pypi.org" not in readme
    assert "pip install /path/to/treadle" in readme  # Treadle first: it is on no index


def test_plugin_new_says_how_to_install_treadle_beside_it(cli: TreadleCli) -> None:
    out = cli("plugin", "new", "wordcount").output
    assert "next: cd treadle-stage-wordcount && pip install -e '.[test]' && pytest" in out
    checkout = treadle_checkout()
    assert checkout is not None and Path(checkout, "pyproject.toml").exists()
    assert f"pip install -e {checkout})" in out


def test_store_scaffold_runs_the_store_contract() -> None:
    test = scaffold("kv", "store")["tests/test_treadle_store_kv.py"]
    assert "class TestKvStoreContract(StoreContract)" in test


def test_plugin_new_writes_the_distribution(cli: TreadleCli, tmp_path: Path) -> None:
    result = cli("plugin", "new", "docker", "--kind", "stage", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["distribution"] == "treadle-stage-docker"
    target = tmp_path / "treadle-stage-docker"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "README.md",
        "pyproject.toml",
        "tests/test_treadle_stage_docker.py",
        "treadle_stage_docker/__init__.py",
    ]


def test_plugin_new_accepts_the_full_distribution_name(cli: TreadleCli, tmp_path: Path) -> None:
    result = cli("plugin", "new", "treadle-sink-slack", "--kind", "sink", "--dir", "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "treadle-sink-slack" / "treadle_sink_slack").is_dir()


def test_plugin_new_refuses_a_bad_name(cli: TreadleCli, tmp_path: Path) -> None:
    result = cli("plugin", "new", "My_Stage")
    assert result.exit_code == 2
    assert "not a plugin name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_plugin_new_never_overwrites(cli: TreadleCli, tmp_path: Path) -> None:
    (tmp_path / "treadle-gate-tone").mkdir()
    result = cli("plugin", "new", "tone", "--kind", "gate")
    assert result.exit_code == 1
    assert "already exists; nothing written" in result.output
    assert list((tmp_path / "treadle-gate-tone").iterdir()) == []


def _venv_seeing_this_environment(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    parents = dict.fromkeys(
        [
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
            *site.getsitepackages(),
        ]
    )
    lines = [f"import site; site.addsitedir({p!r})" for p in parents if Path(p).is_dir()]
    (Path(purelib) / "_parent_env.pth").write_text("\n".join(lines) + "\n")
    return python


def test_scaffolds_install_list_and_pass_their_tests(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TREADLE_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    python = _venv_seeing_this_environment(tmp_path / "venv")
    dists = []
    for kind in KINDS:
        new = subprocess.run(
            [python, "-m", "treadle_core.cli", "plugin", "new", "demo", "--kind", kind],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert new.returncode == 0, new.stderr
        dists.append(tmp_path / f"treadle-{kind}-demo")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    # The build backend once into the venv (pip's cache makes it quick), then the four
    # scaffolds without build isolation: one isolated build env each would take a minute.
    backend = subprocess.run(
        [*pip, "setuptools>=68", "wheel"], env=env, capture_output=True, text=True
    )
    assert backend.returncode == 0, backend.stdout + backend.stderr
    # With their dependencies but from no index: Treadle (installed from this checkout)
    # and pytest must be found where they are, as for a plugin author beside a clone.
    install = subprocess.run(
        [*pip, "--no-index", "--no-build-isolation"]
        + [arg for d in dists for arg in ("-e", f"{d}[test]")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    listed = subprocess.run(
        [python, "-m", "treadle_core.cli", "plugins", "list", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["treadle-stage-demo"]["provides"] == ["stage:demo"]
    assert plugins["treadle-gate-demo"]["provides"] == ["gate:demo"]
    assert plugins["treadle-sink-demo"]["provides"] == ["sink:demo"]
    assert plugins["treadle-store-demo"]["provides"] == ["store:demo"]
    assert all(plugins[d.name]["error"] is None for d in dists)

    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(d / "tests") for d in dists],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout
