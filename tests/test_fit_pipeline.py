"""The fit as a pipeline: ``FitConfig`` (checked once, for the API and the CLI), the anchors'
split and activations, and the typed diagnostics stored as the profile's ``extra``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import BORDERLINE, FIT_KWARGS, HARMFUL, HARMLESS, _fitted, _tiny, make_scans
from scans.activations import collect
from scans.calibration import calibrate
from scans.classifier import fit_classifier
from scans.cli import build_parser
from scans.errors import ScansError
from scans.fit_config import DEFAULT_ALPHA, DEFAULT_CROSSFIT_SPLITS, DEFAULT_SHRINKAGE, FitConfig
from scans.fit_data import build_anchors, collect_activations
from scans.fit_diagnostics import FitDiagnostics
from scans.pool import PoolItem

OPTIONS = {k: v for k, v in FIT_KWARGS.items() if k != "progress"}


def test_defaults_are_the_cli_defaults():
    """`scans fit` with no flags and `Scans.fit()` fit with the same options."""
    assert FitConfig.from_cli(build_parser().parse_args(["fit"])) == FitConfig()
    assert FitConfig().alpha == DEFAULT_ALPHA and FitConfig().max_harmful_loss == 0.02


def test_cli_flags_map_to_the_fields():
    args = build_parser().parse_args(
        ["fit", "--alpha-abs", "2", "--steer-window", "0", "--max-harmful-loss", "off", "--pool-size", "all",
         "--no-pack", "--shrinkage", "0.3", "--calibration", "heldout", "--n-fit", "8"]
    )  # fmt: skip
    config = FitConfig.from_cli(args, [3, 4])
    assert (config.alpha, config.alpha_mode, config.steer_window) == (2.0, "absolute", None)
    assert config.max_harmful_loss is None and config.pool_size is None and not config.pack_linears
    assert (config.shrinkage, config.calibration, config.n_fit, config.layers) == (0.3, "heldout", 8, (3, 4))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--alpha", "0.1", "--alpha-abs", "1"], "--alpha-abs"),
        (["--steer-window", "-1"], "--steer-window"),
        (["--max-harmful-loss", "2"], "--max-harmful-loss"),
        (["--pool-size", "some"], "--pool-size"),
        (["--n-fit", "1"], "--n-fit"),
        (["--n-fit", "2", "--calibration", "heldout"], "4-fold"),
    ],
)
def test_cli_checks_are_one_line(flags, words):
    with pytest.raises(ScansError) as info:
        FitConfig.from_cli(build_parser().parse_args(["fit", *flags]))
    assert words in str(info.value) and "fix:" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [("max_harmful_loss", 1.0), ("pool_size", -1), ("classifier", "knn"), ("calibration", "cv"),
     ("shrinkage", 1.5), ("harmful_policy", "maybe"), ("alpha_mode", "loud"), ("steer_window", 0),
     ("batch_size", 0), ("n_heldout", 1)],
)  # fmt: skip
def test_config_checks_each_field_once(field, value):
    with pytest.raises(ScansError) as info:
        FitConfig(**{field: value})
    assert "fix:" in str(info.value) and "\n" not in str(info.value)


def test_config_is_frozen_and_holds_tuples():
    pool = [PoolItem("a", False, False)]
    config = FitConfig(layers=[2, 3], pool=pool)
    assert config.layers == (2, 3) and config.pool == (pool[0],)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_fit = 3  # type: ignore[misc]


def test_unknown_option_is_named():
    t = _tiny("qwen2")
    with pytest.raises(ScansError, match=r"unknown fit option 'n_fits'.*fix:.*n_fit"):
        make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, n_fits=3)


def test_a_config_and_options_fit_the_same_profile(fitted):
    t = _tiny("qwen2")
    config = FitConfig(**{**OPTIONS, "n_fit": 5})
    p = make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, config, progress=False, n_fit=6)
    assert torch.equal(p.vectors, fitted.profile.vectors) and p.threshold == fitted.profile.threshold
    assert p.steer_threshold == fitted.profile.steer_threshold
    assert {k: v for k, v in p.extra.items() if k != "timings_s"} == {
        k: v for k, v in fitted.profile.extra.items() if k != "timings_s"
    }


def test_anchor_set_splits_and_labels():
    pool = [PoolItem(f"p{i}", i % 2 == 0, i % 4 == 0) for i in range(20)]
    config = FitConfig(**{**OPTIONS, "pool": pool, "pool_size": 18})  # every severe one kept, 13 others
    a = build_anchors(HARMFUL, HARMLESS, BORDERLINE, config)
    assert (len(a.harmful), len(a.held_harmful), len(a.borderline), len(a.held_borderline)) == (6, 4, 6, 4)
    assert not set(a.harmful) & set(a.held_harmful) and set(a.harmful) | set(a.held_harmful) <= set(HARMFUL)
    assert len(a.pool) == 18 and sum(i.severe for i in a.pool) == 5
    held = a.held_prompts()
    assert len(held) == len(a.held_labels) == len(a.held_groups) == len(a.held_severe) == 12 + 18
    assert list(a.held_labels[:4]) == [True] * 4 and not a.held_labels[4:12].any()
    groups = {"pool-severe": (True, True), "pool-harmful": (True, False), "pool-benign": (False, False)}
    assert [groups[g] for g in a.held_groups[12:]] == [(i.harmful, i.severe) for i in a.pool]
    assert len(a.fit_labels) == len(a.fit_groups) == 18
    record = a.record(n_layer_eval=4)
    assert record["n_fit"] == 6 and record["n_heldout"] == 4 and record["n_heldout_borderline"] == 4
    assert len(record["used_prompt_keys"]) == 30 + 18


def test_a_severe_budget_the_pool_cannot_calibrate_stops_before_any_forward_pass():
    pool = [PoolItem(f"p{i}", i % 2 == 0, i % 4 == 0) for i in range(40)]  # 10 severe
    options = {**OPTIONS, "pool": pool, "pool_size": None, "max_harmful_loss": 0.2}
    a = build_anchors(HARMFUL, HARMLESS, BORDERLINE, FitConfig(**options, max_severe_loss=0.1))  # needs 9
    assert sum(i.severe for i in a.pool) == 10
    with pytest.raises(
        ScansError, match=r"10 severe prompts .* 0.05 severe budget \(need 19\); fix: .*--max-severe-loss"
    ):
        build_anchors(HARMFUL, HARMLESS, BORDERLINE, FitConfig(**options, max_severe_loss=0.05))


def test_heldout_rest_reads_every_anchor_whatever_the_seed():
    """``n_heldout=None`` (the default): every anchor is fit or held out, so the classifier's rows
    are the same set at any seed; only which ones build the vectors moves."""
    sets = []
    for seed in (0, 1, 2):
        a = build_anchors(
            HARMFUL, HARMLESS, BORDERLINE, FitConfig(**{**OPTIONS, "n_heldout": None, "seed": seed})
        )
        assert sorted(a.harmful + a.held_harmful) == sorted(HARMFUL)
        assert sorted(a.harmless + a.held_harmless) == sorted(HARMLESS)
        assert sorted(a.borderline + a.held_borderline) == sorted(BORDERLINE)
        assert (
            len(a.harmful) == OPTIONS["n_fit"]
            and a.record(n_layer_eval=4)["n_heldout"] == len(HARMFUL) - OPTIONS["n_fit"]
        )
        sets.append(tuple(a.harmful))
    assert len(set(sets)) > 1  # the seed still shuffles the fit part
    with pytest.raises(ScansError, match="need 11 to fit \\+ at least 2 held out"):
        build_anchors(HARMFUL, HARMLESS, BORDERLINE, FitConfig(**{**OPTIONS, "n_heldout": None, "n_fit": 11}))


def test_collected_activations_are_each_groups_own():
    """The stitched groups hold the same rows as collecting each group on its own."""
    t = _tiny("qwen2")
    config = FitConfig(**OPTIONS)
    a = build_anchors(HARMFUL, HARMLESS, BORDERLINE, config)
    acts = collect_activations(
        t.model, t.tokenizer, a, config, batch_size=8, layers_path=None, progress=False
    )
    assert acts.n_band == 4 and acts.band_harmful.batch.input_ids.shape[0] == 4
    for group, prompts in ((acts.harmful, a.harmful), (acts.harmless, a.harmless)):
        direct = collect(t.model, t.tokenizer, prompts, probe="Sure", progress=False)
        for name in ("inst", "probe", "uend"):
            assert torch.allclose(getattr(group, name), direct[name], atol=1e-4), name
    direct = collect(t.model, t.tokenizer, a.held_prompts(), progress=False)
    assert acts.held.probe is None and torch.allclose(acts.held.inst, direct["inst"], atol=1e-4)
    fit = acts.fit
    assert fit.uend.shape[0] == 18 and fit.probe is None  # the borderline rows have no probe read
    assert torch.equal(fit.inst[:6], acts.harmful.inst) and torch.equal(fit.inst[12:], acts.borderline.inst)


def test_diagnostics_round_trip_the_extra_keys(fitted):
    extra = fitted.profile.extra
    diagnostics = FitDiagnostics.from_extra(extra)
    assert diagnostics.to_extra() == extra
    assert diagnostics.layers_source == extra["layers_source"] and diagnostics.bands
    assert diagnostics.heldout_auprc["instruction"] == extra["heldout_auprc_instruction"]
    assert not diagnostics.other
    # the fit's dtype and device: a profile fitted in bf16 is not the fp32 one
    assert (diagnostics.dtype, diagnostics.device) == ("float32", "cpu")


def test_diagnostics_read_an_older_extra():
    """A profile from an older version: missing entries stay empty, unknown ones are kept."""
    old = {
        "bands": [{"start": 1, "end": 2, "drop": 0.5, "drift": 0.25}],
        "layers_source": "user",
        "legacy": 3,
    }
    d = FitDiagnostics.from_extra(old)
    assert d.bands[0].score == 0.25 and d.bands[0].anchors == 0 and d.other == {"legacy": 3}
    assert d.timings_s == {} and d.vector_separation_auprc is None and d.dtype is None
    assert "dtype" not in d.to_extra()
    assert d.to_extra()["legacy"] == 3


def test_profile_diagnostics_view():
    p = _fitted("qwen2").profile
    assert p.diagnostics.calibration_mode == "crossfit"
    assert p.diagnostics.shrinkage == p.extra["shrinkage"]


def test_classifier_and_threshold_restated(fitted):
    """Step 3 restated without the pipeline: every anchor collected in one pass, the
    instruction classifier cross-fitted on the fit + held-out rows, the threshold calibrated
    on each split's out-of-fold scores."""
    t = _tiny("qwen2")
    p = fitted.profile
    a = build_anchors(HARMFUL, HARMLESS, BORDERLINE, FitConfig(**OPTIONS))
    rows = [*a.harmful, *a.harmless, *a.borderline, *a.held_prompts()]
    uend = collect(t.model, t.tokenizer, rows, progress=False)["uend"]
    labels = np.r_[a.fit_labels, a.held_labels]

    fit = fit_classifier(
        "instruction", uend, labels, p.cls_layers, DEFAULT_SHRINKAGE, seed=0, splits=DEFAULT_CROSSFIT_SPLITS
    )
    assert fit.shrinkage == p.extra["shrinkage"]["instruction"]
    assert torch.allclose(fit.tensors["contrast"], p.contrast, atol=1e-4)
    # the threshold: the mean over the cross-fitting splits of each split's calibrated threshold
    per_split = [calibrate(s, labels, 0.9).threshold for s in fit.split_scores]
    assert len(per_split) == DEFAULT_CROSSFIT_SPLITS
    assert np.mean(per_split) == pytest.approx(p.threshold, abs=1e-4)


