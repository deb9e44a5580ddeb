"""Loading models and probing their structure (decoder layers, final norm, LM head)."""

from __future__ import annotations

import gc
import hashlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ScansError

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}

# Known attribute paths of the decoder-layer list, most common first.
LAYER_PATHS = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, Phi-3, ...
    "model.language_model.layers",  # multimodal wrappers (Gemma-3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Falcon, Bloom
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)
NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm_f",
)


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype as its name without the module, e.g. ``float32``."""
    return str(dtype).removeprefix("torch.")


def cache_kwarg(model: nn.Module) -> str:
    """The keyword forward/generate use for the KV cache (``cache`` in transformers 5)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def find_layers(model: nn.Module, path: str | None = None) -> nn.ModuleList:
    """Return the model's decoder layers; ``path`` (e.g. ``"model.layers"``) overrides."""
    for candidate in (path,) if path else LAYER_PATHS:
        try:
            layers = _get(model, candidate)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    tried = path or ", ".join(LAYER_PATHS)
    raise ScansError(
        f"could not find the decoder layers of {type(model).__name__} (tried {tried}); "
        "fix: pass layers_path='attr.path.to.layers' (CLI: --layers-path)"
    )


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The final normalisation applied before the LM head (None if the model has none)."""
    for candidate in NORM_PATHS:
        try:
            return _get(model, candidate)
        except AttributeError:
            continue
    return None


@torch.no_grad()
def unembed(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits (..., V), float32 on the CPU, of last-layer block outputs (or of
    directions in that space): the final norm, then the unembedding, in the model's dtype."""
    head = model.get_output_embeddings()
    x = hidden.to(model_device(model), head.weight.dtype)
    norm = find_final_norm(model)
    if norm is not None:
        x = norm(x)
    return head(x).float().cpu()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AVX512-BF16 or AMX)."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability:
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``auto``: bf16 on GPUs and on CPUs with native bf16, else fp32.

    On CPUs without native bf16 (AVX2 only) bf16 matmuls are emulated: measured on this
    project's 2-core AVX2 machine, a bf16 forward pass was 5x slower than fp32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if str(device).startswith("cpu") and not cpu_has_fast_bf16():
            return torch.float32
        return torch.bfloat16
    if dtype not in DTYPES:
        raise ScansError(f"unknown dtype {dtype!r}; fix: use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused inside the block, restored after.

    Loading a model imports its modelling code and builds the tokenizer's vocabulary: on the
    embedded model about 600,000 long-lived objects on top of torch's, which the collector
    would otherwise walk over and over (measured: the tokenizer loads in 1.0 s, not 2.0 s).
    Reference counting still frees everything else as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class LoadedModel:
    """A model with its tokenizer and a name that identifies it."""

    model: nn.Module
    tokenizer: Any
    name: str


def load_model(
    model: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> LoadedModel:
    """Load a causal chat model from a local dir, a hub id, a GGUF file or the embedded default.

    ``model=None`` (or ``"embedded"``) means the embedded Qwen2.5-Coder-0.5B-Instruct.
    """
    with gc_paused():
        return _load_model(model, dtype, device, device_map, trust_remote_code, gguf_file)


def _exists(path: Path, file: bool = False) -> bool:
    """Whether ``path`` exists (is a file); False for names the OS cannot look up (too long)."""
    try:
        return path.is_file() if file else path.exists()
    except OSError:
        return False


def _load_model(
    model: str | None,
    dtype: str | torch.dtype | None,
    device: str | None,
    device_map: str | dict | None,
    trust_remote_code: bool,
    gguf_file: str | None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .embedded import EMBEDDED, embedded_model_dir

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    name = model or "embedded"
    if model is None or model == "embedded" or model.startswith("embedded:"):
        key = model.split(":", 1)[1] if model and ":" in model else "default"
        source: str | Path = embedded_model_dir(key)
        name = f"embedded:{EMBEDDED[key].name}"
    elif model.endswith(".gguf"):
        path = Path(model)
        if not _exists(path, file=True):
            raise ScansError(f"GGUF file {model} does not exist; fix: check the path")
        source, gguf_file = path.parent, path.name
    else:
        source = model
        if not _exists(Path(model)) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ScansError(
                f"model {model!r} is not a local directory and HF_HUB_OFFLINE=1; "
                "fix: pass a local path or go online"
            )
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, **({"gguf_file": gguf_file} if gguf_file else {})
        )
        hf_model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScansError(
            f"could not load model {model!r}: {first}; fix: pass a local model directory, "
            "a .gguf file, or a hub id while online (omit --model for the embedded default)"
        ) from None
    if device_map is None:
        hf_model.to(device)
    hf_model.eval()
    if getattr(tokenizer, "chat_template", None) is None:
        raise ScansError(
            f"tokenizer of {model!r} has no chat template; fix: use a chat/instruct model "
            "or set tokenizer.chat_template"
        )
    return LoadedModel(hf_model, tokenizer, name)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture and a sample of the weights (dtype independent).

    Hashes the config's shape fields and a few fixed slices of the embedding and LM head
    rounded to bf16 precision, so the same weights in fp32 or bf16 give the same print.
    """
    cfg = model.config
    fields = [type(model).__name__]
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        fields.append(f"{key}={getattr(cfg, key, None)}")
    h = hashlib.sha256("|".join(fields).encode())
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            sample = weight[:64:7, :64].detach().to("cpu", torch.float32)
            sample = sample.to(torch.bfloat16).to(torch.float32)
            h.update(sample.numpy().round(3).tobytes())
    return h.hexdigest()[:16]
