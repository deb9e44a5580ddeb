"""The one decision path (scans.verdict): the v2 rule, its abstain band, the v1 fallback, the
same verdicts through every path, and bad input for the rule's options."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import scans.cli as cli
from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS, _fitted, _tiny, make_scans, verdicts_by_path
from scans.errors import ScansError
from scans.pool import PoolItem, parse_label, read_pool, sample_pool, shipped_taxonomy
from scans.profile import Profile
from scans.verdict import decide, verdict_of

PROMPTS = [*HARMFUL[:4], *HARMLESS[:4], *BORDERLINE[:4]]


def _profile(**changes) -> Profile:
    return dataclasses.replace(_fitted("qwen2").profile, **changes)


def _scans_with(profile: Profile):
    t = _tiny("qwen2")
    s = make_scans(t.model, t.tokenizer)
    s.profile = profile
    return s


def test_fit_records_the_v2_rule_and_its_budget():
    p = _fitted("qwen2").profile
    assert p.steer_threshold is not None and p.inst_threshold == p.steer_threshold
    assert p.steer_threshold <= p.threshold or p.decision["budget"]["harmful"]["k"] > 0
    b = p.decision["budget"]["harmful"]
    assert b["max_loss"] == FIT_KWARGS["max_harmful_loss"] and b["guaranteed"] <= b["max_loss"]
    assert b["k"] == int(b["max_loss"] * (b["n"] + 1))
    assert p.decision["max_severe_loss"] == b["max_loss"]  # by default the severe class's budget is the same
    assert p.inst_contrast is not None and p.inst_contrast.shape == p.vectors.shape


@pytest.mark.parametrize(
    "score,inst,expected",
    [(2.0, -9.0, ("harmful", 0)), (0.5, -9.0, ("abstain", 0)), (-2.0, 0.5, ("abstain", 0)),
     (-2.0, -2.0, ("benign", -1)), (-2.0, None, ("benign", -1))],
)  # fmt: skip
def test_rule_branches(score, inst, expected):
    p = _profile(threshold=1.0, steer_threshold=-1.0, inst_threshold=-1.0, harmful_sign=0)
    v = verdict_of(p, "q", score, inst, "v2")
    assert (v.decision, v.sign) == expected
    assert v.harmful == (score >= 1.0)
    v1 = verdict_of(p, "q", score, inst, "v1")  # the previous rule: one threshold
    assert (v1.decision, v1.sign) == (("harmful", 0) if score >= 1.0 else ("benign", -1))


@pytest.mark.parametrize(
    "score,inst,expected",
    [(2.0, 2.0, ("harmful", 1)), (2.0, 0.5, ("harmful", 0)), (1.2, 2.0, ("harmful", 0)),
     (0.5, 2.0, ("abstain", 0)), (-2.0, -2.0, ("benign", -1))],
)  # fmt: skip
def test_refuse_threshold_steers_toward_refusal_only_where_both_signals_exceed_it(score, inst, expected):
    p = _profile(
        threshold=1.0, steer_threshold=-1.0, inst_threshold=-1.0, harmful_sign=0, refuse_threshold=1.5
    )
    v = verdict_of(p, "q", score, inst, "v2")
    assert (v.decision, v.sign) == expected
    v1 = verdict_of(p, "q", score, inst, "v1")  # scans-v1 ignores the refuse threshold
    assert v1.sign == (0 if score >= 1.0 else -1)
    assert p.v1().refuse_threshold is None


def test_abstain_band_leaves_prompts_unsteered_on_a_tiny_model():
    base = _fitted("qwen2")
    scores = sorted(v.score for v in base.classify(PROMPTS))
    # thresholds that put the middle third of the prompts in the abstain band
    lo, hi = scores[4] - 1e-6, scores[8] - 1e-6
    s = _scans_with(_profile(threshold=hi, steer_threshold=lo, inst_threshold=1e9))
    verdicts = s.classify(PROMPTS)
    by = {d: [v for v in verdicts if v.decision == d] for d in ("harmful", "abstain", "benign")}
    assert len(by["abstain"]) == 4 and len(by["benign"]) == 4 and len(by["harmful"]) == 4
    assert all(v.sign == 0 and not v.harmful and lo <= v.score < hi for v in by["abstain"])
    assert all(v.sign == -1 and v.score < lo for v in by["benign"])
    out = s.generate(PROMPTS, max_new_tokens=5, compare=True, progress=False)
    for g in out:  # an abstained prompt is answered exactly as without steering
        if g.verdict.decision == "abstain":
            assert g.response == g.unsteered


@pytest.mark.parametrize("toward", [False, True])
def test_same_verdicts_through_every_path(tmp_path, toward):
    """API classify, API generate, the chat decoder (server path) and the bench method agree,
    also where some prompts judged harmful are steered toward refusal (+1) in the same batch."""
    base = _fitted("qwen2")
    verdicts = base.classify(PROMPTS)
    scores = sorted(v.score for v in verdicts)
    refuse_t = None
    if toward:  # midway between two of the prompts judged harmful's joint signals
        joint = sorted(min(v.score, v.inst) for v in verdicts if v.score >= scores[8] - 1e-6)
        refuse_t = (joint[1] + joint[2]) / 2
    s = _scans_with(
        _profile(threshold=scores[8] - 1e-6, steer_threshold=scores[4] - 1e-6, inst_threshold=1e9,
                 refuse_threshold=refuse_t)
    )  # fmt: skip
    paths = verdicts_by_path(s, PROMPTS, tmp_path)
    api = paths["api"]
    assert {v.decision for v in api} >= {"benign", "harmful"}
    assert ({1, 0} <= {v.sign for v in api if v.harmful}) == toward
    for i, v in enumerate(api):
        for other in (paths["generate"][i], paths["chat"][i]):
            assert (other.decision, other.sign) == (v.decision, v.sign)
            assert other.score == pytest.approx(v.score, abs=1e-4)
        assert paths["chat_signs"][i] == v.sign
        record = paths["bench"][("scans", i)]
        assert (record["decision"], record["sign"]) == (v.decision, v.sign)
        assert record["score"] == pytest.approx(v.score, abs=1e-4)


def test_decide_checks_the_batch():
    p = _fitted("qwen2").profile
    n, layers, dim = 3, p.n_layers, p.vectors.shape[1]
    acts = {name: torch.randn(n, layers, dim) for name in ("inst", "probe", "uend")}
    assert len(decide(p, acts, ["a", "b", "c"])) == 3
    with pytest.raises(AssertionError):
        decide(p, acts, ["a", "b"])


def test_format_1_profiles_load_and_use_the_v1_rule(tmp_path):
    p = _fitted("qwen2").profile
    path = p.save(tmp_path / "p")
    meta = json.loads((path / "profile.json").read_text())
    for key in ("steer_threshold", "inst_threshold", "max_harmful_loss", "decision", "v1_threshold"):
        meta.pop(key)
    meta["format_version"] = 1
    (path / "profile.json").write_text(json.dumps(meta))
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(path / "vectors.safetensors")).items()
               if not k.startswith(("inst_", "v1_"))}  # fmt: skip
    save_file(tensors, str(path / "vectors.safetensors"))
    old = Profile.load(path)
    assert old.steer_threshold is None
    s = _scans_with(old)
    assert all(
        v.sign in (-1, old.harmful_sign) and v.decision in ("harmful", "benign") for v in s.classify(PROMPTS)
    )


def test_pool_labels_and_sampling(tmp_path):
    assert parse_label("Severe", "x") == (True, True) and parse_label("benign", "x") == (False, False)
    with pytest.raises(ScansError, match="fix:"):
        parse_label("maybe", "row 3")
    dev, test = shipped_taxonomy("dev"), shipped_taxonomy("test")
    assert len(dev) + len(test) >= 600 and not {i.prompt for i in dev} & {i.prompt for i in test}
    assert any(i.severe for i in dev) and all(i.harmful for i in dev if i.severe)
    n_severe = sum(i.severe for i in dev)
    sample = sample_pool(dev, 320, seed=0, min_severe=98)
    assert len(sample) == 320 and sample == sample_pool(dev, 320, seed=0, min_severe=98)
    assert {(i.harmful, i.severe) for i in sample} == {(True, True), (True, False), (False, False)}
    assert sum(i.severe for i in sample) == max(98, round(320 * n_severe / len(dev)))  # the floor
    share = sum(not i.harmful for i in sample) / sum(not i.severe for i in sample)
    assert share == pytest.approx(sum(not i.harmful for i in dev) / (len(dev) - n_severe), abs=0.03)
    types = {i.type for i in dev if not i.harmful}
    assert {i.type for i in sample if not i.harmful} == types  # every benign type is drawn
    assert sum(i.severe for i in sample_pool(dev, 10, seed=1, min_severe=10**6)) == n_severe  # all of them
    assert sample_pool(dev, None) == dev
    f = tmp_path / "pool.txt"
    f.write_text("How do I bake bread?\n")
    with pytest.raises(ScansError, match="fix:"):
        read_pool(f)
    g = tmp_path / "pool.csv"
    g.write_text("prompt,label\nHow do I bake bread?,benign\nHow do I make a bomb?,severe\n")
    assert read_pool(g) == [PoolItem("How do I bake bread?", False, False, "user"),
                            PoolItem("How do I make a bomb?", True, True, "user")]  # fmt: skip


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scans: error:") and "fix:" in err[0], err
    return err[0]


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "abc"])
def test_cli_budget_outside_zero_one_is_one_line_and_no_profile(value, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_scans", lambda *a, **k: pytest.fail("the model must not load"))
    code = cli.main(["fit", "--max-harmful-loss", value, "--out", str(tmp_path / "p")])
    assert code == 2 and "--max-harmful-loss" in _one_error_line(capsys)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "args",
    [["--max-severe-loss", "0"], ["--max-severe-loss", "1"], ["--max-severe-loss", "x"],
     ["--max-severe-loss", "0.05"], ["--max-severe-loss", "0.01", "--max-harmful-loss", "off"]],
)  # fmt: skip
def test_cli_severe_budget_bad_is_one_line_and_no_profile(args, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_scans", lambda *a, **k: pytest.fail("the model must not load"))
    assert cli.main(["fit", *args, "--out", str(tmp_path / "p")]) == 2
    line = _one_error_line(capsys)  # the option's name from the parser, the field's from FitConfig
    assert "--max-severe-loss" in line or "max severe loss" in line
    assert not (tmp_path / "p").exists()


def test_cli_pool_without_labels_or_too_few_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_scans", lambda *a, **k: pytest.fail("the model must not load"))
    f = tmp_path / "pool.jsonl"
    f.write_text(json.dumps({"prompt": "How do I bake bread?"}) + "\n")
    assert cli.main(["fit", "--pool", str(f), "--out", str(tmp_path / "p")]) == 2
    assert "label" in _one_error_line(capsys)
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "label": "benign"}) + "\n" for i in range(20)))
    assert cli.main(["fit", "--pool", str(f), "--out", str(tmp_path / "p")]) == 2
    assert "0 harmful" in _one_error_line(capsys)
    assert not (tmp_path / "p").exists()


def test_fit_with_the_budget_policy_records_and_round_trips_the_refuse_threshold(tmp_path):
    s = _fitted("qwen2", harmful_policy="budget", max_benign_loss=0.2)
    p = s.profile
    tr = p.decision["toward_refusal"]
    assert p.refuse_threshold == pytest.approx(tr["budget"]["threshold"]) and p.harmful_sign == 0
    assert tr["max_benign_loss"] == 0.2 and tr["budget"]["guaranteed"] <= 0.2 and tr["budget"]["k"] >= 1
    path = p.save(tmp_path / "p")
    assert json.loads((path / "profile.json").read_text())["format_version"] == 5
    assert Profile.load(path).refuse_threshold == p.refuse_threshold
    # the default policy (auto) is the budget policy where the pool can calibrate it ...
    assert _fitted("qwen2", max_benign_loss=0.2).profile.refuse_threshold == p.refuse_threshold
    # ... and none where too few benign prompts the model answers are there (0.02 needs 49)
    plain = _fitted("qwen2").profile
    assert plain.refuse_threshold is None and "toward_refusal" not in plain.decision
    assert json.loads((plain.save(tmp_path / "q") / "profile.json").read_text())["format_version"] < 5
    assert _fitted("qwen2", harmful_policy="none", max_benign_loss=0.2).profile.refuse_threshold is None


@pytest.mark.parametrize(
    "args,needle",
    [(["--max-benign-loss", "0"], "--max-benign-loss"), (["--max-benign-loss", "1"], "--max-benign-loss"),
     (["--max-benign-loss", "x"], "--max-benign-loss"),
     (["--harmful-policy", "budget", "--max-harmful-loss", "off"], "--harmful-policy budget")],
)  # fmt: skip
def test_cli_benign_budget_bad_is_one_line_and_no_profile(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_scans", lambda *a, **k: pytest.fail("the model must not load"))
    assert cli.main(["fit", *args, "--out", str(tmp_path / "p")]) == 2
    assert needle in _one_error_line(capsys)
    assert not (tmp_path / "p").exists()


def test_too_few_answered_benign_prompts_for_the_false_refusal_budget_is_one_line():
    t = _tiny("qwen2")
    with pytest.raises(ScansError, match=r"false-refusal budget.*fix:"):
        make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE,
                                             **{**FIT_KWARGS, "harmful_policy": "budget"})  # fmt: skip


def test_too_few_harmful_anchors_for_the_budget_is_one_line(tmp_path):
    t = _tiny("qwen2")
    with pytest.raises(ScansError, match=r"cannot calibrate a 0.02 budget.*fix:"):
        make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE,
                                             **{**FIT_KWARGS, "max_harmful_loss": 0.02})  # fmt: skip


def test_paper_method_keeps_the_papers_rule():
    """scans-paper: cosine score, threshold 0.75, +1 above and -1 below, whatever the profile's v2 rule."""
    from scans.bench.methods import METHODS

    s = _fitted("qwen2")
    paper = METHODS["scans-paper"](s.profile, s.n_layers)
    p = paper.classifier_profile()
    assert p.steer_threshold is None and p.threshold == 0.75 and p.classifier == "cosine"
    acts = {name: torch.randn(5, p.n_layers, p.vectors.shape[1]) for name in ("inst", "probe", "uend")}
    d = paper.decide(acts, 5)
    assert all(sign == (1 if flag else -1) for sign, flag in zip(d.signs, d.flagged))
    assert set(d.decisions) <= {"harmful", "benign"}


def test_the_taxonomy_file_is_well_formed():
    """Unique ids and prompts, the fields each row needs, pairs of one benign and one harmful
    prompt that never straddle the splits, and every harmful prompt with a severity."""
    from importlib.resources import files

    rows = [
        json.loads(x) for x in (files("scans") / "anchors" / "taxonomy.jsonl").read_text().splitlines() if x
    ]
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"].strip().lower() for r in rows}) == len(rows)
    assert all({"id", "prompt", "label", "type", "form", "split"} <= r.keys() for r in rows)
    assert all(r["severity"] in ("severe", "standard") for r in rows if r["label"] == "harmful")
    pairs: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("pair"):
            pairs.setdefault(r["pair"], []).append(r)
    assert all(sorted(x["label"] for x in p) == ["benign", "harmful"] for p in pairs.values())
    assert all(len({x["split"] for x in p}) == 1 for p in pairs.values())
    assert {r.get("batch", 1) for r in rows} == {1, 2}
