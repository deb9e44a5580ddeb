"""Request vs steered-answer signals (analysis of p8_response.py's features).

4-fold cross-validation over the taxonomy's dev split, grouped by contrast pair (outer seeds
1 / 2 / 3); per-layer shrunk LDA (shrinkage 0.1) on layers 12-23, each layer's projection
scaled so that the training classes' means sit at -1 (benign) and +1 (harmful), averaged over
layers. The steer threshold is the conformal one at budget 0.02 over the out-of-fold scores of
the harmful prompts the model refuses (k = floor(0.02 (n + 1)), steer below the k-th lowest);
"refused benign steered" is what lowers benign refusals. Then the eval prompts: classifiers
trained on the whole dev split, threshold from the dev out-of-fold scores of seed 1.

    python bench/dev_decision/p8_analyse.py FEATURES.pt
"""

from __future__ import annotations

import sys

import numpy as np
import torch

SHRINK = 0.1
BUDGET = 0.02


def lda_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: direction w (L, D) and affine (a, b) putting class means at -1 / +1."""
    ws, ab = [], []
    for li in range(x.shape[1]):
        xl = x[:, li]
        mu_h, mu_b = xl[y == 1].mean(0), xl[y == 0].mean(0)
        xc = np.concatenate([xl[y == 1] - mu_h, xl[y == 0] - mu_b])
        cov = xc.T @ xc / len(xc)
        cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        w = np.linalg.solve(cov, mu_h - mu_b)
        ph, pb = mu_h @ w, mu_b @ w
        ws.append(w)
        ab.append((2 / (ph - pb), -(ph + pb) / (ph - pb)))
    return np.stack(ws), np.array(ab)


def lda_score(model: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    w, ab = model
    proj = np.einsum("nld,ld->nl", x, w)
    return (proj * ab[:, 0] + ab[:, 1]).mean(1)


def folds(groups: list[str], k: int, seed: int) -> np.ndarray:
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    of = {g: perm[i] % k for i, g in enumerate(uniq)}
    return np.array([of[g] for g in groups])


def threshold(scores: np.ndarray) -> float:
    n = len(scores)
    k = int(np.floor(BUDGET * (n + 1)))
    if k < 1:
        return -np.inf
    return float(np.sort(scores)[k - 1])


def main() -> None:
    d = torch.load(sys.argv[1], weights_only=False)
    rows = d["rows"]
    y_all = np.array([r["label"] != "benign" for r in rows], dtype=int)
    severe_all = np.array([r.get("severity") == "severe" or r.get("type") == "severe" for r in rows]) & (
        y_all == 1
    )
    refused_all = np.array(d["refused"])
    sref_all = np.array(d["steered_refused"])
    dev = np.array([r["set"] == "dev" for r in rows])
    ev = ~dev
    feats = {k: d[k].numpy().astype(np.float64) for k in ("uend", "inst", "rlast", "rend", "rmean")}
    groups = [r["group"] for r in rows if r["set"] == "dev"]
    y = y_all[dev]
    refused, sev, sref = refused_all[dev], severe_all[dev], sref_all[dev]
    print(
        f"dev: {dev.sum()} rows, benign {int((y == 0).sum())} (refused {int((refused & (y == 0)).sum())}),"
        f" harmful {int(y.sum())} (refused {int((refused & (y == 1)).sum())}), severe {int(sev.sum())}"
        f" (refused {int((sev & refused).sum())})"
    )
    print(
        f"steered answers still refusing: benign {sref[y == 0].mean():.1%}, harmful {sref[y == 1].mean():.1%}"
    )
    combos = {
        "uend": ["uend"],
        "inst": ["inst"],
        "max(uend,inst) [rule]": ["uend", "inst"],
        "rlast": ["rlast"],
        "rend": ["rend"],
        "rmean": ["rmean"],
        "max(uend,inst,rend)": ["uend", "inst", "rend"],
        "max(uend,inst,rmean)": ["uend", "inst", "rmean"],
        "max(uend,inst,rlast)": ["uend", "inst", "rlast"],
        "max(uend,inst,rend,rmean)": ["uend", "inst", "rend", "rmean"],
    }
    oof_seed1: dict[str, np.ndarray] = {}
    print(
        f"{'signal':28s} {'AUROC(refused)':>14s}  refused benign steered / refused harmful steered / severe (seeds 1,2,3)"
    )
    results = {}
    for seed in (1, 2, 3):
        fo = folds(groups, 4, seed)
        oof = {k: np.zeros(len(y)) for k in feats}
        for f in range(4):
            tr, te = fo != f, fo == f
            for k, x in feats.items():
                m = lda_fit(x[dev][tr], y[tr])
                oof[k][te] = lda_score(m, x[dev][te])
        if seed == 1:
            oof_seed1 = oof
        for name, parts in combos.items():
            s = np.max(np.stack([oof[p] for p in parts]), 0)
            t = threshold(s[(y == 1) & refused])
            st = s < t
            rb = st[(y == 0) & refused].mean()
            rh = st[(y == 1) & refused].mean()
            sv = int((st & sev & refused).sum())
            rr = s[refused]
            yr = y[refused]
            auc = (rr[yr == 1][:, None] > rr[yr == 0][None, :]).mean()
            results.setdefault(name, []).append((auc, rb, rh, sv, st[(y == 0)].mean()))
    for name, res in results.items():
        auc = np.mean([r[0] for r in res])
        print(
            f"{name:28s} {auc:14.3f}  "
            + " / ".join(f"{r[1]:.0%}" for r in res)
            + "   "
            + " / ".join(f"{r[2]:.1%}" for r in res)
            + "   "
            + " / ".join(str(r[3]) for r in res)
            + "   all benign steered "
            + " / ".join(f"{r[4]:.0%}" for r in res)
        )
    # eval prompts: train on all dev, threshold from seed-1 dev OOF
    print(
        "\neval prompts (60 benign / 60 harmful): benign steered, of them refused by the model; harmful steered (refused)"
    )
    ye = y_all[ev]
    refe = refused_all[ev]
    srefe = sref_all[ev]
    models = {k: lda_fit(x[dev], y) for k, x in feats.items()}
    for name, parts in combos.items():
        s_dev = np.max(np.stack([oof_seed1[p] for p in parts]), 0)
        t = threshold(s_dev[(y == 1) & refused])
        s = np.max(np.stack([lda_score(models[p], feats[p][ev]) for p in parts]), 0)
        st = s < t
        bs = int(st[ye == 0].sum())
        brs = int((st & (ye == 0) & refe).sum())
        hs = int(st[ye == 1].sum())
        hrs = int((st & (ye == 1) & refe).sum())
        unlocked = int((st & (ye == 1) & refe & ~srefe).sum())
        print(
            f"{name:28s} benign {bs}/60 (refused {brs}/{int(((ye == 0) & refe).sum())}),"
            f" harmful {hs} (refused {hrs}, unlocked {unlocked})"
        )


if __name__ == "__main__":
    main()
