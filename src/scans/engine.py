"""Shared prefill: one KV cache of each prompt (minus its instruction end) serves the
probe pass (classification), the steered generation and the unsteered comparison
(decoding itself: :mod:`scans.decode`).

Positions before the instruction end are never steered, so their keys and values are
the same with and without steering. Prompts are left padded, so every row's instruction
end sits in the last column and the prefix is simply ``input_ids[:, :-1]``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .activations import forward_capture, position_ids_of
from .kvcache import new_cache, shared_prefix_cache
from .models import cache_kwarg, model_device
from .prompts import Batch, encode_probe
from .steering import SteeringPlan, steer

CPU_BATCH_SIZE = 32


def auto_batch_size(model: nn.Module, tokens_per_row: int = 512, cap: int = 128) -> int:
    """A batch size that fits: on a GPU, a third of the free memory over the KV cache and
    activations of one row of ``tokens_per_row`` tokens (capped); on a CPU, 32 (decode
    throughput on CPUs stops growing well before memory runs out)."""
    device = model_device(model)
    if device.type != "cuda" or not torch.cuda.is_available():
        return CPU_BATCH_SIZE
    cfg = getattr(model, "config", None)
    layers = int(getattr(cfg, "num_hidden_layers", 32))
    hidden = int(getattr(cfg, "hidden_size", 4096))
    heads = int(getattr(cfg, "num_attention_heads", 32))
    kv_heads = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    itemsize = next(model.parameters()).element_size()
    kv = 2 * layers * kv_heads * head_dim * tokens_per_row * itemsize
    vocab = int(getattr(cfg, "vocab_size", 32000))
    act = tokens_per_row * (4 * hidden + vocab) * 4  # activations and one float32 logit row per token
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(cap, int(free / 3 // (kv + act))))


@dataclass
class Prefill:
    """A left-padded prompt batch, the KV cache of all but its last column, and the block
    outputs (B, L, D) at the end of each user instruction (``uend``), captured on the way."""

    batch: Batch
    cache: Any
    uend: torch.Tensor | None = None

    def fresh_cache(self) -> Any:
        """A private copy of the prefix cache (forward passes append to caches in place)."""
        return copy.deepcopy(self.cache)

    def select(self, rows: Sequence[int]) -> Prefill:
        """The given rows (all columns kept, so the cache stays aligned)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(index.to(self.batch.input_ids.device))
        uend = self.uend[index.to(self.uend.device)] if self.uend is not None else None
        return Prefill(self.batch.rows(index), cache, uend)


def _hoisted(model: nn.Module, batch: Batch, share_prefix: bool) -> tuple[Batch, Any, int]:
    """The batch on the model's device with its shared prefix hoisted, a cache already
    holding that prefix (empty without one), and the prefix's length."""
    shared = batch.shared_prefix() if share_prefix else 0
    batch = batch.hoist_prefix(shared).to(model_device(model))
    cache = shared_prefix_cache(model, batch, shared) if shared else new_cache(model)
    return batch, cache, shared


@torch.no_grad()
def prefill(model: nn.Module, batch: Batch, share_prefix: bool = True) -> Prefill:
    """Run the prompt prefix (everything before the instruction end) once.

    With ``share_prefix``, a token prefix common to all rows (system prompt, template
    header, few-shot examples) is run once for the whole batch (see ``Batch.hoist_prefix``).
    """
    batch, cache, shared = _hoisted(model, batch, share_prefix)
    width = batch.input_ids.shape[1]
    uend = None
    if width - 1 > shared:
        # Rows whose instruction's end is the last column get it from the probe pass.
        at = batch.positions["uend"].clamp(max=width - 2) - shared if "uend" in batch.positions else None
        acts, _ = forward_capture(
            model,
            batch.input_ids[:, shared:-1],
            batch.attention_mask[:, :-1],
            {"uend": at} if at is not None else {},
            cache=cache,
        )
        uend = acts.get("uend")
    return Prefill(batch, cache, uend)


