"""Prepacked CPU linears: same outputs, always restored, step aside when they should."""

from __future__ import annotations

import pytest
import torch

from conftest import BORDERLINE, HARMFUL, HARMLESS, make_model, make_scans, make_tokenizer
from scans import kvcache, packing, prompts

needs_onednn = pytest.mark.skipif(not packing.packable(make_model("qwen2")), reason="no oneDNN packed linear")


def _overridden(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


@needs_onednn
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "mistral"])
def test_packed_forward_matches_and_is_restored(arch):
    model = make_model(arch)
    ids = torch.randint(3, 60, (3, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with packing.packed_linears(model) as n:
            assert n == len(packing.packable(model)) > 0
            assert len(_overridden(model)) == n
            packed = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert _overridden(model) == []
    assert torch.allclose(packed, plain, atol=1e-5, rtol=1e-4)
    assert torch.equal(after, plain)


@needs_onednn
def test_restored_after_an_exception_and_keeps_a_previous_override():
    model = make_model("qwen2")
    first = model.model.layers[0].mlp.up_proj
    custom = first.forward  # a bound method stored on the instance, as a user might
    first.forward = custom
    with pytest.raises(ValueError), packing.packed_linears(model):
        assert first.forward is not custom
        raise ValueError("boom")
    assert first.forward is custom
    assert _overridden(model) == ["model.layers.0.mlp.up_proj"]


def test_steps_aside_when_disabled_short_of_memory_or_not_float32(monkeypatch):
    model = make_model("qwen2")
    with packing.packed_linears(model, enabled=False) as n:
        assert n == 0 and _overridden(model) == []
    monkeypatch.setattr(packing, "_available_bytes", lambda: 1)
    with packing.packed_linears(model) as n:
        assert n == 0 and _overridden(model) == []
    monkeypatch.undo()
    assert packing.packable(make_model("qwen2").to(torch.bfloat16)) == []


@needs_onednn
def test_prefix_memo_keeps_packed_and_unpacked_prefixes_apart():
    """A prefix computed on packed weights differs in the last bits: memoized under its own key."""
    model, tok = make_model("qwen2"), make_tokenizer("chatml")
    batch = prompts.build_batch(tok, ["Hello there", "How are you?"], system="Be brief.")
    length = batch.shared_prefix()
    kvcache._PREFIX_MEMO.pop(model, None)
    plain = kvcache.shared_prefix_cache(model, batch, length)
    with packing.packed_linears(model):
        packed = kvcache.shared_prefix_cache(model, batch, length)
        assert len(kvcache._PREFIX_MEMO[model]) == 2
        again = kvcache.shared_prefix_cache(model, batch, length)  # from the memo
    assert len(kvcache._PREFIX_MEMO[model]) == 2
    assert torch.equal(again.layers[0].keys, packed.layers[0].keys)
    assert torch.allclose(packed.layers[0].keys, plain.layers[0].keys, atol=1e-5)
    # a foreign forward override (not a packed linear) bypasses the memo altogether
    module = model.model.layers[0].mlp.up_proj
    module.forward = module.forward
    try:
        kvcache.shared_prefix_cache(model, batch, length)
        assert len(kvcache._PREFIX_MEMO[model]) == 2
        assert kvcache._has_hooks(model)
    finally:
        del module.forward
    assert not kvcache._has_hooks(model)


@needs_onednn
def test_fit_with_and_without_packing_agree():
    model, tok = make_model("qwen2", n_layers=4), make_tokenizer("chatml")
    kw = dict(n_fit=8, n_heldout=4, n_layer_eval=4, progress=False, batch_size=5, max_harmful_loss=0.2)
    harmful, harmless, borderline = HARMFUL, HARMLESS, BORDERLINE
    a = make_scans(model, tok).fit(harmful, harmless, borderline, pack_linears=False, **kw)
    b = make_scans(model, tok).fit(harmful, harmless, borderline, **kw)
    assert _overridden(model) == []
    assert a.steer_layers == b.steer_layers
    assert torch.allclose(a.vectors, b.vectors, atol=1e-4)
    assert abs(a.threshold - b.threshold) < 1e-3