def test_the_pool_sample_follows_pool_seed_not_seed():
    """``--seed`` moves the anchors' split and the folds; the pool sample has its own seed."""

    def pool_of(**kw):
        return [i.prompt for i in build_anchors(None, None, None, FitConfig(pool_size=200, **kw)).pool]

    assert pool_of(seed=0) == pool_of(seed=1) == pool_of(seed=2, pool_seed=0)
    assert pool_of(pool_seed=1) != pool_of(pool_seed=0)


def test_token_meter_counts_positions_through_the_first_block():
    """Every position (padding included) entering the first decoder block is counted, also one
    cached step at a time; FLOPs are 2 x the blocks' parameters per position."""
    from scans.fit import TokenMeter
    from scans.kvcache import new_cache

    t = _tiny("llama")
    meter = TokenMeter(t.model)
    params = sum(p.numel() for layer in t.model.model.layers for p in layer.parameters())
    ids = torch.randint(3, 60, (3, 7))
    with torch.no_grad():
        t.model(input_ids=ids)  # not counting yet
        with meter.counting():
            cache = new_cache(t.model)
            t.model(input_ids=ids, past_key_values=cache, use_cache=True)
            t.model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
        t.model(input_ids=ids)  # the hook is gone
    assert meter.tokens == 3 * 7 + 3 and meter.flops == 2.0 * params * (3 * 7 + 3)
    assert not t.model.model.layers[0]._forward_pre_hooks
    # hidden states passed by keyword count the same; a call it cannot read counts nothing
    meter._count(t.model.model.layers[0], (), {"hidden_states": torch.zeros(2, 5, 32)})
    meter._count(t.model.model.layers[0], (), {})
    assert meter.tokens == 3 * 7 + 3 + 2 * 5


