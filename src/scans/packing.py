"""Prepacked linear layers for CPU forward passes (a context manager that always restores).

On a CPU, ``torch.nn.functional.linear`` repacks each weight matrix into the GEMM
kernel's blocked layout on every call. ``packed_linears`` packs every float32 weight once
with oneDNN and routes the ``nn.Linear`` modules through the packed kernel for the
duration of a ``with`` block, the way inference runtimes do on CPUs. Same math (results
agree to float32 rounding); its effect on fit time is in docs/results.md. It costs a
second copy of the linear weights while active, so it steps aside when memory is short, on
GPUs, for other dtypes, or where oneDNN is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_NO_ATTR = object()


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where that cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def packable(model: nn.Module) -> list[nn.Linear]:
    """The plain float32 ``nn.Linear`` modules on the CPU (subclasses, e.g. quantised or
    adapter layers, are left alone); empty where oneDNN's packed linear is unavailable."""
    ops = ("_linear_pointwise", "_reorder_linear_weight")
    if not torch.backends.mkldnn.is_available() or not all(hasattr(torch.ops.mkldnn, op) for op in ops):
        return []
    return [
        m
        for m in model.modules()
        if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
    ]


def is_packed(module: nn.Module) -> bool:
    """True while ``module`` runs on a packed weight (inside :func:`packed_linears`)."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, functools.partial) and forward.func is _packed_forward


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@contextmanager
def packed_linears(model: nn.Module, *, enabled: bool = True, batch_hint: int = 16) -> Iterator[int]:
    """Inside the block, the model's float32 CPU ``nn.Linear`` layers run on weights packed
    once by oneDNN; yields how many layers were packed (0: nothing changed). The modules'
    own ``forward`` is restored on exit, whatever happens inside."""
    layers = packable(model) if enabled else []
    need = 2 * sum(m.weight.numel() * m.weight.element_size() for m in layers)
    free = _available_bytes()
    if layers and free is not None and free < need:
        layers = []  # a second copy of the weights would not fit comfortably
    saved: list[tuple[nn.Linear, Any]] = []
    try:
        for module in layers:
            weight = module.weight.detach()
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
            except RuntimeError:  # this build's oneDNN cannot pack it: run unpacked
                continue
            bias = None if module.bias is None else module.bias.detach()
            saved.append((module, module.__dict__.get("forward", _NO_ATTR)))
            module.forward = functools.partial(_packed_forward, packed, bias)  # type: ignore[method-assign]
        yield len(saved)
    finally:
        for module, previous in saved:
            if previous is _NO_ATTR:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]
