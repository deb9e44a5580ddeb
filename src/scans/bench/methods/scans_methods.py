"""original, scans, scans-paper and always-away: one prefill, different signs and settings."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ...profile import Profile
from ...verdict import decide, rule_of
from .base import Decision, Method


class Original(Method):
    """The model as it is: no steering."""

    name: ClassVar[str] = "original"
    description: ClassVar[str] = "no steering"

    def settings(self) -> dict[str, Any]:
        return {}


class ScansMethod(Method):
    """This project's SCANS: the fitted profile (measured layers, calibrated threshold, relative alpha)."""

    name: ClassVar[str] = "scans"
    needs_probe: ClassVar[bool] = True
    description: ClassVar[str] = "SCANS with the fitted profile (automatic layers, threshold, alpha)"

    def classifier_profile(self) -> Profile:
        return self.profile

    rule: ClassVar[str | None] = None  # None: the profile's own rule (see scans.verdict)

    @property
    def reads_signals(self) -> bool:
        p = self.classifier_profile()
        return p.guard is not None or (p.refusal_gate and rule_of(p, self.rule) == "v2")

    def decide(self, acts: dict[str, torch.Tensor] | None, n: int) -> Decision:
        assert acts is not None, f"{self.name} needs the probe pass"
        verdicts = decide(self.classifier_profile(), acts, [""] * n, rule=self.rule)
        return Decision.of(verdicts)

    def settings(self) -> dict[str, Any]:
        p = self.classifier_profile()
        return {
            **super().settings(),
            "classifier": p.classifier,
            "threshold": p.threshold,
            "harmful_sign": p.harmful_sign,
            "rule": rule_of(p, self.rule),
            "steer_threshold": p.steer_threshold,
            "inst_threshold": p.inst_threshold,
            "max_harmful_loss": p.max_harmful_loss,
            "guard": (p.guard or {}).get("name"),
            "refusal_gate": p.refusal_gate,
            "refuse_threshold": p.refuse_threshold,
        }


class ScansAway(ScansMethod):
    """The profile's own rule with every prompt judged harmful left unsteered: what a
    ``--harmful-policy budget`` profile does without its toward-refusal branch, side by side."""

    name: ClassVar[str] = "scans-away"
    description: ClassVar[str] = "the profile's rule, steering away only (nothing toward refusal)"

    def __init__(self, profile: Profile, n_layers: int, layers_path: str | None = None) -> None:
        super().__init__(profile, n_layers, layers_path)
        self._away = dataclasses.replace(profile, refuse_threshold=None, harmful_sign=0)

    def classifier_profile(self) -> Profile:
        return self._away


class ScansV1(ScansMethod):
    """The previous decision rule, kept for side-by-side reports: the classifier fitted without
    the taxonomy pool, one calibrated threshold, every prompt below it steered away."""

    name: ClassVar[str] = "scans-v1"
    description: ClassVar[str] = "previous rule: one threshold, every prompt below it steered away"
    rule: ClassVar[str | None] = "v1"

    def __init__(self, profile: Profile, n_layers: int, layers_path: str | None = None) -> None:
        super().__init__(profile, n_layers, layers_path)
        self._v1 = profile.v1()

    def classifier_profile(self) -> Profile:
        return self._v1


class ScansPaper(ScansMethod):
    """The paper's fixed settings translated to this model's depth: middle-third layers,
    cosine classifier from the first steering layer to the last layer, threshold 0.75,
    alpha 3.5 on unit vectors, +alpha (toward refusal) for prompts judged harmful."""

    name: ClassVar[str] = "scans-paper"
    description: ClassVar[str] = (
        "paper settings: middle third of layers, cosine T=0.75, alpha 3.5, +1 on harmful"
    )
    rule: ClassVar[str | None] = "v1"  # the paper's rule: one threshold, +1 above, -1 below
    THRESHOLD: ClassVar[float] = 0.75
    ALPHA: ClassVar[float] = 3.5

    def __init__(self, profile: Profile, n_layers: int, layers_path: str | None = None) -> None:
        super().__init__(profile, n_layers, layers_path)
        lo, hi = n_layers // 3, (2 * n_layers) // 3
        layers = list(range(lo, max(hi, lo + 1)))
        self._paper = dataclasses.replace(
            profile,
            steer_layers=layers,
            cls_layers=list(range(layers[0], n_layers)),
            classifier="cosine",
            threshold=self.THRESHOLD,
            alpha=self.ALPHA,
            alpha_mode="absolute",
            harmful_sign=1,
            steer_window=None,
            steer_threshold=None,
            inst_threshold=None,
            guard=None,  # the paper's cosine classifier reads the answering model
            refusal_gate=False,
            refuse_threshold=None,
        )

    def classifier_profile(self) -> Profile:
        return self._paper

    def steering_profile(self) -> Profile:
        return self._paper


class AlwaysAway(Method):
    """Plain activation addition: every prompt steered away from refusal with the fitted
    profile's layers and alpha, no classifier (shows what safety is lost without it)."""

    name: ClassVar[str] = "always-away"
    description: ClassVar[str] = "steer every prompt away from refusal (no classifier)"

    def decide(self, acts: dict[str, torch.Tensor] | None, n: int) -> Decision:
        return Decision([-1] * n, [None] * n, [None] * n)
