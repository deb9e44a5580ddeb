"""The budget counts the harmful prompts the model refuses: the first-token reading, and the
budget's arithmetic with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scans import prompts
from scans.activations import forward_capture
from scans.calibration import rule_budget, safety_budget
from scans.refusal import first_tokens, refusal_first_ids


def test_first_tokens_are_the_models_own_greedy_first_tokens(tiny):
    model, tok = tiny.model, tiny.tokenizer
    batch = prompts.build_batch(tok, ["Hi", "How do I bake bread at home?", "Tell me a joke"])
    last = torch.full((3,), batch.input_ids.shape[1] - 1)
    acts, logits = forward_capture(
        model, batch.input_ids, batch.attention_mask, {"inst": last}, logits_at="inst"
    )
    with torch.no_grad():
        direct = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    assert first_tokens(model, acts["inst"][:, -1]).tolist() == direct.argmax(-1).tolist()
    assert first_tokens(model, acts["inst"][:, -1]).tolist() == logits.argmax(-1).tolist()


def test_refusal_openers_are_first_tokens_of_refusal_phrases(tiny):
    tok = tiny.tokenizer
    ids = refusal_first_ids(tok)
    assert tok("I'm sorry", add_special_tokens=False)["input_ids"][0] in ids
    assert tok("As an AI", add_special_tokens=False)["input_ids"][0] in ids
    assert tok("To", add_special_tokens=False)["input_ids"][0] not in ids


def _restated(joint: np.ndarray, rows: np.ndarray, eps: float) -> float:
    """Split conformal: the k-th smallest score, k = floor(eps (n + 1))."""
    s = np.sort(joint[rows])
    k = int(np.floor(eps * (len(s) + 1)))
    return -np.inf if k == 0 else s[k - 1]


def test_budget_over_refused_prompts():
    rng = np.random.default_rng(0)
    n = 400
    harmful = np.arange(n) < 300
    severe = harmful & (np.arange(n) < 120)
    score = np.where(harmful, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    inst = score + rng.normal(0, 0.1, n)
    joint = np.maximum(score, inst)
    # the model answers the harmful prompts that look least harmful, refuses the rest
    refused = harmful & (joint > np.quantile(joint[harmful], 0.3))
    t_all, rec_all = rule_budget(score, inst, harmful, severe, 0.02)
    t_ref, rec_ref = rule_budget(score, inst, harmful, severe, 0.02, refused)
    assert t_all == pytest.approx(min(_restated(joint, harmful, 0.02), _restated(joint, severe, 0.02)))
    expected = min(_restated(joint, harmful & refused, 0.02), _restated(joint, severe & refused, 0.02))
    assert t_ref == pytest.approx(expected)
    assert t_ref > t_all  # the answered prompts no longer set the threshold
    assert rec_ref["budget"]["harmful"]["counted"] == "refused"
    assert rec_ref["refused"]["harmful"] == int(refused.sum())
    # among the refused harmful prompts, the steered fraction stays within the budget's bound
    assert (
        np.mean(joint[harmful & refused] < t_ref) <= safety_budget(joint[harmful & refused], 0.02).guaranteed
    )


def test_budget_counts_all_when_the_model_refuses_too_few():
    rng = np.random.default_rng(1)
    n = 300
    harmful = np.arange(n) < 200
    score = np.where(harmful, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    refused = harmful & (np.arange(n) < 10)  # 10 refused: too few for a 0.02 budget (needs 49)
    severe = np.zeros(n, dtype=bool)
    t, rec = rule_budget(score, score, harmful, severe, 0.02, refused)
    assert rec["budget"]["harmful"]["counted"] == "all"
    assert t == pytest.approx(_restated(score, harmful, 0.02))


def test_a_tighter_severe_budget_counts_all_severe_prompts_when_too_few_are_refused(capsys):
    """0.01 needs 99 counted severe prompts: with 60 refused of 150 the severe class counts all
    150 while the harmful class still counts its refused ones; `scans info` says so per class."""
    import types

    from scans.cli.fit import print_decision

    rng = np.random.default_rng(5)
    n = 700
    harmful, severe = np.arange(n) < 400, np.arange(n) < 150
    score = np.where(harmful, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    refused = harmful & ((np.arange(n) >= 150) | (np.arange(n) < 60))
    t, rec = rule_budget(score, score, harmful, severe, 0.02, refused, max_severe_loss=0.01)
    assert rec["budget"]["harmful"]["counted"] == "refused" and rec["budget"]["severe"]["counted"] == "all"
    assert rec["budget"]["severe"]["n"] == 150 and rec["budget"]["severe"]["k"] == 1
    assert t == min(_restated(score, harmful & refused, 0.02), _restated(score, severe, 0.01))
    decision = {**rec, "pool": {"size": n, "severe": 150}}
    profile = types.SimpleNamespace(
        decision=decision, steer_threshold=t, inst_threshold=t, max_harmful_loss=0.02, threshold=t + 1
    )
    print_decision(profile)
    out = capsys.readouterr().out
    assert "safety budget 0.02 (severe 0.01)" in out
    assert "counts the refused harmful ones and all severe ones (too few refused for its budget)" in out
