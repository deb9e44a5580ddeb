"""Steering hooks: removal, the exact addition per row and position, caching, expansion."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from scans import prompts
from scans.models import find_layers
from scans.steering import SteeringPlan, SteeringVector, row_positions, steer

PROMPTS = ["Hi", "How do I bake bread at home, step by step?", "What is the capital of France?"]
ALPHA = 3.0


def _unit(seed: int, dim: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g)
    return v / v.norm()


def _hooks(model) -> tuple:
    """The ids of every forward hook on the layers and pre-hook on the base model.

    (transformers 5 installs its own output-capturing hooks the first time a model is run
    with ``output_hidden_states=True``, so a shared model is compared with its earlier self.)
    """
    layers = find_layers(model)
    return (
        tuple(tuple(layer._forward_hooks) for layer in layers),
        tuple(model.base_model._forward_pre_hooks),
    )


_BEFORE: dict[int, tuple] = {}


def _no_hooks(model) -> bool:
    """No steering hook left behind: the hooks are those the model had before any steering."""
    return _hooks(model) == _BEFORE.setdefault(id(model), _hooks(model))


@pytest.fixture(autouse=True)
def _snapshot_hooks(request):
    if "tiny" in request.fixturenames:
        model = request.getfixturevalue("tiny").model
        _BEFORE[id(model)] = _hooks(model)


def _layer1_input(model, batch, plan=None) -> torch.Tensor:
    """What layer 1 actually receives (= the output of layer 0 after any steering)."""
    seen = {}

    def grab(_module, args, kwargs):
        seen["h"] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach().clone()

    layers = find_layers(model)
    handle = layers[1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            if plan is None:
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            else:
                with steer(model, plan):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen["h"]


def _row_pos(batch) -> torch.Tensor:
    return row_positions(batch.attention_mask, batch.input_ids.shape[1], 0)


# ------------------------------------------------------------------------ (a) removal
def test_hooks_removed(tiny):
    model = make_model(tiny.arch)  # fresh: no hooks of any kind yet
    layers = find_layers(model)
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    assert len(model.base_model._forward_pre_hooks) == 0
    plan = SteeringPlan(
        SteeringVector.scaled({0: _unit(0), 1: _unit(1)}, {0: 1.0, 1: 1.0}), sign=[1], start=[0]
    )
    with steer(model, plan) as active:
        assert active is plan
        assert len(layers[0]._forward_hooks) == 1
        assert len(layers[1]._forward_hooks) == 1
        assert len(model.base_model._forward_pre_hooks) == 1
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    assert len(model.base_model._forward_pre_hooks) == 0
    # only the planned layers get a hook
    with steer(model, SteeringPlan(SteeringVector.scaled({1: _unit(0)}, {1: 1.0}), sign=[1], start=[0])):
        assert [len(layer._forward_hooks) for layer in layers] == [0, 1]
    assert all(len(layer._forward_hooks) == 0 for layer in layers)


def test_hooks_removed_on_exception(tiny):
    model = tiny.model
    plan = SteeringPlan(SteeringVector.scaled({1: _unit(0)}, {1: 1.0}), sign=[1], start=[0])
    batch = prompts.build_batch(tiny.tokenizer, ["Hi"])
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, plan):
            with torch.no_grad():
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            raise RuntimeError("boom")
    assert _no_hooks(model)
    # the model is back to its unsteered self
    with torch.no_grad():
        a = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        b = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(a, b)


def test_hooks_removed_when_layer_missing(tiny):
    plan = SteeringPlan(
        SteeringVector.scaled({0: _unit(0), 7: _unit(1)}, {0: 1.0, 7: 1.0}), sign=[1], start=[0]
    )
    with pytest.raises(IndexError):
        with steer(tiny.model, plan):
            pass
    assert _no_hooks(tiny.model)


# ------------------------------------------------------------------------ (b)-(d) exact addition
def _expected(base: torch.Tensor, batch, v, alpha, sign, start) -> torch.Tensor:
    """Direct restatement: add sign*alpha*v at row positions >= start (row position 0 =
    the row's first real token); pads and earlier positions are untouched."""
    out = base.clone()
    n, width, _ = base.shape
    for b in range(n):
        first = int((batch.attention_mask[b] == 0).sum())
        for t in range(width):
            if t >= first and t - first >= start[b]:
                out[b, t] += sign[b] * alpha * v
    return out


def test_addition_matches_restatement(tiny):
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS[1:2])
    v = _unit(3)
    base = _layer1_input(tiny.model, batch)
    # The unsteered capture is hidden_states[1] (the output of layer 0). Under steering,
    # transformers 5 records hidden_states with hooks that run before the steering hook,
    # so the steered side is read where it matters: the input of layer 1.
    with torch.no_grad():
        hs = tiny.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
        ).hidden_states
    assert torch.allclose(base, hs[1], atol=1e-6)
    start = 4
    plan = SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=[1], start=[start])
    steered = _layer1_input(tiny.model, batch, plan)
    delta = steered - base
    assert torch.allclose(delta[0, :start], torch.zeros_like(delta[0, :start]), atol=1e-6)
    assert torch.allclose(delta[0, start:], (ALPHA * v).expand_as(delta[0, start:]), atol=1e-5)
    assert torch.allclose(steered, _expected(base, batch, v, ALPHA, [1], [start]), atol=1e-5)


