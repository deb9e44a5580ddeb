"""Step 4: steering hooks in a context manager that always removes them.

For every steered layer ``l`` the hook adds ``sign[b] * alpha_l * v_l`` to the block's
output at every token whose row position (0 = the row's first real token, so left
padding does not matter) is at or after ``start[b]``, the instruction end. Row positions
come from the attention mask of each forward call, so the gate is correct for the first
(prefill) call and for every cached decoding step after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .models import find_layers


@dataclass
class SteeringPlan:
    """What to add where: unit vectors and absolute coefficients per layer, per-row sign/start.

    ``sign`` is +1 (toward refusal), -1 (away from refusal) or 0 (unsteered) per batch row,
    or a (rows, layers) matrix (columns in sorted layer order) to steer rows on different layers;
    ``start`` is each row's first steered position, counted from its first real token.
    """

    vectors: dict[int, torch.Tensor]
    alphas: dict[int, float]
    sign: torch.Tensor
    start: torch.Tensor
    layers_path: str | None = None
    window: int | None = None  # steer only positions start .. start + window - 1 (None: all after start)
    _positions: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        assert set(self.vectors) == set(self.alphas), "vectors and alphas must cover the same layers"
        self.sign = torch.as_tensor(self.sign, dtype=torch.float32)
        if self.sign.dim() != 2:
            self.sign = self.sign.flatten()
        else:
            assert self.sign.shape[1] == len(self.vectors), "a sign matrix needs one column per steered layer"
        self.start = torch.as_tensor(self.start, dtype=torch.long).flatten()
        assert self.sign.shape[0] == self.start.shape[0], "sign and start need one entry per row"

    def delta(self, layer: int) -> torch.Tensor:
        """The unsigned addition ``alpha_l * v_l`` for one layer."""
        return self.alphas[layer] * self.vectors[layer].float()


def steer_gate(positions: torch.Tensor, start: torch.Tensor | int, window: int | None) -> torch.Tensor:
    """Which positions are steered: ``start <= position`` (and ``< start + window`` with a window)."""
    on = positions >= start
    if window is not None:
        on = on & (positions < start + window)
    return on


def row_positions(
    attention_mask: Any, length: int, past: int, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Row positions (B, T) of the ``length`` newest tokens; pads get -1.

    Uses the 2-D attention mask when there is one, else the given position ids (which
    generate derives from the mask), else ``past + arange(length)`` (no padding).
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        if position_ids is not None and position_ids.dim() == 2:
            return position_ids[:, -length:]
        return (torch.arange(length) + past).unsqueeze(0)
    mask = attention_mask.long()
    positions = mask.cumsum(-1) - 1
    positions = positions.masked_fill(mask == 0, -1)
    return positions[:, -length:]


def _past_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "get_seq_length"):
        return 0
    return int(cache.get_seq_length())


def _expand(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat per-prompt values for generate's expanded batches (num_return_sequences)."""
    if rows.shape[0] == batch:
        return rows
    if batch % rows.shape[0] != 0:
        raise ValueError(f"steering plan has {rows.shape[0]} rows but the batch has {batch}")
    return rows.repeat_interleave(batch // rows.shape[0])


@contextmanager
def steer(model: nn.Module, plan: SteeringPlan) -> Iterator[SteeringPlan]:
    """Apply ``plan`` to ``model`` inside the ``with`` block; hooks are always removed."""
    layers = find_layers(model, plan.layers_path)
    handles = []

    def record_positions(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = (ids if ids is not None else embeds).shape[1]
        plan._positions = row_positions(
            kwargs.get("attention_mask"), length, _past_length(kwargs), kwargs.get("position_ids")
        )

    columns = {layer: i for i, layer in enumerate(sorted(plan.vectors))}

    def make_hook(layer: int):
        unsigned = plan.delta(layer)

        def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            batch, length, _ = hidden.shape
            positions = plan._positions
            if positions is None or positions.shape[-1] != length:
                positions = (torch.arange(length)).unsqueeze(0)
            positions = positions.to(hidden.device)
            start = _expand(plan.start.to(hidden.device), batch)
            sign = _expand(plan.sign.to(hidden.device), batch)
            if sign.dim() == 2:
                sign = sign[:, columns[layer]]
            gate = steer_gate(positions, start[:, None], plan.window).float() * sign[:, None]  # (B, T)
            add = gate[:, :, None] * unsigned.to(hidden.device)[None, None, :]
            steered = (hidden.float() + add).to(hidden.dtype)
            if isinstance(output, tuple):
                return (steered, *output[1:])
            return steered

        return hook

    try:
        base = getattr(model, "base_model", model)
        handles.append(base.register_forward_pre_hook(record_positions, with_kwargs=True))
        for layer in sorted(plan.vectors):
            handles.append(layers[layer].register_forward_hook(make_hook(layer)))
        yield plan
    finally:
        for handle in handles:
            handle.remove()
        plan._positions = None
