"""Sessions: tests, lint, typecheck, docs, bench, plugins (`nox -l` lists them)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
ROOT = Path(__file__).parent


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (unit, integration, CLI, crash, multi-worker, store contract)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"PYTHONFAULTHANDLER": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on treadle_core."""
    # The dev extra, so mypy sees the same pytest and click as the tests do.
    session.install("-e", ".[dev]", "types-networkx")
    session.run("mypy", "treadle_core")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs-material, mkdocstrings) with --strict."""
    # mkdocstrings formats signatures with ruff when it is installed.
    session.install("-e", ".", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.25", "ruff>=0.6")
    site_dir = Path(session.create_tmp()) / "site"
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(site_dir),
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (W1, W3, ...) in tests/benchmarks; figures are ratios to a same-run baseline."""
    session.install("-e", ".[dev]")
    session.run("python", "tests/benchmarks/run.py", *session.posargs)


#: Each distribution under plugins/ (its own pyproject.toml, README and tests).
PLUGIN_DISTS = sorted(
    p.name for p in (ROOT / "plugins").glob("*") if (p / "pyproject.toml").exists()
)


@nox.session(python=PYTHON)
@nox.parametrize("dist", PLUGIN_DISTS or ["none"])
def plugins(session: nox.Session, dist: str) -> None:
    """Install each distribution under plugins/ beside treadle in a fresh venv and run its tests.

    One venv per distribution, so a plugin that works only because another one pulled in
    its dependency fails here. Its tests run with the distribution's own pytest config
    (rootdir plugins/<dist>), so they pass from the repository root.
    """
    if dist == "none":
        session.skip("no plugin distributions under plugins/")
    if dist == "treadle-ui" and os.environ.get("TREADLE_SKIP_UI"):
        session.skip("TREADLE_SKIP_UI is set")
    path = ROOT / "plugins" / dist
    session.install("-e", ".[dev]", "-e", f"{path}[test]")
    session.run("pytest", "-q", "--rootdir", str(path), *(session.posargs or [str(path / "tests")]))
