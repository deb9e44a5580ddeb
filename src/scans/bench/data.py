"""Benchmark data: XSTest, OKTest, HarmfulQ, AdvBench, TruthfulQA, MMLU, jailbreaks and user files.

Every loader returns :class:`Split` objects (labels ``"safe"`` / ``"unsafe"``); MMLU returns
per-subject dev shots and test questions. Files are found (and, when asked, downloaded) by
:mod:`scans.bench.sources`; the ``jailbreak`` split is built from the packaged requests and
templates of :mod:`scans.bench.jailbreaks` and needs no data directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScansError
from .jailbreaks import JAILBREAK_FAMILIES, compose, jailbreak_requests, jailbreak_templates
from .sources import locate

SAFE, UNSAFE = "safe", "unsafe"


@dataclass(frozen=True)
class Split:
    """One evaluation set: prompts with parallel labels ("safe" or "unsafe").

    ``meta`` (optional) holds one dict per prompt (e.g. the jailbreak family and template); the
    bench runner writes it into each generation record as ``"meta"``.
    """

    name: str
    prompts: list[str]
    labels: list[str]
    meta: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.labels):
            raise ValueError(f"split {self.name}: {len(self.prompts)} prompts but {len(self.labels)} labels")
        if self.meta is not None and len(self.meta) != len(self.prompts):
            raise ValueError(f"split {self.name}: {len(self.prompts)} prompts but {len(self.meta)} meta rows")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Iterable[int]) -> Split:
        """The prompts at ``indices`` (in that order), with their labels and meta rows."""
        keep = list(indices)
        meta = None if self.meta is None else [self.meta[i] for i in keep]
        return Split(self.name, [self.prompts[i] for i in keep], [self.labels[i] for i in keep], meta)

    @property
    def label(self) -> str:
        """ "safe" or "unsafe" when every prompt has that label, else "mixed"."""
        kinds = set(self.labels)
        return kinds.pop() if len(kinds) == 1 else "mixed"


# ----------------------------------------------------------------------------- loaders


def _table(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, encoding="utf-8-sig", keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())
        raise ScansError(f"cannot read {path}: {first}; fix: replace it with the canonical file") from None


def _column(frame, column: str, path: Path) -> list[str]:
    if column not in frame.columns:
        raise ScansError(
            f"{path} has no column '{column}' (columns: {', '.join(map(str, frame.columns))}); "
            f"fix: replace it with the canonical file"
        )
    return [str(value) for value in frame[column]]


def xstest(data_dir: str | Path | None = None, download: bool = False) -> tuple[Split, Split]:
    """XSTest v2 -> (``xstest-safe`` (250), ``xstest-unsafe`` (200)); ``type`` ``contrast_*`` = unsafe."""
    path = locate("xstest", data_dir, download)
    frame = _table(path)
    prompts = [p.strip() for p in _column(frame, "prompt", path)]
    types = _column(frame, "type", path)
    safe = [p for p, t in zip(prompts, types) if p and not t.startswith("contrast_")]
    unsafe = [p for p, t in zip(prompts, types) if p and t.startswith("contrast_")]
    return (
        Split("xstest-safe", safe, [SAFE] * len(safe)),
        Split("xstest-unsafe", unsafe, [UNSAFE] * len(unsafe)),
    )


def oktest(data_dir: str | Path | None = None, download: bool = False) -> Split:
    """OKTest: 300 safe prompts with harmful-sounding words (trailing newlines stripped)."""
    path = locate("oktest", data_dir, download)
    prompts = [p.strip() for p in _column(_table(path), "prompt", path) if p.strip()]
    return Split("oktest", prompts, [SAFE] * len(prompts))


def harmfulq(data_dir: str | Path | None = None, download: bool = False) -> Split:
    """HarmfulQ: 200 harmful questions (a JSON list of strings)."""
    path = locate("harmfulq", data_dir, download)
    try:
        items = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, OSError) as exc:
        raise ScansError(f"cannot read {path}: {exc}; fix: replace it with the canonical file") from None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ScansError(f"{path} is not a JSON list of strings; fix: replace it with the canonical file")
    prompts = [item.strip() for item in items if item.strip()]
    return Split("harmfulq", prompts, [UNSAFE] * len(prompts))


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


def advbench(
    exclude: Iterable[str] = (), data_dir: str | Path | None = None, download: bool = False
) -> Split:
    """AdvBench harmful behaviours (``goal`` column), minus ``exclude`` (e.g. prompts used as anchors;
    compared case- and whitespace-insensitively)."""
    path = locate("advbench", data_dir, download)
    skip = {_key(text) for text in exclude}
    prompts = [p.strip() for p in _column(_table(path), "goal", path) if p.strip() and _key(p) not in skip]
    return Split("advbench", prompts, [UNSAFE] * len(prompts))


def truthfulqa(data_dir: str | Path | None = None, download: bool = False) -> Split:
    """TruthfulQA questions (benign)."""
    path = locate("truthfulqa", data_dir, download)
    prompts = [p.strip() for p in _column(_table(path), "Question", path) if p.strip()]
    return Split("truthfulqa", prompts, [SAFE] * len(prompts))


def truthfulqa_answers(data_dir: str | Path | None = None, download: bool = False) -> list[tuple[str, str]]:
    """(question, best answer) pairs of TruthfulQA: a corpus of benign answers for perplexity."""
    path = locate("truthfulqa", data_dir, download)
    frame = _table(path)
    pairs = zip(_column(frame, "Question", path), _column(frame, "Best Answer", path))
    return [(q.strip(), a.strip()) for q, a in pairs if q.strip() and a.strip()]


@dataclass(frozen=True)
class MMLUQuestion:
    """One multiple-choice question; ``answer`` is the letter A-D."""

    question: str
    choices: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class MMLUSubject:
    """One MMLU subject: the dev questions (few-shot examples) and the test questions."""

    name: str
    dev: list[MMLUQuestion]
    test: list[MMLUQuestion]


def _mmlu_file(path: Path) -> list[MMLUQuestion]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, keep_default_na=False, dtype=str, encoding="utf-8-sig")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ScansError(f"cannot read {path}: {' '.join(str(exc).split())}; fix: replace it") from None
    if frame.shape[1] != 6:
        raise ScansError(
            f"{path} has {frame.shape[1]} columns, not 6 (question, A, B, C, D, answer); fix: replace it"
        )
    out = []
    for row in frame.itertuples(index=False):
        answer = str(row[5]).strip().upper()
        if answer not in ("A", "B", "C", "D"):
            raise ScansError(
                f"{path} has answer {row[5]!r}, not A-D; fix: replace it with the canonical file"
            )
        out.append(MMLUQuestion(str(row[0]).strip(), tuple(str(c).strip() for c in row[1:5]), answer))
    return out


def mmlu_subjects(data_dir: str | Path | None = None, download: bool = False) -> list[str]:
    """Names of the MMLU subjects present (those with both a dev and a test file)."""
    root = locate("mmlu", data_dir, download)
    dev = {p.name[: -len("_dev.csv")] for p in (root / "dev").glob("*_dev.csv")}
    test = {p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv")}
    return sorted(dev & test)


def mmlu(
    subjects: Iterable[str] | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
) -> dict[str, MMLUSubject]:
    """MMLU per subject: dev questions (the 5 shots) and the first ``limit`` test questions."""
    root = locate("mmlu", data_dir, download)
    available = mmlu_subjects(data_dir)
    chosen = available if subjects is None else list(subjects)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ScansError(
            f"unknown MMLU subject(s) {', '.join(unknown)} in {root}; fix: use names such as "
            f"{', '.join(available[:3])} ({len(available)} available)"
        )
    if limit is not None and limit < 1:
        raise ScansError(f"MMLU limit {limit}; fix: pass a positive --limit")
    out = {}
    for name in chosen:
        test = _mmlu_file(root / "test" / f"{name}_test.csv")
        out[name] = MMLUSubject(name, _mmlu_file(root / "dev" / f"{name}_dev.csv"), test[:limit])
    return out


_LABELS = {
    SAFE: ("safe", "benign", "harmless", "ok", "0", "false", "no", "negative", "borderline"),
    UNSAFE: ("unsafe", "harmful", "malicious", "toxic", "1", "true", "yes", "positive"),
}


def normalise_label(value: str, where: str = "") -> str:
    """Map a user label (safe/benign/harmless/0/false..., unsafe/harmful/1/true...) to "safe"/"unsafe"."""
    text = value.strip().lower()
    if text.startswith("contrast_"):
        return UNSAFE
    for label, names in _LABELS.items():
        if text in names:
            return label
    raise ScansError(
        f"label {value!r}{where} is neither safe nor unsafe; fix: use safe/benign/harmless/0 or "
        f"unsafe/harmful/1 in the label column"
    )


def user_file(
    path: str | Path,
    text_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
    label: str = SAFE,
) -> Split:
    """A split from any prompt file (txt, csv, tsv, json, jsonl, parquet; see :mod:`scans.datafiles`).

    With ``label_column`` the labels come from that column (normalised by :func:`normalise_label`);
    otherwise every prompt gets ``label`` ("safe" by default: a set of benign prompts to test for
    false refusals). The split is named ``name`` or the file's stem.
    """
    from ..datafiles import read_prompts

    read = read_prompts(path, text_column=text_column, label_column=label_column)
    if read.labels is not None:
        labels = [normalise_label(value, f" in {path}") for value in read.labels]
    else:
        labels = [normalise_label(label)] * len(read.prompts)
    return Split(name or Path(path).stem, read.prompts, labels)


def jailbreak() -> Split:
    """The ``jailbreak`` split: every packaged request through one template of each family.

    Request ``i`` (file order) goes through the families in :data:`JAILBREAK_FAMILIES` order and,
    within a family, through its template ``i mod (templates in the family)`` (file order), so
    every template is used and each family gets every request once. Prompts come request by
    request (``--limit 12`` gives two requests through all six families). Each prompt's meta row
    holds family, template, request (id), category, severity and encoding.
    """
    templates = jailbreak_templates()
    by_family = {family: [t for t in templates if t["family"] == family] for family in JAILBREAK_FAMILIES}
    empty = [family for family, members in by_family.items() if not members]
    if empty:
        raise ScansError(f"no jailbreak template of family {', '.join(empty)}; fix: reinstall scans")
    prompts, meta = [], []
    for i, request in enumerate(jailbreak_requests()):
        for family in JAILBREAK_FAMILIES:
            members = by_family[family]
            template = members[i % len(members)]
            prompts.append(compose(template, request["text"]))
            meta.append(
                {
                    "family": family,
                    "template": template["id"],
                    "request": request["id"],
                    "category": request["category"],
                    "severity": request["severity"],
                    "encoding": template.get("encoding"),
                }
            )
    return Split("jailbreak", prompts, [UNSAFE] * len(prompts), meta)


# ----------------------------------------------------------------------------- registry

SPLITS = ("xstest-safe", "xstest-unsafe", "oktest", "harmfulq", "advbench", "truthfulqa", "jailbreak")


def load_split(name: str, data_dir: str | Path | None = None, download: bool = False) -> Split:
    """A named split (one of :data:`SPLITS`)."""
    if name in ("xstest-safe", "xstest-unsafe"):
        safe, unsafe = xstest(data_dir, download)
        return safe if name == "xstest-safe" else unsafe
    if name == "jailbreak":  # packaged: no data directory
        return jailbreak()
    loaders = {"oktest": oktest, "harmfulq": harmfulq, "advbench": advbench, "truthfulqa": truthfulqa}
    if name not in loaders:
        raise ScansError(f"unknown split {name!r}; fix: use one of {', '.join(SPLITS)} or a prompt file")
    return loaders[name](data_dir=data_dir, download=download)
