"""Step 3's classifier fitted without hand tuning: the shrinkage of the contrast direction
is chosen by k-fold cross-validation, and the out-of-fold scores (each anchor scored by a
classifier that never saw it) calibrate the threshold, so no anchor is spent on a
separate held-out set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import average_precision
from .vectors import contrast_directions, projection_stats, reference_transition

# 1.0 is the plain mean difference; smaller values whiten more (regularised LDA)
SHRINKAGE_GRID = (0.1, 0.3, 0.6, 1.0)
N_FOLDS = 4

Scorer = Callable[[dict[str, torch.Tensor], torch.Tensor], np.ndarray]


@dataclass
class ClassifierFit:
    """Tensors of a fitted classifier, the chosen shrinkage and the cross-validated evidence."""

    tensors: dict[str, torch.Tensor]
    shrinkage: float | None
    oof_scores: np.ndarray  # out-of-fold score of every training row
    cv_auprc: dict[float, float] = field(default_factory=dict)  # per candidate shrinkage


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every row; each class is spread evenly over the folds."""
    labels = np.asarray(labels, dtype=bool)
    assert min(labels.sum(), (~labels).sum()) >= k, f"{k}-fold cross-validation needs {k} rows per class"
    folds = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in (True, False):
        rows = np.flatnonzero(labels == cls)
        folds[rng.permutation(rows)] = np.arange(len(rows)) % k
    return folds


def classifier_tensors(
    kind: str,
    features: torch.Tensor,
    labels: np.ndarray,
    shrinkages: Sequence[float | None],
    layers: Sequence[int],
) -> list[dict[str, torch.Tensor]]:
    """One tensor set per shrinkage value. ``cosine``: the harmful anchors' mean transition;
    ``contrast``/``instruction``: the (shrunk) contrast direction and the mean/std of the
    projections onto it."""
    y = torch.as_tensor(np.asarray(labels, dtype=bool))
    if kind == "cosine":
        return [{"reference": reference_transition(features[y])} for _ in shrinkages]
    lams = [1.0 if lam is None else lam for lam in shrinkages]
    out = []
    for direction in contrast_directions(features[y], features[~y], lams, layers):
        mean, std = projection_stats(features, direction)
        out.append({"contrast": direction, "contrast_mean": mean, "contrast_std": std})
    return out


def fit_classifier(
    kind: str,
    features: torch.Tensor,
    labels: np.ndarray,
    score: Scorer,
    layers: Sequence[int],
    shrinkage: float | None = None,
    k: int = N_FOLDS,
    seed: int = 0,
) -> ClassifierFit:
    """Fit on all rows; ``shrinkage`` None = the grid value with the best out-of-fold AUPRC
    (ties go to more shrinkage). The out-of-fold scores of the chosen value are returned."""
    labels = np.asarray(labels, dtype=bool)
    assert features.shape[0] == len(labels), "one label per feature row"
    folds = stratified_folds(labels, k, seed)
    candidates: Sequence[float | None] = (
        [None] if kind == "cosine" else (SHRINKAGE_GRID if shrinkage is None else [shrinkage])
    )
    oof = {lam: np.empty(len(labels)) for lam in candidates}
    for fold in range(k):
        train, test = folds != fold, folds == fold
        tensor_sets = classifier_tensors(
            kind, features[torch.as_tensor(train)], labels[train], candidates, layers
        )
        for lam, tensors in zip(candidates, tensor_sets):
            oof[lam][test] = score(tensors, features[torch.as_tensor(test)])
    assert all(np.isfinite(v).all() for v in oof.values()), "non-finite out-of-fold scores"
    results = {lam: (average_precision(v, labels), v) for lam, v in oof.items()}
    best = max(candidates, key=lambda lam: (results[lam][0], lam if lam is not None else 1.0))
    return ClassifierFit(
        tensors=classifier_tensors(kind, features, labels, [best], layers)[0],
        shrinkage=best,
        oof_scores=results[best][1],
        cv_auprc={float(lam if lam is not None else 1.0): ap for lam, (ap, _) in results.items()},
    )
