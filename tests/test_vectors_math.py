"""Steps 1 and 3 against direct restatements of the paper's equations (float64 numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scans import vectors

N_H, N_B, L, D = 5, 7, 3, 6


@pytest.fixture
def acts():
    g = torch.Generator().manual_seed(0)
    harmful = torch.randn(N_H, L, D, generator=g) + 0.5
    harmless = torch.randn(N_B, L, D, generator=g)
    return harmful, harmless


def test_mean_difference(acts):
    harmful, harmless = acts
    got = vectors.mean_difference(harmful, harmless)
    assert got.dtype == torch.float32 and got.shape == (L, D)
    h, b = harmful.double().numpy(), harmless.double().numpy()
    for layer in range(L):
        mean_h = [sum(h[i, layer, d] for i in range(N_H)) / N_H for d in range(D)]
        mean_b = [sum(b[i, layer, d] for i in range(N_B)) / N_B for d in range(D)]
        diff = np.array(mean_h) - np.array(mean_b)
        expected = diff / np.sqrt(sum(x * x for x in diff))
        np.testing.assert_allclose(got[layer].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.norm(dim=-1).numpy(), np.ones(L), atol=1e-6)


def test_mean_difference_direction(acts):
    """v points from harmless to harmful, not the other way."""
    harmful, harmless = acts
    v = vectors.mean_difference(harmful, harmless)
    gap = (harmful.mean(0) - harmless.mean(0)) * v
    assert (gap.sum(-1) > 0).all()
    assert torch.allclose(vectors.mean_difference(harmless, harmful), -v, atol=1e-6)


def test_mean_difference_rejects_nan(acts):
    harmful, harmless = acts
    harmful = harmful.clone()
    harmful[2, 1, 3] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        vectors.mean_difference(harmful, harmless)
    harmless = harmless.clone()
    harmless[0, 0, 0] = float("inf")
    with pytest.raises(AssertionError, match="non-finite"):
        vectors.mean_difference(acts[0], harmless)


def test_mean_difference_rejects_zero_difference(acts):
    harmful, _ = acts
    with pytest.raises(AssertionError, match="zero mean difference"):
        vectors.mean_difference(harmful, harmful.clone())
    # one layer identical is enough
    other = acts[1][:N_H].clone()
    other[:, 2] = harmful[:, 2]
    with pytest.raises(AssertionError, match="zero mean difference"):
        vectors.mean_difference(harmful, other)


def test_mean_difference_rejects_bad_shapes(acts):
    harmful, harmless = acts
    with pytest.raises(AssertionError):
        vectors.mean_difference(harmful[:, :2], harmless)
    with pytest.raises(AssertionError):
        vectors.mean_difference(harmful[0], harmless[0])
    with pytest.raises(AssertionError):
        vectors.mean_difference(harmful[:0], harmless)


def test_transitions_and_reference(acts):
    inst, probe = acts[0], acts[1][:N_H]
    tau = vectors.transitions(inst, probe)
    np.testing.assert_allclose(tau.numpy(), inst.double().numpy() - probe.double().numpy())
    ref = vectors.reference_transition(tau)
    np.testing.assert_allclose(ref.numpy(), tau.numpy().mean(0), rtol=1e-6, atol=1e-7)
    with pytest.raises(AssertionError):
        vectors.transitions(inst, probe[:, :2])


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("layers", [[0], [1, 2], [0, 1, 2], [2, 0]])
def test_transition_scores(acts, layers):
    tau, ref_src = acts
    reference = ref_src.mean(0)
    got = vectors.transition_scores(tau, reference, layers)
    t, r = tau.double().numpy(), reference.double().numpy()
    expected = [np.mean([_cos(t[i, l], r[l]) for l in layers]) for i in range(N_H)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    # a transition equal to the reference scores 1, its opposite -1
    same = vectors.transition_scores(reference[None] * 2.5, reference, layers)
    opposite = vectors.transition_scores(-reference[None], reference, layers)
    assert torch.allclose(same, torch.ones(1)) and torch.allclose(opposite, -torch.ones(1))


def test_mean_norms(acts):
    harmful, harmless = acts
    got = vectors.mean_norms(harmful, harmless)
    allx = np.concatenate([harmful.double().numpy(), harmless.double().numpy()])
    expected = np.linalg.norm(allx, axis=-1).mean(0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_projection_stats(acts):
    harmful, harmless = acts
    direction = vectors.contrast_direction(harmful, harmless)
    mean, std = vectors.projection_stats(harmless, direction)
    x, d = harmless.double().numpy(), direction.double().numpy()
    proj = np.einsum("nld,ld->nl", x, d)
    np.testing.assert_allclose(mean.numpy(), proj.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), proj.std(0, ddof=1), rtol=1e-5)


@pytest.mark.parametrize("layers", [[1], [0, 2], [0, 1, 2]])
def test_contrast_scores(acts, layers):
    tau, neg = acts
    direction = vectors.contrast_direction(tau, neg)
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(L, generator=g)
    std = torch.rand(L, generator=g) + 0.5
    got = vectors.contrast_scores(tau, direction, mean, std, layers)
    t, d = tau.double().numpy(), direction.double().numpy()
    m, s = mean.double().numpy(), std.double().numpy()
    expected = []
    for i in range(N_H):
        z = [(sum(t[i, l, k] * d[l, k] for k in range(D)) - m[l]) / s[l] for l in layers]
        expected.append(sum(z) / len(z))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # harmful transitions score above the benign ones once standardised on both
    both = torch.cat([tau, neg])
    m_all, s_all = vectors.projection_stats(both, direction)
    scores = vectors.contrast_scores(both, direction, m_all, s_all, layers)
    assert scores[:N_H].mean() > scores[N_H:].mean()