@torch.no_grad()
def probe_pass(
    model: nn.Module,
    tokenizer: Any,
    pre: Prefill,
    probe: str,
    layers_path: str | None = None,
) -> dict[str, torch.Tensor]:
    """Block outputs (B, L, D) at the instruction end, the probe's last token and the end of
    the user's instruction."""
    device = model_device(model)
    probe_ids = torch.tensor(encode_probe(tokenizer, probe), device=device)
    batch_size = pre.batch.input_ids.shape[0]
    suffix = torch.cat([pre.batch.input_ids[:, -1:], probe_ids.expand(batch_size, -1)], dim=1)
    ones = torch.ones_like(suffix)
    mask = torch.cat([pre.batch.attention_mask, ones[:, 1:]], dim=1)
    positions = {
        "inst": torch.zeros(batch_size, dtype=torch.long),
        "probe": torch.full((batch_size,), suffix.shape[1] - 1, dtype=torch.long),
    }
    acts, _ = forward_capture(
        model, suffix, mask, positions, cache=pre.fresh_cache(), layers_path=layers_path
    )
    if "uend" in pre.batch.positions:
        last = pre.batch.positions["uend"] == pre.batch.input_ids.shape[1] - 1
        uend = acts["inst"].clone() if pre.uend is None else pre.uend.clone()
        uend[last] = acts["inst"][last]
        acts["uend"] = uend
    return acts


@torch.no_grad()
def prefill_probed(
    model: nn.Module,
    tokenizer: Any,
    batch: Batch,
    probe: str,
    layers_path: str | None = None,
    share_prefix: bool = True,
) -> tuple[Prefill, dict[str, torch.Tensor]]:
    """:func:`prefill` and :func:`probe_pass` in one forward pass (one pass fewer, for work
    that needs both): the prompt and the probe run together, then the instruction end and
    the probe are cut off the cache. Causal attention makes the kept entries the ones
    ``prefill`` computes; the activations are ``probe_pass``'s. Where a sliding-window
    cache could already have dropped entries, it runs ``prefill`` and ``probe_pass``."""
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    if window and batch.input_ids.shape[1] + len(encode_probe(tokenizer, probe)) > window:
        pre = prefill(model, batch, share_prefix)
        return pre, probe_pass(model, tokenizer, pre, probe, layers_path)
    batch, cache, shared = _hoisted(model, batch, share_prefix)
    probe_ids = torch.tensor(encode_probe(tokenizer, probe), device=batch.input_ids.device)
    rows, width = batch.input_ids.shape
    ids = torch.cat([batch.input_ids[:, shared:], probe_ids.expand(rows, -1)], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(ids[:, width - shared :])], dim=1)
    positions = {
        "inst": torch.full((rows,), width - 1 - shared, dtype=torch.long),
        "probe": torch.full((rows,), ids.shape[1] - 1, dtype=torch.long),
    }
    if "uend" in batch.positions:
        positions["uend"] = batch.positions["uend"] - shared
    acts, _ = forward_capture(model, ids, mask, positions, cache=cache, layers_path=layers_path)
    cache.crop(-(len(probe_ids) + 1))  # negative: remove that many newest tokens
    return Prefill(batch, cache, acts.get("uend")), acts


@torch.no_grad()
def continue_hidden(
    model: nn.Module, pre: Prefill, ids: torch.Tensor, mask: torch.Tensor, plan: SteeringPlan | None = None
) -> torch.Tensor:
    """Final hidden states (B, T, D) of ``ids`` run after a private copy of the prefix cache,
    optionally under ``plan``; ``mask`` covers the cached columns and ``ids``."""
    base = getattr(model, "base_model", model)
    with steer(model, plan) if plan is not None else nullcontext():
        out = base(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_of(mask)[:, -ids.shape[1] :],
            use_cache=True,
            **{cache_kwarg(base): pre.fresh_cache()},
        )
    return out.last_hidden_state
