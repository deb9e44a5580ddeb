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
