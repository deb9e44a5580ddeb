"""Step 4: steering vectors and the hooks that add them, in a context manager that always
removes them.

A :class:`SteeringVector` holds the unsigned addition ``alpha_l * v_l`` of each steered
layer. A :class:`SteeringPlan` says which rows get it, with which sign, from which position.
For every steered layer the hook adds ``sign[b] * alpha_l * v_l`` to the block's output at
every token whose row position (0 = the row's first real token, so left padding does not
matter) is at or after ``start[b]``, the instruction end. Row positions come from the
attention mask of each forward call, so the gate is correct for the first (prefill) call and
for every cached decoding step after it. The plan is never written to: one plan can serve
several models or threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .hooks import block_hidden, hooks, with_block_hidden
from .models import find_layers


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """What steering adds at each layer: ``deltas[l] = alpha_l * v_l``, float32 (D,).

    Arithmetic reads like the math: ``a + b``, ``a - b``, ``2.0 * a``, ``-a``, ``a / 2``
    (layers missing on one side count as zero); ``a.to("cuda")``; ``a.apply(model)`` steers a
    model inside a ``with`` block.
    """

    deltas: Mapping[int, torch.Tensor]

    def __post_init__(self) -> None:
        dims = {tuple(d.shape) for d in self.deltas.values()}
        assert len(dims) <= 1 and all(len(d) == 1 for d in dims), f"one (D,) vector per layer, got {dims}"
        for layer, delta in self.deltas.items():
            assert torch.isfinite(delta).all(), f"layer {layer}: non-finite steering vector"

    @classmethod
    def scaled(
        cls,
        directions: Mapping[int, torch.Tensor] | torch.Tensor,
        coefficients: Mapping[int, float] | torch.Tensor,
        layers: Sequence[int] | None = None,
    ) -> SteeringVector:
        """``alpha_l * v_l`` from unit directions (a layer -> vector map, or an (L, D) tensor)
        and coefficients, over ``layers`` (default: every layer of ``directions``)."""
        if layers is None:
            layers = list(directions) if isinstance(directions, Mapping) else range(directions.shape[0])
        return cls({int(l): float(coefficients[l]) * directions[l].float() for l in layers})

    @property
    def layers(self) -> list[int]:
        return sorted(self.deltas)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.deltas[layer]

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> SteeringVector:
        return SteeringVector({l: d.to(device=device, dtype=dtype) for l, d in self.deltas.items()})

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        out = dict(self.deltas)
        for layer, delta in other.deltas.items():
            out[layer] = out[layer] + sign * delta if layer in out else sign * delta
        return SteeringVector(out)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> SteeringVector:
        return SteeringVector({l: factor * d for l, d in self.deltas.items()})

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> SteeringVector:
        return self * (1.0 / factor)

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def apply(
        self,
        model: nn.Module,
        sign: Any = 1.0,
        start: Any = 0,
        *,
        window: int | None = None,
        layers_path: str | None = None,
    ) -> Any:
        """Steer ``model`` inside a ``with`` block: ``sign`` (+1 toward refusal, -1 away, a
        number or one per row) times this vector from row position ``start`` on."""
        sign = torch.as_tensor(sign, dtype=torch.float32)
        start = torch.as_tensor(start, dtype=torch.long)
        rows = sign.shape[0] if sign.dim() else max(1, start.numel())
        sign = sign.expand(rows) if sign.dim() == 0 else sign
        start = start.expand(rows) if start.dim() == 0 else start
        return steer(model, SteeringPlan(self, sign, start, window), layers_path)


@dataclass(frozen=True, eq=False)
class SteeringPlan:
    """A steering vector and, per batch row, its sign and first steered position.

    ``sign`` is +1 (toward refusal), -1 (away from refusal) or 0 (unsteered) per batch row,
    or a (rows, layers) matrix (columns in sorted layer order) to steer rows on different layers;
    ``start`` is each row's first steered position, counted from its first real token;
    ``window`` steers only positions ``start .. start + window - 1`` (None: all after start).
    """

    vector: SteeringVector
    sign: torch.Tensor
    start: torch.Tensor
    window: int | None = None
    layers_path: str | None = None

    def __post_init__(self) -> None:
        sign = torch.as_tensor(self.sign, dtype=torch.float32)
        if sign.dim() != 2:
            sign = sign.flatten()
        else:
            assert sign.shape[1] == len(self.vector.deltas), (
                "a sign matrix needs one column per steered layer"
            )
        start = torch.as_tensor(self.start, dtype=torch.long).flatten()
        assert sign.shape[0] == start.shape[0], "sign and start need one entry per row"
        object.__setattr__(self, "sign", sign)
        object.__setattr__(self, "start", start)

    @property
    def layers(self) -> list[int]:
        return self.vector.layers

    def delta(self, layer: int) -> torch.Tensor:
        """The unsigned addition ``alpha_l * v_l`` for one layer."""
        return self.vector[layer]


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
def steer(model: nn.Module, plan: SteeringPlan, layers_path: str | None = None) -> Iterator[SteeringPlan]:
    """Apply ``plan`` to ``model`` inside the ``with`` block; hooks are always removed.

    ``layers_path`` (default: the plan's) overrides where the decoder layers are found.
    The row positions of the current forward call live in this call's own state, not in
    the plan.
    """
    layers = find_layers(model, layers_path or plan.layers_path)
    current: dict[str, torch.Tensor | None] = {"positions": None}

    def record_positions(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = (ids if ids is not None else embeds).shape[1]
        current["positions"] = row_positions(
            kwargs.get("attention_mask"), length, _past_length(kwargs), kwargs.get("position_ids")
        )

    columns = {layer: i for i, layer in enumerate(plan.layers)}

    def make_hook(layer: int):
        unsigned = plan.delta(layer)

        def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
            hidden = block_hidden(output)
            batch, length, _ = hidden.shape
            positions = current["positions"]
            if positions is None or positions.shape[-1] != length:
                positions = (torch.arange(length)).unsqueeze(0)
            positions = positions.to(hidden.device)
            start = _expand(plan.start.to(hidden.device), batch)
            sign = _expand(plan.sign.to(hidden.device), batch)
            if sign.dim() == 2:
                sign = sign[:, columns[layer]]
            gate = steer_gate(positions, start[:, None], plan.window).float() * sign[:, None]  # (B, T)
            add = gate[:, :, None] * unsigned.to(hidden.device)[None, None, :]
            return with_block_hidden(output, (hidden.float() + add).to(hidden.dtype))

        return hook

    base = getattr(model, "base_model", model)
    with hooks(pre=[(base, record_positions)], post=[(layers[l], make_hook(l)) for l in plan.layers]):
        yield plan
