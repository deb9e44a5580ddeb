"""The fit's step 3 (:mod:`scans.fit`): the classifiers, then the calibration of the threshold
and of the v2 decision rule's safety budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .calibration import average_precision, calibrate, prompts_needed, refuse_budget, rule_budget
from .classifier import fit_classifier
from .fit_config import FitConfig
from .fit_data import AnchorSet, FitActivations, RefusalVectors
from .fit_diagnostics import SCORE_GROUPS
from .profile import CLASSIFIERS
from .vectors import classifier_scores, transitions


@dataclass(frozen=True)
class ClassifierResult:
    """Step 3: the chosen classifier's tensors, its calibration scores (out of fold with
    ``crossfit``, on the held-out anchors and the pool with ``heldout``) and each fitted
    classifier's evidence."""

    tensors: dict[str, torch.Tensor]  # the profile's classifier tensors (reference, contrast ...)
    split_scores: np.ndarray  # (splits, N) calibration scores; (1, N) when held out
    labels: np.ndarray  # True: harmful, per calibration row
    groups: list[str]  # the anchor group of each calibration row
    severe: np.ndarray  # severe harmful pool prompt, per calibration row
    shrinkage: dict[str, float | None]
    cv_auprc: dict[str, dict[str, float]]
    heldout_auprc: dict[str, float]
    cls_layers: list[int]

    @property
    def scores(self) -> np.ndarray:
        """Each calibration row's score (N,): the mean over the cross-fitting splits."""
        return self.split_scores.mean(0)


def fit_classifiers(
    acts: FitActivations,
    anchors: AnchorSet,
    config: FitConfig,
    cls_layers: list[int],
    reference: torch.Tensor,
) -> ClassifierResult:
    """Fit the configured classifier (every one with ``compare_classifiers``) on the fit rows,
    with the held-out rows and the pool too when cross-fitting."""
    fit, held = acts.fit, acts.held
    every = config.needs_transitions
    if every:
        assert (
            fit.inst is not None
            and fit.probe is not None
            and held.inst is not None
            and held.probe is not None
        )
        tau, held_tau = transitions(fit.inst, fit.probe), transitions(held.inst, held.probe)
    else:
        h = acts.harmful
        assert h.inst is not None and h.probe is not None
        tau, held_tau = transitions(h.inst, h.probe), None
    features = {"contrast": (tau, held_tau), "cosine": (tau, held_tau), "instruction": (fit.uend, held.uend)}
    fit_labels, held_labels = anchors.fit_labels, anchors.held_labels
    crossfit = config.calibration == "crossfit"
    fits, split_scores = {}, {}
    for name in CLASSIFIERS if every else (config.classifier,):
        train, test = features[name]
        if crossfit:  # held-out anchors join the pool; out-of-fold scores calibrate
            rows = torch.cat([train, test])
            fits[name] = fit_classifier(name, rows, np.r_[fit_labels, held_labels], cls_layers, config.shrinkage,
                                        seed=config.seed, splits=config.crossfit_splits)  # fmt: skip
            split_scores[name] = fits[name].split_scores
        else:
            fits[name] = fit_classifier(
                name, train, fit_labels, cls_layers, config.shrinkage, seed=config.seed
            )
            held_scores = classifier_scores(
                name, {"reference": reference, **fits[name].tensors}, test, cls_layers
            )
            split_scores[name] = held_scores.numpy()[None]
    if crossfit:
        labels, groups = np.r_[fit_labels, held_labels], anchors.fit_groups + anchors.held_groups
        severe = np.array([False] * len(fit_labels) + anchors.held_severe)
    else:
        labels, groups, severe = held_labels, anchors.held_groups, np.array(anchors.held_severe)
    return ClassifierResult(
        tensors={"reference": reference, **fits[config.classifier].tensors},
        split_scores=split_scores[config.classifier],
        labels=labels,
        groups=groups,
        severe=severe,
        shrinkage={name: f.shrinkage for name, f in fits.items()},
        cv_auprc={name: {f"{k:g}": v for k, v in f.cv_auprc.items()} for name, f in fits.items()},
        heldout_auprc={name: average_precision(s.mean(0), labels) for name, s in split_scores.items()},
        cls_layers=cls_layers,
    )


@dataclass(frozen=True)
class DecisionRule:
    """The v2 rule's thresholds, its second signal (the instruction-end classifier) and how
    they were calibrated; with a pool, the previous rule's classifier for ``scans-v1``."""

    steer_threshold: float
    max_harmful_loss: float
    inst_contrast: torch.Tensor
    inst_contrast_mean: torch.Tensor
    inst_contrast_std: torch.Tensor
    decision: dict[str, Any]
    v1: dict[str, Any]  # v1_contrast, v1_contrast_mean, v1_contrast_std, v1_threshold (or empty)
    # --harmful-policy budget: min(score, inst) over it -> steered toward refusal
    refuse_threshold: float | None = None


@dataclass(frozen=True)
class Calibrated:
    """The calibration: the threshold's statistics, the v2 rule (None: rule v1) and diagnostics."""

    stats: dict[str, Any]  # scans.calibration.Calibration.to_dict(), and threshold_override
    rule: DecisionRule | None
    heldout_scores: dict[str, list[float]]
    vector_separation_auprc: float | None

    def rule_fields(self) -> dict[str, Any]:
        """The profile's fields of the decision rule (none for rule v1)."""
        r = self.rule
        if r is None:
            return {}
        return {
            **r.v1, "steer_threshold": r.steer_threshold, "inst_threshold": r.steer_threshold,
            "max_harmful_loss": r.max_harmful_loss, "inst_contrast": r.inst_contrast,
            "inst_contrast_mean": r.inst_contrast_mean, "inst_contrast_std": r.inst_contrast_std,
            "decision": r.decision, "refuse_threshold": r.refuse_threshold,
        }  # fmt: skip


