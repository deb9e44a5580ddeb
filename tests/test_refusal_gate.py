"""The refusal gate (``Profile.refusal_gate``): a prompt judged benign is steered only where the
answering model would refuse it (its greedy first answer token opens a refusal); every path
reads the gate the same way (the vLLM backend's: tests/test_vllm_backend.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import scans.api as api_module
import scans.cli as cli
from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS, _fitted, _tiny, make_scans, verdicts_by_path
from scans.errors import ScansError
from scans.fit_config import FitConfig
from scans.profile import Profile
from scans.refusal import first_token_refuses
from scans.verdict import decide, verdict_of

PROMPTS = [*HARMFUL[:4], *HARMLESS[:4], *BORDERLINE[:4]]


def _gated(**changes):
    """The tiny fitted profile with the gate on and thresholds that put 8 of the 12 prompts
    under the steer threshold (4 judged harmful)."""
    base = _fitted("qwen2")
    scores = sorted(v.score for v in base.classify(PROMPTS))
    t = _tiny("qwen2")
    s = make_scans(t.model, t.tokenizer)
    s.profile = dataclasses.replace(base.profile, threshold=scores[8] - 1e-6, steer_threshold=scores[8] - 1e-6,
                                    inst_threshold=1e9, refusal_gate=True, **changes)  # fmt: skip
    return s


def _reading(model, tokenizer, last: torch.Tensor) -> torch.Tensor:
    """A stand-in for the first-token reading on a random model (which never opens a refusal):
    a deterministic function of the same last-layer block output, about half the rows True."""
    return last.float()[:, 0] > last.float()[:, 0].median()


@pytest.mark.parametrize(
    "score,refuses,expected",
    [(2.0, True, ("harmful", 0)), (2.0, False, ("harmful", 0)), (0.5, False, ("abstain", 0)),
     (-2.0, True, ("benign", -1)), (-2.0, False, ("answers", 0))],
)  # fmt: skip
def test_the_gate_only_holds_back_prompts_the_model_answers(score, refuses, expected):
    p = dataclasses.replace(_fitted("qwen2").profile, threshold=1.0, steer_threshold=0.0, inst_threshold=1e9,
                            harmful_sign=0, refusal_gate=True)  # fmt: skip
    v = verdict_of(p, "q", score, None, "v2", refuses)
    assert (v.decision, v.sign) == expected
    assert verdict_of(p, "q", score, None, "v1", refuses).sign == (0 if score >= 1.0 else -1)  # v1: no gate
    ungated = dataclasses.replace(p, refusal_gate=False)
    assert verdict_of(ungated, "q", score, None, "v2", refuses).sign == (-1 if score < 0 else 0)


def test_decide_reads_refuses_and_needs_it():
    p = dataclasses.replace(_fitted("qwen2").profile, refusal_gate=True, threshold=1e9, steer_threshold=1e8,
                            inst_threshold=1e9)  # fmt: skip
    n, dim = 4, p.vectors.shape[1]
    acts = {name: torch.randn(n, p.n_layers, dim) for name in ("inst", "probe", "uend")}
    with pytest.raises(AssertionError, match="refuses"):
        decide(p, acts, ["a"] * n)
    acts["refuses"] = torch.tensor([True, False, True, False])
    assert [v.sign for v in decide(p, acts, ["a"] * n)] == [-1, 0, -1, 0]
    assert [v.decision for v in decide(p, acts, ["a"] * n)] == ["benign", "answers"] * 2


def test_signal_acts_reads_the_models_first_answer_token():
    s = _gated()
    acts = s.signal_acts(PROMPTS)
    own = s.signal_acts(PROMPTS, own=None)
    assert torch.equal(acts["refuses"], own["refuses"])
    assert torch.equal(acts["refuses"], first_token_refuses(s.model, s.tokenizer, acts["inst"][:, -1]))


def test_same_gated_verdicts_through_every_path(tmp_path, monkeypatch):
    monkeypatch.setattr(api_module, "first_token_refuses", _reading)
    paths = verdicts_by_path(_gated(), PROMPTS, tmp_path, "scans,scans-v1")
    api, by = paths["api"], paths["bench"]
    assert {v.decision for v in api} >= {"benign", "answers", "harmful"}
    for i, v in enumerate(api):
        for other in (paths["generate"][i], paths["chat"][i]):
            assert (other.decision, other.sign) == (v.decision, v.sign)
        assert paths["chat_signs"][i] == v.sign
        assert (by[("scans", i)]["decision"], by[("scans", i)]["sign"]) == (v.decision, v.sign)
        assert by[("scans-v1", i)]["decision"] != "answers"  # the previous rule has no gate


def test_an_answered_prompt_is_answered_exactly_as_unsteered(monkeypatch):
    monkeypatch.setattr(api_module, "first_token_refuses", _reading)
    s = _gated(alpha=2.0)
    for g in s.generate(PROMPTS, max_new_tokens=4, compare=True, progress=False):
        if g.verdict.decision == "answers":
            assert g.response == g.unsteered


def test_fit_options_and_format(tmp_path):
    assert FitConfig().gates(None) is False and FitConfig().gates("guard") is True
    assert FitConfig(refusal_gate="on").gates(None) is True
    assert FitConfig(refusal_gate="off").gates("guard") is False
    assert FitConfig(max_harmful_loss=None).gates("guard") is False
    with pytest.raises(ScansError, match="refusal gate needs decision rule v2; fix:"):
        FitConfig(refusal_gate="on", max_harmful_loss=None)
    with pytest.raises(ScansError, match="refusal gate 'maybe'; fix:"):
        FitConfig(refusal_gate="maybe")
    t = _tiny("qwen2")
    fitted = make_scans(t.model, t.tokenizer)
    fitted.fit(HARMFUL, HARMLESS, BORDERLINE, refusal_gate="on", **FIT_KWARGS)
    assert fitted.profile.refusal_gate
    path = fitted.profile.save(tmp_path / "p")
    assert json.loads((path / "profile.json").read_text())["format_version"] == 4
    assert Profile.load(path).refusal_gate
    meta = json.loads((path / "profile.json").read_text())
    (path / "profile.json").write_text(json.dumps({**meta, "refusal_gate": "maybe"}))
    with pytest.raises(ScansError, match="refusal_gate 'maybe' is not true or false; fix:"):
        Profile.load(path)
    plain = _fitted("qwen2").profile
    assert not plain.refusal_gate
    assert json.loads((plain.save(tmp_path / "q") / "profile.json").read_text())["format_version"] == 2


def test_cli_refusal_gate_option(capsys):
    assert cli.build_parser().parse_args(["fit"]).refusal_gate == "auto"
    assert cli.main(["fit", "--refusal-gate", "on", "--max-harmful-loss", "off"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusal gate needs decision rule v2; fix:" in err[0]
