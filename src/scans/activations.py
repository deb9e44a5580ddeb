"""Batched activation capture: every layer at once, at named positions, left padded."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .hooks import block_hidden, hooks
from .kvcache import shared_prefix_cache
from .models import cache_kwarg, find_layers, model_device
from .progress import progress_bar
from .prompts import build_batch, context_length, pad_id_of
from .steering import SteeringPlan, steer


def position_ids_of(mask: torch.Tensor) -> torch.Tensor:
    """Row positions for a left-padded mask (pads get 0; they are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def forward_capture(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: dict[str, torch.Tensor],
    *,
    cache: Any = None,
    layers_path: str | None = None,
    plan: SteeringPlan | None = None,
    logits_at: str | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass of ``input_ids`` (after an optional KV ``cache``).

    ``attention_mask`` covers cached and new tokens; ``positions[name]`` (B,) index into
    the new tokens. Returns ``{name: (B, L, D) float32}`` block outputs and, with
    ``logits_at``, the (B, V) float32 next-token logits at that position.
    """
    layers = find_layers(model, layers_path)
    device = model_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    positions = {k: v.to(device) for k, v in positions.items()}
    rows = torch.arange(input_ids.shape[0], device=device)
    captured: dict[str, list[Any]] = {n: [None] * len(layers) for n in positions}

    def make_hook(index: int):
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            hidden = block_hidden(output)
            for name, pos in positions.items():
                captured[name][index] = hidden[rows, pos].float()

        return hook

    base = getattr(model, "base_model", model)
    length = input_ids.shape[1]
    # Steering hooks first, capture hooks second: a steered layer's capture includes its steering.
    with steer(model, plan) if plan is not None else nullcontext():
        with hooks(post=[(layer, make_hook(i)) for i, layer in enumerate(layers)]):
            out = base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_of(attention_mask)[:, -length:],
                use_cache=cache is not None,
                **({cache_kwarg(base): cache} if cache is not None else {}),
            )
    logits = None
    if logits_at is not None:
        last = out.last_hidden_state[rows, positions[logits_at]]
        logits = model.get_output_embeddings()(last).float()
    result = {name: torch.stack(captured[name], dim=1) for name in positions}
    for name, value in result.items():
        assert value.shape[:2] == (input_ids.shape[0], len(layers)), value.shape
        assert torch.isfinite(value).all(), f"non-finite activations at {name!r}"
    return result, logits


def _up_to_uend(batch: Any, pad_id: int) -> Any:
    from .prompts import left_pad

    mask = batch.attention_mask.bool()
    rows, ends = [], []
    for i in range(batch.input_ids.shape[0]):
        start = int((~mask[i]).sum())
        end = int(batch.positions["uend"][i])
        rows.append(batch.input_ids[i, start : end + 1].tolist())
        ends.append(end - start)
    return left_pad(rows, pad_id, {"uend": ends})


# On a CPU a forward pass costs about as much as this many extra (padding) tokens beyond its
# tokens (weights streamed once per pass; measured on the embedded model, 2 cores: ~0.3 s a
# pass at ~145 tokens/s). On GPUs padding is nearly free, so buckets stay full.
CPU_PASS_OVERHEAD_TOKENS = 48


def batches_by_length(
    lengths: Sequence[int], batch_size: int, pass_overhead: int | None = None
) -> list[list[int]]:
    """Index buckets of similar length (sorted), to limit padding waste.

    Without ``pass_overhead``: consecutive chunks of ``batch_size`` of the sorted order.
    With it: the split of the sorted order into buckets of at most ``batch_size`` rows that
    minimises the padded tokens (rows x longest row) plus ``pass_overhead`` per bucket
    (dynamic programming over the split points).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if pass_overhead is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    import numpy as np

    sorted_len = np.array([lengths[i] for i in order], dtype=np.float64)
    n = len(order)
    cost = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):  # best split of the first j rows; the last bucket is rows i..j-1
        lo = max(0, j - batch_size)
        starts = np.arange(lo, j)
        total = cost[lo:j] + pass_overhead + (j - starts) * sorted_len[j - 1]
        best = int(np.argmin(total))
        cost[j], cut[j] = total[best], lo + best
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = int(cut[j])
    return buckets[::-1]


@torch.no_grad()
def collect(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    probe: str | None = None,
    batch_size: int = 16,
    layers_path: str | None = None,
    progress: bool = True,
    desc: str = "activations",
    share_prefix: bool = True,
    uend_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Block outputs of every layer at the instruction end (``"inst"``) and, with ``probe``,
    at the probe's last token (``"probe"``): ``{name: (N, L, D) float32}`` in prompt order.
    """
    full = build_batch(tokenizer, prompts, system=system, probe=probe, max_length=context_length(model))
    if uend_only:  # only the end of the user's text is read: the template's tail is never run
        full = _up_to_uend(full, pad_id_of(tokenizer))
    lengths = full.attention_mask.sum(-1).tolist()
    out: dict[str, list[Any]] = {n: [None] * len(prompts) for n in full.positions}
    overhead = CPU_PASS_OVERHEAD_TOKENS if model_device(model).type == "cpu" else None
    buckets = batches_by_length(lengths, batch_size, overhead)
    for bucket in progress_bar(buckets, desc, progress):
        sub = full.select(bucket)  # tokenized once, above
        shared = sub.shared_prefix() if share_prefix else 0
        cache = None
        if shared:  # system prompt and template header: run once per bucket
            sub = sub.hoist_prefix(shared)
            cache = shared_prefix_cache(model, sub, shared)
        acts, _ = forward_capture(
            model,
            sub.input_ids[:, shared:],
            sub.attention_mask,
            {k: v - shared for k, v in sub.positions.items()},
            cache=cache,
            layers_path=layers_path,
        )
        for name in full.positions:
            for j, i in enumerate(bucket):
                out[name][i] = acts[name][j]
    return {name: torch.stack(vals) for name, vals in out.items()}
