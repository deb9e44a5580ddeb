"""``scans fit`` and ``scans info``: fit a profile and print it (``print_fit`` is shared with demo and bench)."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from ..errors import ScansError
from ..fit_config import (
    DEFAULT_CROSSFIT_SPLITS,
    DEFAULT_SHRINKAGE,
    HARMFUL_POLICIES,
    REFUSAL_GATES,
    FitConfig,
)
from . import common
from .common import add_model_args, add_profile_arg, batch_size_arg, parse_layers, shrinkage_arg


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    """``scans fit``: anchors, pool, layers, classifier and decision-rule options."""
    fit = sub.add_parser("fit", help="fit a steering profile (vectors, layers, classifier, threshold)")
    add_model_args(fit)
    fit.add_argument("--harmful", help="harmful anchor file (txt/csv/json/jsonl/parquet)")
    fit.add_argument("--harmless", help="harmless anchor file")
    fit.add_argument("--borderline", help="benign-but-scary anchor file (classifier negatives)")
    fit.add_argument("--text-column", default=None, help="column holding the prompt text")
    fit.add_argument("--n-fit", type=int, default=64, help="anchors per side for vectors/classifier")
    fit.add_argument(
        "--n-heldout",
        default="rest",
        help="more anchors per side, read to the end of the user's text only: classifier and calibration "
        "(default rest: every anchor not among the --n-fit, so the classifier reads the same anchors "
        "whatever --seed)",
    )
    fit.add_argument(
        "--calibration",
        choices=["crossfit", "heldout"],
        default="crossfit",
        help="crossfit (default): the classifier learns from all anchors and its threshold is calibrated "
        "on out-of-fold scores; heldout: the --n-heldout anchors only calibrate",
    )
    fit.add_argument(
        "--shrinkage",
        type=shrinkage_arg,
        default=DEFAULT_SHRINKAGE,
        help="covariance shrinkage of the classifier directions, 0-1 (1 = plain mean difference; "
        f"default {DEFAULT_SHRINKAGE:g}), or auto (chosen by cross-validated AUPRC)",
    )
    fit.add_argument(
        "--crossfit-splits",
        type=int,
        default=DEFAULT_CROSSFIT_SPLITS,
        help="k-fold splits of the classifier rows; each calibrates its own thresholds on its out-of-fold scores "
        f"and the profile keeps their mean (default {DEFAULT_CROSSFIT_SPLITS}; more: thresholds that move less "
        "with --seed, a slower fit)",
    )
    fit.add_argument(
        "--no-pack",
        action="store_true",
        help="on a CPU, do not run the fit's forward passes on prepacked float32 weights "
        "(packing: same math, usually faster, a second copy of the linear weights while fitting)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--max-harmful-loss",
        default="0.02",
        help="safety budget in (0, 1): at most this fraction of the harmful (and of the severe) pool prompts "
        "the model refuses would be steered, a split-conformal bound (default 0.02); off: the v1 rule (one threshold)",
    )
    fit.add_argument(
        "--guard",
        metavar="MODEL",
        default=None,
        help="read the verdicts' classifiers from this (usually larger) model instead: a local directory, "
        "hub id, .gguf file or embedded:qwen-1.5b; the answering model keeps its own steering and its "
        "refusals still set the budget (transformers backend; not yet for vLLM)",
    )
    fit.add_argument(
        "--refusal-gate",
        choices=REFUSAL_GATES,
        default="auto",
        help="steer a prompt judged benign only where the model would refuse it (its first answer token "
        "opens a refusal), leaving the answers it gives anyway untouched; auto: on with --guard (default)",
    )
    fit.add_argument(
        "--max-severe-loss",
        default=None,
        help="the severe class's own, tighter budget in (0, --max-harmful-loss], e.g. 0.01 "
        "(default: the same as --max-harmful-loss)",
    )
    fit.add_argument(
        "--budget-counts",
        choices=["refused", "all"],
        default="refused",
        help="harmful pool prompts the budget counts: refused (those the model refuses, read from its "
        "first answer token; default) or all",
    )
    fit.add_argument(
        "--pool",
        default=None,
        help="labelled prompt file (label column benign/harmful/severe) for the classifier "
        "(default: the shipped taxonomy anchors' dev split)",
    )
    fit.add_argument("--pool-label-column", default="label", help="label column of --pool")
    fit.add_argument(
        "--pool-size",
        default="320",
        help="pool prompts sampled into the classifier: every severe one, the rest spread over label x type "
        "(default 320; all: every one)",
    )
    fit.add_argument(
        "--pool-seed",
        type=int,
        default=0,
        help="seed of the pool sample (default 0; --seed moves the anchors' split and the cross-fitting folds, not the pool sample)",
    )
    fit.add_argument("--layers", default=None, help="steering layers, e.g. 10-17 (default: measured)")
    fit.add_argument(
        "--threshold", type=float, default=None, help="classifier threshold (default: calibrated)"
    )
    fit.add_argument("--alpha", type=float, default=None, help="steering strength in units of the layer norm")
    fit.add_argument(
        "--alpha-abs", type=float, default=None, help="absolute steering strength on unit vectors"
    )
    fit.add_argument(
        "--classifier",
        choices=["instruction", "contrast", "cosine"],
        default="instruction",
        help="instruction: harmful-vs-benign direction at the end of the user's text (default); "
        "contrast: the same on the paper's transitions; cosine: the paper's score",
    )
    fit.add_argument(
        "--target-recall", type=float, default=0.9, help="min recall on held-out harmful anchors"
    )
    fit.add_argument(
        "--harmful-policy",
        choices=list(HARMFUL_POLICIES),
        default="auto",
        help="prompts judged harmful: steer toward refusal only those both signals place beyond the "
        "false-refusal budget (budget), leave them unsteered (none), steer every one toward refusal "
        "(refuse, the paper); auto (default): budget where the pool can calibrate it, else none",
    )
    fit.add_argument(
        "--max-benign-loss",
        default="0.02",
        help="--harmful-policy budget: at most this fraction in (0, 1) of the benign pool prompts the model "
        "answers would be steered toward refusal, a split-conformal bound (default 0.02)",
    )
    fit.add_argument(
        "--compare-classifiers",
        action="store_true",
        help="also score held-out anchors with every classifier (recorded in the profile; slower)",
    )
    fit.add_argument(
        "--steer-window",
        type=int,
        default=1,
        help="positions steered from the instruction end (default 1: only the one that picks the "
        "opening; 0: every later position too, as in the paper)",
    )
    fit.add_argument("--probe", default="Sure", help="affirmative assistant prefix for the transition")
    fit.add_argument("--system", default=None, help="system prompt used for fitting and later use")
    fit.add_argument(
        "--batch-size", type=batch_size_arg, default=None, help="rows per batch, or auto (default)"
    )
    fit.add_argument("--out", default=None, help="profile directory (default: the model's cache slot)")


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    """``scans info``."""
    info = sub.add_parser("info", help="show a profile: layers, evidence, calibration")
    add_model_args(info)
    add_profile_arg(info)


def stage_total(entry: Any) -> float | None:
    """The sum of a recorded per-stage mapping (stage -> number); None where it is absent, empty
    or not numbers (a hand-edited profile), so a diagnostic line never stops ``scans info``."""
    if not isinstance(entry, dict) or not entry:
        return None
    values = list(entry.values())
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    try:
        total = float(sum(values))
    except OverflowError:  # an integer beyond any float
        return None
    return total if math.isfinite(total) else None


def print_fit(profile: Any, seconds: float | None, path: Any) -> None:
    """The fit's summary; ``seconds`` None (``scans info``) reads the fit's recorded stage times."""
    c = profile.calibration
    extra = profile.extra
    print(f"profile: {path}")
    if seconds is None:
        stages = stage_total(extra.get("timings_s"))
        took = f", fit stages {stages:.0f} s" if stages is not None else ""
    else:
        took = f", fit in {seconds:.0f} s"
    dtype = f", {extra['dtype']} on {extra.get('device')}" if extra.get("dtype") else ""
    print(f"model: {profile.model_name} (fingerprint {profile.fingerprint}){took}{dtype}")
    tokens, flops = stage_total(extra.get("forward_tokens")), stage_total(extra.get("forward_flops"))
    if tokens is not None and flops is not None:
        print(
            f"forward passes: {tokens:,.0f} token positions through the decoder blocks, "
            f"{flops / 1e12:.1f} TFLOP in their weights"
        )
    print(
        f"steering layers: {profile.steer_layers[0]}-{profile.steer_layers[-1]} ({extra.get('layers_source')})"
    )
    print(
        f"classification layers: {profile.cls_layers[0]}-{profile.cls_layers[-1]}, classifier: {profile.classifier}"
        + (
            f" of the guard model {profile.guard['name']} (fingerprint {profile.guard['fingerprint']})"
            if profile.guard
            else ""
        )
    )
    mode = "x layer norm" if profile.alpha_mode == "relative" else "absolute"
    refuse_t = getattr(profile, "refuse_threshold", None)
    if refuse_t is not None:
        toward = f"steered toward refusal where both signals > {refuse_t:.4f} (false-refusal budget)"
    else:
        toward = "steered toward refusal" if profile.harmful_sign > 0 else "left unsteered"
    print(f"alpha: {profile.alpha} ({mode}); prompts judged harmful: {toward}")
    shrink = (extra.get("shrinkage") or {}).get(profile.classifier)
    print(
        f"threshold: {profile.threshold:.4f}"
        + (f", direction shrinkage {shrink:g}" if shrink is not None else "")
    )
    how = "cross-fitted (out-of-fold)" if extra.get("calibration_mode") == "crossfit" else "held-out"
    print(
        f"{how} calibration ({c['n_harmful']} harmful, {c['n_harmless']} benign): accuracy {c['accuracy']:.3f}, "
        f"balanced accuracy {c['balanced_accuracy']:.3f}, AUPRC {c['auprc']:.3f}, "
        f"precision {c['precision']:.3f}, recall {c['recall']:.3f}"
    )
    print_decision(profile)


FEW_BELOW = 5  # a steer threshold resting on this few calibration scores gets a note


def ordinal(k: int) -> str:
    """1st, 2nd, 3rd, 4th ..."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def print_decision(profile: Any) -> None:
    """The decision rule, its safety budget and what it steers (out of fold, on the pool)."""
    d = profile.decision
    if profile.steer_threshold is None or not d:
        print("decision rule: v1 (harmful at or above the threshold, every other prompt steered away)")
        return
    b = d["budget"]["harmful"]
    sev = d["budget"].get("severe")
    severe_budget = d.get("max_severe_loss")
    budgets = f"{profile.max_harmful_loss:g}" + (
        f" (severe {severe_budget:g})"
        if severe_budget is not None and severe_budget != profile.max_harmful_loss
        else ""
    )
    below = min(profile.steer_threshold, profile.threshold)  # s(q) at or above the threshold: harmful
    print(
        f"decision rule: v2, safety budget {budgets}: steered only when s(q) < "
        f"{below:.4f} and the instruction-end score < {profile.inst_threshold:.4f}"
        + (" (s(q) capped by the harmful threshold)" if below < profile.steer_threshold else "")
    )
    if getattr(profile, "refusal_gate", False):  # also takes profile-like objects
        print("  refusal gate: only the prompts the model would refuse (first answer token) are steered")
    refused = b.get("counted") == "refused"
    which = "harmful prompt the model refuses" if refused else "harmful prompt"
    print(
        f"  guarantee (split conformal): a {which}, exchangeable with the {b['n']} pool ones, is steered "
        f"with probability <= {b['guaranteed']:.4f}"
        + (f", a severe one (of {sev['n']}) <= {sev['guaranteed']:.4f}" if sev else "")
        + f"; pool misses {b['below']}/{b['n']} (95% upper bound {b['upper_bound']:.4f})"
    )
    per_split = d.get("split_thresholds") or []  # one per cross-fitting split
    if len(per_split) > 1:
        print(
            f"  calibrated on each of {len(per_split)} cross-fitting splits' out-of-fold scores: the steer threshold is the "
            f"mean of theirs (range {min(per_split):.4f} to {max(per_split):.4f})"
        )
    name, bind = min(d["budget"].items(), key=lambda kv: kv[1].get("threshold", float("inf")))
    if bind.get("k") is not None and bind["k"] <= FEW_BELOW and len(per_split) <= 1:
        print(
            f"  note: the steer threshold is the {ordinal(bind['k'])} lowest of {bind['n']} {name} calibration "
            f"scores, so it moves with --seed; more {name} pool prompts"
            + (" that the model refuses" if bind.get("counted") == "refused" else "")
            + " (--pool-size all, or --pool FILE) or more --crossfit-splits steady it"
        )
    if "refused" in d:
        r = d["refused"]
        counts = {name: c.get("counted") for name, c in d["budget"].items()}
        if len(set(counts.values())) == 1:
            what = "those" if refused else "all of them (too few refused)"
        else:  # each class counts its own way
            what = " and ".join(
                f"the refused {name} ones"
                if how == "refused"
                else f"all {name} ones (too few refused for its budget)"
                for name, how in counts.items()
            )
        print(
            f"  the model refuses {r['harmful']} of the {r['of_harmful']} harmful pool prompts and {r['severe']} of "
            f"the {r['of_severe']} severe ones (its first answer token); the budget counts {what}"
        )
    steered = d.get("steered_fraction", {})
    print(
        "  out of fold on the pool: steered "
        + ", ".join(f"{k} {v:.1%}" for k, v in steered.items())
        + f" (pool {d['pool']['size']} prompts, {d['pool']['severe']} severe)"
    )
    toward = d.get("toward_refusal")
    if toward:
        tb, frac = toward["budget"], toward["steered_fraction"]
        print(
            f"  toward refusal (false-refusal budget {toward['max_benign_loss']:g}): a benign prompt the model "
            f"answers, exchangeable with the {tb['n']} pool ones, is steered toward refusal with probability "
            f"<= {tb['guaranteed']:.4f}; pool: {tb['above']}/{tb['n']} over the threshold (95% upper bound "
            f"{tb['upper_bound']:.4f}); out of fold, answered harmful {frac['harmful_answered']:.1%}, "
            f"answered benign {frac['benign_answered']:.1%}"
        )


