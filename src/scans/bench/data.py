"""Benchmark data: XSTest, OKTest, HarmfulQ, AdvBench, TruthfulQA, MMLU, jailbreaks and user files.

Files are looked up in a data directory: the ``data_dir`` argument (``--data-dir``), else
``$SCANS_DATA``, else ``<scans cache>/data`` (``~/.cache/scans/data``, moved by
``$SCANS_CACHE``). Nothing is fetched unless asked: with ``download=True`` (``--download``) a
missing file is downloaded from its canonical public source (:data:`SOURCES`) with ``urllib``
and kept only if its SHA-256 matches the canonical copy. Offline and missing is one
:class:`~scans.errors.ScansError` naming the file and where to put it.

Every loader returns :class:`Split` objects (labels ``"safe"`` / ``"unsafe"``); MMLU returns
per-subject dev shots and test questions. The ``jailbreak`` split ships with the package
(``scans/bench/jailbreak/``, see its README) and needs no data directory.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ScansError

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


@dataclass(frozen=True)
class Source:
    """A benchmark file: where it lives in the data directory and where it comes from.

    ``sha256`` is the digest of the canonical copy (for ``kind == "mmlu"``: the digest of the
    sorted lines ``"<dev|test>/<file> <sha256>\\n"`` of the extracted CSVs, see :func:`tree_digest`).
    ``urls`` are tried in order.
    """

    key: str
    title: str
    filename: str
    urls: tuple[str, ...]
    sha256: str
    kind: str = "file"


# Digests computed from the canonical copies used by this project's benchmarks. Upstream
# repositories move and rename files; URLs pinned to a commit come first where known. A
# download whose digest differs is rejected (and the error says so), never used silently.
SOURCES: dict[str, Source] = {
    "xstest": Source(
        "xstest",
        "XSTest",
        "xstest_v2_prompts.csv",
        (
            # Commit of the v2 prompt file in the repository's history (later renamed
            # xstest_prompts.csv and the repository renamed paul-rottger/xstest; GitHub redirects).
            "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/"
            "a3bb396ddc1939c6f264f17b7cf5b7a5d82833de/xstest_v2_prompts.csv",
            "https://raw.githubusercontent.com/paul-rottger/exaggerated-safety/main/xstest_v2_prompts.csv",
        ),
        "24c0b59ef3ab6af1de444fceca441a54522cbe42a7f916cb1aebf775ba2800eb",
    ),
    "oktest": Source(
        "oktest",
        "OKTest",
        "OKTest.csv",
        (
            "https://raw.githubusercontent.com/InvokerStark/OverKill/"
            "51809bb9e7c029d7cc1247389e0578da92e784e2/data/OKTest.csv",
            "https://raw.githubusercontent.com/InvokerStark/OverKill/main/data/OKTest.csv",
        ),
        "1be3e8d3fe6b45a170653da63c8cf70dbf97508a48735e65db0713a44e158860",
    ),
    "harmfulq": Source(
        "harmfulq",
        "HarmfulQ",
        "HarmfulQ.json",
        # HarmfulQ ("DangerousQA") is data/dangerous-q/toxic_outs.json in the paper's repository.
        (
            "https://raw.githubusercontent.com/SALT-NLP/chain-of-thought-bias/main/data/dangerous-q/toxic_outs.json",
        ),
        "b40b0193d063cb5d742e6d0e070dde119e0291619830c65653ca19bdc84fdd10",
    ),
    "advbench": Source(
        "advbench",
        "AdvBench",
        "AdvBench.csv",
        (
            "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv",
        ),
        "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
    ),
    "truthfulqa": Source(
        "truthfulqa",
        "TruthfulQA",
        "TruthfulQA.csv",
        # Not verified that the current upstream file is byte-identical to the canonical copy
        # (it starts with a UTF-8 BOM); a changed upstream file fails the checksum.
        ("https://raw.githubusercontent.com/sylinrl/TruthfulQA/main/TruthfulQA.csv",),
        "8d7dd15f033196140f032d97d30f037da7a7b1192c3f36f9937c1850925335a2",
    ),
    "mmlu": Source(
        "mmlu",
        "MMLU",
        "mmlu",
        # The tar's own digest is not recorded (no canonical copy of the tar here): the
        # extracted dev/ and test/ CSVs are verified instead (see tree_digest).
        ("https://people.eecs.berkeley.edu/~hendrycks/data.tar",),
        "64c910ea7d8af65762ff6425ddf3cbca9389f3e25027344f402c9599a1fed127",
        kind="mmlu",
    ),
}


# ----------------------------------------------------------------------------- locating files


def resolve_data_dir(path: str | Path | None = None) -> Path:
    """The data directory: ``path``, else ``$SCANS_DATA``, else ``<scans cache>/data``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("SCANS_DATA")
    if env:
        return Path(env).expanduser()
    from ..embedded import cache_dir

    return cache_dir() / "data"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of an MMLU directory: sha256 of the sorted ``"<dev|test>/<name> <sha256>\\n"`` lines."""
    lines = [f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n" for p in sorted(root.glob("*/*.csv"))]
    lines = [line for line in lines if line.split("/", 1)[0] in ("dev", "test")]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _present(source: Source, path: Path) -> bool:
    if source.kind == "mmlu":
        return (path / "dev").is_dir() and (path / "test").is_dir()
    return path.is_file()


def locate(key: str, data_dir: str | Path | None = None, download: bool = False) -> Path:
    """Path of a benchmark file (or the MMLU directory); downloads it when missing and ``download``."""
    source = SOURCES[key]
    root = resolve_data_dir(data_dir)
    path = root / source.filename
    if _present(source, path):
        return path
    if not download:
        what = "directory" if source.kind == "mmlu" else "file"
        extra = " (with dev/ and test/ inside)" if source.kind == "mmlu" else ""
        raise ScansError(
            f"{source.title} {what} {source.filename}{extra} not found in {root}; fix: pass --data-dir DIR "
            f"containing it, set SCANS_DATA, or use --download"
        )
    _download(source, root)
    return path


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "scans-bench"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - fixed public URLs
        return response.read()


def _download(source: Source, root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScansError(
            f"cannot create data directory {root}: {exc}; fix: pass a writable --data-dir"
        ) from None
    problems = []
    for url in source.urls:
        try:
            payload = _fetch(url)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"{url}: {' '.join(str(getattr(exc, 'reason', exc)).split())}")
            continue
        if source.kind == "mmlu":
            problem = _install_mmlu(payload, root / source.filename, source.sha256)
        else:
            problem = _install_file(payload, root / source.filename, source.sha256)
        if problem is None:
            return
        problems.append(f"{url}: {problem}")
    raise ScansError(
        f"cannot download {source.title} ({'; '.join(problems)}); fix: download it yourself and put "
        f"{source.filename} in {root}, or pass --data-dir DIR containing it"
    )


def _install_file(payload: bytes, target: Path, sha256: str) -> str | None:
    got = hashlib.sha256(payload).hexdigest()
    if got != sha256:
        return f"checksum mismatch (sha256 {got[:12]}..., expected {sha256[:12]}...)"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return None


def _install_mmlu(payload: bytes, target: Path, sha256: str) -> str | None:
    """Extract ``data/dev`` and ``data/test`` CSVs of the MMLU tar into ``target``, verified."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".mmlu."))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if not member.isfile() or len(parts) < 2 or not member.name.endswith(".csv"):
                        continue
                    part, name = parts[-2], parts[-1]
                    if part not in ("dev", "test") or name.startswith("."):
                        continue
                    handle = tar.extractfile(member)
                    if handle is None:
                        continue
                    (staging / part).mkdir(exist_ok=True)
                    (staging / part / name).write_bytes(handle.read())
        except tarfile.TarError as exc:
            return f"not a tar archive ({exc})"
        got = tree_digest(staging)
        if got != sha256:
            return (
                f"checksum mismatch of the extracted CSVs (sha256 {got[:12]}..., expected {sha256[:12]}...)"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return None
    finally:
        if staging.exists():
            shutil.rmtree(staging)


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


# ----------------------------------------------------------------------------- jailbreaks

# Template families in the order each request goes through them (see bench/jailbreak/README.md).
JAILBREAK_FAMILIES = (
    "role_play",
    "prefix_injection",
    "refusal_suppression",
    "hypothetical_fiction",
    "hidden_in_task",
    "translation_encoding",
)
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_UNLEET = {v: k for k, v in _LEET.items()}


def encode(text: str, encoding: str | None) -> str:
    """``text`` as a template receives it: unchanged (None), ``base64``, ``rot13`` or ``leetspeak``.

    Leetspeak replaces the lowercase letters a, e, i, o, s, t with 4, 3, 1, 0, 5, 7; it decodes
    exactly because no request contains those digits (checked when the requests are read).
    """
    if encoding is None:
        return text
    if encoding == "base64":
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    if encoding == "rot13":
        return codecs.encode(text, "rot13")
    if encoding == "leetspeak":
        return "".join(_LEET.get(c, c) for c in text)
    raise ValueError(f"unknown encoding {encoding!r} (base64, rot13 or leetspeak)")


def decode(text: str, encoding: str | None) -> str:
    """Inverse of :func:`encode`."""
    if encoding is None:
        return text
    if encoding == "base64":
        return base64.b64decode(text.encode("ascii")).decode("utf-8")
    if encoding == "rot13":
        return codecs.decode(text, "rot13")
    if encoding == "leetspeak":
        return "".join(_UNLEET.get(c, c) for c in text)
    raise ValueError(f"unknown encoding {encoding!r} (base64, rot13 or leetspeak)")


def _packaged_jsonl(name: str) -> list[dict[str, Any]]:
    from importlib.resources import files

    resource = files("scans") / "bench" / "jailbreak" / name
    try:
        lines = resource.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as exc:
        raise ScansError(
            f"cannot read the packaged bench/jailbreak/{name}: {exc}; fix: reinstall scans"
        ) from None


def jailbreak_requests() -> list[dict[str, Any]]:
    """The packaged harmful requests: dicts with id, text, category and severity."""
    rows = _packaged_jsonl("requests.jsonl")
    for row in rows:
        if set(row["text"]) & set(_UNLEET):
            raise ScansError(
                f"jailbreak request {row['id']} contains a digit that leetspeak uses; fix: spell it out"
            )
    return rows


def jailbreak_templates() -> list[dict[str, Any]]:
    """The packaged attack templates: dicts with id, family, text (one ``{request}``), inspiration
    and, for encoded ones, encoding."""
    rows = _packaged_jsonl("templates.jsonl")
    for row in rows:
        if row["family"] not in JAILBREAK_FAMILIES or row["text"].count("{request}") != 1:
            raise ScansError(f"jailbreak template {row['id']} is malformed; fix: reinstall scans")
    return rows


def compose(template: dict[str, Any], request: str) -> str:
    """The prompt: ``template``'s text with ``{request}`` replaced by the (encoded) request."""
    return template["text"].replace("{request}", encode(request, template.get("encoding")))


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
