"""The classifier's labelled pool: the shipped taxonomy anchors or a user's labelled file.

``anchors/taxonomy.jsonl`` holds prompts written for this project (see
``anchors/README.md``), each with a label, a taxonomy type, a form and, for harmful ones, a
severity; its ``dev`` split trains and calibrates the classifier, its ``test`` split is
kept for evaluation. A user's pool file is any prompt file with a label column whose values
are ``benign``/``harmful``/``severe`` (``severe`` = harmful and severe).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from .errors import ScansError

SPLITS = ("dev", "test", "all")
BENIGN_LABELS = frozenset({"benign", "safe", "harmless", "0", "false", "no"})
HARMFUL_LABELS = frozenset({"harmful", "unsafe", "1", "true", "yes"})
SEVERE_LABELS = frozenset({"severe"})
MIN_PER_CLASS = 8  # fewer harmful or benign pool prompts cannot calibrate a budget


@dataclass(frozen=True)
class PoolItem:
    """One labelled prompt of the classifier pool."""

    prompt: str
    harmful: bool
    severe: bool = False
    type: str = ""
    form: str = ""


def parse_label(value: str, where: str) -> tuple[bool, bool]:
    """(harmful, severe) from a label text; a one-line error for anything else."""
    text = str(value).strip().lower()
    if text in SEVERE_LABELS:
        return True, True
    if text in HARMFUL_LABELS:
        return True, False
    if text in BENIGN_LABELS:
        return False, False
    raise ScansError(
        f"{where}: label {value!r} is not benign, harmful or severe; fix: label every pool prompt "
        "benign, harmful or severe"
    )


def shipped_taxonomy(split: str = "dev") -> list[PoolItem]:
    """The packaged taxonomy anchors of one split (``dev``, ``test`` or ``all``)."""
    if split not in SPLITS:
        raise ScansError(f"taxonomy split {split!r}; fix: use one of {', '.join(SPLITS)}")
    text = (files("scans") / "anchors" / "taxonomy.jsonl").read_text(encoding="utf-8")
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if split != "all" and row["split"] != split:
            continue
        harmful, _ = parse_label(row["label"], f"line {number} of anchors/taxonomy.jsonl")
        items.append(
            PoolItem(row["prompt"], harmful, row.get("severity") == "severe", row["type"], row["form"])
        )
    return items


def read_pool(path: str | Path, text_column: str = "prompt", label_column: str = "label") -> list[PoolItem]:
    """A user's labelled pool file (txt files cannot carry labels: a one-line error)."""
    from .datafiles import read_prompts

    got = read_prompts(path, text_column=text_column, label_column=label_column)
    if got.labels is None:
        raise ScansError(f"{path} has no labels; fix: add a '{label_column}' column (benign/harmful/severe)")
    items = []
    for i, (prompt, label) in enumerate(zip(got.prompts, got.labels), 1):
        harmful, severe = parse_label(label, f"row {i} of {path}")
        items.append(PoolItem(prompt, harmful, severe, type="user"))
    return items


def check_pool(items: Sequence[PoolItem], name: str = "the classifier pool") -> None:
    """Enough of each class to train, cross-validate and calibrate (one-line error otherwise)."""
    n_h = sum(item.harmful for item in items)
    n_b = len(items) - n_h
    if min(n_h, n_b) < MIN_PER_CLASS:
        raise ScansError(
            f"{name} holds {n_h} harmful and {n_b} benign prompts, need at least {MIN_PER_CLASS} of each; "
            "fix: add labelled prompts (--pool FILE) or use the shipped pool"
        )


def sample_pool(
    items: Sequence[PoolItem], size: int | None, seed: int = 0, min_severe: int = 0
) -> list[PoolItem]:
    """A seeded sample of ``size`` items (None or more than there are: all), stratified by
    (label, severity, type): each stratum keeps its share of ``size``, rounded, at least one.
    The severe prompts (what the safety budget's severe class calibrates on) keep at least
    ``min_severe`` of theirs, or all where there are fewer."""
    items = list(items)
    if size is None or size >= len(items):
        return items
    rng = random.Random(seed)
    severe = [item for item in items if item.severe]
    n_severe = min(len(severe), max(min_severe, round(size * len(severe) / len(items))))
    chosen = _stratified(severe, n_severe, rng) + _stratified(
        [item for item in items if not item.severe], max(0, size - n_severe), rng
    )
    rng.shuffle(chosen)
    return chosen


def _stratified(items: Sequence[PoolItem], size: int, rng: random.Random) -> list[PoolItem]:
    """``size`` of ``items``, each (label, type) stratum keeping its share (at least one)."""
    if size >= len(items):
        return list(items)
    strata: dict[tuple, list[PoolItem]] = defaultdict(list)
    for item in items:
        strata[(item.harmful, item.type)].append(item)
    out: list[PoolItem] = []
    for key in sorted(strata):
        group = strata[key]
        rng.shuffle(group)
        out.extend(group[: max(1, round(size * len(group) / len(items)))] if size else [])
    rng.shuffle(out)
    return out[:size]
