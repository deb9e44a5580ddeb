import json, sys, collections
import numpy as np, torch
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.metrics import roc_auc_score
d = torch.load(sys.argv[1] if len(sys.argv) > 1 else "all4.pt", weights_only=False)
rows = d["rows"]; N = len(rows)
y = np.array([r["label"] == "harmful" for r in rows])
sev = np.array([r.get("severity") == "severe" for r in rows])
groups = np.array([r.get("pair") or r["id"] for r in rows])
S = np.array([r["set"] for r in rows]); SP = np.array([r.get("split", "") for r in rows])
old = np.flatnonzero(S == "old"); dev = np.flatnonzero((S == "tax") & (SP == "dev")); evs = np.flatnonzero(S == "eval")
L = d["uend"].shape[1]
F = {k: d[k].float().numpy() for k in ("uend", "inst", "mean", "fol", "ast") if k in d}
for k in ("folyes", "astyes"):
    if k in d: F[k] = d[k].numpy()[:, None, None]

def lda(Xtr, ytr, Xte, layers, lam=0.3):
    out = []
    for l in layers:
        A = Xtr[:, l].astype(np.float64); B = Xte[:, l].astype(np.float64)
        mu1, mu0 = A[ytr].mean(0), A[~ytr].mean(0)
        C = np.concatenate([A[ytr] - mu1, A[~ytr] - mu0]); Sg = C.T @ C / (len(C) - 2); b = np.trace(Sg) / Sg.shape[0]
        w = np.linalg.solve((1 - lam) * Sg + lam * b * np.eye(Sg.shape[0]), mu1 - mu0); w /= np.linalg.norm(w)
        p = A @ w; m, s = p.mean(), p.std() + 1e-8
        out.append((B @ w - m) / s)
    return np.mean(out, 0)

def score(feat, tr, te, layers):
    if feat.endswith("yes"): return F[feat][te, 0, 0]
    return lda(F[feat][tr], y[tr], F[feat][te], layers)

def conformal(h, eps):
    h = np.sort(h); k = int(np.floor(eps * (len(h) + 1))); return -np.inf if k == 0 else h[k - 1]

def signals(feats, tr, te):
    """OOF scores on tr and scores on te for each feature."""
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    oof = np.zeros((len(feats), len(tr))); ev = np.zeros((len(feats), len(te)))
    for j, (f, layers) in enumerate(feats):
        for ia, ib in inner.split(tr, y[tr], groups[tr]):
            oof[j, ib] = score(f, tr[ia], tr[ib], layers)
        ev[j] = score(f, tr, te, layers)
    return oof, ev

def rule(oof, ev, tr, comb, eps=0.02):
    c = {"max": np.max, "mean": np.mean}[comb]
    o, e = c(oof, 0), c(ev, 0)
    t = min(conformal(o[y[tr]], eps), conformal(o[sev[tr]], eps))
    return e < t, e

def protocol(name, feats, comb="max", eps=0.02):
    outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
    st = np.zeros(N, bool); sc = np.full(N, np.nan)
    for a, b in outer.split(dev, y[dev], groups[dev]):
        tr = np.r_[old, dev[a]]; te = dev[b]
        oof, ev = signals(feats, tr, te); s, e = rule(oof, ev, tr, comb, eps); st[te] = s; sc[te] = e
    ye = y[dev]; sd = st[dev]
    # eval set: train on old + all dev
    tr = np.r_[old, dev]; oof, ev = signals(feats, tr, evs); s2, e2 = rule(oof, ev, tr, comb, eps)
    print(f"{name:34s} devAUC {roc_auc_score(ye, sc[dev]):.3f} benign-steered {sd[~ye].mean():.3f} leak {sd[ye].mean():.3f} ({sd[ye].sum()}, sev {sd[ye & sev[dev]].sum()}) | eval AUC {roc_auc_score(y[evs], e2):.3f} steered {s2[~y[evs]].mean():.3f} leak {s2[y[evs]].sum()}", flush=True)
    return st, sc

if __name__ == "__main__":
    hi = list(range(12, L)); mid = list(range(6, L))
    have = set(F)
    protocol("current max(uend,inst) 12-23", [("uend", hi), ("inst", hi)])
    protocol("uend only", [("uend", hi)])
    protocol("inst only", [("inst", hi)])
    protocol("mean 12-23", [("mean", hi)])
    protocol("max(uend,inst,mean)", [("uend", hi), ("inst", hi), ("mean", hi)])
    for k in ("fol", "ast"):
        if k not in have: continue
        protocol(f"{k}yes raw", [(k + "yes", None)])
        protocol(f"{k} 12-23", [(k, hi)])
        protocol(f"{k} 6-23", [(k, mid)])
        protocol(f"max(uend,inst,{k})", [("uend", hi), ("inst", hi), (k, hi)])
        protocol(f"max(uend,{k})", [("uend", hi), (k, hi)])
        protocol(f"mean(uend,inst,{k})", [("uend", hi), ("inst", hi), (k, hi)], comb="mean")
        protocol(f"max(mean,inst,{k})", [("mean", hi), ("inst", hi), (k, hi)])
