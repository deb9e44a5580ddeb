"""Request vs steered-answer signals (analysis of p8_response.py's features).

4-fold cross-validation over the taxonomy's dev split, grouped by contrast pair (outer seeds
1 / 2 / 3); per-layer shrunk LDA (shrinkage 0.1) on layers 12-23, each layer's projection
scaled so that the training classes' means sit at -1 (benign) and +1 (harmful), averaged over
layers. The steer threshold is the conformal one at budget 0.02 over the out-of-fold scores of
the harmful prompts the model refuses (k = floor(0.02 (n + 1)), steer below the k-th lowest);
"refused benign steered" is what lowers benign refusals. Then the eval prompts: classifiers
trained on the whole dev split, threshold from the dev out-of-fold scores of seed 1.

    python bench/dev_decision/p8_analyse.py FEATURES.pt [GUARD.pt]

`--curve` prints instead the 0.5B's own rule trained on 33 / 50 / 75 / 100% of the training
folds (a learning curve) and, at full size, the refused harmful fraction steered when 60-90% of
the refused benign prompts are (the trade-off).

GUARD.pt (p8_guard.py): another model's `uend` / `inst` block outputs on the same rows, read as
the signals `guard-uend` / `guard-inst`; the refusals are still the answering model's.
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


def curve(d: dict) -> None:
    rows = [r for r in d["rows"] if r["set"] == "dev"]
    n = len(rows)
    y = np.array([r["label"] != "benign" for r in rows], dtype=int)
    ref = np.array(d["refused"][:n])
    sev = np.array([r.get("severity") == "severe" for r in rows])
    feats = {k: d[k][:n].numpy().astype(np.float64) for k in ("uend", "inst")}
    groups = [r["group"] for r in rows]
    for frac in (0.33, 0.5, 0.75, 1.0):
        res, trade = [], []
        for seed in (1, 2, 3):
            fo, rng = folds(groups, 4, seed), np.random.default_rng(seed + 10)
            oof = {k: np.zeros(n) for k in feats}
            for f in range(4):
                tr = np.where(fo != f)[0]
                tr = tr[rng.random(len(tr)) < frac] if frac < 1 else tr
                for k, x in feats.items():
                    oof[k][fo == f] = lda_score(lda_fit(x[tr], y[tr]), x[fo == f])
            s = np.maximum(oof["uend"], oof["inst"])
            t = threshold(s[(y == 1) & ref])
            res.append(((s < t) & (y == 0) & ref).sum() / ((y == 0) & ref).sum())
            hb, bb, sv = s[(y == 1) & ref], s[(y == 0) & ref], s[sev & ref]
            trade.append(
                [
                    (np.mean(hb < np.quantile(bb, q)), np.mean(sv < np.quantile(bb, q)))
                    for q in (0.6, 0.7, 0.8, 0.9)
                ]
            )
        print(
            f"train fraction {frac:.2f}: refused benign steered "
            + " / ".join(f"{r:.0%}" for r in res)
            + f", mean {np.mean(res):.1%}"
        )
    for qi, q in enumerate((0.6, 0.7, 0.8, 0.9)):
        print(
            f"steering {q:.0%} of the refused benign: refused harmful steered "
            + " / ".join(f"{tr[qi][0]:.1%}" for tr in trade)
            + ", refused severe "
            + " / ".join(f"{tr[qi][1]:.1%}" for tr in trade)
        )


def main() -> None:
    d = torch.load(sys.argv[1], weights_only=False)
    if "--curve" in sys.argv:
        curve(d)
        return
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
    if len(sys.argv) > 2:
        g = torch.load(sys.argv[2], weights_only=False)
        feats |= {f"guard-{k}": g[k].numpy().astype(np.float64) for k in ("uend", "inst")}
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
    if "guard-uend" in feats:
        combos |= {
            "guard-uend": ["guard-uend"],
            "guard-inst": ["guard-inst"],
            "max(guard-uend,guard-inst)": ["guard-uend", "guard-inst"],
            "max(guard-uend,guard-inst), capped": ["guard-uend", "guard-inst"],
            "max(uend,inst,guard-uend,guard-inst)": ["uend", "inst", "guard-uend", "guard-inst"],
        }
        combos["max(uend,inst) [rule], capped"] = ["uend", "inst"]
    oof_seed1: dict[str, np.ndarray] = {}
    print(
        f"{'signal':40s} {'AUROC(refused)':>14s}  refused benign steered / refused harmful steered / severe (seeds 1,2,3)"
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
            if name.endswith("capped"):  # the rule's first branch: a score at or above the harmful
                # threshold (here the 10% quantile of the harmful scores, target recall 0.9) is not steered
                st &= oof[parts[0]] < np.quantile(oof[parts[0]][y == 1], 0.1)
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
            f"{name:40s} {auc:14.3f}  "
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
        first = lda_score(models[parts[0]], feats[parts[0]][ev])
        s = np.max(np.stack([lda_score(models[p], feats[p][ev]) for p in parts]), 0)
        st = s < t
        if name.endswith("capped"):
            st &= first < np.quantile(oof_seed1[parts[0]][y == 1], 0.1)
        bs = int(st[ye == 0].sum())
        brs = int((st & (ye == 0) & refe).sum())
        hs = int(st[ye == 1].sum())
        hrs = int((st & (ye == 1) & refe).sum())
        unlocked = int((st & (ye == 1) & refe & ~srefe).sum())
        print(
            f"{name:40s} benign {bs}/60 (refused {brs}/{int(((ye == 0) & refe).sum())}),"
            f" harmful {hs} (refused {hrs}, unlocked {unlocked})"
        )


if __name__ == "__main__":
    main()
