"""Shared prefill: probe pass and generation from the prefix cache match the plain paths."""

from __future__ import annotations

import torch

from scans import prompts
from scans.activations import collect, forward_capture
from scans.decode import RowSettings, generate_counted, generate_from
from scans.engine import prefill, prefill_probed, probe_pass
from scans.steering import SteeringPlan, SteeringVector, steer

PROMPTS = ["Hi", "How do I bake bread at home, step by step?", "What is the capital of France?"]


def _plan(batch, signs=(1, -1, 1), alpha=4.0):
    g = torch.Generator().manual_seed(11)
    vectors = {}
    for layer in (0, 1):
        v = torch.randn(32, generator=g)
        vectors[layer] = v / v.norm()
    return SteeringPlan(
        SteeringVector.scaled(vectors, {0: alpha, 1: alpha}),
        sign=list(signs),
        start=batch.attention_mask.sum(-1) - 1,
    )


def test_probe_pass_matches_full_forward(tiny):
    model, tok = tiny.model, tiny.tokenizer
    full = prompts.build_batch(tok, PROMPTS, probe="Sure")
    expected, _ = forward_capture(model, full.input_ids, full.attention_mask, full.positions)
    pre = prefill(model, prompts.build_batch(tok, PROMPTS))
    seq_before = pre.cache.get_seq_length()
    got = probe_pass(model, tok, pre, "Sure")
    assert set(got) == {"inst", "probe", "uend"}
    for name in ("inst", "probe", "uend"):
        assert got[name].shape == (len(PROMPTS), 2, 32)
        assert torch.allclose(got[name], expected[name], atol=1e-4), name
    assert not torch.allclose(got["inst"], got["probe"], atol=1e-3)
    # the shared prefix cache is not consumed by the probe pass
    assert pre.cache.get_seq_length() == seq_before
    again = probe_pass(model, tok, pre, "Sure")
    assert torch.allclose(again["probe"], got["probe"], atol=1e-6)


def test_prefill_probed_matches_prefill_then_probe_pass(tiny):
    """One pass for both: the same activations, and a cache from which steered and
    unsteered generation give the same tokens as from ``prefill``'s."""
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS, system="Be brief.")
    pre = prefill(model, batch)
    expected = probe_pass(model, tok, pre, "Sure")
    both, got = prefill_probed(model, tok, batch, "Sure")
    for name in ("inst", "probe", "uend"):
        assert torch.allclose(got[name], expected[name], atol=1e-4), name
    assert torch.allclose(both.uend, got["uend"])
    assert both.cache.get_seq_length() == pre.cache.get_seq_length()
    for a, b in zip(both.cache.layers, pre.cache.layers):
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)
    config = RowSettings(max_tokens=6)
    plan = _plan(pre.batch)
    assert generate_from(model, tok, both, config) == generate_from(model, tok, pre, config)
    assert generate_from(model, tok, both, config, plan) == generate_from(model, tok, pre, config, plan)


def test_prefill_probed_falls_back_where_a_sliding_window_could_drop_entries(qwen, monkeypatch):
    from scans import engine

    model, tok = qwen.model, qwen.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    calls = []
    monkeypatch.setattr(engine, "probe_pass", lambda *a, **k: calls.append(1) or probe_pass(*a, **k))
    monkeypatch.setattr(model.config, "sliding_window", 4, raising=False)
    pre, acts = engine.prefill_probed(model, tok, batch, "Sure")
    assert calls == [1]
    expected = probe_pass(model, tok, prefill(model, batch), "Sure")
    assert torch.allclose(acts["inst"], expected["inst"], atol=1e-5)
    monkeypatch.setattr(model.config, "sliding_window", None, raising=False)
    engine.prefill_probed(model, tok, batch, "Sure")
    assert calls == [1]  # no window: the one-pass path


def test_collect_matches_forward_capture(tiny):
    """Bucketing by length and re-padding must not change the activations or their order."""
    model, tok = tiny.model, tiny.tokenizer
    got = collect(model, tok, PROMPTS, probe="Sure", batch_size=2, progress=False)
    for i, text in enumerate(PROMPTS):
        one = prompts.build_batch(tok, [text], probe="Sure")
        ref, _ = forward_capture(model, one.input_ids, one.attention_mask, one.positions)
        for name in ("inst", "probe"):
            assert torch.allclose(got[name][i], ref[name][0], atol=1e-4), (i, name)


