"""KV caches: a new empty one, and the memoized cache of a prefix every row of a batch shares
(system prompt and template header), used by the prefill and the activation collection."""

from __future__ import annotations

import copy
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .models import cache_kwarg, model_device
from .packing import is_packed
from .prompts import Batch


def new_cache(model: nn.Module) -> Any:
    """An empty ``DynamicCache`` for the model."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


_PREFIX_MEMO: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple, Any]] = weakref.WeakKeyDictionary()
PREFIX_MEMO_SIZE = 8


def _has_hooks(model: nn.Module) -> bool:
    """True while any forward hook or foreign forward override is installed (steering,
    ablation, captures): a prefix computed under them must not be reused without them, or
    the other way round. Packed linears (``scans.packing``) are part of the memo's key instead."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or ("forward" in m.__dict__ and not is_packed(m))
        for m in model.modules()
    )


def _weights_version(model: nn.Module) -> tuple:
    """Changes when weights are edited in place, replaced or cast (modification counters,
    first parameter's storage and dtype)."""
    first = next(model.parameters())
    return sum(p._version for p in model.parameters()), first.data_ptr(), first.dtype


@torch.no_grad()
def shared_prefix_cache(model: nn.Module, batch: Batch, length: int) -> Any:
    """KV cache of the first ``length`` columns, which every row shares: run once, repeated per row.

    The batch-of-one cache is memoized per model and token prefix (the system prompt and
    template header recur in every batch), unless hooks are installed or weights changed.
    """
    device = model_device(model)
    ids = batch.input_ids[:1, :length].to(device)
    memo = None if _has_hooks(model) else _PREFIX_MEMO.setdefault(model, OrderedDict())
    packed = any(is_packed(m) for m in model.modules())  # packed results differ in the last bits
    key = (tuple(ids[0].tolist()), str(device), _weights_version(model), packed)
    if memo is not None and key in memo:
        memo.move_to_end(key)
        cache = copy.deepcopy(memo[key])
    else:
        cache = new_cache(model)
        base = getattr(model, "base_model", model)
        base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{cache_kwarg(base): cache})
        if memo is not None:
            memo[key] = copy.deepcopy(cache)
            while len(memo) > PREFIX_MEMO_SIZE:
                memo.popitem(last=False)
    cache.batch_repeat_interleave(batch.input_ids.shape[0])
    return cache
