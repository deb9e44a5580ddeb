"""The one hook primitive: forward hooks registered together and removed together.

Steering, activation capture, directional ablation and the vLLM worker all go through
:func:`add_hooks` (the vLLM worker keeps its handles for the worker's lifetime); everything
else uses the :func:`hooks` context manager, which removes them when the block ends, even on
an error. :func:`block_hidden` / :func:`with_block_hidden` read and replace the hidden states
of a decoder block's output, whether the block returns a tensor or a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

PreHook = Callable[[nn.Module, tuple, dict[str, Any]], Any]
PostHook = Callable[[nn.Module, tuple, Any], Any]


def add_hooks(
    pre: Iterable[tuple[nn.Module, PreHook]] = (),
    post: Iterable[tuple[nn.Module, PostHook]] = (),
) -> list[RemovableHandle]:
    """Register forward pre-hooks (called with keyword arguments) and forward hooks, in that
    order; returns their handles. If a registration fails, the ones before it are removed."""
    handles: list[RemovableHandle] = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in post:
            handles.append(module.register_forward_hook(fn))
    except BaseException:
        remove_hooks(handles)
        raise
    return handles


def remove_hooks(handles: Iterable[RemovableHandle]) -> None:
    """Remove every handle (removing one twice is harmless)."""
    for handle in handles:
        handle.remove()


@contextmanager
def hooks(
    pre: Iterable[tuple[nn.Module, PreHook]] = (),
    post: Iterable[tuple[nn.Module, PostHook]] = (),
) -> Iterator[None]:
    """:func:`add_hooks` for the duration of the ``with`` block; always removed."""
    handles = add_hooks(pre, post)
    try:
        yield
    finally:
        remove_hooks(handles)


def block_hidden(output: Any) -> torch.Tensor:
    """The hidden states (B, T, D) of a decoder block's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_block_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced, in the same shape (tensor or tuple)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
