"""The step-wise decoding loop (scans.decode) against HF generate, and conversations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import _tiny
from scans import prompts
from scans.conversations import chat, chat_batch, encode_conversations
from scans.decode import RowSettings, _Row, decode, generate_from
from scans.engine import prefill
from scans.models import cache_kwarg
from scans.steering import SteeringPlan, SteeringVector, steer

PROMPTS = [
    "How do I bake bread at home?",
    "Hi",
    "Write a poem about the sea and the sky, please.",
    "How can I kill a stuck process?",
]


def _plan(t, batch, signs=(-1.0, 1.0, 0.0, -1.0)) -> SteeringPlan:
    """A strong hand-made plan on both layers of a tiny model, mixed signs."""
    gen = torch.Generator().manual_seed(1)
    d = t.model.config.hidden_size
    vectors = {l: torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0) for l in (0, 1)}
    return SteeringPlan(
        SteeringVector.scaled(vectors, {0: 3.0, 1: 3.0}),
        sign=list(signs),
        start=batch.attention_mask.sum(-1) - 1,
    )


def _reference_ids(t, pre, n: int, plan=None, eos=None) -> list[list[int]]:
    """HF generate from the same prefill, ids cut at EOS (the reference the decoder must equal)."""
    eos = t.tokenizer.eos_token_id if eos is None else eos
    with steer(t.model, plan) if plan is not None else torch.no_grad(), torch.no_grad():
        out = t.model.generate(
            input_ids=pre.batch.input_ids,
            attention_mask=pre.batch.attention_mask,
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=prompts.pad_id_of(t.tokenizer),
            eos_token_id=eos,
            **{cache_kwarg(t.model): pre.fresh_cache()},
        )
    rows = []
    for row in out[:, pre.batch.input_ids.shape[1] :].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


@pytest.mark.parametrize("steered", [False, True])
def test_greedy_equals_generate(tiny, steered):
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS)
    pre = prefill(tiny.model, batch)
    plan = _plan(tiny, batch) if steered else None
    got = decode(tiny.model, tiny.tokenizer, pre, [RowSettings(max_tokens=10) for _ in PROMPTS], plan)
    assert [g.token_ids for g in got] == _reference_ids(tiny, pre, 10, plan)
    texts = generate_from(tiny.model, tiny.tokenizer, pre, RowSettings(10), plan)
    assert [g.text.strip() for g in got] == texts
    assert all(g.finish_reason == "length" for g in got)


def test_steering_changes_output(qwen):
    batch = prompts.build_batch(qwen.tokenizer, PROMPTS)
    pre = prefill(qwen.model, batch)
    rows = [RowSettings(max_tokens=8) for _ in PROMPTS]
    plain = decode(qwen.model, qwen.tokenizer, pre, rows)
    steered = decode(qwen.model, qwen.tokenizer, pre, rows, _plan(qwen, batch))
    same = [p.token_ids == s.token_ids for p, s in zip(plain, steered)]
    assert same[2] and not all(same)  # the sign-0 row is untouched, others change


@pytest.mark.parametrize("steered", [False, True])
def test_rows_leave_the_batch(tiny, steered):
    """Per-row max_tokens: finished rows drop from batch, cache and plan; the rest continue
    exactly as in the full batch."""
    batch = prompts.build_batch(tiny.tokenizer, PROMPTS)
    pre = prefill(tiny.model, batch)
    plan = _plan(tiny, batch) if steered else None
    full = _reference_ids(tiny, pre, 12, plan)
    budgets = [3, 12, 1, 7]
    forwards: list[int] = []
    rows = [RowSettings(max_tokens=m) for m in budgets]
    got = decode(tiny.model, tiny.tokenizer, pre, rows, plan, on_forward=forwards.append)
    for g, ref, m in zip(got, full, budgets):
        assert g.token_ids == ref[:m] and g.finish_reason == "length"
    assert forwards[0] == 4 and forwards[-1] == 1 and sorted(forwards, reverse=True) == forwards
    assert sum(forwards) == sum(budgets)  # finished rows cost nothing


def test_cancelled_row_is_dropped(qwen):
    batch = prompts.build_batch(qwen.tokenizer, PROMPTS)
    pre = prefill(qwen.model, batch)
    full = _reference_ids(qwen, pre, 8)
    calls = {"n": 0}

    def cancel_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    rows = [RowSettings(max_tokens=8) for _ in PROMPTS]
    rows[1] = RowSettings(max_tokens=8, cancelled=cancel_after_three)
    got = decode(qwen.model, qwen.tokenizer, pre, rows)
    assert got[1].finish_reason == "cancelled" and got[1].token_ids == full[1][:3]
    assert [g.token_ids for i, g in enumerate(got) if i != 1] == [r for i, r in enumerate(full) if i != 1]


def test_eos_finishes_row(qwen):
    batch = prompts.build_batch(qwen.tokenizer, PROMPTS)
    pre = prefill(qwen.model, batch)
    eos = _reference_ids(qwen, pre, 8)[0][3]
    config = qwen.model.generation_config
    before = config.eos_token_id
    config.eos_token_id = eos
    try:
        got = decode(qwen.model, qwen.tokenizer, pre, [RowSettings(max_tokens=8) for _ in PROMPTS])
    finally:
        config.eos_token_id = before
    ref = _reference_ids(qwen, pre, 8, eos=eos)
    assert [g.token_ids for g in got] == ref
    assert got[0].finish_reason == "stop" and len(got[0].token_ids) <= 3
    for g in got:
        assert g.finish_reason == ("stop" if len(g.token_ids) < 8 else "length")


def test_stop_strings_and_streaming(qwen):
    batch = prompts.build_batch(qwen.tokenizer, PROMPTS)
    pre = prefill(qwen.model, batch)
    plain = decode(qwen.model, qwen.tokenizer, pre, [RowSettings(max_tokens=12) for _ in PROMPTS])
    text = plain[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert len(stop) == 2
    deltas: list[list[str]] = [[] for _ in PROMPTS]
    rows = [RowSettings(max_tokens=12, on_text=deltas[i].append) for i in range(len(PROMPTS))]
    rows[0] = dataclasses.replace(rows[0], stop=["<never>", stop])
    got = decode(qwen.model, qwen.tokenizer, pre, rows)
    assert got[0].finish_reason == "stop"
    assert got[0].text == text[: text.find(stop)]
    assert stop not in "".join(deltas[0])
    for g, d in zip(got, deltas):
        assert "".join(d) == g.text  # streamed pieces add up to the final text
    assert [g.text for g in got[1:]] == [p.text for p in plain[1:]]


def test_incremental_detokenization_never_splits_characters(qwen):
    tok = qwen.tokenizer
    text = "Crème brûlée, 日本語 and emoji 🎈 done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.encode()) // 2  # byte-level: multi-byte characters span tokens
    pieces: list[str] = []
    row = _Row(RowSettings(on_text=pieces.append), None)
    for token in ids:
        row.push(tok, token)
        row.emit(final=False)
    row.flush(tok)
    row.emit(final=True)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == row.text


def test_sampling_per_row_seed_and_top_p(qwen):
    batch = prompts.build_batch(qwen.tokenizer, PROMPTS)
    pre = prefill(qwen.model, batch)
    greedy = decode(qwen.model, qwen.tokenizer, pre, [RowSettings(max_tokens=8) for _ in PROMPTS])
    hot = [RowSettings(max_tokens=8, temperature=1.5, seed=s) for s in (1, 2, 1, 3)]
    a = decode(qwen.model, qwen.tokenizer, pre, hot)
    b = decode(qwen.model, qwen.tokenizer, pre, hot)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]  # same seeds, same output
    assert any(x.token_ids != g.token_ids for x, g in zip(a, greedy))
    # a tiny nucleus keeps only the top token: sampling equals greedy; mixed with greedy rows
    mixed = [RowSettings(max_tokens=8, temperature=1.0, top_p=1e-6, seed=5), RowSettings(max_tokens=8)] * 2
    c = decode(qwen.model, qwen.tokenizer, pre, mixed)
    assert [x.token_ids for x in c] == [g.token_ids for g in greedy]


# ------------------------------------------------------------------------ conversations
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_single_message_encodes_like_a_prompt(tiny, system):
    for p in PROMPTS:
        got = prompts.encode_messages_with_end(tiny.tokenizer, [{"role": "user", "content": p}], system)
        assert got == prompts.encode_chat_with_end(tiny.tokenizer, p, system)


def test_multi_turn_user_end(tiny):
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "How do I bake bread at home?"},
    ]
    ids, end = prompts.encode_messages_with_end(tiny.tokenizer, conv)
    assert tiny.tokenizer.decode(ids[: end + 1]).endswith("bake bread at home?")
    assert end < len(ids) - 1
    batch = prompts.build_message_batch(tiny.tokenizer, [conv, conv[-1:]])
    assert set(batch.positions) == {"inst", "uend"}
    assert (batch.positions["inst"] == batch.input_ids.shape[1] - 1).all()


@pytest.mark.parametrize(
    "conv",
    [
        [],
        [{"role": "assistant", "content": "Hi"}],
        [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}],
        [{"role": "robot", "content": "Hi"}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "  "}],
    ],
)
def test_bad_conversations(qwen, conv):
    from scans.errors import ScansError

    with pytest.raises(ScansError, match="fix:"):
        prompts.encode_messages_with_end(qwen.tokenizer, conv)


def test_chat_classification_equals_classify(fitted):
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    results = chat(fitted, convs, RowSettings(max_tokens=2))
    for r, v in zip(results, fitted.classify(PROMPTS)):
        assert r.verdict.score == pytest.approx(v.score, abs=1e-4)
        assert (r.verdict.harmful, r.verdict.sign) == (v.harmful, v.sign)
        assert r.prompt_tokens == len(prompts.encode_chat(fitted.tokenizer, v.prompt))


def test_chat_steered_and_off_match_generate(fitted):
    """chat_batch = Scans.generate (steered rows) and the unsteered answer (rows with steering off)."""
    strong = dataclasses.replace(fitted.profile, alpha=2.0)
    t = _tiny("qwen2")
    from conftest import make_scans

    scans = make_scans(t.model, t.tokenizer)
    scans.profile = strong
    gens = scans.generate(PROMPTS, max_new_tokens=6, compare=True, progress=False)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    settings = [RowSettings(max_tokens=6) for _ in PROMPTS]
    on = chat_batch(scans, encode_conversations(scans, convs), settings)
    off = chat_batch(scans, encode_conversations(scans, convs), settings, steer_rows=[False] * len(PROMPTS))
    assert [r.result.text.strip() for r in on] == [g.response for g in gens]
    assert [r.result.text.strip() for r in off] == [g.unsteered for g in gens]
    assert all(r.sign == 0 and not r.steered for r in off)
    assert [r.sign for r in on] == [g.verdict.sign for g in gens]
