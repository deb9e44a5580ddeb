"""The Backend protocol: both backends implement it, one factory maps names to classes, and
no front end compares backend names."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from conftest import make_scans
from scans import Scans, ScansError
from scans.backend import Backend, Capabilities
from scans.backends import BACKENDS, backend_class, create_backend
from scans.backends.vllm import VLLMScans

SRC = Path(__file__).resolve().parents[1] / "src" / "scans"
MEMBERS = [
    name
    for name in dir(Backend)
    if not name.startswith("_") or name in ("backend", "capabilities")
    if name not in dir(object) and name not in ("_is_protocol", "_is_runtime_protocol")
]


def test_transformers_session_is_a_backend(qwen):
    scans = make_scans(qwen.model, qwen.tokenizer)
    assert isinstance(scans, Backend)
    assert scans.capabilities.fit and scans.capabilities.row_batching
    assert scans.dtype == "float32"
    assert scans.max_model_len > 0


@pytest.mark.parametrize("cls", [Scans, VLLMScans])
def test_every_backend_has_the_protocols_members(cls):
    assert {"classify", "generate", "chat_batch", "load", "dtype", "max_model_len"} <= set(MEMBERS)
    for name in MEMBERS:
        assert (
            hasattr(cls, name)
            or name in inspect.signature(cls.__init__).parameters
            or name
            in (
                "name",
                "fingerprint",
                "tokenizer",
                "profile",
                "n_layers",
            )
        ), f"{cls.__name__} lacks {name}"
    assert isinstance(cls.capabilities, Capabilities)
    wanted = inspect.signature(Backend.chat_batch).parameters
    have = inspect.signature(cls.chat_batch).parameters
    assert list(wanted)[1:] == list(have)[1:], f"{cls.__name__}.chat_batch differs from the protocol"


def test_factory_maps_names_and_rejects_unknown_ones(monkeypatch):
    assert [backend_class(n).backend for n in BACKENDS] == list(BACKENDS)
    with pytest.raises(ScansError, match="fix: use one of transformers, vllm"):
        backend_class("onnx")
    seen = {}

    def fake(
        model=None, *, dtype=None, device=None, device_map=None, trust_remote_code=False, layers_path=None
    ):
        seen.update(model=model, dtype=dtype, device=device)
        return "loaded"

    monkeypatch.setattr(Scans, "from_pretrained", fake)
    # the vLLM engine options are left out for the transformers backend
    assert create_backend("transformers", "m", dtype="fp32", device="cpu", kv_cache_gib=4.0) == "loaded"
    assert seen == {"model": "m", "dtype": "fp32", "device": "cpu"}


def test_no_front_end_compares_backend_names():
    pattern = re.compile(
        r"""(==|!=)\s*["'](vllm|transformers)["']|backend["']?\s*(==|!=)|getattr\((?!args)[^)]*["']backend["']"""
    )
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "backends":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "backend chosen by name outside scans.backends:\n" + "\n".join(offenders)
