"""Where benchmark files live and come from: the data directory, pinned sources, checksummed download.

Files are looked up in a data directory: the ``data_dir`` argument (``--data-dir``), else
``$SCANS_DATA``, else ``<scans cache>/data`` (``~/.cache/scans/data``, moved by
``$SCANS_CACHE``). Nothing is fetched unless asked: with ``download=True`` (``--download``) a
missing file is downloaded from its canonical public source (:data:`SOURCES`) with ``urllib``
and kept only if its SHA-256 matches the canonical copy. Offline and missing is one
:class:`~scans.errors.ScansError` naming the file and where to put it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ScansError


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