def calibrate_rule(
    acts: FitActivations, anchors: AnchorSet, config: FitConfig, cls: ClassifierResult,
    vec: RefusalVectors, steer_layers: Sequence[int], refused: np.ndarray | None = None,
    model_acts: FitActivations | None = None,
) -> Calibrated:  # fmt: skip
    """The threshold (at least ``target_recall`` of the harmful calibration rows) and, with a
    safety budget, the v2 rule's steer threshold on the second signal (``refused``: the model's
    own refusal of each calibration row, counted by the safety budget unless ``budget_counts`` is
    ``all``, and by the false-refusal budget of ``--harmful-policy budget``; None counts every row).
    ``acts`` are what the classifiers read; ``model_acts`` the answering model's (the same
    unless a guard reads the prompts), where the refusal vectors' separation is measured."""
    stats = calibrate(cls.split_scores, cls.labels, config.target_recall).to_dict()
    if config.threshold is not None:
        stats["threshold_override"] = float(config.threshold)
    separation = None
    own = model_acts if model_acts is not None else acts
    if own.held.inst is not None:
        mid = steer_layers[len(steer_layers) // 2]
        projection = (own.held.inst[:, mid] @ vec.vectors[mid]).numpy()
        separation = average_precision(projection, anchors.held_labels)
    heldout_scores = {
        group: [float(x) for x, g in zip(cls.scores, cls.groups) if g == group] for group in SCORE_GROUPS
    }
    harmful_t = float(stats.get("threshold_override", stats["threshold"]))
    rule = (
        decision_rule(acts, anchors, config, cls, refused, harmful_t)
        if config.max_harmful_loss is not None
        else None
    )
    return Calibrated(stats, rule, heldout_scores, separation)


def decision_rule(
    acts: FitActivations,
    anchors: AnchorSet,
    config: FitConfig,
    cls: ClassifierResult,
    refused: np.ndarray | None = None,
    harmful_threshold: float | None = None,
) -> DecisionRule:
    """The v2 rule: the second signal's classifier, and the steer threshold that keeps the
    harmful (and severe) pool prompts steered within the budget."""
    assert config.max_harmful_loss is not None
    fit, held = acts.fit, acts.held
    assert fit.inst is not None and held.inst is not None
    cls_layers, shrinkage, seed = cls.cls_layers, config.shrinkage, config.seed
    labels, pool = cls.labels, anchors.pool
    crossfit = config.calibration == "crossfit"
    if crossfit:
        fit_i = fit_classifier("instruction", torch.cat([fit.inst, held.inst]), labels, cls_layers, shrinkage,
                               seed=seed, splits=config.crossfit_splits)  # fmt: skip
        inst_cal = fit_i.split_scores
    else:
        fit_i = fit_classifier("instruction", fit.inst, anchors.fit_labels, cls_layers, shrinkage, seed=seed)
        inst_cal = classifier_scores("instruction", fit_i.tensors, held.inst, cls_layers).numpy()[None]
    v1: dict[str, Any] = {}
    if crossfit and pool and config.classifier == "instruction":
        # the previous rule's classifier: the same anchors without the taxonomy prompts
        old = np.arange(len(labels)) < len(labels) - len(pool)
        uend_all = torch.cat([fit.uend, held.uend])[torch.as_tensor(old)]
        fit_v1 = fit_classifier("instruction", uend_all, labels[old], cls_layers, shrinkage, seed=seed)
        v1_cal = calibrate(fit_v1.oof_scores, labels[old], config.target_recall)
        v1 = {
            "v1_contrast": fit_v1.tensors["contrast"], "v1_contrast_mean": fit_v1.tensors["contrast_mean"],
            "v1_contrast_std": fit_v1.tensors["contrast_std"], "v1_threshold": v1_cal.threshold,
        }  # fmt: skip
    steer_t, rule = rule_budget(
        cls.split_scores,
        inst_cal,
        labels,
        cls.severe,
        config.max_harmful_loss,
        refused if config.budget_counts == "refused" else None,
        config.max_severe_loss,
        harmful_threshold,
    )
    refuse_t = None
    if config.toward_refusal_budget:
        answered = np.ones_like(labels, dtype=bool) if refused is None else ~np.asarray(refused, dtype=bool)
        enough = int((answered & ~labels).sum()) >= prompts_needed(config.max_benign_loss)
        if config.harmful_policy == "budget" or enough:  # auto: none where it cannot be calibrated
            refuse_t, rule["toward_refusal"] = refuse_budget(
                cls.split_scores, inst_cal, labels, answered, config.max_benign_loss, harmful_threshold
            )
    decision = {
        "rule": "v2", **rule, "inst_shrinkage": fit_i.shrinkage,
        "crossfit_splits": config.crossfit_splits if crossfit else None,
        "inst_auprc": average_precision(inst_cal.mean(0), labels),
        "pool": {"size": len(pool), "harmful": sum(i.harmful for i in pool), "severe": sum(i.severe for i in pool),
                 "seed": config.pool_seed},
    }  # fmt: skip
    return DecisionRule(
        steer_t, config.max_harmful_loss, fit_i.tensors["contrast"], fit_i.tensors["contrast_mean"],
        fit_i.tensors["contrast_std"], decision, v1, refuse_t,
    )  # fmt: skip
