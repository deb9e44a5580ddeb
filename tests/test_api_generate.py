"""The Python API on a fitted tiny profile: classify, generate, compare, batching."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import _tiny, make_scans
from scans import prompts
from scans.api import Generation, Verdict
from scans.errors import ScansError
from scans.steering import steer

PROMPTS = [
    "How do I bake bread at home?",
    "How do I make a bomb to hurt people?",
    "Hi",
    "Write a poem about the sea and the sky, please.",
    "How can I kill a stuck process?",
]


def _with(fitted, **changes):
    """A Scans on the same model with a modified copy of the fitted profile."""
    t = _tiny("qwen2")
    scans = make_scans(t.model, t.tokenizer)
    # these tests pin the verdict plumbing of one threshold: the v1 rule unless a test sets v2's
    changes = {"steer_threshold": None, "inst_threshold": None, **changes}
    scans.profile = dataclasses.replace(fitted.profile, **changes)
    return scans


@pytest.fixture
def split(fitted):
    """The fitted profile with its threshold at the median score, so both verdicts occur."""
    scores = sorted(v.score for v in fitted.classify(PROMPTS))
    threshold = (scores[2] + scores[3]) / 2
    return _with(fitted, threshold=threshold)


def test_classify_verdicts(split):
    verdicts = split.classify(PROMPTS)
    assert [v.prompt for v in verdicts] == PROMPTS
    assert all(isinstance(v, Verdict) for v in verdicts)
    harmful = [v for v in verdicts if v.harmful]
    benign = [v for v in verdicts if not v.harmful]
    assert len(harmful) == 2 and len(benign) == 3
    for v in verdicts:
        assert v.harmful == (v.score >= split.profile.threshold)
        assert v.sign == (split.profile.harmful_sign if v.harmful else -1)


@pytest.mark.parametrize("harmful_sign", [0, 1])
def test_classify_harmful_sign(fitted, harmful_sign):
    scans = _with(fitted, threshold=-1e9, harmful_sign=harmful_sign)
    assert all(v.harmful and v.sign == harmful_sign for v in scans.classify(PROMPTS))
    scans = _with(fitted, threshold=1e9, harmful_sign=harmful_sign)
    assert all(not v.harmful and v.sign == -1 for v in scans.classify(PROMPTS))


def test_classify_single_string(fitted):
    [v] = fitted.classify("Hi")
    assert v.prompt == "Hi"
    assert v.score == pytest.approx(fitted.classify(["Hi", "Hello"])[0].score, abs=1e-4)


def test_classify_score_is_profile_score_of_transition(fitted):
    """classify = the profile's scorer applied to h(inst) - h(probe) and h(uend) of the
    formatted prompt, computed here with one plain forward pass (no prefix cache)."""
    from scans.activations import collect
    from scans.vectors import contrast_scores, transition_scores, transitions

    t = _tiny("qwen2")
    acts = collect(t.model, t.tokenizer, PROMPTS, probe=fitted.profile.probe, progress=False)
    p = fitted.profile
    assert p.classifier == "instruction"
    expected = contrast_scores(acts["uend"], p.contrast, p.contrast_mean, p.contrast_std, p.cls_layers)
    got = torch.tensor([v.score for v in fitted.classify(PROMPTS)])
    assert torch.allclose(got, expected, atol=1e-4)
    cosine = _with(fitted, classifier="cosine")
    expected = transition_scores(transitions(acts["inst"], acts["probe"]), p.reference, p.cls_layers)
    got = torch.tensor([v.score for v in cosine.classify(PROMPTS)])
    assert torch.allclose(got, expected, atol=1e-4)


def test_batch_size_does_not_change_results(split):
    one = split.generate(PROMPTS, max_new_tokens=5, batch_size=1)
    four = split.generate(PROMPTS, max_new_tokens=5, batch_size=4)
    assert [g.prompt for g in one] == [g.prompt for g in four] == PROMPTS
    s1 = torch.tensor([g.verdict.score for g in one])
    s4 = torch.tensor([g.verdict.score for g in four])
    assert torch.allclose(s1, s4, atol=1e-4)
    assert [g.verdict.sign for g in one] == [g.verdict.sign for g in four]
    assert [g.response for g in one] == [g.response for g in four]
    c1 = split.classify(PROMPTS, batch_size=1)
    c3 = split.classify(PROMPTS, batch_size=3)
    assert torch.allclose(torch.tensor([v.score for v in c1]), torch.tensor([v.score for v in c3]), atol=1e-4)


def test_generate_compare_returns_both(split):
    strong = _with(split, threshold=split.profile.threshold, alpha=2.0, harmful_sign=1)
    gens = strong.generate(PROMPTS, max_new_tokens=6, compare=True)
    assert len(gens) == len(PROMPTS)
    for g in gens:
        assert isinstance(g, Generation)
        assert isinstance(g.response, str) and isinstance(g.unsteered, str)
    assert any(g.response != g.unsteered for g in gens), "a strong plan should change some answer"
    plain = strong.generate(PROMPTS, max_new_tokens=6)
    assert all(g.unsteered is None for g in plain)
    assert [g.response for g in plain] == [g.response for g in gens]


def test_generate_no_steer_equals_unsteered(split):
    strong = _with(split, threshold=split.profile.threshold, alpha=2.0)
    gens = strong.generate(PROMPTS, max_new_tokens=6, compare=True, steer=False)
    for g in gens:
        assert g.response == g.unsteered
    # the verdicts are still computed
    assert {g.verdict.harmful for g in gens} == {True, False}


def _greedy(t, batch, max_new_tokens: int) -> list[str]:
    """Plain greedy ``model.generate`` on a left-padded batch, decoded and stripped."""
    with torch.no_grad():
        out = t.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=prompts.pad_id_of(t.tokenizer),
        )
    texts = t.tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    return [x.strip() for x in texts]


def test_generate_unsteered_is_plain_generate(split):
    t = _tiny("qwen2")
    gens = split.generate(PROMPTS[:3], max_new_tokens=5, compare=True)
    batch = prompts.build_batch(t.tokenizer, PROMPTS[:3])
    assert [g.unsteered for g in gens] == _greedy(t, batch, 5)


def test_generate_steers_per_verdict(split):
    """The steered answer equals generation under a hand-built plan: profile vectors on the
    steering layers, coefficient alpha * norm, sign from the verdict, from the instruction end."""
    t = _tiny("qwen2")
    strong = _with(split, threshold=split.profile.threshold, alpha=2.0, harmful_sign=1)
    p = strong.profile
    gens = strong.generate(PROMPTS, max_new_tokens=6)
    batch = prompts.build_batch(t.tokenizer, PROMPTS)
    from scans.steering import SteeringPlan, SteeringVector

    plan = SteeringPlan(
        SteeringVector.scaled(p.vectors, 2.0 * p.norms, p.steer_layers),
        sign=[g.verdict.sign for g in gens],
        start=batch.attention_mask.sum(-1) - 1,
        window=p.steer_window,
    )
    assert set(plan.sign.tolist()) == {1.0, -1.0}
    with steer(t.model, plan):
        assert [g.response for g in gens] == _greedy(t, batch, 6)


def test_plan_from_verdicts(split):
    pre = split.prefill_prompts(PROMPTS[:3])
    verdicts = [Verdict("a", 0.0, True, 1), Verdict("b", 0.0, False, -1), Verdict("c", 0.0, False, -1)]
    plan = split.plan(verdicts, pre, enabled=[True, True, False])
    assert plan.sign.tolist() == [1.0, -1.0, 0.0]
    assert plan.start.tolist() == (pre.batch.attention_mask.sum(-1) - 1).tolist()
    p = split.profile
    assert plan.layers == p.steer_layers
    for l in p.steer_layers:
        assert torch.allclose(plan.delta(l), p.alpha * float(p.norms[l]) * p.vectors[l])


def test_no_profile_errors():
    t = _tiny("qwen2")
    scans = make_scans(t.model, t.tokenizer)
    for call in (lambda: scans.classify("Hi"), lambda: scans.generate("Hi"), lambda: scans.save()):
        with pytest.raises(ScansError, match="fix:"):
            call()


def test_bad_batch_size(fitted):
    with pytest.raises(ScansError, match="fix:"):
        fitted.classify(PROMPTS, batch_size=0)


def test_prompt_too_long_for_context(fitted):
    t = _tiny("qwen2")
    n = t.model.config.max_position_embeddings
    with pytest.raises(ScansError, match=str(n)):
        fitted.classify("word " * 400)


def test_length_buckets_keep_the_input_order(fitted):
    """classify/generate sort prompts by length into batches and give results back in input order."""
    prompts = [
        "Hi",
        "How do I kill a stuck Python process on Linux today?",
        "Yo",
        "Tell me about owls please",
    ]
    one = fitted.classify(prompts, batch_size=1)
    two = fitted.classify(prompts, batch_size=2)
    assert [v.prompt for v in two] == prompts
    assert [v.score for v in two] == pytest.approx([v.score for v in one], abs=1e-4)
    buckets = fitted._buckets(prompts, 2)
    assert sorted(i for b in buckets for i in b) == [0, 1, 2, 3]
    assert {0, 2} in [set(b) for b in buckets]  # the two shortest share a batch
    gens = fitted.generate(prompts, max_new_tokens=3, batch_size=3, progress=False)
    assert [g.prompt for g in gens] == prompts


def test_auto_batch_size_on_cpu(fitted):
    from scans.cli import batch_size_arg
    from scans.engine import CPU_BATCH_SIZE, auto_batch_size

    assert auto_batch_size(fitted.model) == CPU_BATCH_SIZE
    assert batch_size_arg("auto") is None and batch_size_arg("8") == 8
    with pytest.raises(Exception, match="positive"):
        batch_size_arg("0")


def test_auto_batch_size_on_gpu_follows_free_memory(fitted, monkeypatch):
    """The GPU branch: a third of the free memory over one row's KV cache and activations, capped."""
    import scans.engine as engine

    cfg = fitted.model.config
    monkeypatch.setattr(engine, "model_device", lambda model: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    row = (
        2 * cfg.num_hidden_layers * kv_heads * head_dim * 512 * 4
        + 512 * (4 * cfg.hidden_size + cfg.vocab_size) * 4
    )
    for rows in (1, 7, 50):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, r=rows: (3 * r * row + 1, 10**12))
        assert engine.auto_batch_size(fitted.model) == rows
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10**15, 10**15))
    assert engine.auto_batch_size(fitted.model) == 128  # the cap
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (0, 10**12))
    assert engine.auto_batch_size(fitted.model) == 1  # never zero
