"""Whom to steer: the one decision path from a prompt batch's activations to verdicts.

Every caller (``Scans.classify/generate``, the chat decoder, the server, ``scans bench``
and the vLLM backend) hands the same activations (block outputs at the instruction end, at
the probe's last token and at the end of the user's text) to :func:`decide`, so a rule
cannot diverge between paths.

The rule of profile format 2 reads two signals, both harmfulness classifiers fitted on the
same labelled pool (higher = more harmful):

- ``score`` s(q): read at the end of the user's own text (what the request asks);
- ``inst``: read at the instruction end, the template's last token, where the model
  settles whether to refuse (Zhao et al. 2025 find harmfulness and refusal encoded at these
  two places separately).

and decides, first match wins::

    score >= threshold                                 -> "harmful"  sign = harmful_sign (0 by default),
                                                          +1 where min(score, inst) > refuse_threshold
    score >= steer_threshold or inst >= inst_threshold -> "abstain"  sign = 0 (not sure enough)
    refusal gate on and the model would not refuse     -> "answers"  sign = 0 (nothing to unlock)
    otherwise                                          -> "benign"   sign = -1 (steer away from refusal)

With ``--harmful-policy budget`` the profile holds a refuse threshold r, calibrated for a
false-refusal budget ``max_benign_loss`` on the joint signal min(score, inst): on out-of-fold
signals of the pool's benign prompts that the model answers, at most that fraction lies over r
(split conformal, :func:`scans.calibration.refuse_budget`). A prompt judged harmful whose two
signals both exceed r is steered toward refusal (+1); the others judged harmful are left as they
are. This is the paper's "+1 for harmful prompts" with a bound on the refusals it adds.

The refusal gate (``Profile.refusal_gate``) reads the answering model's own greedy first answer
token (``acts["refuses"]``, :mod:`scans.refusal`, the reading the budget counts refusals by):
a prompt the model answers anyway is left as it is, which keeps its answer and the model's
utility on ordinary prompts.

The steer threshold t (``steer_threshold`` = ``inst_threshold``) is calibrated for the user's
safety budget ``max_harmful_loss`` on the joint signal max(score, inst): on out-of-fold
signals of the pool's harmful prompts, and separately of its severe ones, at most that
fraction falls below t (split conformal, :func:`scans.calibration.safety_budget`), so a
prompt is steered only when both signals call it benign. Profiles of format 1
carry only ``threshold``; for them (and for the ``scans-v1`` benchmark method) the previous
rule applies: harmful at or above the threshold, every other prompt steered away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .vectors import transitions

if TYPE_CHECKING:
    from .profile import Profile

DECISIONS = ("harmful", "abstain", "answers", "benign")
RULES = ("v2", "v1")


@dataclass(frozen=True)
class Verdict:
    """The decision on one prompt. ``sign`` is the steering direction applied (-1 away from
    refusal, 0 none, +1 toward refusal); ``harmful`` is the classifier's flag (score at or
    above the threshold); ``decision`` names the rule's branch; ``inst`` is the second signal."""

    prompt: str
    score: float
    harmful: bool
    sign: int
    decision: str = ""
    inst: float | None = None

    @property
    def steered(self) -> bool:
        return self.sign != 0


def signals(profile: Profile, acts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The two signals (N,) of a batch from its ``inst``/``probe``/``uend`` block outputs."""
    inst = acts["inst"].float().cpu()
    uend = acts["uend"].float().cpu() if "uend" in acts else None
    tau = transitions(inst, acts["probe"].float().cpu()) if profile.classifier != "instruction" else None
    score = profile.scores(tau, uend)
    assert torch.isfinite(score).all(), "non-finite harmfulness scores"
    return score, profile.inst_scores(inst)


def rule_of(profile: Profile, rule: str | None = None) -> str:
    """``rule`` if given, else the profile's own: v2 where it holds a steer threshold, else v1."""
    if rule is not None:
        if rule not in RULES:
            raise ValueError(f"rule {rule!r}: use one of {RULES}")
        return rule
    return "v2" if profile.steer_threshold is not None else "v1"


def verdict_of(
    profile: Profile, prompt: str, score: float, inst: float | None, rule: str, refuses: bool | None = None
) -> Verdict:
    """The rule for one prompt's signals (see the module docstring); ``refuses``: whether the
    answering model would refuse it (read by the refusal gate only)."""
    harmful = score >= profile.threshold
    if rule == "v1" or harmful:
        sign = profile.harmful_sign if harmful else -1
        refuse_t = profile.refuse_threshold if rule == "v2" else None
        if harmful and refuse_t is not None:  # toward refusal only where both signals are sure
            sign = 1 if min(score, score if inst is None else inst) > refuse_t else profile.harmful_sign
        return Verdict(prompt, score, harmful, sign, "harmful" if harmful else "benign", inst)
    steer_threshold = profile.threshold if profile.steer_threshold is None else profile.steer_threshold
    unsure_inst = inst is not None and profile.inst_threshold is not None and inst >= profile.inst_threshold
    if score >= steer_threshold or unsure_inst:
        return Verdict(prompt, score, False, 0, "abstain", inst)
    if profile.refusal_gate and refuses is not None and not refuses:
        return Verdict(prompt, score, False, 0, "answers", inst)
    return Verdict(prompt, score, False, -1, "benign", inst)


def decide(
    profile: Profile, acts: dict[str, torch.Tensor], prompts: Sequence[str], rule: str | None = None
) -> list[Verdict]:
    """Verdicts of a batch, in row order: the only place the steering decision is made. A
    gated profile's ``acts`` also hold ``refuses`` (N,) bool (``Scans.signal_acts``)."""
    score, inst = signals(profile, acts)
    assert score.shape == (len(prompts),), f"{score.shape[0]} scores for {len(prompts)} prompts"
    rule = rule_of(profile, rule)
    second = inst.tolist() if inst is not None else [None] * len(prompts)
    if profile.refusal_gate and rule == "v2":
        assert "refuses" in acts, "a gated profile's verdicts need acts['refuses'] (Scans.signal_acts)"
        refuses = [bool(r) for r in acts["refuses"].tolist()]
        assert len(refuses) == len(prompts), f"{len(refuses)} refusal readings for {len(prompts)} prompts"
    else:
        refuses = [None] * len(prompts)
    return [
        verdict_of(profile, p, float(x), i, rule, r)
        for p, x, i, r in zip(prompts, score.tolist(), second, refuses)
    ]
