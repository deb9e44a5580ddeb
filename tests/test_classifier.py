"""The classifier's shrunk contrast direction and its cross-fitting, against direct restatements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scans import vectors
from scans.calibration import average_precision
from scans.classifier import SHRINKAGE_GRID, classifier_tensors, fit_classifier, stratified_folds

L, D = 3, 6


def _data(n_pos: int = 20, n_neg: int = 30, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Classes differ a little along dim 0; dim 1 carries a large shared nuisance that also
    differs in mean, so the plain mean difference points mostly along the nuisance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_pos + n_neg, L, D, generator=g)
    x[:, :, 1] *= 20.0
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(bool)
    x[torch.as_tensor(y), :, 0] += 1.5
    x[torch.as_tensor(y), :, 1] += 6.0
    return x, y


def _lda(pos: np.ndarray, neg: np.ndarray, lam: float) -> np.ndarray:
    centred = np.concatenate([pos - pos.mean(0), neg - neg.mean(0)])
    s = centred.T @ centred / (len(centred) - 2)
    sigma = (1 - lam) * s + lam * np.trace(s) / s.shape[0] * np.eye(s.shape[0])
    w = np.linalg.solve(sigma, pos.mean(0) - neg.mean(0))
    return w / np.linalg.norm(w)


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.6])
def test_shrunk_direction_is_regularised_lda(lam):
    x, y = _data()
    got = vectors.contrast_direction(x[y], x[~y], lam).double().numpy()
    xn = x.double().numpy()
    for layer in range(L):
        expected = _lda(xn[y, layer], xn[~y, layer], lam)
        np.testing.assert_allclose(got[layer], expected, rtol=1e-5, atol=1e-6)


def test_full_shrinkage_is_the_mean_difference():
    x, y = _data()
    assert torch.allclose(vectors.contrast_direction(x[y], x[~y], 1.0), vectors.mean_difference(x[y], x[~y]))
    only = vectors.contrast_direction(x[y], x[~y], 0.3, layers=[1])
    md = vectors.mean_difference(x[y], x[~y])
    assert torch.allclose(only[[0, 2]], md[[0, 2]]) and not torch.allclose(only[1], md[1])


def test_stratified_folds_spread_each_class():
    y = np.r_[np.ones(9), np.zeros(14)].astype(bool)
    folds = stratified_folds(y, 4, seed=1)
    for f in range(4):
        assert 2 <= (folds[y] == f).sum() <= 3 and 3 <= (folds[~y] == f).sum() <= 4
    assert (folds == stratified_folds(y, 4, seed=1)).all()
    with pytest.raises(AssertionError):
        stratified_folds(np.r_[np.ones(3), np.zeros(9)].astype(bool), 4, seed=0)


def _score(tensors: dict, feats: torch.Tensor) -> np.ndarray:
    return (
        vectors.contrast_scores(
            feats, tensors["contrast"], tensors["contrast_mean"], tensors["contrast_std"], range(L)
        )
        .double()
        .numpy()
    )


def test_out_of_fold_scores_never_see_their_own_row():
    x, y = _data()
    fit = fit_classifier("instruction", x, y, range(L), shrinkage=0.3, k=4, seed=2)
    folds = stratified_folds(y, 4, seed=2)
    for f in range(4):
        train, test = folds != f, folds == f
        t = classifier_tensors("instruction", x[torch.as_tensor(train)], y[train], [0.3], range(L))[0]
        np.testing.assert_allclose(fit.oof_scores[test], _score(t, x[torch.as_tensor(test)]), rtol=1e-6)
    # the final classifier is fitted on every row
    full = classifier_tensors("instruction", x, y, [0.3], range(L))[0]
    assert torch.allclose(fit.tensors["contrast"], full["contrast"])
    assert fit.cv_auprc == {0.3: pytest.approx(average_precision(fit.oof_scores, y))}


def test_several_splits_average_each_rows_out_of_fold_scores():
    """``splits`` S: each row's score is the mean over S k-fold splits of the score from the fold
    model that did not see it; the first split is the single-split one."""
    x, y = _data()
    one = fit_classifier("instruction", x, y, range(L), shrinkage=0.3, k=4, seed=2)
    fit = fit_classifier("instruction", x, y, range(L), shrinkage=0.3, k=4, seed=2, splits=3)
    expected = np.zeros(len(y))
    for split in range(3):
        folds = stratified_folds(y, 4, seed=2 if split == 0 else [2, split])
        for f in range(4):
            train, test = folds != f, folds == f
            t = classifier_tensors("instruction", x[torch.as_tensor(train)], y[train], [0.3], range(L))[0]
            expected[test] += _score(t, x[torch.as_tensor(test)]) / 3
    np.testing.assert_allclose(fit.oof_scores, expected, rtol=1e-6, atol=1e-9)
    assert not np.allclose(fit.oof_scores, one.oof_scores)  # the other splits move the scores
    assert torch.equal(fit.tensors["contrast"], one.tensors["contrast"])  # the final fit is the same
    with pytest.raises(AssertionError, match="at least one"):
        fit_classifier("instruction", x, y, range(L), shrinkage=0.3, splits=0)


@pytest.mark.parametrize("dim", [6, 80])  # more rows than dimensions, and fewer
def test_the_gram_path_gives_the_fold_by_fold_scores(monkeypatch, dim):
    """Cross-fitting from one Gram matrix per layer equals fitting every fold's direction."""
    from scans import classifier

    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, L, dim, generator=g)
    y = np.r_[np.ones(20), np.zeros(30)].astype(bool)
    x[torch.as_tensor(y), :, :2] += 1.0
    fast = fit_classifier("instruction", x, y, [0, 2], shrinkage=0.2, seed=4, splits=3)
    monkeypatch.setattr(classifier, "GRAM_MAX_ROWS", 0)  # every fold fitted directly
    slow = fit_classifier("instruction", x, y, [0, 2], shrinkage=0.2, seed=4, splits=3)
    np.testing.assert_allclose(fast.oof_scores, slow.oof_scores, rtol=1e-5, atol=1e-6)


def test_auto_shrinkage_picks_the_best_cross_validated_value():
    x, y = _data(40, 60)
    fit = fit_classifier("instruction", x, y, range(L), shrinkage=None, k=4, seed=0)
    assert set(fit.cv_auprc) == set(SHRINKAGE_GRID)
    assert fit.cv_auprc[fit.shrinkage] == max(fit.cv_auprc.values())
    # the nuisance dimension fools the mean difference; whitening sees through it
    assert fit.shrinkage < 1.0 and fit.cv_auprc[fit.shrinkage] > fit.cv_auprc[1.0] + 0.05


def test_cosine_fits_only_the_reference():
    x, y = _data()
    t = classifier_tensors("cosine", x, y, [None], range(L))[0]
    assert set(t) == {"reference"}
    assert torch.allclose(t["reference"], vectors.reference_transition(x[torch.as_tensor(y)]))


def test_shrunk_direction_with_fewer_prompts_than_dimensions():
    """n < D: the covariance is singular; the SVD route must still equal the direct solve."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 2, 40, generator=g)
    y = np.r_[np.ones(5), np.zeros(7)].astype(bool)
    x[torch.as_tensor(y), :, :3] += 1.0
    many = vectors.contrast_directions(x[y], x[~y], [0.1, 0.5, 1.0])
    xn = x.double().numpy()
    for lam, got in zip([0.1, 0.5], many):
        for layer in range(2):
            expected = _lda(xn[y, layer], xn[~y, layer], lam)
            np.testing.assert_allclose(got[layer].double().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert torch.allclose(many[2], vectors.mean_difference(x[y], x[~y]))
