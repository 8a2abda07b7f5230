"""`open_store` resolves URL schemes through the plugin registry too (SPEC §7)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from treadle_core import MemoryStateStore, StoreError, open_store


def test_unknown_scheme_lists_builtin_and_plugin_schemes():
    with pytest.raises(StoreError, match=r"unknown scheme 'nosuch'.*memory://.*sqlite://"):
        open_store("nosuch://x")


def test_scheme_registered_by_a_plugin_is_opened_through_open_store(tmp_path):
    """A throwaway distribution registering `demo://` is found through its entry point."""
    (tmp_path / "demo_store_plugin.py").write_text(
        textwrap.dedent(
            """
            from treadle_core import MemoryStateStore, hookimpl
            from treadle_core.hookspecs import StoreBackend

            class DemoStore(MemoryStateStore):
                pass

            @hookimpl
            def register_stores(register):
                register(StoreBackend("demo", lambda url: DemoStore(), "a demo store"))
            """
        )
    )
    dist = tmp_path / "treadle_store_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: treadle-store-demo\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text("[treadle]\ntreadle-store-demo = demo_store_plugin\n")
    code = "from treadle_core import open_store; print(type(open_store('demo://x')).__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "DemoStore"


def test_builtin_schemes_do_not_need_the_plugin_registry(tmp_path):
    assert isinstance(open_store("memory://"), MemoryStateStore)
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    assert store.durable
    store.close()