def test_the_fit_records_what_its_forward_passes_ran():
    """The stages' token counts add up to what a meter around the whole fit counts, and only
    the stages that run the model have any."""
    from scans.fit import TokenMeter

    t = _tiny("qwen2")
    meter = TokenMeter(t.model)
    with meter.counting():
        p = make_scans(t.model, t.tokenizer).fit(HARMFUL, HARMLESS, BORDERLINE, progress=False, **OPTIONS)
    tokens, flops = p.extra["forward_tokens"], p.extra["forward_flops"]
    assert sum(tokens.values()) == meter.tokens and sum(flops.values()) == pytest.approx(meter.flops)
    assert set(tokens) == {"anchors forward", "layer bands (refusal opening, band effects)"}
    assert all(n > 0 for n in tokens.values())
    assert FitDiagnostics.from_extra(p.extra).forward_tokens == tokens


def test_info_prints_the_recorded_totals_and_skips_unreadable_ones(capsys):
    """`scans info` sums the recorded stage times and forward counts; a hand-edited profile whose
    entries are not numbers loses those lines, never the rest of the summary."""
    import copy

    from scans.cli.fit import print_fit

    p = copy.deepcopy(_fitted("qwen2").profile)
    p.extra["forward_tokens"], p.extra["forward_flops"] = {"a": 1500, "b": 500}, {"a": 3e12, "b": 1e12}
    print_fit(p, None, "P")
    out = capsys.readouterr().out
    assert "fit stages" in out and "forward passes: 2,000 token positions" in out and "4.0 TFLOP" in out
    for bad in ("x", {"a": "b"}, {"a": True}, {}, {"a": 10**400}, {"a": float("nan")}):
        p.extra["timings_s"] = p.extra["forward_tokens"] = bad
        print_fit(p, None, "P")
        out = capsys.readouterr().out
        assert "fit stages" not in out and "forward passes" not in out and "decision rule" in out