def test_forward_capture_logits(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    _, logits = forward_capture(
        model, batch.input_ids, batch.attention_mask, batch.positions, logits_at="inst"
    )
    with torch.no_grad():
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    assert torch.allclose(logits, ref.float(), atol=1e-4)


def _plain_generate(model, tok, batch, n):
    with torch.no_grad():
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=prompts.pad_id_of(tok),
            eos_token_id=model.generation_config.eos_token_id,
        )
    return [t.strip() for t in tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)]


def test_generate_from_prefix_matches_plain_generate(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    pre = prefill(model, batch)
    seq_before = pre.cache.get_seq_length()
    got = generate_from(model, tok, pre, RowSettings(max_tokens=6))
    assert got == _plain_generate(model, tok, batch, 6)
    assert pre.cache.get_seq_length() == seq_before
    assert any(got), "the tiny model should produce some text"


def test_generate_from_prefix_matches_steered_generate(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    plan = _plan(batch)
    pre = prefill(model, batch)
    got = generate_from(model, tok, pre, RowSettings(max_tokens=6), plan)
    with steer(model, plan):
        ref = _plain_generate(model, tok, batch, 6)
    assert got == ref
    # and the plan made a difference, so the comparison means something
    unsteered = generate_from(model, tok, pre, RowSettings(max_tokens=6))
    assert got != unsteered


def test_generate_from_zero_sign_is_unsteered(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    pre = prefill(model, batch)
    zero = generate_from(model, tok, pre, RowSettings(max_tokens=5), _plan(batch, (0, 0, 0)))
    assert zero == generate_from(model, tok, pre, RowSettings(max_tokens=5))


def test_seeded_sampling_is_reproducible(qwen):
    model, tok = qwen.model, qwen.tokenizer
    pre = prefill(model, prompts.build_batch(tok, PROMPTS))
    config = RowSettings(max_tokens=5, temperature=1.5, seed=123)
    assert generate_from(model, tok, pre, config) == generate_from(model, tok, pre, config)


def test_forward_capture_under_a_plan_includes_the_steered_layers_own_addition(qwen):
    model, tok = qwen.model, qwen.tokenizer
    batch = prompts.build_batch(tok, ["hello there", "kill the process"])
    start = batch.attention_mask.sum(-1) - 1
    v = torch.zeros(32)
    v[3] = 1.0
    plan = SteeringPlan(SteeringVector.scaled({0: v}, {0: 5.0}), sign=[1.0, -1.0], start=start)
    plain, _ = forward_capture(model, batch.input_ids, batch.attention_mask, batch.positions)
    steered, _ = forward_capture(model, batch.input_ids, batch.attention_mask, batch.positions, plan=plan)
    delta = steered["inst"][:, 0] - plain["inst"][:, 0]  # layer 0, at the instruction end
    expected = torch.stack([5.0 * v, -5.0 * v])
    torch.testing.assert_close(delta, expected, atol=1e-4, rtol=0)


def test_min_new_tokens_suppresses_the_end_of_sequence(qwen, monkeypatch):
    """With the first greedy token made the end of sequence, rows stop at once unless
    ``min_new_tokens`` holds the end back."""
    model, tok = qwen.model, qwen.tokenizer
    pre = prefill(model, prompts.build_batch(tok, PROMPTS[:1]))
    first = generate_counted(model, tok, pre, RowSettings(max_tokens=1))
    token = tok(first[0][0], add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr(model.generation_config, "eos_token_id", token)
    assert generate_counted(model, tok, pre, RowSettings(max_tokens=5))[0][1] == 0
    assert generate_counted(model, tok, pre, RowSettings(max_tokens=5, min_tokens=3))[0][1] >= 3


SYSTEM = "You are a careful assistant. Answer briefly and kindly."


def test_hoist_prefix_keeps_every_row_and_position():
    batch = prompts.left_pad(
        [[1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4, 7, 8, 9]], 0, {"inst": [4, 3, 6], "uend": [3, 3, 4]}
    )
    shared = batch.shared_prefix()
    assert shared == 3
    hoisted = batch.hoist_prefix(shared)
    assert hoisted.attention_mask[:, :shared].all()
    for row in range(3):
        real = hoisted.input_ids[row][hoisted.attention_mask[row].bool()]
        assert real.tolist() == batch.input_ids[row][batch.attention_mask[row].bool()].tolist()
        for name in ("inst", "uend"):
            assert (
                hoisted.input_ids[row, hoisted.positions[name][row]]
                == batch.input_ids[row, batch.positions[name][row]]
            )
    # row positions (mask cumsum) of the named tokens are unchanged
    for name in ("inst", "uend"):
        old = (batch.attention_mask.cumsum(-1) - 1).gather(1, batch.positions[name][:, None])
        new = (hoisted.attention_mask.cumsum(-1) - 1).gather(1, hoisted.positions[name][:, None])
        assert torch.equal(old, new)


def test_shared_prefix_is_capped_before_positions_and_last_token():
    same = prompts.left_pad([[5, 6, 7], [5, 6, 7]], 0, {"inst": [2, 2], "uend": [1, 1]})
    assert same.shared_prefix(min_length=1) == 1  # uend at token 1: the prefix stops before it
    assert prompts.left_pad([[1, 2], [3, 4]], 0, {}).shared_prefix(min_length=1) == 0
    assert prompts.left_pad([[1, 2, 3]], 0, {}).shared_prefix() == 0  # one row: nothing to share


def test_prefill_with_shared_prefix_matches_plain(tiny):
    """A system prompt shared by all rows is run once; activations and greedy tokens are unchanged."""
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS, system=SYSTEM)
    assert batch.shared_prefix() > 0
    shared, plain = prefill(model, batch), prefill(model, batch, share_prefix=False)
    assert shared.batch.input_ids.shape[1] <= plain.batch.input_ids.shape[1]
    a, b = probe_pass(model, tok, shared, "Sure"), probe_pass(model, tok, plain, "Sure")
    for name in ("inst", "probe", "uend"):
        assert torch.allclose(a[name], b[name], atol=1e-4), name
    config = RowSettings(max_tokens=8)
    assert generate_from(model, tok, shared, config) == generate_from(model, tok, plain, config)
    steered = [generate_from(model, tok, p, config, _plan(p.batch)) for p in (shared, plain)]
    assert steered[0] == steered[1]


def test_collect_with_shared_prefix_matches_plain(tiny):
    model, tok = tiny.model, tiny.tokenizer
    a = collect(model, tok, PROMPTS, system=SYSTEM, probe="Sure", batch_size=3, progress=False)
    b = collect(
        model, tok, PROMPTS, system=SYSTEM, probe="Sure", batch_size=3, progress=False, share_prefix=False
    )
    for name in ("inst", "probe", "uend"):
        assert torch.allclose(a[name], b[name], atol=1e-4), name


def test_prefill_select_matches_prefilling_the_rows(tiny):
    model, tok = tiny.model, tiny.tokenizer
    pre = prefill(model, prompts.build_batch(tok, PROMPTS, system=SYSTEM))
    sub = pre.select([2, 0])
    config = RowSettings(max_tokens=6)
    full = generate_from(model, tok, pre, config)
    assert generate_from(model, tok, sub, config) == [full[2], full[0]]
    assert pre.cache.get_seq_length() == sub.cache.get_seq_length()


def test_shared_prefix_memo_is_reused_and_bypassed_when_it_would_be_wrong(monkeypatch):
    """The shared prefix's KV is computed once per model and prefix; a hook or a weight edit
    must not see a stale prefix. (A fresh model: a shared one may carry other tests' hooks.)"""
    from conftest import ARCHS, make_model, make_tokenizer
    from scans import kvcache

    model, tok = make_model("qwen2", seed=3), make_tokenizer(ARCHS["qwen2"][3])
    batch = prompts.build_batch(tok, PROMPTS, system=SYSTEM)
    length = batch.shared_prefix()
    runs = []  # forward passes of the model (counted at its embedding, without a hook)
    embedding_forward = torch.nn.Embedding.forward

    def counted(self, *args, **kwargs):
        runs.append(1)
        return embedding_forward(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Embedding, "forward", counted)
    first = kvcache.shared_prefix_cache(model, batch, length)
    again = kvcache.shared_prefix_cache(model, batch, length)
    assert len(runs) == 1, "the second call should reuse the memoized prefix"
    for a, b in zip(first.layers, again.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    # under a hook the prefix is recomputed (the hook runs)
    calls = []
    layer = model.model.layers[0]
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    try:
        kvcache.shared_prefix_cache(model, batch, length)
    finally:
        handle.remove()
    assert calls and len(runs) == 2
    kvcache.shared_prefix_cache(model, batch, length)  # not memoized under the hook: memo still good
    assert len(runs) == 2
    # an in-place weight edit changes the key: the new prefix differs from the memoized one
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(2.0)
    edited = kvcache.shared_prefix_cache(model, batch, length)
    assert len(runs) == 3
    assert not torch.allclose(edited.layers[0].keys, first.layers[0].keys)
