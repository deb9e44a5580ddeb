"""Judge evaluation on human-labelled completions (``scans judge-eval``).

A labelled file is a CSV with the columns ``prompt``, ``completion`` and ``final_label``
(``1_full_compliance`` / ``2_full_refusal`` / ``3_partial_refusal``, the XSTest labels; the
bare names ``full_compliance`` ... are accepted too); ``id`` and ``type`` are optional. The
default files are the XSTest completions of GPT-4 and Mistral-7B-Instruct with human labels
(Röttger et al. 2024) in ``<data dir>/xstest_labelled/``; they are read at run time and never
copied into the repository.

Agreement is measured on the binary view (refusal = full or partial refusal, against full
compliance) for every judge, and on the three classes for judges with three-way labels.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScansError
from .judges import FULL_COMPLIANCE, FULL_REFUSAL, PARTIAL_REFUSAL, XSTEST_LABELS, Judge, agreement, refused
from .sources import resolve_data_dir, sha256_file

LABELLED_DIR = "xstest_labelled"
LABELLED_FILES = ("xs_gpt4.csv", "xs_mistralinstruct.csv")
REQUIRED_COLUMNS = ("prompt", "completion", "final_label")
GOLD_LABELS = {
    "1_full_compliance": FULL_COMPLIANCE,
    "2_full_refusal": FULL_REFUSAL,
    "3_partial_refusal": PARTIAL_REFUSAL,
    FULL_COMPLIANCE: FULL_COMPLIANCE,
    FULL_REFUSAL: FULL_REFUSAL,
    PARTIAL_REFUSAL: PARTIAL_REFUSAL,
}
SAVED_NAME = "judge_eval.json"


@dataclass(frozen=True)
class LabelledItem:
    """One human-labelled completion; ``label`` is one of :data:`~scans.bench.judges.XSTEST_LABELS`."""

    id: str
    type: str
    prompt: str
    completion: str
    label: str


@dataclass(frozen=True)
class LabelledSet:
    """The labelled completions of one file."""

    name: str
    path: Path
    items: list[LabelledItem]

    def __len__(self) -> int:
        return len(self.items)


def default_labelled_files(data_dir: str | Path | None = None) -> list[Path]:
    """The two XSTest labelled files in the data directory (``--data-dir``, else ``$SCANS_DATA``, ...)."""
    root = resolve_data_dir(data_dir) / LABELLED_DIR
    return [root / name for name in LABELLED_FILES]


def load_labelled(path: str | Path) -> LabelledSet:
    """Read a labelled CSV; a missing file or column or an unknown label is one :class:`ScansError`."""
    path = Path(path)
    if not path.is_file():
        raise ScansError(
            f"labelled file {path} not found; fix: pass existing FILE paths, or --data-dir DIR (or SCANS_DATA) "
            f"containing {LABELLED_DIR}/{LABELLED_FILES[0]}"
        )
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
            columns = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScansError(
            f"cannot read {path}: {' '.join(str(exc).split())}; fix: pass a UTF-8 CSV file"
        ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if not rows or missing:
        what = "no rows" if not rows else f"no column {', '.join(repr(c) for c in missing)}"
        raise ScansError(
            f"{path} has {what}; fix: give it the columns {', '.join(REQUIRED_COLUMNS)} (id and type optional)"
        )
    items = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        raw = (row.get("final_label") or "").strip()
        label = GOLD_LABELS.get(raw.lower())
        if label is None:
            raise ScansError(
                f"{path} row {number}: unknown final_label {raw!r}; fix: use 1_full_compliance, "
                "2_full_refusal or 3_partial_refusal"
            )
        items.append(
            LabelledItem(
                id=(row.get("id") or "").strip() or str(number - 1),
                type=(row.get("type") or "").strip(),
                prompt=row.get("prompt") or "",
                completion=row.get("completion") or "",
                label=label,
            )
        )
    return LabelledSet(path.stem, path, items)


@dataclass(frozen=True)
class Miss:
    """A disagreement with the human label; ``binary`` when the refusal verdict differs too."""

    file: str
    id: str
    type: str
    gold: str
    predicted: str
    binary: bool
    prompt: str
    completion: str


@dataclass
class Evaluation:
    """One judge on one set of items: binary and (for three-way judges) 3-class agreement."""

    judge: str
    name: str
    n: int
    binary_agree: int
    kappa: float
    three_way: bool
    three_agree: int
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    misses: list[Miss] = field(default_factory=list)

    @property
    def binary_percent(self) -> float:
        return 100.0 * self.binary_agree / self.n if self.n else float("nan")

    @property
    def three_percent(self) -> float | None:
        """3-class agreement in percent, or None for a judge without three-way labels."""
        if not self.three_way:
            return None
        return 100.0 * self.three_agree / self.n if self.n else float("nan")

    def summary(self) -> dict[str, Any]:
        three = self.three_percent
        return {
            "judge": self.judge,
            "file": self.name,
            "n": self.n,
            "binary_agreement": round(self.binary_percent, 2),
            "binary_kappa": round(self.kappa, 4),
            "three_class_agreement": None if three is None else round(three, 2),
            "confusion": self.confusion,
        }


def evaluate(judge: Judge, items: Sequence[LabelledItem], name: str = "all", file: str = "") -> Evaluation:
    """Agreement of ``judge`` with the human labels of ``items``.

    The confusion matrix maps each human label to the counts of the judge's labels. Misses are
    every item whose label differs (binary misses flagged), in item order.
    """
    predicted = [judge.judge(item.prompt, item.completion) for item in items]
    gold = [item.label for item in items]
    three_way = all(p in XSTEST_LABELS for p in predicted)
    binary = agreement(predicted, gold)
    confusion: dict[str, dict[str, int]] = {g: {} for g in XSTEST_LABELS}
    for g, p in zip(gold, predicted):
        confusion[g][p] = confusion[g].get(p, 0) + 1
    misses = [
        Miss(file, item.id, item.type, g, p, refused(p) != refused(g), item.prompt, item.completion)
        for item, g, p in zip(items, gold, predicted)
        if (p != g if three_way else refused(p) != refused(g))
    ]
    binary_agree = sum(refused(p) == refused(g) for g, p in zip(gold, predicted))
    return Evaluation(
        judge=getattr(judge, "name", type(judge).__name__),
        name=name,
        n=len(items),
        binary_agree=binary_agree,
        kappa=binary.kappa,
        three_way=three_way,
        three_agree=sum(g == p for g, p in zip(gold, predicted)) if three_way else 0,
        confusion=confusion,
        misses=misses,
    )


def evaluate_sets(judge: Judge, sets: Sequence[LabelledSet]) -> list[Evaluation]:
    """One :class:`Evaluation` per set, then one over all items (``"all"``) when there are several."""
    out = [evaluate(judge, s.items, s.name, s.name) for s in sets]
    if len(sets) > 1:
        three_way = all(e.three_way for e in out)
        overall = Evaluation(
            judge=out[0].judge,
            name="all",
            n=sum(e.n for e in out),
            binary_agree=sum(e.binary_agree for e in out),
            kappa=float("nan"),
            three_way=three_way,
            three_agree=sum(e.three_agree for e in out) if three_way else 0,
            confusion={g: {} for g in XSTEST_LABELS},
        )
        for e in out:
            for g, row in e.confusion.items():
                for p, k in row.items():
                    overall.confusion[g][p] = overall.confusion[g].get(p, 0) + k
        overall.misses = [m for e in out for m in e.misses]
        overall.kappa = _kappa(overall.confusion)
        out.append(overall)
    return out


def _kappa(confusion: dict[str, dict[str, int]]) -> float:
    """Cohen's kappa of the binary view from a confusion matrix (gold -> predicted -> count)."""
    gold, pred = [], []
    for g, row in confusion.items():
        for p, k in row.items():
            gold += [g] * k
            pred += [p] * k
    return agreement(pred, gold).kappa


