"""The vLLM backend's worker extension without vLLM: a fake ``vllm`` module whose engine mixes
the extension into its worker as vLLM does and runs a small model with vLLM's decoder-layer
outputs ``(mlp_out, residual)`` (runs everywhere; the real engine is tested in
tests/test_vllm_backend.py).

It checks that the engine is built with ``worker_extension_cls``, that every RPC goes by
method name with plain data (what vLLM's msgpack carries without pickle), that no pickled code
or ``VLLM_ALLOW_INSECURE_SERIALIZATION`` comes back into the sources, and that the worker's
steering and captures equal a forward pass computed by hand.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from scans.backends import vllm as backend
from scans.backends.vllm_worker import WORKER_EXTENSION, ScansWorkerExtension, pack, unpack
from scans.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS, DIM, VOCAB = 3, 4, 32


def test_no_pickled_code_or_insecure_serialization_in_the_sources():
    files = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "scripts").glob("*")), *sorted((ROOT / "bench").rglob("*.py"))]  # fmt: skip
    assert any(f.name == "vllm.py" for f in files)
    for path in files:
        text = path.read_text()
        assert "cloudpickle" not in text, path
        assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in text, path
        assert not re.search(r"collective_rpc\(\s*[^\s\"')]", text), (
            f"{path}: collective_rpc takes a method name"
        )


def test_pack_round_trip():
    x = torch.randn(3, 5)
    assert torch.equal(unpack(pack(x), 3, -1), x)
    assert torch.equal(unpack(memoryview(pack(x.double())), 15), x.flatten())


# ------------------------------------------------------------------ a fake vLLM
class _Layer(nn.Module):
    """A decoder layer as vLLM's: returns ``(mlp_out, residual)``, the next one adds them."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Linear(DIM, DIM)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None) -> Any:
        residual = hidden if residual is None else hidden + residual
        return torch.tanh(self.mlp(residual)), residual


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_Layer() for _ in range(N_LAYERS))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed(input_ids), None
        for layer in self.model.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden + residual

    @torch.no_grad()
    def streams(self, ids: list[int], deltas: dict[int, torch.Tensor], gate: torch.Tensor) -> torch.Tensor:
        """Reference: (T, L, D) block outputs with ``gate * delta`` added to each layer's output."""
        hidden, residual, out = self.embed(torch.tensor(ids)), None, []
        for i, layer in enumerate(self.model.layers):
            hidden, residual = layer(None, hidden, residual)
            if i in deltas:
                hidden = hidden + gate[:, None] * deltas[i][None, :]
            out.append(hidden + residual)
        return torch.stack(out, dim=1)


class _Runner:
    def __init__(self) -> None:
        self.model = _Model()
        self.requests: dict[str, Any] = {}
        self.input_batch: Any = None
        self.query_start_loc: Any = None

    def get_model(self) -> nn.Module:
        return self.model


class _Worker:
    """vLLM's worker class before the extension is mixed in."""

    def __init__(self) -> None:
        self.model_runner = _Runner()

    def execute_model(self) -> None: ...


