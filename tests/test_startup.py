"""Start-up: the garbage collector's pauses while loading always end, and the CLI freezes the
loaded objects only in a process that runs one command."""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys

import pytest

import scans.cli as cli
from scans.errors import ScansError
from scans.models import gc_paused, load_model


def test_gc_paused_restores_the_collector():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_gc_paused_keeps_a_collector_the_caller_disabled():
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # not switched on behind the caller's back
    finally:
        gc.enable()


def test_failed_load_restores_the_collector(tmp_path):
    with pytest.raises(ScansError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    assert gc.isenabled()


@pytest.mark.parametrize("name", ["x" * 5000, "x" * 5000 + ".gguf"])
def test_a_name_too_long_for_the_os_is_a_one_line_error(name):
    with pytest.raises(ScansError, match="fix:"):
        load_model(name)


def test_import_leaves_the_collector_enabled():
    code = "import gc, scans; assert gc.isenabled(); print(scans.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        model=None,
        dtype=None,
        device="cpu",
        device_map=None,
        trust_remote_code=False,
        layers_path=None,
        backend="transformers",
        profile=None,
    )


@pytest.mark.parametrize("one_shot", [False, True])
def test_load_freezes_only_in_a_one_command_process(monkeypatch, one_shot):
    from scans import api

    frozen = []
    monkeypatch.setattr(api.Scans, "from_pretrained", classmethod(lambda cls, *a, **k: "loaded"))
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(cli.common, "ONE_SHOT", one_shot)
    assert cli.common.load_scans(_args(), need_profile=False) == "loaded"
    assert frozen == ([True] if one_shot else [])
