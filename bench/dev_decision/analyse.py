import hashlib, json, sys, collections
import numpy as np, torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.metrics import roc_auc_score

d = torch.load(sys.argv[1] if len(sys.argv) > 1 else "/work/dev/all.pt", weights_only=False)
rows = d["rows"]; N = len(rows)
y = np.array([r["label"] == "harmful" for r in rows])
def group(r):
    if r["set"] == "old": return "old-" + r["prompt"][:40]
    return r.get("pair") or r["id"]
def split(r):
    if r["set"] == "old": return "old"
    g = group(r); return "test" if int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) % 10 < 3 else "dev"
sp = np.array([split(r) for r in rows]); groups = np.array([group(r) for r in rows])
src = np.array([r["set"] for r in rows]); isold_eval = np.array([r["set"]=="old" and r.get("src")=="eval" for r in rows])
form = np.array([r.get("form", "short") for r in rows]); typ = np.array([r.get("type","") for r in rows])
sev = np.array([r.get("severity") == "severe" for r in rows])
print("split counts", collections.Counter(zip(sp, y)))

def lda_scores(Xtr, ytr, Xte, layers, lam=0.3):
    # per-layer shrunk LDA, standardised projection, mean over layers
    out_tr, out_te = [], []
    for l in layers:
        A = Xtr[:, l].astype(np.float64); B = Xte[:, l].astype(np.float64)
        mu1, mu0 = A[ytr].mean(0), A[~ytr].mean(0)
        C = np.concatenate([A[ytr] - mu1, A[~ytr] - mu0])
        S = C.T @ C / (len(C) - 2); b = np.trace(S) / S.shape[0]
        w = np.linalg.solve((1 - lam) * S + lam * b * np.eye(S.shape[0]), mu1 - mu0); w /= np.linalg.norm(w)
        p = A @ w; m, s = p.mean(), p.std() + 1e-8
        out_tr.append((p - m) / s); out_te.append((B @ w - m) / s)
    return np.mean(out_tr, 0), np.mean(out_te, 0)

def conformal(h_scores, eps):
    h = np.sort(h_scores); k = int(np.floor(eps * (len(h) + 1)))
    return -np.inf if k == 0 else h[k - 1]

def evaluate(name, feat, layers, train_mask, eval_mask, kind="lda", eps=0.02, lam=0.3, verbose=False):
    X = d[feat].float().numpy()
    if feat == "uend_norm":
        pass
    # out-of-fold training scores for conformal threshold
    tr = np.flatnonzero(train_mask); ev = np.flatnonzero(eval_mask)
    oof = np.zeros(len(tr))
    skf = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    for a, b in skf.split(tr, y[tr], groups[tr]):
        _, oof[b] = fit_score(X[tr[a]], y[tr[a]], X[tr[b]], layers, kind, lam)
    _, s_ev = fit_score(X[tr], y[tr], X[ev], layers, kind, lam)
    t = conformal(oof[y[tr]], eps)
    ye = y[ev]
    auc = roc_auc_score(ye, s_ev)
    leak = (s_ev[ye] < t).mean(); steer = (s_ev[~ye] < t).mean()
    sev_leak = (s_ev[ye & sev[ev]] < t).mean() if (ye & sev[ev]).any() else float("nan")
    print(f"{name:40s} auc {auc:.3f} oofauc {roc_auc_score(y[tr], oof):.3f} t {t:+.2f} leak {leak:.3f} sevleak {sev_leak:.3f} benign-steered {steer:.3f}")
    if verbose:
        for f in sorted(set(form[ev])):
            m = form[ev] == f
            print(f"   form {f:16s} n={m.sum():3d} leak {(s_ev[m & ye] < t).mean() if (m&ye).any() else float('nan'):.2f} steered {(s_ev[m & ~ye] < t).mean() if (m&~ye).any() else float('nan'):.2f}")
        for f in sorted(set(typ[ev])):
            m = typ[ev] == f
            print(f"   type {f:24s} n={m.sum():3d} leak {(s_ev[m & ye] < t).mean() if (m&ye).any() else float('nan'):.2f} steered {(s_ev[m & ~ye] < t).mean() if (m&~ye).any() else float('nan'):.2f}")
    return s_ev, t

def fit_score(Xtr, ytr, Xte, layers, kind, lam):
    if kind == "lda":
        return lda_scores(Xtr, ytr, Xte, layers, lam)
    if kind == "logreg":
        A = Xtr[:, layers].reshape(len(Xtr), -1); B = Xte[:, layers].reshape(len(Xte), -1)
        mu, sd = A.mean(0), A.std(0) + 1e-6
        clf = LogisticRegression(C=0.05, max_iter=2000).fit((A - mu) / sd, ytr)
        return clf.decision_function((A - mu) / sd), clf.decision_function((B - mu) / sd)
    if kind == "lda_cos":
        nA = Xtr / np.linalg.norm(Xtr, axis=-1, keepdims=True); nB = Xte / np.linalg.norm(Xte, axis=-1, keepdims=True)
        return lda_scores(nA, ytr, nB, layers, lam)

if __name__ == "__main__":
    L = d["uend"].shape[1]
    newdev = sp == "dev"
    # protocol A: train old anchors+borderline (as today), eval on new dev
    old_train = (src == "old") & ~isold_eval
    evalm = newdev | isold_eval
    for feat in ["uend", "mean", "inst"]:
        for layers in [list(range(12, L)), list(range(6, 18)), list(range(8, 16))]:
            evaluate(f"A old->new {feat} L{layers[0]}-{layers[-1]}", feat, layers, old_train, evalm)
