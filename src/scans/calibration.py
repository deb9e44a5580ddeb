"""Threshold calibration and classifier metrics (no hand tuning per data set)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Calibration:
    """How the harmful/benign threshold was chosen and how well it separates held-out data."""

    threshold: float
    accuracy: float
    balanced_accuracy: float
    auprc: float
    precision: float
    recall: float
    f1: float
    n_harmful: int
    n_harmless: int
    target_recall: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn computes it)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.where(np.diff(s))[0]
    ends = np.r_[distinct, len(s) - 1]
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def metrics_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 of ``score >= threshold``."""
    pred = np.asarray(scores) >= threshold
    y = np.asarray(labels, dtype=bool)
    tp = float((pred & y).sum())
    fp = float((pred & ~y).sum())
    fn = float((~pred & y).sum())
    tn = float((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def calibrate(scores: np.ndarray, labels: np.ndarray, target_recall: float | None = None) -> Calibration:
    """Pick the threshold on held-out labelled scores (label True = harmful).

    Without ``target_recall``: the threshold with the best balanced accuracy. With it: the
    best balanced accuracy among thresholds that still flag at least that fraction of
    the harmful prompts (a safety floor). Candidates are midpoints between consecutive
    distinct scores; ties go to the middle candidate of the best ones.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    assert scores.shape == labels.shape and scores.ndim == 1, "scores and labels must be 1-D"
    assert labels.any() and (~labels).any(), "calibration needs both harmful and harmless scores"
    assert np.isfinite(scores).all(), "non-finite scores"
    u = np.unique(scores)
    candidates = np.r_[u[0] - 1e-6, (u[:-1] + u[1:]) / 2, u[-1] + 1e-6]
    stats = [metrics_at(scores, labels, t) for t in candidates]
    bal = np.array([m["balanced_accuracy"] for m in stats])
    if target_recall is not None:
        recall_ok = np.array([m["recall"] >= target_recall - 1e-12 for m in stats])
        bal = np.where(recall_ok, bal, -1.0)
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    threshold = float(candidates[best[len(best) // 2]])
    m = metrics_at(scores, labels, threshold)
    return Calibration(
        threshold=threshold,
        accuracy=m["accuracy"],
        balanced_accuracy=m["balanced_accuracy"],
        auprc=average_precision(scores, labels),
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        n_harmful=int(labels.sum()),
        n_harmless=int((~labels).sum()),
        target_recall=target_recall,
    )
