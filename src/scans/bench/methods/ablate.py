"""Directional ablation of the refusal direction (Arditi et al. 2024), as a baseline.

The unit refusal direction r (the fitted profile's vector at the middle of its steering
band) is projected out of the residual stream everywhere: at the embedding output and at
every decoder block's output, at every position, prompt and answer alike:
``x <- x - (x . r) r``. (Arditi et al. also ablate inside each block, before the MLP; the
block-output version removes the same component from everything later layers read.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ...hooks import block_hidden, hooks, with_block_hidden
from ...models import find_layers
from .base import Method


@contextmanager
def ablation(model: nn.Module, direction: torch.Tensor, layers_path: str | None = None) -> Iterator[None]:
    """Project ``direction`` out of the embeddings and every block's output inside the block."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    assert torch.isfinite(unit).all(), "ablation direction is not finite"

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        hidden = block_hidden(output)
        r = unit.to(hidden.device)
        h = hidden.float()
        return with_block_hidden(output, (h - (h @ r)[..., None] * r).to(hidden.dtype))

    modules = [model.get_input_embeddings(), *find_layers(model, layers_path)]
    with hooks(post=[(m, hook) for m in modules]):
        yield


class Ablate(Method):
    name: ClassVar[str] = "ablate"
    description: ClassVar[str] = "directional ablation of the refusal direction at every layer and position"

    @property
    def layer(self) -> int:
        layers = self.profile.steer_layers
        return layers[len(layers) // 2]

    @property
    def group(self) -> tuple[Any, ...]:
        return ("ablate", self.system, self.layer)

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        with ablation(model, self.profile.vectors[self.layer], self.layers_path):
            yield

    def settings(self) -> dict[str, Any]:
        return {"direction_layer": self.layer}