@pytest.mark.parametrize("window", [1, 3])
def test_window_limits_the_steered_positions(tiny, window):
    """window = w: the addition lands on positions start .. start + w - 1 only."""
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS[1:2])
    v, start = _unit(5), 4
    base = _layer1_input(tiny.model, batch)
    plan = SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=[-1], start=[start], window=window)
    delta = _layer1_input(tiny.model, batch, plan) - base
    on = torch.zeros(delta.shape[1], dtype=torch.bool)
    on[start : start + window] = True
    assert torch.allclose(delta[0, on], (-ALPHA * v).expand_as(delta[0, on]), atol=1e-5)
    assert torch.allclose(delta[0, ~on], torch.zeros_like(delta[0, ~on]), atol=1e-6)


def test_addition_changes_outputs_downstream(tiny):
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS[1:2])
    plan = SteeringPlan(SteeringVector.scaled({0: _unit(3)}, {0: ALPHA}), sign=[1], start=[4])
    with torch.no_grad():
        base = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with steer(tiny.model, plan):
            steered = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(steered[0, :4], base[0, :4], atol=1e-5)  # causal: earlier tokens unchanged
    assert (steered[0, 4:] - base[0, 4:]).abs().max() > 1e-3


def test_per_row_sign(tiny):
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS)
    v = _unit(5)
    sign, start = [1, -1, 0], [2, 3, 0]
    base = _layer1_input(tiny.model, batch)
    steered = _layer1_input(
        tiny.model, batch, SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=sign, start=start)
    )
    assert torch.allclose(steered, _expected(base, batch, v, ALPHA, sign, start), atol=1e-5)
    pos = _row_pos(batch)
    for row, s in enumerate(sign):
        on = pos[row] >= start[row]
        delta = steered[row, on] - base[row, on]
        assert torch.allclose(delta, (s * ALPHA * v).expand_as(delta), atol=1e-5)
    assert torch.equal(steered[2], base[2])  # sign 0 leaves the row alone


def test_left_padding_counts_from_first_real_token(tiny):
    """Start is relative to each row: steer every row from its own instruction end."""
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS[:2])
    lengths = batch.attention_mask.sum(-1)
    assert lengths[0] < lengths[1], "row 0 must be left padded"
    v = _unit(6)
    start = (lengths - 1).tolist()  # the instruction end, in row positions
    base = _layer1_input(tiny.model, batch)
    steered = _layer1_input(
        tiny.model, batch, SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=[1, 1], start=start)
    )
    delta = steered - base
    # both rows end at the last column, so only the last column changes, in both rows
    assert torch.allclose(delta[:, :-1], torch.zeros_like(delta[:, :-1]), atol=1e-6)
    assert torch.allclose(delta[:, -1], (ALPHA * v).expand(2, -1), atol=1e-5)
    # an absolute column index would have steered the padded row too early/late; check one
    # start that lands inside row 0's padding if read as a column: nothing before its real tokens
    pad = int((batch.attention_mask[0] == 0).sum())
    steered = _layer1_input(
        tiny.model, batch, SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=[1, 1], start=[1, 1])
    )
    delta = steered - base
    assert torch.allclose(delta[0, : pad + 1], torch.zeros_like(delta[0, : pad + 1]), atol=1e-6)
    assert torch.allclose(delta[0, pad + 1 :], (ALPHA * v).expand_as(delta[0, pad + 1 :]), atol=1e-5)
    assert torch.allclose(delta[1, 1:], (ALPHA * v).expand_as(delta[1, 1:]), atol=1e-5)
    assert torch.allclose(delta[1, :1], torch.zeros_like(delta[1, :1]), atol=1e-6)


def test_row_positions():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert row_positions(mask, 4, 0).tolist() == [[-1, -1, 0, 1], [0, 1, 2, 3]]
    assert row_positions(mask, 1, 3).tolist() == [[1], [3]]
    assert row_positions(None, 2, 5).tolist() == [[5, 6]]
    pos_ids = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]])
    assert row_positions(None, 2, 0, pos_ids).tolist() == [[0, 1], [2, 3]]


# ------------------------------------------------------------------------ (e) KV cache
def test_cached_generation_matches_uncached(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS)
    start = batch.attention_mask.sum(-1) - 1
    plan = SteeringPlan(
        SteeringVector.scaled({0: _unit(7), 1: _unit(8)}, {0: 4.0, 1: 4.0}), sign=[1, -1, 1], start=start
    )
    common = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=prompts.pad_id_of(tok),
        eos_token_id=None,
    )
    with torch.no_grad():
        with steer(model, plan):
            cached = model.generate(use_cache=True, **common)
        with steer(model, plan):
            uncached = model.generate(use_cache=False, **common)
        plain = model.generate(use_cache=True, **common)
    assert _no_hooks(model)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain), "steering should change the greedy tokens"


