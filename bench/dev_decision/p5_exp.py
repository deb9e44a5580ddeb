"""Dev only: classifier variants under the 4-fold protocol, the budget over refused harmful/severe."""
import sys, numpy as np, torch
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
sys.path.insert(0, __import__('os').path.dirname(__file__))
_argv = sys.argv; sys.argv = sys.argv[:1]
import analyse_judge as A
sys.argv = _argv
y, sev, dev, old, groups, N, F = A.y, A.sev, A.dev, A.old, A.groups, A.N, A.F
ref = torch.load('refall.pt').numpy()
hi = list(range(12, A.L))

def lda_w(Xtr, ytr, layers, lam):
    ws = []
    for l in layers:
        X = Xtr[:, l].astype(np.float64); mu1, mu0 = X[ytr].mean(0), X[~ytr].mean(0)
        C = np.concatenate([X[ytr] - mu1, X[~ytr] - mu0]); S = C.T @ C / (len(C) - 2); b = np.trace(S) / len(S)
        w = np.linalg.solve((1 - lam) * S + lam * b * np.eye(len(S)), mu1 - mu0); w /= np.linalg.norm(w)
        p = X @ w; ws.append((l, w, p.mean(), p.std() + 1e-8))
    return ws
def lda_apply(ws, X): return np.mean([(X[:, l].astype(np.float64) @ w - m) / s for l, w, m, s in ws], 0)

def make_lda(feat, layers=hi, lam=0.3, train_mask=None):
    def fit(tr):
        t = tr if train_mask is None else tr[train_mask[tr]]
        ws = lda_w(F[feat][t], y[t], layers, lam)
        return lambda idx: lda_apply(ws, F[feat][idx])
    return fit

def make_logreg(feats, layers, C=0.05):
    def fit(tr):
        X = np.concatenate([F[f][tr][:, layers].reshape(len(tr), -1) for f in feats], 1).astype(np.float32)
        mu, sd = X.mean(0), X.std(0) + 1e-4
        m = LogisticRegression(C=C, max_iter=300).fit((X - mu) / sd, y[tr])
        return lambda idx: m.decision_function((np.concatenate([F[f][idx][:, layers].reshape(len(idx), -1) for f in feats], 1) - mu) / sd)
    return fit

INNER_GROUPED = True
INNER_SEED = 0
REPEATS = 1
TS = []
def signals(fitters, tr, te):
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=INNER_SEED)
    oof = np.zeros((len(fitters), len(tr))); ev = np.zeros((len(fitters), len(te)))
    g = groups[tr] if INNER_GROUPED else np.arange(len(tr))
    for j, fz in enumerate(fitters):
        for r in range(REPEATS):
            inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=INNER_SEED + 100 * r)
            for ia, ib in inner.split(tr, y[tr], g):
                oof[j, ib] += fz(tr[ia])(tr[ib]) / REPEATS
        ev[j] = fz(tr)(te)
    # standardise each signal on its OOF harmful/benign midpoint so max() compares like with like
    return oof, ev

def run(name, fitters, comb=np.max, eps=0.02, seeds=(1, 2, 3)):
    out = []
    for seed in seeds:
        outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
        st = np.zeros(N, bool); sc = np.zeros(N)
        for a, b in outer.split(dev, y[dev], groups[dev]):
            tr = np.r_[old, dev[a]]; te = dev[b]
            oof, ev = signals(fitters, tr, te); o, e = comb(oof, 0), comb(ev, 0)
            t = min(A.conformal(o[y[tr] & ref[tr]], eps), A.conformal(o[sev[tr] & ref[tr]], eps))
            st[te] = e < t; sc[te] = e; TS.append(t)
        d = dev; yd, s, rf = y[d], st[d], ref[d]
        out.append((roc_auc_score(yd, sc[d]), roc_auc_score(yd[rf], sc[d][rf]), s[~yd & rf].mean(), s[~yd].mean(), s[yd & rf].mean(), (s & yd & rf & sev[d]).sum()))
    o = np.array(out)
    print(f"{name:40s} AUC {o[:,0].mean():.3f} AUCref {o[:,1].mean():.3f} | refused-benign steered {' '.join(f'{x:.2f}' for x in o[:,2])} | benign steered {o[:,3].mean():.2f} | refused-harmful steered {' '.join(f'{x:.3f}' for x in o[:,4])} sev {o[:,5].astype(int)}", flush=True)

