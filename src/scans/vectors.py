"""Steps 1 and 3 as plain tensor math (shapes: N prompts, L layers, D hidden).

Step 1:  v_l = mean_harmful h_l(inst) - mean_harmless h_l(inst),  v_l <- v_l / ||v_l||
Step 3:  tau_l(q) = h_l(inst) - h_l(probe);  r_l = mean_harmful tau_l
         s(q) = mean_{l in L_cls} cos(tau_l(q), r_l)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def contrast_direction(
    positive: torch.Tensor,
    negative: torch.Tensor,
    shrinkage: float = 1.0,
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """Unit direction (L, D) that separates ``positive`` from ``negative`` (float64 math).

    w_l = (Sigma_l(lambda))^-1 (mu_pos,l - mu_neg,l),  w_l <- w_l / ||w_l||, with the pooled
    within-class covariance shrunk toward a scaled identity (a regularised Fisher / LDA
    direction):  Sigma(lambda) = (1 - lambda) S + lambda (tr S / D) I.
    ``shrinkage`` 1 gives the plain mean difference (the previous behaviour). With
    ``layers``, only those layers are solved (the others get the mean difference).
    """
    return contrast_directions(positive, negative, [shrinkage], layers)[0]


def contrast_directions(
    positive: torch.Tensor,
    negative: torch.Tensor,
    shrinkages: Sequence[float],
    layers: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """:func:`contrast_direction` for several shrinkage values, all layers batched.

    With the centred rows C (n x D per layer), S = C^T C / (n - 2) and
    Sigma(lambda) = a C^T C + b I with a = (1 - lambda) / (n - 2), b = lambda tr(S) / D. For
    lambda in (0, 1) one Cholesky solve in the smaller space: Sigma^-1 d directly (D <= n) or,
    by the Woodbury identity, (d - C^T (b/a I + C C^T)^-1 C d) / b (n < D). lambda = 0 is the
    pseudo-inverse, from the eigendecomposition of :func:`principal_axes`.
    """
    assert all(0.0 <= lam <= 1.0 for lam in shrinkages), f"shrinkage must lie in [0, 1], got {shrinkages}"
    mean_diff = mean_difference(positive, negative).double()
    out = [mean_diff.clone() for _ in shrinkages]
    if all(lam >= 1.0 for lam in shrinkages):
        return [d.float() for d in out]
    n = positive.shape[0] + negative.shape[0]
    assert n > 2, "need more than two prompts for a covariance"
    idx = (
        torch.arange(mean_diff.shape[0])
        if layers is None
        else torch.as_tensor(list(layers), dtype=torch.long)
    )
    pos, neg = positive.double()[:, idx].transpose(0, 1), negative.double()[:, idx].transpose(0, 1)
    d = pos.mean(1) - neg.mean(1)  # (L', D)
    centred = torch.cat(
        [pos - pos.mean(1, keepdim=True), neg - neg.mean(1, keepdim=True)], dim=1
    )  # (L', n, D)
    dim = d.shape[-1]
    small = n < dim
    gram = centred @ centred.transpose(-1, -2) if small else centred.transpose(-1, -2) @ centred
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1) / (n - 2) / dim  # tr(S) / D, (L',)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype)
    for i, lam in enumerate(shrinkages):
        if lam >= 1.0:
            continue
        if lam == 0.0:
            w = _pseudo_inverse_direction(centred, d, n)
        else:
            a, b = (1.0 - lam) / (n - 2), lam * scale
            if small:  # Woodbury in the n x n space
                rhs = centred @ d.unsqueeze(-1)  # C d, (L', n, 1)
                inner = gram + (b / a)[:, None, None] * eye
                solved = torch.cholesky_solve(rhs, torch.linalg.cholesky(inner))
                w = (d - (centred.transpose(-1, -2) @ solved).squeeze(-1)) / b[:, None]
            else:
                sigma = a * gram + b[:, None, None] * eye
                w = torch.cholesky_solve(d.unsqueeze(-1), torch.linalg.cholesky(sigma)).squeeze(-1)
        norm = w.norm(dim=-1, keepdim=True)
        assert torch.isfinite(w).all() and (norm > 0).all(), "degenerate contrast direction"
        out[i][idx] = w / norm
    return [d.float() for d in out]


def _pseudo_inverse_direction(centred: torch.Tensor, d: torch.Tensor, n: int) -> torch.Tensor:
    """S^+ d (unnormalised) for the unshrunk LDA, S = C^T C / (n - 2) over its nonzero eigenvalues."""
    axes, e = principal_axes(centred)  # (L', D, k), (L', k)
    e = e / (n - 2)
    inv = torch.where(e > 0, 1.0 / e.clamp_min(1e-300), torch.zeros_like(e))
    coef = (axes * d.unsqueeze(-1)).sum(1)  # V^T d, (L', k)
    return (axes * (coef * inv).unsqueeze(1)).sum(-1)


def principal_axes(centred: torch.Tensor, rtol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal axes V (B, D, k) and eigenvalues (B, k) of C^T C for a batch of (B, n, D)
    centred rows, from the smaller Gram matrix; axes of eigenvalues below ``rtol`` times the
    largest are zeroed (so they act as the null space)."""
    n, dim = centred.shape[-2:]
    small = n < dim  # then C C^T = U diag(s^2) U^T and V = C^T U / s
    gram = centred @ centred.transpose(-1, -2) if small else centred.transpose(-1, -2) @ centred
    evals, axes = torch.linalg.eigh(gram)
    keep = evals > rtol * evals.amax(-1, keepdim=True).clamp_min(1e-300)
    if small:
        s = evals.clamp_min(0).sqrt()
        axes = centred.transpose(-1, -2) @ axes / torch.where(keep, s, torch.ones_like(s)).unsqueeze(-2)
    evals = torch.where(keep, evals, torch.zeros_like(evals))
    return axes * keep.unsqueeze(-2), evals