# ------------------------------------------------------------------------ (f) expanded batches
def test_expanded_batch_repeats_rows(tiny):
    tok = tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS[:2])
    rep = prompts.Batch(
        batch.input_ids.repeat_interleave(2, dim=0), batch.attention_mask.repeat_interleave(2, dim=0), {}
    )
    v = _unit(9)
    start = (batch.attention_mask.sum(-1) - 3).tolist()
    sign = [1, -1]
    base = _layer1_input(tiny.model, rep)
    steered = _layer1_input(
        tiny.model, rep, SteeringPlan(SteeringVector.scaled({0: v}, {0: ALPHA}), sign=sign, start=start)
    )
    expected = _expected(base, rep, v, ALPHA, [1, 1, -1, -1], [start[0], start[0], start[1], start[1]])
    assert torch.allclose(steered, expected, atol=1e-5)


def test_expanded_batch_mismatch_raises(tiny):
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS)
    plan = SteeringPlan(SteeringVector.scaled({0: _unit(0)}, {0: 1.0}), sign=[1, 1], start=[0, 0])
    with pytest.raises(ValueError, match="rows"):
        _layer1_input(tiny.model, batch, plan)
    assert _no_hooks(tiny.model)


def test_sampled_generation_with_num_return_sequences(tiny):
    """generate expands each prompt to num_return_sequences rows; the plan follows."""
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, PROMPTS[:2])
    plan = SteeringPlan(
        SteeringVector.scaled({1: _unit(1)}, {1: 2.0}), sign=[1, -1], start=batch.attention_mask.sum(-1) - 1
    )
    with torch.no_grad(), steer(model, plan):
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=3,
            do_sample=True,
            num_return_sequences=3,
            pad_token_id=prompts.pad_id_of(tok),
        )
    assert out.shape[0] == 6
    assert _no_hooks(model)


def test_plan_validation():
    with pytest.raises(KeyError):
        SteeringVector.scaled({0: _unit(0)}, {1: 1.0})
    with pytest.raises(AssertionError):
        SteeringVector({0: _unit(0), 1: torch.zeros(3)})
    with pytest.raises(AssertionError):
        SteeringVector({0: torch.full((4,), float("nan"))})
    with pytest.raises(AssertionError):
        SteeringPlan(SteeringVector.scaled({0: _unit(0)}, {0: 1.0}), sign=[1, 1], start=[0])
    plan = SteeringPlan(SteeringVector.scaled({0: _unit(0)}, {0: 2.0}), sign=[1], start=[0])
    assert torch.allclose(plan.delta(0), 2.0 * _unit(0))


# ------------------------------------------------------------------------ the vector type
def test_steering_vector_arithmetic_reads_like_the_math():
    a = SteeringVector.scaled({0: _unit(0), 1: _unit(1)}, {0: 2.0, 1: 3.0})
    b = SteeringVector({1: _unit(2)})
    assert torch.equal(a[0], 2.0 * _unit(0)) and torch.equal(a[1], 3.0 * _unit(1))
    s = a + b
    assert s.layers == [0, 1] and torch.allclose(s[1], 3.0 * _unit(1) + _unit(2))
    d = b - a  # a layer missing on one side counts as zero
    assert torch.allclose(d[0], -2.0 * _unit(0)) and torch.allclose(d[1], _unit(2) - 3.0 * _unit(1))
    assert torch.allclose((0.5 * a)[0], _unit(0)) and torch.allclose((a / 2)[1], 1.5 * _unit(1))
    assert torch.allclose((-a)[0], -2.0 * _unit(0))
    half = a.to(dtype=torch.float16)
    assert half[0].dtype == torch.float16 and a[0].dtype == torch.float32


def test_vector_apply_equals_a_plan(tiny):
    """``vector.apply(model, sign, start)`` is ``steer(model, SteeringPlan(vector, ...))``."""
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS[:2])
    vector = SteeringVector.scaled({0: _unit(4)}, {0: ALPHA})
    start = batch.attention_mask.sum(-1) - 1
    via_plan = _layer1_input(tiny.model, batch, SteeringPlan(vector, sign=[-1, -1], start=start))
    seen = {}

    def grab(_module, args, kwargs):
        seen["h"] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach().clone()

    handle = find_layers(tiny.model)[1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), vector.apply(tiny.model, -1.0, start):
            tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    assert _no_hooks(tiny.model)
    assert torch.equal(seen["h"], via_plan)


def test_plan_is_never_written(tiny):
    """The plan holds no per-call state: it is frozen, and nested use on two models gives each
    its own positions."""
    import dataclasses

    other = make_model(tiny.arch, seed=5)
    short = prompts.build_batch(tiny.tokenizer, ["Hi"])
    plan = SteeringPlan(SteeringVector.scaled({0: _unit(0)}, {0: ALPHA}), sign=[1], start=[0])
    alone = _layer1_input(other, short, plan)
    long = prompts.build_batch(tiny.tokenizer, [PROMPTS[1]])
    with torch.no_grad(), steer(tiny.model, plan):
        nested = _layer1_input(other, short, plan)
        tiny.model(input_ids=long.input_ids, attention_mask=long.attention_mask)
    assert torch.equal(alone, nested)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.window = 3
