"""Step 3's classifier fitted without hand tuning: the shrinkage of the contrast direction
is chosen by k-fold cross-validation, and the out-of-fold scores (each anchor scored by a
classifier that never saw it) calibrate the threshold, so no anchor is spent on a
separate held-out set. With several cross-fitting splits (``splits``), every split's
out-of-fold scores are returned: the calibration sets a threshold per split and keeps their
mean (:func:`scans.calibration.rule_budget`), which steadies it against the fold assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import average_precision
from .vectors import (
    classifier_scores,
    contrast_directions,
    crossfit_contrast_scores,
    projection_stats,
    reference_transition,
)

# 1.0 is the plain mean difference; smaller values whiten more (regularised LDA)
SHRINKAGE_GRID = (0.1, 0.3, 0.6, 1.0)
N_FOLDS = 4
GRAM_MAX_ROWS = 4096  # cross-fitting from one Gram matrix per layer up to this many rows


@dataclass
class ClassifierFit:
    """Tensors of a fitted classifier, the chosen shrinkage and the cross-validated evidence."""

    tensors: dict[str, torch.Tensor]
    shrinkage: float | None
    split_scores: np.ndarray  # (splits, N): each split's out-of-fold score of every training row
    cv_auprc: dict[float, float] = field(default_factory=dict)  # per candidate shrinkage

    @property
    def oof_scores(self) -> np.ndarray:
        """Each row's out-of-fold score, the mean over the splits (N,)."""
        return self.split_scores.mean(0)


def stratified_folds(labels: np.ndarray, k: int, seed: int | Sequence[int]) -> np.ndarray:
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
    layers: Sequence[int],
    shrinkage: float | None = None,
    k: int = N_FOLDS,
    seed: int = 0,
    splits: int = 1,
) -> ClassifierFit:
    """Fit on all rows; ``shrinkage`` None = the grid value with the best out-of-fold AUPRC
    (ties go to more shrinkage). The out-of-fold scores (:func:`scans.vectors.classifier_scores`
    over ``layers``) of the chosen value are returned for each of ``splits`` k-fold splits (the
    first split's folds come from ``seed`` alone, the others from ``(seed, split)``) and as
    their mean."""
    labels = np.asarray(labels, dtype=bool)
    assert features.shape[0] == len(labels), "one label per feature row"
    assert splits >= 1, f"need at least one cross-fitting split, got {splits}"
    candidates: Sequence[float | None] = (
        [None] if kind == "cosine" else (SHRINKAGE_GRID if shrinkage is None else [shrinkage])
    )
    # the fold fits read only the classifier's layers: slice and convert them once
    sub = features[:, torch.as_tensor(list(layers), dtype=torch.long)].double()
    local = range(sub.shape[1])
    oof = {lam: np.zeros((splits, len(labels))) for lam in candidates}
    folds = [stratified_folds(labels, k, seed if split == 0 else [seed, split]) for split in range(splits)]
    shrunk = all(lam is not None and 0.0 < lam < 1.0 for lam in candidates)
    if kind != "cosine" and shrunk and len(labels) <= GRAM_MAX_ROWS:  # the Gram path, same scores
        for lam in candidates:
            assert lam is not None
            oof[lam] = crossfit_contrast_scores(
                sub, torch.as_tensor(labels), [torch.as_tensor(f) for f in folds], lam
            ).numpy()
    else:
        for split, split_folds in enumerate(folds):
            for fold in range(k):
                train, test = split_folds != fold, split_folds == fold
                tensor_sets = classifier_tensors(
                    kind, sub[torch.as_tensor(train)], labels[train], candidates, local
                )
                for lam, tensors in zip(candidates, tensor_sets):
                    oof[lam][split, test] = classifier_scores(
                        kind, tensors, sub[torch.as_tensor(test)], local
                    ).numpy()
    assert all(np.isfinite(v).all() for v in oof.values()), "non-finite out-of-fold scores"
    results = {lam: (average_precision(v.mean(0), labels), v) for lam, v in oof.items()}
    best = max(candidates, key=lambda lam: (results[lam][0], lam if lam is not None else 1.0))
    return ClassifierFit(
        tensors=classifier_tensors(kind, features, labels, [best], layers)[0],
        shrinkage=best,
        split_scores=results[best][1],
        cv_auprc={float(lam if lam is not None else 1.0): ap for lam, (ap, _) in results.items()},
    )
