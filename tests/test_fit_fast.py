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


def test_cost_model_buckets_are_optimal_and_cover_every_row():
    """With a per-pass cost, the buckets minimise padded tokens + passes (checked against
    every split of the sorted order) and never exceed the batch size."""
    import itertools
    import random

    from scans.activations import batches_by_length

    def cost(buckets, lengths, overhead):
        return sum(overhead + len(b) * max(lengths[i] for i in b) for b in buckets)

    rng = random.Random(3)
    for _ in range(30):
        lengths = [rng.randint(3, 40) for _ in range(rng.randint(1, 9))]
        size, overhead = rng.randint(1, 5), rng.choice([0, 10, 48])
        got = batches_by_length(lengths, size, overhead)
        assert sorted(i for b in got for i in b) == list(range(len(lengths)))
        assert all(1 <= len(b) <= size for b in got)
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = float("inf")
        for cuts in itertools.product([0, 1], repeat=len(order) - 1):  # every split of the sorted order
            buckets, start = [], 0
            for j, cut in enumerate(cuts, start=1):
                if cut:
                    buckets.append(order[start:j])
                    start = j
            buckets.append(order[start:])
            if all(len(b) <= size for b in buckets):
                best = min(best, cost(buckets, lengths, overhead))
        assert cost(got, lengths, overhead) == best
    # without a cost model: full batches of the sorted order, as before
    assert batches_by_length([5, 1, 3, 2], 2) == [[1, 3], [2, 0]]
