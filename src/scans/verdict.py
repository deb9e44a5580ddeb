"""Whom to steer: the one decision path from a prompt batch's activations to verdicts.

Every caller (``Scans.classify/generate``, the chat decoder, the server, ``scans bench``
and the vLLM backend) hands the same three activations (block outputs at the instruction
end, at the probe's last token and at the end of the user's text) to :func:`decide`, so a
rule cannot diverge between paths.

The rule (profile format 2) reads three signals of the fitted profile:

- ``score``: the harmfulness score s(q) (a shrunk contrast direction at the end of the
  user's text, standardised; higher = more harmful);
- ``severity``: the same kind of score for the severe-harm class (weapons of mass harm,
  sexual content involving minors, serious violence) against benign prompts;
- ``refusal``: the refusal direction's projection at the instruction end, standardised
  (does the model lean toward refusing this prompt?).

and decides, in this order (first match wins)::

    score    >= threshold        -> "harmful"   sign = harmful_sign (0 by default)
    score    >= steer_threshold  -> "abstain"   sign = 0  (too close to call)
    severity >= severe_threshold -> "severe"    sign = 0  (second, independent veto)
    refusal  <  refusal_threshold-> "answers"   sign = 0  (the model would answer anyway)
    otherwise                    -> "benign"    sign = -1 (steer away from refusal)

``steer_threshold`` is calibrated for the user's safety budget (``max_harmful_loss``):
on out-of-fold scores of harmful anchors, at most that fraction falls below it (a
split-conformal bound, see :mod:`scans.calibration`). Profiles of format 1 carry only
``threshold``; for them (and for the ``scans-v1`` benchmark method) the previous rule
applies: harmful at or above the threshold, every other prompt steered away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .vectors import transitions

if TYPE_CHECKING:
    from .profile import Profile

DECISIONS = ("harmful", "abstain", "severe", "answers", "benign")
RULES = ("v2", "v1")


@dataclass(frozen=True)
class Verdict:
    """The decision on one prompt. ``sign`` is the steering direction applied (-1 away from
    refusal, 0 none, +1 toward refusal); ``harmful`` is the classifier's flag (score at or
    above the threshold, or vetoed as severe); ``decision`` names the rule's branch."""

    prompt: str
    score: float
    harmful: bool
    sign: int
    decision: str = ""
    severity: float | None = None
    refusal: float | None = None

    @property
    def steered(self) -> bool:
        return self.sign != 0


@dataclass(frozen=True)
class Signals:
    """The per-prompt signals the rule reads, (N,) each (``None`` where the profile has none)."""

    score: torch.Tensor
    severity: torch.Tensor | None
    refusal: torch.Tensor | None


def signals(profile: Profile, acts: dict[str, torch.Tensor]) -> Signals:
    """Score, severity and refusal signal of a batch from its ``inst``/``probe``/``uend`` block outputs."""
    inst = acts["inst"].float().cpu()
    uend = acts["uend"].float().cpu() if "uend" in acts else None
    tau = transitions(inst, acts["probe"].float().cpu()) if profile.classifier != "instruction" else None
    score = profile.scores(tau, uend)
    severity = profile.severity_scores(uend) if uend is not None else None
    refusal = profile.refusal_scores(inst)
    assert torch.isfinite(score).all(), "non-finite harmfulness scores"
    return Signals(score, severity, refusal)


def rule_of(profile: Profile, rule: str | None = None) -> str:
    """``rule`` if given, else the profile's own: v2 where it holds a steer threshold, else v1."""
    if rule is not None:
        if rule not in RULES:
            raise ValueError(f"rule {rule!r}: use one of {RULES}")
        return rule
    return "v2" if profile.steer_threshold is not None else "v1"


def verdict_of(profile: Profile, prompt: str, score: float, severity: float | None, refusal: float | None,
               rule: str) -> Verdict:  # fmt: skip
    """The rule for one prompt's signals (see the module docstring)."""
    if rule == "v1":
        harmful = score >= profile.threshold
        return Verdict(prompt, score, harmful, profile.harmful_sign if harmful else -1,
                       "harmful" if harmful else "benign", severity, refusal)  # fmt: skip
    steer_threshold = profile.steer_threshold if profile.steer_threshold is not None else profile.threshold
    if score >= profile.threshold:
        return Verdict(prompt, score, True, profile.harmful_sign, "harmful", severity, refusal)
    if score >= steer_threshold:
        return Verdict(prompt, score, False, 0, "abstain", severity, refusal)
    if severity is not None and profile.severe_threshold is not None and severity >= profile.severe_threshold:
        return Verdict(prompt, score, True, 0, "severe", severity, refusal)
    if refusal is not None and profile.refusal_threshold is not None and refusal < profile.refusal_threshold:
        return Verdict(prompt, score, False, 0, "answers", severity, refusal)
    return Verdict(prompt, score, False, -1, "benign", severity, refusal)


def decide(
    profile: Profile, acts: dict[str, torch.Tensor], prompts: Sequence[str], rule: str | None = None
) -> list[Verdict]:
    """Verdicts of a batch, in row order: the only place the steering decision is made."""
    s = signals(profile, acts)
    assert s.score.shape == (len(prompts),), f"{s.score.shape[0]} scores for {len(prompts)} prompts"
    rule = rule_of(profile, rule)
    sev = s.severity.tolist() if s.severity is not None else [None] * len(prompts)
    ref = s.refusal.tolist() if s.refusal is not None else [None] * len(prompts)
    return [
        verdict_of(profile, p, float(x), sv, rf, rule)
        for p, x, sv, rf in zip(prompts, s.score.tolist(), sev, ref)
    ]
