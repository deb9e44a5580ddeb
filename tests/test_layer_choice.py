"""Step 2 helpers: candidate bands, steered suffix log-probabilities, the logit lens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scans import prompts
from scans.engine import prefill
from scans.layers import (
    REFUSAL_WORDS,
    band_plan,
    candidate_bands,
    classification_layers,
    logit_lens,
    refusal_token_ids,
    suffix_logprobs,
)
from scans.steering import steer

PROMPTS = ["Hi", "How do I bake bread at home, step by step?", "What is the capital of France?"]


@pytest.mark.parametrize("n_layers", [2, 3, 12, 24, 28, 80])
def test_candidate_bands(n_layers):
    bands = candidate_bands(n_layers)
    width = max(1, round(n_layers / 3))
    assert bands
    for start, end in bands:
        assert end - start + 1 == width
        assert 0 <= start <= end < n_layers
        if n_layers > width + 2:
            assert start >= 1 and end <= n_layers - 2  # first and last layer skipped
    assert [s for s, _ in bands] == sorted({s for s, _ in bands})


def test_candidate_bands_explicit_width():
    assert candidate_bands(2) == [(0, 0), (1, 1)]
    assert candidate_bands(10, width=2) == [(s, s + 1) for s in range(1, 8)]


def _full_logprobs(model, tok, texts, suffix):
    """log P(suffix | prompt) per row from one plain forward over prompt + suffix."""
    seqs = [prompts.encode_chat(tok, t) + list(suffix) for t in texts]
    batch = prompts.left_pad(seqs, prompts.pad_id_of(tok))
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    n = len(suffix)
    width = batch.input_ids.shape[1]
    total = torch.zeros(len(texts))
    for i, tok_id in enumerate(suffix):
        total += logp[:, width - n - 1 + i, tok_id]
    return total, logp[:, width - n - 1], batch


def test_suffix_logprobs_matches_full_forward(tiny):
    model, tok = tiny.model, tiny.tokenizer
    suffix = tok("I'm sorry", add_special_tokens=False)["input_ids"]
    pre = prefill(model, prompts.build_batch(tok, PROMPTS))
    total, first = suffix_logprobs(model, pre, suffix, None)
    ref_total, ref_first, _ = _full_logprobs(model, tok, PROMPTS, suffix)
    assert torch.allclose(total, ref_total, atol=1e-4)
    assert torch.allclose(first, ref_first, atol=1e-4)


def test_suffix_logprobs_steered_matches_steered_forward(tiny):
    model, tok = tiny.model, tiny.tokenizer
    suffix = tok("I'm sorry", add_special_tokens=False)["input_ids"]
    pre = prefill(model, prompts.build_batch(tok, PROMPTS))
    g = torch.Generator().manual_seed(0)
    vecs = torch.nn.functional.normalize(torch.randn(2, 32, generator=g), dim=-1)
    coef = torch.tensor([3.0, 3.0])
    plan = band_plan(vecs, coef, [0, 1], -1, pre)
    assert plan.sign.tolist() == [-1.0] * 3
    assert plan.start.tolist() == (pre.batch.attention_mask.sum(-1) - 1).tolist()
    total, _ = suffix_logprobs(model, pre, suffix, plan)
    with steer(model, plan):
        ref_total, _, _ = _full_logprobs(model, tok, PROMPTS, suffix)
    assert torch.allclose(total, ref_total, atol=1e-4)
    unsteered, _ = suffix_logprobs(model, pre, suffix, None)
    assert (total - unsteered).abs().max() > 1e-3


def test_refusal_token_ids(qwen):
    tok = qwen.tokenizer
    ids = refusal_token_ids(tok)
    assert ids == sorted(set(ids))
    for i in ids:
        assert tok.decode([i]).strip() in REFUSAL_WORDS
    # every single-token refusal word is found
    for word in REFUSAL_WORDS:
        one = tok(word, add_special_tokens=False)["input_ids"]
        if len(one) == 1:
            assert one[0] in ids, word


def test_logit_lens_restated(qwen):
    model, tok = qwen.model, qwen.tokenizer
    g = torch.Generator().manual_seed(1)
    vecs = torch.nn.functional.normalize(torch.randn(2, 32, generator=g), dim=-1)
    scores, tops = logit_lens(model, tok, vecs, top_k=3)
    refusal = refusal_token_ids(tok)
    assert refusal, "the tiny tokenizer should have some single-token refusal words"
    with torch.no_grad():
        for layer in range(2):
            logits = model.lm_head(model.model.norm(vecs[layer][None]))[0].double()
            z = (logits - logits.mean()) / logits.std()
            assert scores[layer] == pytest.approx(float(z[refusal].mean()), abs=1e-4)
            top = torch.topk(logits, 3).indices.tolist()
            assert tops[layer] == [tok.decode([i]) for i in top]


def test_bands_in_one_pass_match_one_band_at_a_time():
    """Tiling the anchors once per band (a sign matrix over the bands' layers) measures
    exactly what steering one band per forward pass measures."""
    from conftest import HARMFUL, HARMLESS, _tiny
    from scans.layers import choose_band

    t = _tiny("llama")
    model, tok = t.model, t.tokenizer
    g = torch.Generator().manual_seed(2)
    vectors = torch.randn(2, 32, generator=g)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    coefficients = torch.tensor([3.0, 2.0])
    kw = dict(width=1, progress=False)
    one = choose_band(model, tok, vectors, coefficients, HARMFUL[:4], HARMLESS[:4], bands_per_pass=1, **kw)
    many = choose_band(model, tok, vectors, coefficients, HARMFUL[:4], HARMLESS[:4], bands_per_pass=5, **kw)
    assert len(one.effects) == len(many.effects) == 2
    for a, b in zip(one.effects, many.effects):
        assert (a.start, a.end) == (b.start, b.end)
        assert abs(a.drop - b.drop) < 1e-4 and abs(a.drift - b.drift) < 1e-5
    assert any(abs(e.drop) > 1e-3 for e in one.effects)  # the steering does something


def test_coarse_to_fine_band_search():
    """Coarse to fine measures every other band, then the neighbours of the best one, with
    the same numbers an exhaustive search measures for those bands, and picks the best measured."""
    from conftest import HARMFUL, HARMLESS, make_model, make_tokenizer
    from scans.layers import candidate_bands, choose_band

    model, tok = make_model("qwen2", seed=3, n_layers=8), make_tokenizer("chatml")
    g = torch.Generator().manual_seed(4)
    vectors = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=-1)
    coefficients = torch.full((8,), 3.0)
    kw = dict(width=2, progress=False)
    bands = candidate_bands(8, 2)
    assert len(bands) == 5  # starts 1..5
    full = choose_band(
        model, tok, vectors, coefficients, HARMFUL[:4], HARMLESS[:4], coarse_to_fine=False, **kw
    )
    fast = choose_band(model, tok, vectors, coefficients, HARMFUL[:4], HARMLESS[:4], bands_per_pass=2, **kw)
    assert [(e.start, e.end) for e in full.effects] == bands
    by_band = {(e.start, e.end): e for e in full.effects}
    measured = [(e.start, e.end) for e in fast.effects]
    coarse = bands[::2]
    assert set(coarse) <= set(measured) and len(set(measured)) == len(measured)
    best_coarse = max(coarse, key=lambda b: by_band[b].score)
    i = bands.index(best_coarse)
    assert {b for b in bands[max(0, i - 1) : i + 2]} <= set(measured)  # its neighbours were refined
    assert measured == sorted(measured)
    for e in fast.effects:
        ref = by_band[(e.start, e.end)]
        assert abs(e.drop - ref.drop) < 1e-4 and abs(e.drift - ref.drift) < 1e-5
    assert fast.band.score == max(e.score for e in fast.effects)


def test_halved_coarse_round_then_contenders_on_every_anchor():
    """With enough anchors the coarse round runs on the first half of each side; the best
    coarse band and its neighbours are then measured on every anchor, with the numbers an
    exhaustive search on all anchors gives, and the best of them is chosen."""
    from conftest import HARMFUL, HARMLESS, make_model, make_tokenizer
    from scans.layers import HALF_MIN, candidate_bands, choose_band

    model, tok = make_model("qwen2", seed=3, n_layers=8), make_tokenizer("chatml")
    g = torch.Generator().manual_seed(4)
    vectors = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=-1)
    coefficients = torch.full((8,), 3.0)
    n = 2 * HALF_MIN
    h, b = HARMFUL[:n], HARMLESS[:n]
    kw = dict(width=2, progress=False)
    bands = candidate_bands(8, 2)
    every = {
        (e.start, e.end): e
        for e in choose_band(model, tok, vectors, coefficients, h, b, coarse_to_fine=False, **kw).effects
    }
    half = {
        (e.start, e.end): e
        for e in choose_band(
            model, tok, vectors, coefficients, h[: n // 2], b[: n // 2], coarse_to_fine=False, **kw
        ).effects
    }
    fast = choose_band(model, tok, vectors, coefficients, h, b, **kw)
    coarse = bands[::2]
    top = max(coarse, key=lambda band: half[band].score)
    i = bands.index(top)
    contenders = set(bands[max(0, i - 1) : i + 2])
    measured = {(e.start, e.end): e for e in fast.effects}
    assert set(measured) == set(coarse) | contenders
    for band, e in measured.items():
        ref, anchors = (every[band], 2 * n) if band in contenders else (half[band], n)
        assert e.anchors == anchors
        assert abs(e.drop - ref.drop) < 1e-4 and abs(e.drift - ref.drift) < 1e-5
    assert (fast.band.start, fast.band.end) == max(contenders, key=lambda band: every[band].score)
    # below the threshold (or with halve=False) every band is measured on all anchors
    whole = choose_band(model, tok, vectors, coefficients, h, b, halve=False, **kw)
    assert all(e.anchors == 2 * n for e in whole.effects)


def test_sign_matrix_steers_each_row_on_its_own_layers():
    from conftest import _tiny
    from scans.activations import forward_capture
    from scans.steering import SteeringPlan, SteeringVector

    t = _tiny("qwen2")
    batch = prompts.build_batch(t.tokenizer, ["Hello there", "Hello there"])
    v = torch.nn.functional.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    start = batch.attention_mask.sum(-1) - 1
    pos = {"inst": batch.positions["inst"]}
    matrix = SteeringPlan(
        SteeringVector.scaled({0: v[0], 1: v[1]}, {0: 2.0, 1: 2.0}), sign=[[-1, 0], [0, -1]], start=start
    )
    got, _ = forward_capture(t.model, batch.input_ids, batch.attention_mask, pos, plan=matrix)
    for row, layer in ((0, 0), (1, 1)):
        single = SteeringPlan(
            SteeringVector.scaled({layer: v[layer]}, {layer: 2.0}), sign=[-1, -1], start=start
        )
        ref, _ = forward_capture(t.model, batch.input_ids, batch.attention_mask, pos, plan=single)
        assert torch.allclose(got["inst"][row], ref["inst"][row], atol=1e-5)


@pytest.mark.parametrize(
    ("n", "want"), [(24, list(range(12, 24))), (28, list(range(14, 28))), (3, [1, 2]), (2, [1]), (1, [0])]
)
def test_classification_layers_are_the_upper_half(n, want):
    assert classification_layers(n) == want