def _plain(value: Any) -> bool:
    """What vLLM's msgpack encodes without pickle (no tensors, callables or objects)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


class _SamplingParams:
    def __init__(self, extra_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.extra_args = extra_args
        self.kwargs = kwargs


class _LLM:
    built: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        _LLM.built.append(kwargs)
        module, _, name = kwargs["worker_extension_cls"].rpartition(".")
        extension = getattr(importlib.import_module(module), name)
        for attr in dir(extension):  # vLLM refuses extensions that shadow the worker's attributes
            assert attr.startswith("__") or not hasattr(_Worker, attr), attr
        self.worker = type("Worker", (_Worker, extension), {})()
        self.rpcs: list[str] = []

    def collective_rpc(
        self, method: Any, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list:
        assert isinstance(method, str), f"collective_rpc({method!r}) must name a method"
        assert _plain(args) and _plain(kwargs), (method, args)
        self.rpcs.append(method)
        result = getattr(self.worker, method)(*args, **(kwargs or {}))
        assert _plain(result), (method, result)
        return [result]

    @torch.no_grad()
    def generate(
        self, prompts: list[dict], params: list[_SamplingParams], use_tqdm: bool = False, chunk: int = 0
    ) -> list:
        """One prefill of all prompts (in steps of ``chunk`` tokens per prompt when given)."""
        runner = self.worker.model_runner
        ids = [p["prompt_token_ids"] for p in prompts]
        runner.requests = {f"r{i}": types.SimpleNamespace(sampling_params=p) for i, p in enumerate(params)}
        done = [0] * len(ids)
        while any(d < len(x) for d, x in zip(done, ids)):
            rows = [i for i, x in enumerate(ids) if done[i] < len(x)]
            toks, pos, starts = [], [], [0]
            for i in rows:
                end = len(ids[i]) if not chunk else min(len(ids[i]), done[i] + chunk)
                toks += ids[i][done[i] : end]
                pos += range(done[i], end)
                starts.append(len(toks))
                done[i] = end
            runner.input_batch = types.SimpleNamespace(num_reqs=len(rows), req_ids=[f"r{i}" for i in rows])
            runner.query_start_loc = types.SimpleNamespace(cpu=torch.tensor(starts))
            runner.model(torch.tensor(toks), torch.tensor(pos))
        runner.requests = {}
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[1])], num_cached_tokens=0)
            for _ in ids
        ]


@pytest.fixture
def engine(monkeypatch):
    import transformers

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = _LLM, _SamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.delenv("VLLM_ALLOW_INSECURE_SERIALIZATION", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    tokenizer = types.SimpleNamespace(eos_token_id=0)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)

    def no_config(*_a: Any, **_k: Any) -> Any:
        raise OSError("no generation config")

    monkeypatch.setattr(transformers.GenerationConfig, "from_pretrained", no_config)
    _LLM.built.clear()
    return backend.VLLMScans.from_pretrained("org/fake-model", dtype="float32")


def test_engine_is_built_with_the_worker_extension(engine):
    (kwargs,) = _LLM.built
    assert kwargs["worker_extension_cls"] == WORKER_EXTENSION
    assert WORKER_EXTENSION == f"{ScansWorkerExtension.__module__}.{ScansWorkerExtension.__qualname__}"
    assert "VLLM_ALLOW_INSECURE_SERIALIZATION" not in os.environ
    assert engine.n_layers == N_LAYERS and engine.llm.rpcs == ["scans_install"]
    with pytest.raises(backend.ScansError, match="sets worker_extension_cls=.*; fix:"):
        backend.VLLMScans.from_pretrained("org/fake-model", worker_extension_cls="my.Extension")


def _profile(window: int | None) -> Profile:
    torch.manual_seed(1)
    vectors = torch.nn.functional.normalize(torch.randn(N_LAYERS, DIM), dim=-1)
    return Profile(model_name="m", fingerprint="unknown", vectors=vectors, reference=torch.zeros(N_LAYERS, DIM),
                   norms=torch.tensor([1.0, 2.0, 3.0]), steer_layers=[1, 2], cls_layers=[1, 2], alpha=0.7,
                   threshold=0.0, classifier="cosine", steer_window=window)  # fmt: skip


@pytest.mark.parametrize("window,chunk", [(None, 0), (2, 0), (2, 3)])
def test_worker_steers_and_captures_as_computed_by_hand(engine, monkeypatch, window, chunk):
    """A steered request batched with an unsteered one (optionally prefilled in chunks): the
    captured block outputs equal a hand-computed forward with ``sign * alpha_l * v_l`` added
    from the request's start on (within the window); the unsteered request is unaffected."""
    profile = _profile(window)
    engine.set_profile(profile)
    steered, plain = [3, 5, 7, 9, 11, 13, 15, 17], [4, 6, 8, 10, 12]
    prompts, params = [], []
    for tag, ids, sign in (("s", steered, -1), ("p", plain, 0)):
        prompt, p = engine.request(ids[:4], sign, max_tokens=1)  # steered from position 3 on
        prompt["prompt_token_ids"] = ids  # later positions as a longer prompt (or the answer) would bring
        p.extra_args = {"scans": {**(p.extra_args or {}).get("scans", {}), "tag": tag,
                                  "capture": {f"at{k}": k for k in range(len(ids))}}}  # fmt: skip
        prompts.append(prompt)
        params.append(p)
    engine.llm.generate(prompts, params, chunk=chunk)
    got = engine.llm.collective_rpc("scans_take", args=(["s", "p"],))[0]
    model = engine.llm.worker.model_runner.model
    deltas = {l: profile.coefficient(l) * profile.vectors[l] for l in profile.steer_layers}
    span = torch.arange(len(steered))
    on = (span >= 3) & ((span < 3 + window) if window else torch.ones_like(span, dtype=torch.bool))
    for tag, ids, gate in (("s", steered, -on.float()), ("p", plain, torch.zeros(len(plain)))):
        want = model.streams(ids, deltas, gate)
        for k in range(len(ids)):
            torch.testing.assert_close(unpack(got[tag][f"at{k}"], N_LAYERS, -1), want[k], rtol=0, atol=1e-6)
    assert engine.stats()["steered_tokens"] == int(on.sum())
    assert engine.llm.collective_rpc("scans_take", args=(["s"],))[0] == {"s": {}}  # handed over once


def test_probe_activations_through_the_rpcs(engine, monkeypatch):
    engine.set_profile(_profile(1))
    monkeypatch.setattr(backend, "encode_probe", lambda _tokenizer, _probe: [20, 21])
    encoded = [([3, 5, 7, 9], 2), ([4, 6, 8], 1)]
    acts = engine.probe_activations(encoded, probe="Sure")
    model = engine.llm.worker.model_runner.model
    for row, (ids, uend) in enumerate(encoded):
        want = model.streams([*ids, 20, 21], {}, torch.zeros(len(ids) + 2))
        for name, pos in (("inst", len(ids) - 1), ("probe", len(ids) + 1), ("uend", uend)):
            assert acts[name].shape == (2, N_LAYERS, DIM)
            torch.testing.assert_close(acts[name][row], want[pos], rtol=0, atol=1e-6)
    assert engine.llm.rpcs == ["scans_install", "scans_set_plan", "scans_take"]
