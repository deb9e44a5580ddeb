"""The Python API: ``Scans.fit / classify / generate / save / load``."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .activations import collect
from .backend import Capabilities
from .calibration import average_precision, calibrate, rule_budget
from .classifier import N_FOLDS, fit_classifier
from .decode import ChatResult, RowSettings, chat_batch
from .embedded import cache_dir
from .engine import GenerationConfig, Prefill, generate_from, prefill, prefill_probed, probe_pass
from .errors import ScansError
from .layers import choose_band, logit_lens, toward_refusal_gain
from .models import LoadedModel, find_layers, load_model, model_fingerprint
from .packing import packed_linears
from .pool import PoolItem, check_pool, sample_pool, shipped_taxonomy
from .profile import CLASSIFIERS, Profile
from .progress import progress_bar
from .prompts import DEFAULT_PROBE, build_batch, context_length, encode_chat
from .steering import SteeringPlan
from .vectors import (
    mean_difference,
    mean_norms,
    reference_transition,
    transitions,
)
from .verdict import Verdict, decide
from .version import __version__

DEFAULT_ALPHA = 0.05  # relative: coefficient = alpha * mean residual norm of the layer
DEFAULT_TARGET_RECALL = 0.9  # calibrated threshold flags at least 90% of held-out harmful anchors
DEFAULT_MAX_HARMFUL_LOSS = 0.02  # safety budget: at most 2% of harmful (and of severe) pool prompts steered
DEFAULT_POOL_SIZE = 320  # taxonomy prompts added to the classifier's pool (None: all of the dev split)


@dataclass
class Generation:
    """One answer: the verdict, the (steered) response and optionally the unsteered one."""

    prompt: str
    verdict: Verdict
    response: str
    unsteered: str | None = None


def _hash_prompts(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def prompt_key(prompt: str) -> str:
    """A short hash of one prompt (whitespace- and case-insensitive): profiles record the
    anchors they used this way, so benchmarks can leave them out without storing them."""
    return hashlib.sha256(" ".join(prompt.lower().split()).encode()).hexdigest()[:16]


def default_profile_dir(name: str, fingerprint: str) -> Path:
    """Where ``fit`` saves and ``generate`` looks by default: one profile per model."""
    slug = "".join(c if c.isalnum() or c in "-._" else "-" for c in name).strip("-")
    return cache_dir() / "profiles" / f"{slug}-{fingerprint}"


class Scans:
    """A model with its tokenizer and (after ``fit`` or ``load``) a steering profile: the
    transformers backend (:class:`scans.backend.Backend`)."""

    backend: ClassVar[str] = "transformers"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fit=True, logits=True, row_batching=True, engine_batching=False
    )

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        name: str = "model",
        profile: Profile | None = None,
        layers_path: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.layers_path = layers_path
        self.n_layers = len(find_layers(model, layers_path))
        self.fingerprint = model_fingerprint(model)
        self.profile = profile

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        profile: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: str | dict | None = None,
        trust_remote_code: bool = False,
        layers_path: str | None = None,
    ) -> Scans:
        """Load a model (``None`` = the embedded default) and optionally a profile."""
        loaded: LoadedModel = load_model(
            model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code
        )
        scans = cls(loaded.model, loaded.tokenizer, name=loaded.name, layers_path=layers_path)
        if profile is not None:
            scans.load(profile)
        return scans

    @property
    def dtype(self) -> str:
        """The model's weight dtype, e.g. ``float32``."""
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    @property
    def max_model_len(self) -> int:
        """Longest prompt plus answer the model takes, in tokens (a large number if unknown)."""
        return context_length(self.model) or 1 << 30

    # ----------------------------------------------------------------- profiles
    @property
    def default_profile_path(self) -> Path:
        return default_profile_dir(self.name, self.fingerprint)

    def load(self, path: str | Path | None = None) -> Profile:
        """Load a profile (default: this model's cached one), checking the fingerprint."""
        profile = Profile.load(path or self.default_profile_path, fingerprint=self.fingerprint)
        if profile.n_layers != self.n_layers:
            raise ScansError(
                f"profile has {profile.n_layers} layers, the model {self.n_layers}; "
                "fix: fit a profile for this model"
            )
        self.profile = profile
        return profile

    def save(self, path: str | Path | None = None) -> Path:
        """Save the profile (default: this model's cache slot)."""
        return self.require_profile().save(path or self.default_profile_path)

    def require_profile(self) -> Profile:
        """The loaded profile, or a one-line error saying how to get one."""
        if self.profile is None:
            raise ScansError("no steering profile loaded; fix: run `scans fit` (Scans.fit) or pass --profile")
        return self.profile

    # ---------------------------------------------------------------------- fit
    def fit(
        self,
        harmful: Sequence[str] | None = None,
        harmless: Sequence[str] | None = None,
        borderline: Sequence[str] | None = None,
        *,
        n_fit: int = 64,
        n_heldout: int = 32,
        n_layer_eval: int = 16,
        seed: int = 0,
        layers: Sequence[int] | None = None,
        threshold: float | None = None,
        alpha: float = DEFAULT_ALPHA,
        alpha_mode: str = "relative",
        classifier: str = "instruction",
        target_recall: float | None = DEFAULT_TARGET_RECALL,
        harmful_policy: str = "none",
        steer_window: int | None = 1,
        probe: str = DEFAULT_PROBE,
        system: str | None = None,
        batch_size: int | None = None,
        progress: bool = True,
        compare_classifiers: bool = False,
        calibration: str = "crossfit",
        shrinkage: float | None = None,
        pack_linears: bool = True,
        pool: Sequence[PoolItem] | None = None,
        pool_size: int | None = DEFAULT_POOL_SIZE,
        max_harmful_loss: float | None = DEFAULT_MAX_HARMFUL_LOSS,
    ) -> Profile:
        """Steps 1-3: refusal vectors, layers, classifier and calibration.

        Anchors default to the shipped ones: matched harmful/harmless pairs and borderline
        (benign but scary-sounding) prompts. Each side is shuffled with ``seed``; ``n_fit``
        per side build the vectors (harmful vs harmless); the next ``n_heldout`` per side are
        read only up to the end of the user's text. The classifier (harmful vs harmless +
        borderline, a shrunk contrast direction, ``shrinkage`` None = chosen by 4-fold
        cross-validation) is fitted on the pool of both; with ``calibration="crossfit"`` the
        threshold is calibrated on out-of-fold scores (every anchor scored by a classifier
        that never saw it); with ``"heldout"`` the ``n_heldout`` anchors are kept out of the
        classifier and calibrate it.
        ``compare_classifiers`` also scores the held-out anchors with every classifier (recorded
        in ``extra``); without it, the default instruction classifier reads the borderline and
        held-out anchors only up to the end of the user's text (less work). ``pack_linears``:
        on a CPU in float32, run the forward passes on prepacked weights (same math, faster).
        ``pool``: more labelled prompts for the classifier (default: the shipped taxonomy's dev
        split when the shipped anchors are used, else none), ``pool_size`` of them sampled, spread
        over label x severity x type. ``max_harmful_loss``: the safety budget of the decision rule (see
        :mod:`scans.verdict`); None fits the v1 rule (one threshold, every other prompt steered).
        """
        from .datafiles import shipped_anchors, shipped_borderline

        if max_harmful_loss is not None and not 0.0 < max_harmful_loss < 1.0:
            raise ScansError(f"max harmful loss {max_harmful_loss}; fix: use a fraction in (0, 1), e.g. 0.02")
        if pool_size is not None and pool_size < 0:
            raise ScansError(f"pool size {pool_size}; fix: use 0 or more, or all")
        if pool is None:
            pool = shipped_taxonomy("dev") if harmful is None and harmless is None else []
        pool_items = sample_pool(pool, pool_size, seed)
        if pool and max_harmful_loss is not None:
            check_pool(pool_items, f"the classifier pool ({len(pool_items)} sampled prompts)")
        if harmful is None or harmless is None:
            shipped_h, shipped_b = shipped_anchors()
            harmful = harmful if harmful is not None else shipped_h
            harmless = harmless if harmless is not None else shipped_b
        if borderline is None:
            borderline = shipped_borderline()
        fit_h, held_h = _split(harmful, n_fit, n_heldout, seed, "harmful")
        fit_b, held_b = _split(harmless, n_fit, n_heldout, seed, "harmless")
        fit_x, held_x = _split(
            borderline, min(n_fit, len(borderline) - n_heldout), n_heldout, seed, "borderline"
        )
        if layers is not None and (not layers or min(layers) < 0 or max(layers) >= self.n_layers):
            raise ScansError(
                f"steering layers {list(layers)} out of range; fix: choose layers in 0..{self.n_layers - 1}"
            )
        if classifier not in CLASSIFIERS:
            raise ScansError(f"classifier {classifier!r}; fix: use one of {', '.join(CLASSIFIERS)}")
        if calibration not in ("crossfit", "heldout"):
            raise ScansError(f"calibration {calibration!r}; fix: use 'crossfit' or 'heldout'")
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise ScansError(
                f"shrinkage {shrinkage}; fix: use a value in [0, 1] (1 = plain mean difference) or auto"
            )
        n_cls_h = len(fit_h) + (len(held_h) if calibration == "crossfit" else 0)
        if n_cls_h < N_FOLDS:
            raise ScansError(
                f"{n_cls_h} harmful anchors train the classifier, its {N_FOLDS}-fold cross-validation needs "
                f"{N_FOLDS}; fix: raise --n-fit to {N_FOLDS} or use --calibration crossfit"
            )
        if harmful_policy not in ("refuse", "none"):
            raise ScansError(f"harmful_policy {harmful_policy!r}; fix: use 'none' or 'refuse'")

        if batch_size is None:
            from .engine import auto_batch_size

            batch_size = auto_batch_size(self.model)
        clock = _Clock()
        # CPU float32: the linear layers run on weights packed once (see scans.packing)
        with packed_linears(self.model, enabled=pack_linears):
            every = compare_classifiers or classifier != "instruction"  # transitions of all anchors needed
            common_kw = dict(
                system=system, batch_size=batch_size, layers_path=self.layers_path, progress=progress
            )
            # The layer-band anchors (the first k per side) run through the inference path
            # (prefill + probe pass, both sides in one batch): their prefix caches are reused
            # to measure the bands.
            k = min(n_layer_eval, len(fit_h), len(fit_b))
            max_len = context_length(self.model)
            batch = build_batch(self.tokenizer, [*fit_h[:k], *fit_b[:k]], system=system, max_length=max_len)
            pre, acts_eval = prefill_probed(self.model, self.tokenizer, batch, probe, self.layers_path)
            pre_h, pre_b = pre.select(range(k)), pre.select(range(k, 2 * k))
            rest = [*fit_h[k:], *fit_b[k:]]
            if rest:
                acts_rest = collect(
                    self.model, self.tokenizer, rest, probe=probe, desc="fit anchors", **common_kw
                )
            else:  # every fit anchor is also a layer-evaluation anchor
                acts_rest = {name: acts_eval[name][:0].cpu() for name in ("inst", "probe", "uend")}
            n_rest_h = len(fit_h) - k
            acts = {
                name: torch.cat([acts_eval[name][:k].cpu(), acts_rest[name][:n_rest_h],
                                 acts_eval[name][k:].cpu(), acts_rest[name][n_rest_h:]])
                for name in ("inst", "probe", "uend")
            }  # fmt: skip
            # The classifier's other anchors (borderline to fit, and the held-out ones) in one
            # pass, read only to the end of the user's text unless every classifier is compared.
            # (and, for the decision rule's second signal, at the instruction end)
            pool_prompts = [*fit_x, *held_h, *held_b, *held_x, *(item.prompt for item in pool_items)]
            acts_c = collect(self.model, self.tokenizer, pool_prompts, probe=probe if every else None,
                             uend_only=max_harmful_loss is None and not every, desc="classifier anchors",
                             **common_kw)  # fmt: skip
            n_x = len(fit_x)
            acts_x = {name: value[:n_x] for name, value in acts_c.items()}
            held = {name: value[n_x:] for name, value in acts_c.items()}
            acts.update({k: torch.cat([acts[k], acts_x[k]]) for k in acts_x})  # without every: x only at uend
            n_h, n_b = len(fit_h), len(fit_b)
            inst_h, inst_b = acts["inst"][:n_h], acts["inst"][n_h : n_h + n_b]
            tau_h = transitions(inst_h, acts["probe"][:n_h])
            tau = transitions(acts["inst"], acts["probe"]) if every else tau_h
            vectors = mean_difference(inst_h, inst_b)  # step 1
            norms = mean_norms(inst_h, inst_b)
            coefficients = alpha * norms if alpha_mode == "relative" else torch.full_like(norms, alpha)
            clock.lap("anchors forward")
            lens_scores, top_tokens = logit_lens(self.model, self.tokenizer, vectors)

            extra: dict[str, Any] = {}
            clock.lap("vectors and logit lens")
            choice = choose_band(  # step 2
                self.model, self.tokenizer, vectors, coefficients, pre_h, pre_b,
                width=len(layers) if layers else None, progress=progress,
            )  # fmt: skip
            clock.lap("layer bands (refusal opening, band effects)")
            extra["bands"] = [
                {
                    "start": e.start,
                    "end": e.end,
                    "drop": e.drop,
                    "drift": e.drift,
                    "score": e.score,
                    "anchors": e.anchors,
                }
                for e in choice.effects
            ]
            extra["refusal_opening"] = choice.opening
            extra["anchor_refusal_rate"] = choice.refusal_rate
            if layers:
                steer_layers = sorted(int(l) for l in layers)
                extra["layers_source"] = "user"
            else:
                steer_layers = list(range(choice.band.start, choice.band.end + 1))
                extra["layers_source"] = "measured effect (drop - drift)"
            harmful_sign = 1 if harmful_policy == "refuse" else 0
            if harmful_sign or compare_classifiers:  # a diagnostic, needed only when steering toward refusal
                gain_h, gain_b = toward_refusal_gain(self.model, choice, vectors, coefficients)
                extra["toward_refusal_gain"] = {"harmful": gain_h, "harmless": gain_b}
                clock.lap("toward-refusal gain")
        cls_layers = list(range(steer_layers[0], self.n_layers))  # step 3
        reference = reference_transition(tau_h)
        held_tau = transitions(held["inst"], held["probe"]) if every else None
        held_labels = np.array(
            [True] * len(held_h)
            + [False] * (len(held_b) + len(held_x))
            + [item.harmful for item in pool_items]
        )
        fit_labels = np.array([True] * n_h + [False] * (n_b + len(fit_x)))
        # which anchor set each scored row belongs to (for the report's histograms)
        held_groups = ["harmful"] * len(held_h) + ["harmless"] * len(held_b) + ["borderline"] * len(held_x)
        held_groups += [
            ("pool-severe" if i.severe else "pool-harmful") if i.harmful else "pool-benign"
            for i in pool_items
        ]
        fit_groups = ["harmful"] * n_h + ["harmless"] * n_b + ["borderline"] * len(fit_x)
        features = {
            "contrast": (tau, held_tau),
            "cosine": (tau, held_tau),
            "instruction": (acts["uend"], held["uend"]),
        }

        def scorer(name: str) -> Any:
            def score(tensors: dict[str, torch.Tensor], feats: torch.Tensor) -> np.ndarray:
                p = Profile(self.name, self.fingerprint, vectors, norms=norms, steer_layers=steer_layers,
                            cls_layers=cls_layers, alpha=alpha, threshold=0.0, classifier=name,
                            **{"reference": reference, **tensors})  # fmt: skip
                return p.scores(feats, feats).numpy()

            return score

        fits, held_scores = {}, {}
        extra["calibration_mode"] = calibration
        for name in CLASSIFIERS if every else (classifier,):  # held-out AUPRC of each (compared) classifier
            train, test = features[name]
            if calibration == "crossfit":  # held-out anchors join the pool; out-of-fold scores calibrate
                rows_all = torch.cat([train, test])
                fits[name] = fit_classifier(name, rows_all, np.r_[fit_labels, held_labels], scorer(name),
                                            cls_layers, shrinkage, seed=seed)  # fmt: skip
                held_scores[name] = fits[name].oof_scores
            else:
                fits[name] = fit_classifier(
                    name, train, fit_labels, scorer(name), cls_layers, shrinkage, seed=seed
                )
                held_scores[name] = scorer(name)(fits[name].tensors, test)
            extra.setdefault("shrinkage", {})[name] = fits[name].shrinkage
            extra.setdefault("cv_auprc", {})[name] = {f"{k:g}": v for k, v in fits[name].cv_auprc.items()}
        labels, groups = (
            (np.r_[fit_labels, held_labels], fit_groups + held_groups)
            if calibration == "crossfit"
            else (held_labels, held_groups)
        )
        for name, scores in held_scores.items():
            extra[f"heldout_auprc_{name}"] = average_precision(scores, labels)
        common = {"reference": reference, **fits[classifier].tensors}
        scores = held_scores[classifier]
        calibration_stats = calibrate(scores, labels, target_recall).to_dict()
        if threshold is not None:
            calibration_stats["threshold_override"] = float(threshold)
        if "inst" in held:
            mid = steer_layers[len(steer_layers) // 2]
            projection = (held["inst"][:, mid] @ vectors[mid]).numpy()
            extra["vector_separation_auprc"] = average_precision(projection, held_labels)
        extra["heldout_scores"] = {
            group: [float(x) for x, g in zip(scores, groups) if g == group]
            for group in ("harmful", "harmless", "borderline", "pool-harmful", "pool-severe", "pool-benign")
        }
        rule_kw: dict[str, Any] = {}
        if max_harmful_loss is not None:  # the decision rule's second signal and its safety budget
            train_i, test_i = acts["inst"], held["inst"]
            if calibration == "crossfit":
                fit_i = fit_classifier("instruction", torch.cat([train_i, test_i]), labels,
                                       scorer("instruction"), cls_layers, shrinkage, seed=seed)  # fmt: skip
                inst_cal = fit_i.oof_scores
            else:
                fit_i = fit_classifier(
                    "instruction",
                    train_i,
                    fit_labels,
                    scorer("instruction"),
                    cls_layers,
                    shrinkage,
                    seed=seed,
                )
                inst_cal = scorer("instruction")(fit_i.tensors, test_i)
            if calibration == "crossfit" and pool_items and classifier == "instruction":
                # the previous rule's classifier: the same pool without the taxonomy prompts
                old = np.arange(len(labels)) < len(labels) - len(pool_items)
                uend_all = torch.cat([acts["uend"], held["uend"]])[torch.as_tensor(old)]
                fit_v1 = fit_classifier("instruction", uend_all, labels[old], scorer("instruction"),
                                        cls_layers, shrinkage, seed=seed)  # fmt: skip
                v1_cal = calibrate(fit_v1.oof_scores, labels[old], target_recall)
                rule_kw.update(
                    v1_contrast=fit_v1.tensors["contrast"], v1_contrast_mean=fit_v1.tensors["contrast_mean"],
                    v1_contrast_std=fit_v1.tensors["contrast_std"], v1_threshold=v1_cal.threshold,
                )  # fmt: skip
            held_severe = [False] * (len(held_h) + len(held_b) + len(held_x)) + [i.severe for i in pool_items]
            severe = np.array(([False] * len(fit_labels) if calibration == "crossfit" else []) + held_severe)
            steer_t, rule = rule_budget(
                np.asarray(scores), np.asarray(inst_cal), labels, severe, max_harmful_loss
            )
            rule_kw |= {
                "steer_threshold": steer_t, "inst_threshold": steer_t, "max_harmful_loss": max_harmful_loss,
                "inst_contrast": fit_i.tensors["contrast"], "inst_contrast_mean": fit_i.tensors["contrast_mean"],
                "inst_contrast_std": fit_i.tensors["contrast_std"],
                "decision": {
                    "rule": "v2", **rule, "inst_shrinkage": fit_i.shrinkage,
                    "inst_auprc": average_precision(np.asarray(inst_cal), labels),
                    "pool": {"size": len(pool_items), "harmful": sum(i.harmful for i in pool_items),
                             "severe": sum(i.severe for i in pool_items)},
                },
            }  # fmt: skip

        evidence = []
        by_start = {e.start: e.score for e in choice.effects}
        for layer in range(self.n_layers):
            evidence.append(
                {"layer": layer, "lens_score": lens_scores[layer], "top_tokens": top_tokens[layer],
                 "band_effect": by_start.get(layer), "norm": float(norms[layer])}
            )  # fmt: skip
        clock.lap("classifiers and calibration")
        extra["timings_s"] = clock.laps
        self.profile = Profile(
            model_name=self.name,
            fingerprint=self.fingerprint,
            vectors=vectors,
            norms=norms,
            classifier=classifier,
            **common,
            steer_layers=steer_layers,
            cls_layers=cls_layers,
            alpha=alpha,
            alpha_mode=alpha_mode,
            threshold=float(threshold if threshold is not None else calibration_stats["threshold"]),
            harmful_sign=harmful_sign,
            steer_window=steer_window,
            probe=probe,
            system=system,
            calibration=calibration_stats,
            layer_evidence=evidence,
            anchors={
                "harmful_sha256": _hash_prompts(harmful),
                "harmless_sha256": _hash_prompts(harmless),
                "borderline_sha256": _hash_prompts(borderline),
                "n_fit": len(fit_h),
                "n_fit_borderline": len(fit_x),
                "n_heldout": len(held_h),
                "n_layer_eval": k,
                "used_prompt_keys": sorted(
                    {
                        prompt_key(p)
                        for p in [
                            *fit_h,
                            *held_h,
                            *fit_b,
                            *held_b,
                            *fit_x,
                            *held_x,
                            *(i.prompt for i in pool_items),
                        ]
                    }
                ),
            },  # fmt: skip
            seed=seed,
            version=__version__,
            extra=extra,
            **rule_kw,
        )
        return self.profile

    # ----------------------------------------------------------- classify/steer
    def prefill_prompts(self, prompts: Sequence[str]) -> Prefill:
        """The shared prefill of prompts formatted with the profile's system prompt."""
        profile = self.require_profile()
        batch = build_batch(
            self.tokenizer, prompts, system=profile.system, max_length=context_length(self.model)
        )
        return prefill(self.model, batch)

    def verdicts_of(self, prompts: Sequence[str], pre: Prefill) -> list[Verdict]:
        """The verdicts of a prefilled batch (its probe pass, then ``verdict.decide``);
        ``prompts`` label the verdicts."""
        profile = self.require_profile()
        acts = probe_pass(self.model, self.tokenizer, pre, profile.probe, self.layers_path)
        return decide(profile, acts, prompts)

    def classify(self, prompts: str | Sequence[str], *, batch_size: int | None = None) -> list[Verdict]:
        """Score prompts: s(q) >= threshold means harmful. Batches group prompts of similar length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out: list[Verdict | None] = [None] * len(prompts)
        for rows in self._buckets(prompts, batch_size):
            chunk = [prompts[i] for i in rows]
            for i, v in zip(rows, self.verdicts_of(chunk, self.prefill_prompts(chunk))):
                out[i] = v
        return [v for v in out if v is not None]

    def _buckets(self, prompts: Sequence[str], batch_size: int | None) -> list[list[int]]:
        """Prompt indices in batches of similar token length (less padding), largest batches first."""
        from .activations import batches_by_length
        from .engine import auto_batch_size

        size = batch_size if batch_size is not None else auto_batch_size(self.model)
        if size < 1:
            raise ScansError(f"batch size {size}; fix: use a batch size of at least 1")
        system = self.require_profile().system
        lengths = [len(encode_chat(self.tokenizer, p, system)) for p in prompts]
        return batches_by_length(lengths, size)

    def plan(
        self, verdicts: Sequence[Verdict], pre: Prefill, enabled: Sequence[bool] | None = None
    ) -> SteeringPlan:
        """The steering plan for a prefilled batch: per-row sign from the verdicts."""
        profile = self.require_profile()
        signs = [v.sign for v in verdicts]
        if enabled is not None:
            signs = [s if on else 0 for s, on in zip(signs, enabled)]
        return profile.steering_plan(signs, (pre.batch.attention_mask.sum(-1) - 1).cpu(), self.layers_path)

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        compare: bool = False,
        steer: bool = True,
        batch_size: int | None = None,
        progress: bool = True,
        min_new_tokens: int = 0,
    ) -> list[Generation]:
        """Classify each prompt, then generate with per-row steering (one shared prefill)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        config = GenerationConfig(max_new_tokens, temperature, top_p, seed, min_new_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        buckets = self._buckets(prompts, batch_size)
        for rows in progress_bar(buckets, "generate", progress and len(buckets) > 1):
            chunk = [prompts[i] for i in rows]
            pre = self.prefill_prompts(chunk)
            verdicts = self.verdicts_of(chunk, pre)
            plan = self.plan(verdicts, pre, enabled=[steer] * len(chunk))
            steered = generate_from(self.model, self.tokenizer, pre, config, plan)
            plain = generate_from(self.model, self.tokenizer, pre, config) if compare else [None] * len(chunk)
            for i, p, v, s_, u in zip(rows, chunk, verdicts, steered, plain):
                results[i] = Generation(p, v, s_, u)
        return [g for g in results if g is not None]

    def chat_batch(
        self,
        encoded: Sequence[tuple[list[int], int]],
        settings: Sequence[RowSettings],
        *,
        steer_rows: Sequence[bool] | None = None,
        labels: Sequence[str] | None = None,
        on_verdicts: Callable[[list[Verdict], list[int]], None] | None = None,
        on_forward: Callable[[int], None] | None = None,
        isolate_errors: bool = False,
    ) -> list[ChatResult]:
        """Classify and answer encoded conversations in one shared prefill
        (:func:`scans.decode.chat_batch`): the server's and ``scans chat``'s path."""
        return chat_batch(self, encoded, settings, steer_rows=steer_rows, labels=labels, on_verdicts=on_verdicts,
                          on_forward=on_forward, isolate_errors=isolate_errors)  # fmt: skip


class _Clock:
    """Wall-clock laps of the fit stages, recorded in the profile (where the time goes)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def _split(
    prompts: Sequence[str], n_fit: int, n_heldout: int, seed: int, side: str
) -> tuple[list[str], list[str]]:
    """Seeded split into a fit part and a held-out part (same seed = same pairs per side)."""
    prompts = [p for p in prompts]
    if len(prompts) < n_fit + n_heldout:
        raise ScansError(
            f"{len(prompts)} {side} anchors, need {n_fit} to fit + {n_heldout} held out; "
            "fix: pass more anchors or lower --n-fit/--n-heldout"
        )
    if n_fit < 2 or n_heldout < 2:
        raise ScansError(
            "need at least 2 fit and 2 held-out anchors per side; fix: raise --n-fit/--n-heldout"
        )
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    chosen = [prompts[i] for i in order]
    return chosen[:n_fit], chosen[n_fit : n_fit + n_heldout]