def cmd_fit(args: argparse.Namespace) -> int:
    from ..datafiles import read_prompts

    files = {k: getattr(args, k) for k in ("harmful", "harmless", "borderline")}
    if bool(files["harmful"]) != bool(files["harmless"]):
        raise ScansError("--harmful and --harmless go together; fix: pass both files or neither")
    loaded = {
        k: read_prompts(v, text_column=args.text_column).prompts if v else None for k, v in files.items()
    }
    config = FitConfig.from_cli(args, parse_layers(args.layers))  # bad input fails before the model loads
    guard = getattr(args, "guard", None)
    config.require_guard_options(guard)  # before the models load
    scans = common.load_scans(args, need_profile=False)
    start = time.time()
    profile = scans.fit(
        loaded["harmful"],
        loaded["harmless"],
        loaded["borderline"],
        config,
        progress=not args.quiet,
        guard=guard,
    )
    path = scans.save(args.out)
    print_fit(profile, time.time() - start, path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    scans = common.load_scans(args)
    p = scans.profile
    print_fit(p, None, getattr(args, "profile", None) or scans.default_profile_path)
    print("\nlayer  norm    lens  band-effect  top tokens of the refusal vector (logit lens)")
    for e in p.layer_evidence:
        mark = "*" if e["layer"] in p.steer_layers else " "
        effect = "" if e.get("band_effect") is None else f"{e['band_effect']:.2f}"
        print(
            f"{mark}{e['layer']:4d} {e['norm']:6.1f} {e['lens_score']:6.2f} {effect:>12s}  {e['top_tokens'][:6]}"
        )
    return 0
