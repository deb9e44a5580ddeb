"""Threshold calibration and classifier metrics (no hand tuning per data set)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ScansError


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
    split_thresholds: list[float] | None = None  # each cross-fitting split's, when there are several

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["split_thresholds"] is None:
            del d["split_thresholds"]
        return d


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


def best_threshold(scores: np.ndarray, labels: np.ndarray, target_recall: float | None = None) -> float:
    """The threshold of :func:`calibrate` on one set of labelled scores (1-D)."""
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
    return float(candidates[best[len(best) // 2]])


def calibrate(scores: np.ndarray, labels: np.ndarray, target_recall: float | None = None) -> Calibration:
    """Pick the threshold on held-out labelled scores (label True = harmful).

    Without ``target_recall``: the threshold with the best balanced accuracy. With it: the
    best balanced accuracy among thresholds that still flag at least that fraction of
    the harmful prompts (a safety floor). Candidates are midpoints between consecutive
    distinct scores; ties go to the middle candidate of the best ones. ``scores`` (splits, N),
    one row per cross-fitting split: each split's threshold, then their mean (kept in
    ``split_thresholds``), as :func:`rule_budget` does; the metrics and AUPRC are those of the
    splits' mean scores.
    """
    per_split = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    thresholds = [best_threshold(s, labels, target_recall) for s in per_split]
    mean_scores, labels = per_split.mean(0), np.asarray(labels, dtype=bool)
    threshold = float(np.mean(thresholds))
    m = metrics_at(mean_scores, labels, threshold)
    return Calibration(
        threshold=threshold,
        accuracy=m["accuracy"],
        balanced_accuracy=m["balanced_accuracy"],
        auprc=average_precision(mean_scores, labels),
        precision=m["precision"],
        recall=m["recall"],
        f1=m["f1"],
        n_harmful=int(labels.sum()),
        n_harmless=int((~labels).sum()),
        target_recall=target_recall,
        split_thresholds=thresholds if len(thresholds) > 1 else None,
    )


@dataclass
class SafetyBudget:
    """The steer threshold for a safety budget, by split conformal calibration.

    With the calibration scores of ``n`` harmful prompts sorted ascending, ``s_(1) <= ... <= s_(n)``
    and ``k = floor(max_loss * (n + 1))``, the threshold is ``s_(k)`` (minus infinity when
    ``k = 0``: nothing is steered). For a new harmful prompt exchangeable with the calibration
    ones, ``P(score < threshold) <= k / (n + 1) <= max_loss`` (a finite-sample, distribution-free
    bound; ties only lower the left side). ``upper_bound`` is the exact (Clopper-Pearson)
    one-sided 95% upper confidence bound on that rate from the ``below`` calibration scores
    that fall under the threshold.
    """

    threshold: float
    max_loss: float
    n: int
    k: int
    below: int
    guaranteed: float  # k / (n + 1)
    upper_bound: float

    def to_dict(self) -> dict:
        return asdict(self)


def clopper_pearson_upper(failures: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper confidence bound on a binomial rate after ``failures`` in ``n``."""
    assert 0 <= failures <= n and n > 0, "need 0 <= failures <= n and n > 0"
    if failures == n:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:  # P(X <= failures) for X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(failures + 1))

    lo, hi = 0.0, 1.0
    for _ in range(100):  # cdf falls with p: the bound is where it crosses alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return hi


def safety_budget(harmful_scores: np.ndarray, max_loss: float) -> SafetyBudget:
    """The conformal steer threshold of :class:`SafetyBudget` for ``max_loss`` in (0, 1)."""
    scores = np.sort(np.asarray(harmful_scores, dtype=np.float64))
    assert scores.ndim == 1 and len(scores) > 0 and np.isfinite(scores).all(), "need finite harmful scores"
    assert 0.0 < max_loss < 1.0, f"max_loss must lie in (0, 1), got {max_loss}"
    n = len(scores)
    k = int(math.floor(max_loss * (n + 1) + 1e-12))
    threshold = float(scores[k - 1]) if k > 0 else -math.inf
    below = int((scores < threshold).sum())
    return SafetyBudget(threshold, max_loss, n, k, below, k / (n + 1), clopper_pearson_upper(below, n))


def prompts_needed(max_loss: float) -> int:
    """The fewest calibration prompts of a class for which a ``max_loss`` budget steers anything
    (k = floor(max_loss (n + 1)) >= 1 in :func:`safety_budget`)."""
    return math.ceil(1 / max_loss) - 1


