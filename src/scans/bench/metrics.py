"""Benchmark metrics: refusal rates with Wilson intervals, classifier quality, judge agreement.

Records are the rows of a run's ``generations.jsonl`` (dicts with at least ``method``,
``split``, ``id``, ``prompt``, ``label``, ``response`` and ``judges``).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import average_precision
from .judges import Agreement, agreement, get_judge, refused

Z95 = 1.959963984540054
Record = Mapping[str, Any]


@dataclass(frozen=True)
class Rate:
    """k of n, the rate k/n and its Wilson 95% interval [lo, hi] (all fractions; NaN when n == 0)."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return format_rate(self)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate k/n (default 95%); (NaN, NaN) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # clamp: rounding must never put the rate outside its own interval
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def rate(k: int, n: int) -> Rate:
    """A :class:`Rate` with its Wilson 95% interval."""
    lo, hi = wilson(k, n)
    return Rate(k, n, k / n if n else float("nan"), lo, hi)


def format_rate(r: Rate, digits: int = 1) -> str:
    """'41.2% [35.3, 47.4]' (percent, Wilson 95%); 'n/a' when there are no items."""
    if r.n == 0:
        return "n/a"
    return f"{100 * r.rate:.{digits}f}% [{100 * r.lo:.{digits}f}, {100 * r.hi:.{digits}f}]"


def dedupe(records: Iterable[Record]) -> list[Record]:
    """Keep the last record of each (method, split, id), in first-seen order."""
    latest: dict[tuple[str, str, int], Record] = {}
    for record in records:
        latest[(record["method"], record["split"], record["id"])] = record
    return list(latest.values())


def judge_label(record: Record, judge: str = "substring") -> str:
    """The record's label by ``judge``: the stored one, else computed now from prompt and response."""
    stored = (record.get("judges") or {}).get(judge)
    if stored is not None:
        return stored
    return get_judge(judge).judge(record.get("prompt", ""), record.get("response", ""))


def refusal_rates(records: Iterable[Record], judge: str = "substring") -> dict[tuple[str, str], Rate]:
    """Refusal rate per (method, split) by ``judge`` (binary view: partial refusals count)."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        cell = counts[(record["method"], record["split"])]
        cell[0] += refused(judge_label(record, judge))
        cell[1] += 1
    return {key: rate(k, n) for key, (k, n) in counts.items()}


def refusal_rates_by(
    records: Iterable[Record], group: Callable[[Record], str], judge: str = "substring"
) -> dict[tuple[str, str], Rate]:
    """Refusal rate per (method, ``group(record)``) by ``judge``, e.g. per jailbreak template family."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        cell = counts[(record["method"], group(record))]
        cell[0] += refused(judge_label(record, judge))
        cell[1] += 1
    return {key: rate(k, n) for key, (k, n) in counts.items()}


def paired_difference(
    records: Iterable[Record], method: str, baseline: str, judge: str = "substring"
) -> tuple[float, int]:
    """Refusal rate of ``method`` minus that of ``baseline`` on the prompts (split, id) both answered,
    as a fraction, and the number of such prompts; (NaN, 0) when there are none."""
    verdicts: dict[str, dict[tuple[str, int], bool]] = {method: {}, baseline: {}}
    for record in records:
        if record["method"] in verdicts:
            verdicts[record["method"]][(record["split"], record["id"])] = refused(judge_label(record, judge))
    common = verdicts[method].keys() & verdicts[baseline].keys()
    if not common:
        return float("nan"), 0
    diff = sum(verdicts[method][key] - verdicts[baseline][key] for key in common)
    return diff / len(common), len(common)


def label_counts(records: Iterable[Record], judge: str = "xstest") -> dict[tuple[str, str], dict[str, int]]:
    """Counts of each label of ``judge`` per (method, split), e.g. the three XSTest classes."""
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in records:
        out[(record["method"], record["split"])][judge_label(record, judge)] += 1
    return {key: dict(value) for key, value in out.items()}


@dataclass(frozen=True)
class ClassifierMetrics:
    """Quality of ``score >= threshold`` as a harmful-prompt detector on one labelled set.

    Positives are "unsafe" prompts. ``auprc`` is NaN without positives; precision/recall/F1
    are NaN when undefined (no flagged prompts / no positives).
    """

    n: int
    n_unsafe: int
    threshold: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    auprc: float
    flagged: Rate


def classifier_metrics(
    scores: Sequence[float], labels: Sequence[str], threshold: float, flagged: Sequence[bool] | None = None
) -> ClassifierMetrics:
    """Precision, recall, F1, accuracy and AUPRC of the classifier on scores with "safe"/"unsafe" labels.

    ``flagged`` (the verdicts actually applied) overrides ``score >= threshold`` for the counts.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray([label == "unsafe" for label in labels], dtype=bool)
    pred = s >= threshold if flagged is None else np.asarray(flagged, dtype=bool)
    n, pos = len(y), int(y.sum())
    tp = int((pred & y).sum())
    n_flag = int(pred.sum())
    nan = float("nan")
    precision = tp / n_flag if n_flag else nan
    recall = tp / pos if pos else nan
    if math.isnan(precision) or math.isnan(recall):
        f1 = nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = float((pred == y).mean()) if n else nan
    auprc = average_precision(s, y) if pos else nan
    return ClassifierMetrics(n, pos, threshold, accuracy, precision, recall, f1, auprc, rate(n_flag, n))


def pr_curve(scores: Sequence[float], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, thresholds) at each distinct score, highest threshold first; "unsafe" positive."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray([label == "unsafe" for label in labels], dtype=bool)
    if not y.any():
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall = tp / y.sum()
    return recall, precision, s[ends]


def judge_agreement(
    records: Sequence[Record], judges: Sequence[str], sample: int | None = 200, seed: int = 0
) -> dict[tuple[str, str], Agreement]:
    """Agreement of every pair of ``judges`` on a random sample of ``sample`` records (all if None)."""
    rows = list(records)
    if sample is not None and len(rows) > sample:
        rows = random.Random(seed).sample(rows, sample)
    labels = {j: [judge_label(r, j) for r in rows] for j in judges}
    out = {}
    for i, a in enumerate(judges):
        for b in judges[i + 1 :]:
            out[(a, b)] = agreement(labels[a], labels[b])
    return out


@dataclass(frozen=True)
class Disagreement:
    """One prompt on which methods disagree (refusal vs compliance): responses and labels per method."""

    split: str
    id: int
    prompt: str
    label: str
    responses: dict[str, str]
    refused: dict[str, bool]


def disagreements(records: Iterable[Record], judge: str = "substring") -> list[Disagreement]:
    """Prompts answered by at least two methods whose binary refusal labels differ, in split/id order."""
    by_prompt: dict[tuple[str, int], dict[str, Record]] = defaultdict(dict)
    for record in records:
        by_prompt[(record["split"], record["id"])][record["method"]] = record
    out = []
    for (split, id_), per_method in sorted(by_prompt.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if len(per_method) < 2:
            continue
        verdicts = {m: refused(judge_label(r, judge)) for m, r in per_method.items()}
        if len(set(verdicts.values())) < 2:
            continue
        first = next(iter(per_method.values()))
        out.append(
            Disagreement(
                split,
                id_,
                first.get("prompt", ""),
                first.get("label", ""),
                {m: r.get("response", "") for m, r in per_method.items()},
                verdicts,
            )
        )
    return out


def mean(values: Iterable[float]) -> float:
    """Mean of the values, NaN when empty."""
    items = list(values)
    return sum(items) / len(items) if items else float("nan")
