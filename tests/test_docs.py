"""Every code sample in docs/ runs, and the references cover every command, event and error.

Conventions for a fenced block in docs/**/*.md (a marker is an HTML comment on the
line just before the fence; readers of the site do not see it):

- ```python blocks run, in page order, in one namespace per page, in a fresh
  temporary directory (one subprocess per page). ``<!-- test: skip -->`` skips one.
- ``<!-- test: file NAME -->`` writes the block (any language) to NAME in that
  directory instead of running it (a treadle.toml, a stages.py...).
- ``<!-- test: run -->`` runs a ```sh block with bash (``set -euo pipefail``) in that
  directory; the ``treadle`` of the running interpreter comes first on PATH.
- Other blocks (sh, toml, text...) are shown, not run.

Pages under docs/examples/ are run by tests/test_examples.py, in a copy of the
example's directory, with assertions on what they produce.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")
MARK = re.compile(r"^\s*<!--\s*test:\s*(?P<what>[^>]*?)\s*-->\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # "skip", "run", "file NAME", or None


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, with the marker before each."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m.group("indent")), m.group("fence")
        lang = (m.group("info").split() or [""])[0].lower()
        marker = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (mm := MARK.match(lines[j])):
            marker = mm.group("what")
        body: list[str] = []
        k = i + 1
        while k < len(lines) and not lines[k].strip().startswith(fence[:3]):
            body.append(lines[k][indent:] if lines[k][:indent].strip() == "" else lines[k])
            k += 1
        out.append(Block(lang, "\n".join(body) + "\n", i + 1, marker))
        i = k + 1
    return out


def steps(path: Path) -> list[dict[str, object]]:
    """What running a page means: files to write, python to exec, shell to run, in order."""
    return text_steps(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def text_steps(text: str, label: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for b in blocks(text):
        where = f"{label}:{b.line}"
        if b.marker == "skip":
            continue
        if b.marker and b.marker.startswith("file "):
            out.append({"kind": "file", "path": b.marker[5:].strip(), "code": b.code})
        elif b.marker == "run":
            if b.lang not in ("sh", "bash", "console", "shell"):
                raise AssertionError(f"{where}: <!-- test: run --> is for sh blocks")
            out.append({"kind": "sh", "code": b.code, "where": where})
        elif b.marker is not None:
            raise AssertionError(f"{where}: unknown marker <!-- test: {b.marker} -->")
        elif b.lang in ("python", "py"):
            out.append({"kind": "python", "code": b.code, "where": where})
    return out


DRIVER = r"""
import json, os, subprocess, sys, traceback
sys.path.insert(0, os.getcwd())
steps = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for step in steps:
    if step["kind"] == "file":
        os.makedirs(os.path.dirname(step["path"]) or ".", exist_ok=True)
        with open(step["path"], "w") as fh:
            fh.write(step["code"])
    elif step["kind"] == "python":
        exec(compile(step["code"], step["where"], "exec"), ns)
    else:
        r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + step["code"]])
        if r.returncode:
            sys.exit(f"{step['where']}: shell block exited with status {r.returncode}")
"""


def run_steps(
    page_steps: list[dict[str, object]], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a page's steps in ``cwd`` in a fresh interpreter; the result (output captured)."""
    spec = cwd / ".docs-steps.json"
    spec.write_text(json.dumps(page_steps), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADLE_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "200"
    env["EDITOR"] = "false"
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(spec)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def doc_pages() -> list[Path]:
    """The site's pages (an example's input files under docs/examples/NAME/*/ are not)."""
    return sorted(
        p
        for p in DOCS.rglob("*.md")
        if not (p.is_relative_to(DOCS / "examples") and len(p.relative_to(DOCS).parts) > 3)
    )


def is_example_readme(page: Path) -> bool:
    """docs/examples/NAME/README.md: run by tests/test_examples.py in a copy of NAME/."""
    return page.parent.parent == DOCS / "examples"


RUNNABLE = [p for p in doc_pages() if not is_example_readme(p) and steps(p)]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(DOCS)))
def test_code_samples_in_page_run(page: Path, tmp_path: Path) -> None:
    result = run_steps(steps(page), tmp_path)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"


def test_every_page_with_code_is_checked() -> None:
    """A page's python blocks are either run or explicitly skipped (never silently ignored)."""
    assert len(RUNNABLE) >= 10


def test_unknown_markers_are_refused() -> None:
    text = "<!-- test: nope -->\n```python\nx = 1\n```\n"
    with pytest.raises(AssertionError, match="unknown marker"):
        text_steps(text, "probe.md")


# --- generated references ------------------------------------------------------------------


def hooks():
    spec = importlib.util.spec_from_file_location("treadle_docs_hooks", DOCS / "_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("page", "kind"),
    [
        ("reference/cli.md", "command"),
        ("reference/events.md", "event"),
        ("reference/errors.md", "error"),
    ],
)
def test_reference_page_describes_everything(page: str, kind: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    assert hooks().missing(text, kind) == []


def test_every_event_type_is_in_the_events_reference() -> None:
    from treadle_core.events import EVENT_TYPES

    text = (DOCS / "reference/events.md").read_text(encoding="utf-8")
    for cls in EVENT_TYPES:
        assert f"<!-- treadle:event {cls.__name__} -->" in text


def test_every_cli_command_has_an_example() -> None:
    """Each command's section in the CLI reference shows at least one `treadle ...` line."""
    text = (DOCS / "reference/cli.md").read_text(encoding="utf-8")
    sections = re.split(r"<!-- treadle:command ([^>]*?) -->", text)
    for name, body in zip(sections[1::2], sections[2::2], strict=True):
        body = body.split("\n## ", 1)[0].split("\n### ", 1)[0]
        assert f"treadle {name}" in body, f"no example of 'treadle {name}' in reference/cli.md"


def test_markers_expand_to_the_live_cli() -> None:
    h = hooks()
    out = h.expand("<!-- treadle:command review approve -->")
    assert "treadle review approve" in out and "--reviewer" in out
    with pytest.raises(ValueError, match="unknown command"):
        h.expand("<!-- treadle:command no-such -->")


def test_every_error_code_is_documented() -> None:
    from treadle_core import errors

    text = hooks().expand((DOCS / "reference/errors.md").read_text(encoding="utf-8"))
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, errors.TreadleError):
            assert f"`{obj.code}`" in text


def test_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in doc_pages():
        rel = str(page.relative_to(DOCS))
        assert rel in nav, f"{rel} is not in mkdocs.yml's nav"


def test_the_site_loads_nothing_from_another_site() -> None:
    """Offline, diagrams render and text shows: Mermaid is vendored, fonts are the system's."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^  font: false$", config, re.MULTILINE)
    scripts = re.findall(r"^extra_(?:javascript|css):\n((?:  - .*\n)+)", config, re.MULTILINE)
    assert "javascripts/mermaid.min.js" in "".join(scripts)
    assert "://" not in "".join(scripts)
    bundle = DOCS / "javascripts" / "mermaid.min.js"
    assert bundle.stat().st_size > 1_000_000
    assert 'globalThis["mermaid"]' in bundle.read_text(encoding="utf-8")[-500:]
