"""Steps 1 and 3 as plain tensor math (shapes: N prompts, L layers, D hidden).

Step 1:  v_l = mean_harmful h_l(inst) - mean_harmless h_l(inst),  v_l <- v_l / ||v_l||
Step 3:  tau_l(q) = h_l(inst) - h_l(probe);  r_l = mean_harmful tau_l
         s(q) = mean_{l in L_cls} cos(tau_l(q), r_l)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(acts: torch.Tensor, name: str) -> None:
    assert acts.dim() == 3 and acts.shape[0] > 0, f"{name}: want (N, L, D), got {tuple(acts.shape)}"
    assert torch.isfinite(acts).all(), f"{name}: non-finite activations"


def mean_difference(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Unit refusal vectors (L, D) in float32, accumulated in float64."""
    _check(harmful, "harmful")
    _check(harmless, "harmless")
    assert harmful.shape[1:] == harmless.shape[1:], "harmful and harmless shapes differ"
    diff = harmful.double().mean(0) - harmless.double().mean(0)
    norms = diff.norm(dim=-1, keepdim=True)
    assert (norms > 0).all(), "a layer has a zero mean difference; anchors may be identical"
    return (diff / norms).float()


def transitions(inst: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """tau = h(inst) - h(probe), (N, L, D)."""
    assert inst.shape == probe.shape, "inst and probe activations differ in shape"
    return inst.double() - probe.double()


def reference_transition(harmful_tau: torch.Tensor) -> torch.Tensor:
    """r_l = mean of tau_l over the harmful anchors, (L, D) float32."""
    _check(harmful_tau, "harmful transitions")
    return harmful_tau.double().mean(0).float()


def transition_scores(tau: torch.Tensor, reference: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """s(q) = mean over ``layers`` of cos(tau_l(q), r_l), shape (N,)."""
    idx = torch.as_tensor(list(layers), dtype=torch.long)
    a = tau.double()[:, idx]
    b = reference.double()[idx].unsqueeze(0)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return cos.mean(-1).float()


def mean_norms(*acts: torch.Tensor) -> torch.Tensor:
    """Mean residual-stream norm per layer over all given (N, L, D) activations, (L,)."""
    norms = torch.cat([a.double().norm(dim=-1) for a in acts], dim=0)
    return norms.mean(0).float()


def contrast_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Unit direction (L, D) from the negative mean to the positive mean (float64 sums)."""
    return mean_difference(positive, negative)


def projection_stats(x: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (L,) of the projections of (N, L, D) onto ``direction``."""
    proj = (x.double() * direction.double().unsqueeze(0)).sum(-1)
    return proj.mean(0).float(), proj.std(0).clamp_min(1e-8).float()


def contrast_scores(
    tau: torch.Tensor,
    direction: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    layers: Sequence[int],
) -> torch.Tensor:
    """Mean over ``layers`` of the standardised projection of tau_l onto the contrast
    direction, (N,). Positive = closer to the harmful anchors than to the benign ones."""
    idx = torch.as_tensor(list(layers), dtype=torch.long)
    proj = (tau.double()[:, idx] * direction.double()[idx].unsqueeze(0)).sum(-1)
    z = (proj - mean.double()[idx]) / std.double()[idx]
    return z.mean(-1).float()
