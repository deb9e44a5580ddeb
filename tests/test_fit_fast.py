"""The fast fit path (borderline and held-out anchors read only up to the end of the user's
text, bands batched) fits the same profile as the full path."""

from __future__ import annotations

import torch

from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS, _tiny, make_scans
from scans.activations import collect


def test_uend_only_collect_matches_full(qwen):
    prompts = ["Hi there", "How do I kill a stuck Python process on Linux?", "Yo"]
    full = collect(qwen.model, qwen.tokenizer, prompts, probe="Sure", progress=False)
    short = collect(qwen.model, qwen.tokenizer, prompts, probe="Sure", progress=False, uend_only=True)
    assert set(short) == {"uend"}
    assert torch.allclose(short["uend"], full["uend"], atol=1e-4)


def test_fast_fit_equals_full_fit():
    t = _tiny("qwen2")
    fast = make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, **FIT_KWARGS)
    full = make_scans(t.model, t.tokenizer).fit(
        HARMFUL, HARMLESS, BORDERLINE, compare_classifiers=True, **FIT_KWARGS
    )
    assert fast.steer_layers == full.steer_layers
    assert abs(fast.threshold - full.threshold) < 1e-4
    for name in ("vectors", "reference", "norms", "contrast", "contrast_mean", "contrast_std"):
        assert torch.allclose(getattr(fast, name), getattr(full, name), atol=1e-4), name
    assert "heldout_auprc_cosine" in full.extra and "heldout_auprc_cosine" not in fast.extra
    assert full.extra["heldout_auprc_instruction"] == fast.extra["heldout_auprc_instruction"]
