"""The method protocol shared by all benchmark methods."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...engine import Prefill
from ...profile import Profile
from ...steering import SteeringPlan


@dataclass
class Decision:
    """Per-row outcome of a method's classifier: steering sign, score and verdict (None = no classifier)."""

    signs: list[int]
    scores: list[float | None]
    flagged: list[bool | None]
    decisions: list[str | None] | None = None  # the rule's branch per row (scans.verdict.DECISIONS)

    @classmethod
    def of(cls, verdicts: Sequence[Any]) -> Decision:
        """From :class:`scans.verdict.Verdict` objects (the one decision path)."""
        return cls(
            [v.sign for v in verdicts],
            [v.score for v in verdicts],
            [v.harmful for v in verdicts],
            [v.decision for v in verdicts],
        )


class Method:
    """One way of answering prompts. Subclasses override what differs."""

    name: ClassVar[str] = "method"
    needs_probe: ClassVar[bool] = False  # decide() reads the probe-pass activations
    description: ClassVar[str] = ""

    def __init__(self, profile: Profile, n_layers: int, layers_path: str | None = None) -> None:
        self.profile = profile
        self.n_layers = n_layers
        self.layers_path = layers_path

    @property
    def system(self) -> str | None:
        """System prompt of the prefill (default: the profile's)."""
        return self.profile.system

    @property
    def group(self) -> tuple[Any, ...]:
        """Methods with equal groups share a prefill; hooks or another system prompt need their own."""
        return ("plain", self.system)

    @contextmanager
    def active(self, model: torch.nn.Module) -> Iterator[None]:
        """Hooks active for the whole pass, prefill included (none by default)."""
        yield

    @property
    def reads_signals(self) -> bool:
        """decide() reads ``Scans.signal_acts`` (a guard profile's guard pass, the refusal gate's
        reading) instead of the answering model's bare probe pass."""
        return False

    def decide(self, acts: dict[str, torch.Tensor] | None, n: int) -> Decision:
        """Signs per row (default: unsteered)."""
        return Decision([0] * n, [None] * n, [None] * n)

    def steering_profile(self) -> Profile:
        return self.profile

    def plan(self, pre: Prefill, signs: Sequence[int]) -> SteeringPlan | None:
        """The steering plan for these rows (None when every sign is 0)."""
        if not any(signs):
            return None
        start = (pre.batch.attention_mask.sum(-1) - 1).cpu()
        return self.steering_profile().steering_plan(list(signs), start, self.layers_path)

    def steering_key(self) -> tuple[Any, ...]:
        """Equal keys (and equal signs) mean equal steering: answers are shared between methods."""
        p = self.steering_profile()
        coefficients = tuple(round(p.coefficient(l), 6) for l in p.steer_layers)
        return (tuple(p.steer_layers), coefficients, p.steer_window, id(p.vectors), self.group)

    def settings(self) -> dict[str, Any]:
        """What this method used (recorded in the run's meta.json)."""
        p = self.steering_profile()
        return {
            "layers": list(p.steer_layers),
            "alpha": p.alpha,
            "alpha_mode": p.alpha_mode,
            "steer_window": p.steer_window,
        }
