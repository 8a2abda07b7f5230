"""Sessions: tests, lint, typecheck, docs, bench, plugins (`nox -l` lists them).

Every session runs on the Python that runs nox (3.11 or newer: whichever is
installed), in its own virtual environment. A session that cannot run fails; it
never skips, so a green `nox` always means the tests ran.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2024.3"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: None: the interpreter running nox (a venv's python works too), never a pinned version
#: that a machine with only another Python would skip.
PYTHON = None
ROOT = Path(__file__).parent


def _supported(session: nox.Session) -> None:
    # nox itself may run on an older Python (pipx): then fail, never run there.
    if sys.version_info < (3, 11):  # noqa: UP036
        session.error(
            f"nox runs on Python {sys.version.split()[0]}; Treadle needs 3.11 or newer: "
            "run nox with one (python3.12 -m pip install nox && python3.12 -m nox)"
        )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (unit, integration, CLI, crash, multi-worker, store contract)."""
    _supported(session)
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"PYTHONFAULTHANDLER": "1"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    _supported(session)
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on treadle_core."""
    _supported(session)
    # The dev extra, so mypy sees the same pytest and click as the tests do.
    session.install("-e", ".[dev]", "types-networkx")
    session.run("mypy", "treadle_core")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs site (mkdocs --strict); it must load nothing from another site."""
    _supported(session)
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
    remote = _remote_assets(site_dir)
    if remote:
        session.error(
            "the site loads from other sites (it must work offline): " + "; ".join(remote)
        )


#: <script src=...> and <link href=...> pointing at another host, as the built pages have them.
_REMOTE = re.compile(r"""<(?:script|link)\b[^>]*?(?:src|href)=["']?(?:https?:)?//[^"'\s>]+""")


def _remote_assets(site_dir: Path) -> list[str]:
    """Scripts and stylesheets the built pages load from another site."""
    found: set[str] = set()
    for page in site_dir.rglob("*.html"):
        for tag in _REMOTE.findall(page.read_text(encoding="utf-8")):
            if "stylesheet" in tag or "<script" in tag or "preconnect" in tag:
                found.add(f"{page.relative_to(site_dir)}: {tag}")
    return sorted(found)[:10]


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (W1, W3, ...) in tests/benchmarks; figures are ratios to a same-run baseline."""
    _supported(session)
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
    _supported(session)
    if dist == "none":
        session.error("no plugin distributions under plugins/")
    if dist == "treadle-ui" and os.environ.get("TREADLE_SKIP_UI"):
        session.skip("TREADLE_SKIP_UI is set")
    path = ROOT / "plugins" / dist
    session.install("-e", ".[dev]", "-e", f"{path}[test]")
    session.run("pytest", "-q", "--rootdir", str(path), *(session.posargs or [str(path / "tests")]))