def projection_stats(x: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (L,) of the projections of (N, L, D) onto ``direction``."""
    proj = torch.einsum("nld,ld->nl", x.double(), direction.double())
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
    proj = torch.einsum("nld,ld->nl", tau[:, idx].double(), direction.double()[idx])
    z = (proj - mean.double()[idx]) / std.double()[idx]
    return z.mean(-1).float()


def classifier_scores(
    kind: str, tensors: Mapping[str, torch.Tensor], features: torch.Tensor, layers: Sequence[int]
) -> torch.Tensor:
    """A classifier's scores (N,) of (N, L, D) features over ``layers``: ``cosine`` the paper's
    :func:`transition_scores` with ``reference``, else (``instruction``, ``contrast``)
    :func:`contrast_scores` with ``contrast``, ``contrast_mean`` and ``contrast_std``."""
    if kind == "cosine":
        return transition_scores(features, tensors["reference"], layers)
    return contrast_scores(
        features, tensors["contrast"], tensors["contrast_mean"], tensors["contrast_std"], layers
    )


def _centre_rows(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Q m for (L, n, ...) ``m``: each row minus its class's mean over the rows (``y``: class per row)."""
    shape = (1, -1, *([1] * (m.dim() - 2)))
    pos, neg = m[:, y].mean(1, keepdim=True), m[:, ~y].mean(1, keepdim=True)
    return m - torch.where(y.view(shape), pos, neg)


def _centred_gram(k: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q K Q (L, n, n) for a symmetric (L, n, n) ``k`` in one pass, and K V (L, n, 2).

    Q = I - U V^T with U the (n, 2) class indicators and V their averaging columns, so
    Q K Q = K - U A^T - A U^T + U M U^T with A = K V and M = V^T K V; with W = A - U M / 2
    that is K - [U W] [W U]^T, a rank-4 update (one ``baddbmm``)."""
    u = torch.stack([y, ~y], -1).to(k.dtype)  # (n, 2)
    v = u / u.sum(0)
    a = k @ v  # (L, n, 2)
    w = a - u @ (v.T @ a) / 2  # (L, n, 2)
    uu = u.expand(k.shape[0], -1, -1)
    return torch.baddbmm(k, torch.cat([uu, w], -1), torch.cat([w, uu], -1).transpose(-1, -2), alpha=-1), a


def crossfit_contrast_scores(
    features: torch.Tensor, labels: torch.Tensor, folds: Sequence[torch.Tensor], shrinkage: float
) -> torch.Tensor:
    """Out-of-fold scores (splits, N) of the shrunk contrast classifier, one row per fold split,
    from one Gram matrix per layer instead of a direction per fold (the fast path of cross-fitting).

    ``features`` (N, L, D) are the classifier's layers only; ``folds`` holds one (N,) fold index
    per split; ``shrinkage`` lies in (0, 1). Each fold's direction is w = X_T^T g over its training
    rows T (the Woodbury form of :func:`contrast_directions`: with m = +1/n_pos, -1/n_neg and the
    per-class centring projector Q, g = (m - Q beta) / b, beta = (b/a I + Q K Q)^-1 Q K m), so every
    projection the score needs (:func:`projection_stats` on T, :func:`contrast_scores` on the
    fold) is a product with K = X X^T. Agrees with fitting each fold directly up to rounding."""
    assert 0.0 < shrinkage < 1.0, f"the Gram path needs a shrinkage in (0, 1), got {shrinkage}"
    _check(features, "features")
    x = features.double().transpose(0, 1)  # (L, N, D)
    gram = x @ x.transpose(-1, -2)  # (L, N, N)
    y = torch.as_tensor(labels, dtype=torch.bool)
    dim = x.shape[-1]
    out = torch.zeros(len(folds), x.shape[1], dtype=torch.float64)
    for r, split in enumerate(folds):
        for fold in split.unique().tolist():
            tr, te = torch.nonzero(split != fold).squeeze(1), torch.nonzero(split == fold).squeeze(1)
            k_tt, k_st, yt = gram[:, tr[:, None], tr], gram[:, te[:, None], tr], y[tr]
            n, n_pos = len(tr), int(yt.sum())
            assert 0 < n_pos < n and n > 2, "each training fold needs both classes"

            m = yt.double() / n_pos - (~yt).double() / (n - n_pos)  # d = X_T^T m
            inner, kv = _centred_gram(k_tt, yt)  # Q K Q = C C^T, and K V
            diagonal = inner.diagonal(dim1=-2, dim2=-1)
            a = (1.0 - shrinkage) / (n - 2)
            b = shrinkage * diagonal.sum(-1) / (n - 2) / dim  # lambda tr(S) / D
            cd = _centre_rows(yt, (kv[..., 0] - kv[..., 1]).unsqueeze(-1))  # C d = Q K m, (L, n, 1)
            diagonal.add_((b / a)[:, None])  # inner = Q K Q + b/a I
            beta = torch.cholesky_solve(cd, torch.linalg.cholesky(inner))
            g = (m.unsqueeze(-1) - _centre_rows(yt, beta)) / b[:, None, None]  # w = X_T^T g, (L, n, 1)
            kg = (k_tt @ g).squeeze(-1)  # X_T w per training row, (L, n)
            norm = (g.squeeze(-1) * kg).sum(-1).sqrt()  # |w|
            assert torch.isfinite(norm).all() and (norm > 0).all(), "degenerate contrast direction"
            proj_t = kg / norm[:, None]
            proj_s = (k_st @ g).squeeze(-1) / norm[:, None]
            mean, std = proj_t.mean(1), proj_t.std(1).clamp_min(1e-8)
            out[r, te] = ((proj_s - mean[:, None]) / std[:, None]).mean(0)
    return out