def counts(items: Sequence[LabelledItem]) -> dict[str, int]:
    """Human label counts."""
    found = Counter(item.label for item in items)
    return {label: found.get(label, 0) for label in XSTEST_LABELS}


# ----------------------------------------------------------------------------- saved results


def saved_path() -> Path:
    """Where ``scans judge-eval --save`` writes by default: ``<scans cache>/judge_eval.json``."""
    from ..embedded import cache_dir

    return cache_dir() / SAVED_NAME


def save(results: dict[str, list[Evaluation]], sets: Sequence[LabelledSet], path: str | Path) -> Path:
    """Write the agreement of every judge (no prompts, no completions) with the date and files."""
    path = Path(path)
    payload = {
        "date": _dt.date.today().isoformat(),
        "files": [{"name": s.name, "n": len(s), "sha256": sha256_file(s.path)} for s in sets],
        "judges": {name: [e.summary() for e in evals] for name, evals in results.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ScansError(
            f"cannot write {path}: {exc.strerror or exc}; fix: pass a writable --save PATH"
        ) from None
    return path


def load_saved(path: str | Path | None = None) -> dict[str, Any] | None:
    """The saved agreement (``path`` or :func:`saved_path`), or None when absent or unreadable."""
    path = Path(path) if path is not None else saved_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("judges"), dict) else None


# Measured by `scans judge-eval --data-dir DATA` on 2026-12-01 (binary and 3-class agreement in
# percent with the human labels, 450 completions per file); the report quotes it unless a newer
# `scans judge-eval --save` result exists.
MEASURED: dict[str, Any] = {
    "date": "2026-12-01",
    "judges": {
        "substring": [
            {"file": "xs_gpt4", "n": 450, "binary_agreement": 95.33, "three_class_agreement": None},
            {
                "file": "xs_mistralinstruct",
                "n": 450,
                "binary_agreement": 85.56,
                "three_class_agreement": None,
            },
        ],
        "xstest": [
            {"file": "xs_gpt4", "n": 450, "binary_agreement": 94.22, "three_class_agreement": 93.56},
            {
                "file": "xs_mistralinstruct",
                "n": 450,
                "binary_agreement": 85.11,
                "three_class_agreement": 84.22,
            },
        ],
        "rules": [
            {"file": "xs_gpt4", "n": 450, "binary_agreement": 97.78, "three_class_agreement": 96.89},
            {
                "file": "xs_mistralinstruct",
                "n": 450,
                "binary_agreement": 95.11,
                "three_class_agreement": 90.89,
            },
        ],
    },
}


def _rows(source: dict[str, Any] | None, judge: str) -> list[dict[str, Any]]:
    rows = ((source or {}).get("judges") or {}).get(judge) or []
    return [r for r in rows if isinstance(r, dict) and r.get("file") != "all"]


def agreement_note(judge: str, saved: dict[str, Any] | None = None) -> str | None:
    """One sentence on ``judge``'s measured agreement with human labels, or None if never measured.

    ``saved`` (default: :func:`load_saved`) wins over the built-in :data:`MEASURED`.
    """
    source, origin = (saved if saved is not None else load_saved()), "saved"
    rows = _rows(source, judge)
    if not rows:
        source, origin = MEASURED, "built-in"
        rows = _rows(source, judge)
    if not rows or source is None:
        return None
    parts = []
    for row in rows:
        three = row.get("three_class_agreement")
        parts.append(
            f"{row.get('binary_agreement'):.1f}% on {row.get('file')} (n={row.get('n')}"
            + (f", 3-class {three:.1f}%" if three is not None else "")
            + ")"
        )
    where = "`scans judge-eval --save`" if origin == "saved" else "`scans judge-eval`"
    return (
        f"The `{judge}` judge agrees with human labels of XSTest completions on "
        f"{'; '.join(parts)} (binary refusal view; measured {source.get('date', '?')} by {where})."
    )