if __name__ == "__main__":
    which = sys.argv[1:] or ["base"]
    if "base" in which:
        run("base max(uend,inst) lda.3", [make_lda("uend"), make_lda("inst")])
    if "mean" in which:
        run("max(uend,inst,mean)", [make_lda("uend"), make_lda("inst"), make_lda("mean")])
        run("max(mean,inst)", [make_lda("mean"), make_lda("inst")])
    if "refonly" in which:
        run("train on refused rows only", [make_lda("uend", train_mask=ref), make_lda("inst", train_mask=ref)])
    if "lam" in which:
        for lam in (0.1, 0.6):
            run(f"lda lam {lam}", [make_lda("uend", lam=lam), make_lda("inst", lam=lam)])
    if "avg" in which:
        run("mean(uend,inst)", [make_lda("uend"), make_lda("inst")], comb=np.mean)
    if "lr" in which:
        for C in (0.01, 0.1):
            run(f"logreg uend+inst layers 12,15,18,21 C{C}", [make_logreg(["uend", "inst"], [12, 15, 18, 21], C)])
    if "lamlo" in which:
        for lam in (0.01, 0.03, 0.1):
            run(f"lda lam {lam}", [make_lda("uend", lam=lam), make_lda("inst", lam=lam)])
    if "lay" in which:
        run("lda lam 0.1 layers 6-23", [make_lda("uend", layers=list(range(6, 24)), lam=0.1), make_lda("inst", layers=list(range(6, 24)), lam=0.1)])
        run("lda lam 0.1 layers 16-23", [make_lda("uend", layers=list(range(16, 24)), lam=0.1), make_lda("inst", layers=list(range(16, 24)), lam=0.1)])

def pick_lam(feat, tr, grid=(0.03, 0.1, 0.3, 0.6, 1.0), q=0.05):
    """Shrinkage by the benign fraction under the q-quantile of out-of-fold harmful scores (refused)."""
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    best = None
    for lam in grid:
        oof = np.zeros(len(tr))
        for ia, ib in inner.split(tr, y[tr], groups[tr]):
            ws = lda_w(F[feat][tr[ia]], y[tr[ia]], hi, lam); oof[ib] = lda_apply(ws, F[feat][tr[ib]])
        h = oof[y[tr] & ref[tr]]; t = np.quantile(h, q)
        obj = (oof[~y[tr]] < t).mean()
        if best is None or obj > best[0]: best = (obj, lam)
    return best[1]

def make_sel(feat):
    def fit(tr):
        lam = pick_lam(feat, tr); PICKS.append((feat, lam))
        ws = lda_w(F[feat][tr], y[tr], hi, lam)
        return lambda idx: lda_apply(ws, F[feat][idx])
    return fit
PICKS = []
if __name__ == "__main__" and "sel" in sys.argv[1:]:
    run("lda lam selected by benign@5%harmful", [make_sel("uend"), make_sel("inst")], seeds=(1,))
    import collections; print(collections.Counter(PICKS))
if __name__ == "__main__" and "v01" in sys.argv[1:]:
    run("lam .1 mean(uend,inst)", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1)], comb=np.mean)
    run("lam .1 max(uend,inst,mean)", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1), make_lda("mean", lam=0.1)])
    run("lam .1 layers 8-23", [make_lda("uend", layers=list(range(8, 24)), lam=0.1), make_lda("inst", layers=list(range(8, 24)), lam=0.1)])
    run("lam .1 eps .03", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1)], eps=0.03)
if __name__ == "__main__" and "ungrouped" in sys.argv[1:]:
    from sklearn.model_selection import StratifiedKFold
    _sgkf = StratifiedGroupKFold
    class _Ungrouped(StratifiedKFold):
        def split(self, X, y=None, groups=None):
            return super().split(X, y)
    globals()["StratifiedGroupKFold"] = _Ungrouped  # inner (and outer) folds ignore the pairs
    pass
if __name__ == "__main__" and "inner" in sys.argv[1:]:
    for grouped in (True, False):
        for iseed in (0, 1, 2):
            INNER_GROUPED, INNER_SEED, TS[:] = grouped, iseed, []
            run(f"lam .1 inner folds grouped={grouped} seed {iseed}", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1)], seeds=(1,))
            print("   thresholds", np.round(TS, 3), flush=True)
if __name__ == "__main__" and "repeat" in sys.argv[1:]:
    REPEATS = 3
    for iseed in (0, 1, 2):
        INNER_SEED, TS[:] = iseed, []
        run(f"lam .1 OOF averaged over 3 fold splits, seed {iseed}", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1)], seeds=(1,))
        print("   thresholds", np.round(TS, 3), flush=True)
if __name__ == "__main__" and "spread" in sys.argv[1:]:
    allts = []
    for iseed in range(8):
        INNER_SEED, TS[:] = iseed, []
        run(f"lam .1 inner seed {iseed}", [make_lda("uend", lam=0.1), make_lda("inst", lam=0.1)], seeds=(1,))
        allts.append(list(TS))
    A_ = np.array(allts)  # (8 inner seeds, 4 outer folds)
    print("per-fold thresholds over 8 inner fold seeds:\n", np.round(A_.T, 3))
    print("sd single", np.round(A_.std(0, ddof=1), 3))
    rng = np.random.default_rng(0)
    for R in (3, 5):
        med = np.array([[np.median(rng.choice(A_[:, f], R, replace=False)) for f in range(A_.shape[1])] for _ in range(2000)])
        print(f"sd of the median of {R} splits", np.round(med.std(0), 3))