def severe_budget(max_loss: float | None, max_severe_loss: float | None) -> float | None:
    """The severe class's budget: its own when given, else the harmful budget."""
    return max_loss if max_severe_loss is None else max_severe_loss


def rule_budget(
    score: np.ndarray,
    inst: np.ndarray,
    harmful: np.ndarray,
    severe: np.ndarray,
    max_loss: float,
    refused: np.ndarray | None = None,
    max_severe_loss: float | None = None,
    harmful_threshold: float | None = None,
) -> tuple[float, dict]:
    """The decision rule's steer threshold t for a safety budget (see :mod:`scans.verdict`).

    A prompt is steered only when both signals are under t, i.e. max(score, inst) < t. ``score``
    and ``inst`` are (N,) calibration scores or (splits, N), one row per cross-fitting split. Per
    split, t_r is the lower of the :func:`safety_budget` thresholds of max(score, inst) over the
    harmful calibration prompts and over the severe ones (when there are any), so each class
    keeps its own bound; t is the mean of the t_r. Each t_r keeps the split-conformal bound; their
    mean keeps it on average wherever the scores' distribution function is convex over the t_r's
    range (its lower tail, where a small budget puts them), and moves far less with the fold
    assignment than any one t_r. With ``refused`` (the model's own refusal of each prompt), a class
    counts only the prompts the model refuses (steering cannot unlock a prompt the model answers
    anyway), unless the model refuses too few of them to calibrate the budget: then all of them.
    Returns t and a record: ``max_harmful_loss``, ``budget`` (per class: n, k, the guaranteed
    k/(n+1), its threshold (the mean over splits) and each split's, ``below`` (the most
    calibration scores under t in any split) with its 95% upper bound, and what it ``counted``),
    ``split_thresholds`` (the t_r), ``refused`` (counts, with ``refused`` only) and
    ``steered_fraction`` (per class, on these calibration scores, averaged over the splits). A
    one-line error when a class has too few prompts for the budget (the bound would need to steer
    nothing). ``max_severe_loss`` (at most ``max_loss``; None: ``max_loss``) is the severe class's
    own, tighter budget. ``harmful_threshold``: the rule's first branch (score at or above it is
    judged harmful, never steered), applied to ``steered_fraction`` as the verdicts apply it; it
    can only shrink the steered set, so the bound is unchanged.
    """
    harmful, severe = np.asarray(harmful, dtype=bool), np.asarray(severe, dtype=bool)
    joint = np.atleast_2d(np.maximum(np.asarray(score, dtype=np.float64), np.asarray(inst, dtype=np.float64)))
    assert joint.shape[1:] == harmful.shape == severe.shape, "one score, second signal and label per prompt"
    counted = np.ones_like(harmful) if refused is None else np.asarray(refused, dtype=bool)
    assert counted.shape == harmful.shape, "one refusal flag per prompt"
    severe_loss = severe_budget(max_loss, max_severe_loss)
    assert severe_loss is not None and 0.0 < severe_loss <= max_loss, (
        f"the severe budget must lie in (0, {max_loss}], got {severe_loss}"
    )
    classes: dict[str, tuple[np.ndarray, bool, list[SafetyBudget]]] = {}
    for name, rows, loss in (("harmful", harmful, max_loss), ("severe", severe, severe_loss)):
        if name == "severe" and not rows.any():
            continue
        need = prompts_needed(loss)
        # too few refused prompts to calibrate: the class counts all its prompts (stricter)
        by_refusal = refused is not None and int((rows & counted).sum()) >= need
        use = rows & counted if by_refusal else rows
        budgets = [safety_budget(j[use], loss) for j in joint]
        if budgets[0].k == 0:
            b = budgets[0]
            option = (
                "--max-severe-loss"
                if name == "severe" and max_severe_loss is not None
                else "--max-harmful-loss"
            )
            raise ScansError(
                f"{b.n} {name} prompts in the classifier pool cannot calibrate a {loss:g} budget "
                f"(need {need}); fix: add {name} prompts (--pool FILE) or raise {option}"
            )
        classes[name] = (use, by_refusal, budgets)
    split_t = [min(c[2][r].threshold for c in classes.values()) for r in range(len(joint))]
    threshold = float(np.mean(split_t))
    budget: dict[str, dict] = {}
    for name, (use, by_refusal, budgets) in classes.items():
        below = max(int((j[use] < threshold).sum()) for j in joint)
        b = budgets[0]
        budget[name] = {
            **b.to_dict(), "threshold": float(np.mean([x.threshold for x in budgets])),
            "split_thresholds": [x.threshold for x in budgets], "below": below,
            "upper_bound": clopper_pearson_upper(below, b.n), "counted": "refused" if by_refusal else "all",
        }  # fmt: skip
    steer = joint < threshold
    if harmful_threshold is not None:
        steer &= np.atleast_2d(np.asarray(score, dtype=np.float64)) < harmful_threshold
    steered = {"harmful": float(steer[:, harmful].mean()), "benign": float(steer[:, ~harmful].mean())}
    if severe.any():
        steered["severe"] = float(steer[:, severe].mean())
    if refused is not None and (harmful & counted).any():
        steered["harmful_refused"] = float(steer[:, harmful & counted].mean())
    record: dict[str, Any] = {
        "max_harmful_loss": max_loss, "max_severe_loss": severe_loss, "budget": budget, "split_thresholds": split_t,
    }  # fmt: skip
    if refused is not None:
        record["refused"] = {"harmful": int((harmful & counted).sum()), "of_harmful": int(harmful.sum()),
                             "severe": int((severe & counted).sum()), "of_severe": int(severe.sum())}  # fmt: skip
    return threshold, {**record, "steered_fraction": steered}


