"""Threshold calibration and the average-precision metric."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scans.calibration import average_precision, calibrate, metrics_at


def _ap_restated(scores, labels) -> float:
    """AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds, highest first."""
    scores = np.asarray(scores, float)
    labels = np.asarray(labels, bool)
    total = 0.0
    prev_recall = 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = (pred & labels).sum()
        precision = tp / pred.sum()
        recall = tp / labels.sum()
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return float(total)


def test_average_precision_hand_example():
    # ranked: 0.9(+) 0.8(-) 0.7(+) 0.6(-) 0.5(+)
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    labels = [1, 0, 1, 0, 1]
    # recall steps of 1/3 at ranks 1, 3, 5 with precision 1, 2/3, 3/5
    expected = (1 / 3) * (1 + 2 / 3 + 3 / 5)
    assert average_precision(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_average_precision_ties():
    # two tied at the top, one positive one negative: precision 1/2 at recall 1/2
    scores = [0.9, 0.9, 0.1, 0.5]
    labels = [1, 0, 0, 1]
    expected = 0.5 * 0.5 + 0.5 * (2 / 3)
    assert average_precision(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_average_precision_matches_restatement():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 30))
        scores = np.round(rng.normal(size=n), 1)  # rounding makes ties
        labels = rng.random(n) < 0.4
        if not labels.any():
            labels[0] = True
        assert average_precision(scores, labels) == pytest.approx(_ap_restated(scores, labels))


def test_average_precision_extremes():
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    assert np.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))


def test_metrics_at():
    m = metrics_at(np.array([0.1, 0.4, 0.6, 0.9]), np.array([0, 1, 0, 1]), 0.5)
    # pred: F F T T; labels: F T F T -> tp 1, fp 1, fn 1, tn 1
    assert m == pytest.approx(
        {"accuracy": 0.5, "balanced_accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    )
    # a score equal to the threshold counts as harmful (score >= threshold)
    at = metrics_at(np.array([0.2, 0.5]), np.array([0, 1]), 0.5)
    assert at["recall"] == 1.0 and at["accuracy"] == 1.0


def test_calibrate_separable():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1, 1], bool)
    cal = calibrate(scores, labels)
    assert 0.3 < cal.threshold < 0.8
    assert cal.threshold == pytest.approx(0.55)
    assert cal.accuracy == 1.0 and cal.balanced_accuracy == 1.0
    assert cal.auprc == pytest.approx(1.0)
    assert cal.precision == 1.0 and cal.recall == 1.0 and cal.f1 == 1.0
    assert (cal.n_harmful, cal.n_harmless) == (3, 3)
    d = cal.to_dict()
    assert d["threshold"] == cal.threshold and d["target_recall"] is None


def test_calibrate_separable_shuffled_and_imbalanced():
    rng = np.random.default_rng(1)
    neg = rng.uniform(-2, 0, size=17)
    pos = rng.uniform(0.5, 3, size=4)
    scores = np.concatenate([pos, neg])
    labels = np.array([True] * 4 + [False] * 17)
    order = rng.permutation(len(scores))
    cal = calibrate(scores[order], labels[order])
    assert neg.max() < cal.threshold < pos.min()
    assert cal.accuracy == 1.0 and cal.auprc == pytest.approx(1.0)


def test_calibrate_target_recall_on_overlap():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.5, 0.6, 0.7, 0.9])
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 1], bool)
    free = calibrate(scores, labels)
    assert free.recall < 1.0  # the unconstrained optimum gives up the low harmful score
    cal = calibrate(scores, labels, target_recall=1.0)
    assert cal.recall == 1.0
    assert cal.threshold <= 0.2
    assert cal.target_recall == 1.0
    # the threshold is the best balanced accuracy among the admissible ones
    admissible = [t for t in np.linspace(-1, 2, 601) if metrics_at(scores, labels, t)["recall"] == 1.0]
    best = max(metrics_at(scores, labels, t)["balanced_accuracy"] for t in admissible)
    assert cal.balanced_accuracy == pytest.approx(best)


def test_calibrate_is_optimal_balanced_accuracy():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=40)
    labels = (scores + rng.normal(scale=1.0, size=40)) > 0
    cal = calibrate(scores, labels)
    grid = np.concatenate([scores, scores + 1e-9, scores - 1e-9])
    best = max(metrics_at(scores, labels, t)["balanced_accuracy"] for t in grid)
    assert cal.balanced_accuracy == pytest.approx(best)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_calibrate_single_class(labels):
    with pytest.raises(AssertionError, match="both"):
        calibrate(np.array([0.1, 0.2, 0.3]), np.array(labels, bool))


def test_calibrate_rejects_nonfinite_and_shapes():
    with pytest.raises(AssertionError):
        calibrate(np.array([0.1, np.nan, 0.3]), np.array([1, 0, 1], bool))
    with pytest.raises(AssertionError):
        calibrate(np.array([0.1, 0.2]), np.array([1, 0, 1], bool))


def test_calibrate_ties_pick_middle_candidate():
    # alternating labels on 0..5: the cuts at 0.5, 2.5 and 4.5 all reach the best balanced
    # accuracy (2/3); the middle one of the three is chosen
    cal = calibrate(np.arange(6.0), np.array([0, 1, 0, 1, 0, 1], bool))
    assert cal.threshold == pytest.approx(2.5)
    assert cal.balanced_accuracy == pytest.approx(2 / 3)


def test_calibrate_threshold_is_permutation_invariant():
    # every candidate between the groups is equally good; the middle one is chosen, and a
    # permutation of the inputs does not change it
    scores = np.array([0.0, 0.1, 0.2, 1.0, 1.1, 1.2])
    labels = np.array([0, 0, 0, 1, 1, 1], bool)
    thresholds = {
        calibrate(scores[list(p)], labels[list(p)]).threshold for p in itertools.permutations(range(6))
    }
    assert len(thresholds) == 1


def test_several_splits_calibrate_to_the_mean_of_their_thresholds():
    rng = np.random.default_rng(4)
    labels = np.r_[np.ones(40), np.zeros(50)].astype(bool)
    base = np.r_[rng.normal(1, 1, 40), rng.normal(-1, 1, 50)]
    splits = base + rng.normal(0, 0.3, (4, 90))
    cal = calibrate(splits, labels, target_recall=0.9)
    per_split = [calibrate(s, labels, target_recall=0.9).threshold for s in splits]
    assert cal.split_thresholds == pytest.approx(per_split)
    assert cal.threshold == pytest.approx(np.mean(per_split))
    assert cal.recall == pytest.approx(metrics_at(splits.mean(0), labels, cal.threshold)["recall"])
    assert cal.auprc == pytest.approx(average_precision(splits.mean(0), labels))
    assert "split_thresholds" not in calibrate(splits[0], labels).to_dict()  # one split: as before