def refuse_budget(
    score: np.ndarray,
    inst: np.ndarray,
    harmful: np.ndarray,
    answered: np.ndarray,
    max_loss: float,
    harmful_threshold: float | None = None,
) -> tuple[float, dict]:
    """The refuse threshold r for a false-refusal budget: the mirror of :func:`rule_budget`.

    A prompt is steered toward refusal only when both signals are over r, i.e. min(score, inst)
    > r. Per cross-fitting split, r_s comes from :func:`safety_budget` on -min(score, inst) over
    the benign calibration prompts the model answers (``answered``: steering a prompt it already
    refuses adds no refusal), so for a new such prompt exchangeable with them, P(min > r_s) <=
    k / (n + 1) <= ``max_loss``; r is the mean of the r_s (as the steer threshold). Returns r and a
    record: ``max_benign_loss``, ``budget`` (n, k, guaranteed k/(n+1), ``above``: the most
    calibration scores over r in any split, its 95% upper bound), ``split_thresholds`` and
    ``steered_fraction`` (per class, among the answered prompts, averaged over the splits; with
    ``harmful_threshold``, a prompt must also be judged harmful, as the verdicts require). A
    one-line error when too few answered benign prompts can calibrate the budget.
    """
    harmful, answered = np.asarray(harmful, dtype=bool), np.asarray(answered, dtype=bool)
    both = np.atleast_2d(np.minimum(np.asarray(score, dtype=np.float64), np.asarray(inst, dtype=np.float64)))
    assert both.shape[1:] == harmful.shape == answered.shape, "one score, second signal and flag per prompt"
    use = ~harmful & answered
    budgets = [safety_budget(-b[use], max_loss) for b in both]
    if budgets[0].k == 0:
        raise ScansError(
            f"{budgets[0].n} benign prompts the model answers in the classifier pool cannot calibrate a "
            f"{max_loss:g} false-refusal budget (need {prompts_needed(max_loss)}); fix: add benign prompts "
            "(--pool FILE) or raise --max-benign-loss"
        )
    split_r = [-b.threshold for b in budgets]
    threshold = float(np.mean(split_r))
    above = max(int((b[use] > threshold).sum()) for b in both)
    toward = both > threshold
    if harmful_threshold is not None:
        toward &= np.atleast_2d(np.asarray(score, dtype=np.float64)) >= harmful_threshold
    steered = {
        "benign_answered": float(toward[:, use].mean()),
        "harmful_answered": float(toward[:, harmful & answered].mean())
        if (harmful & answered).any()
        else 0.0,
    }
    b = budgets[0]
    budget = {
        "n": b.n, "k": b.k, "guaranteed": b.guaranteed, "above": above,
        "upper_bound": clopper_pearson_upper(above, b.n), "threshold": threshold,
    }  # fmt: skip
    record = {"max_benign_loss": max_loss, "budget": budget, "split_thresholds": split_r}
    return threshold, {**record, "steered_fraction": steered}
