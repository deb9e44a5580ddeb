"""Dev only: averaged out-of-fold scores vs the mean of per-split thresholds (the package's own
Gram-path cross-fitting, ungrouped stratified folds as `scans fit` uses). Outer seeds 1-3 (4-fold,
grouped by contrast pair); inner fold seeds 0..S-1; R = 8 splits; budget 0.02 over refused
harmful and refused severe rows."""
import sys, numpy as np, torch
from sklearn.model_selection import StratifiedGroupKFold
sys.path.insert(0, __import__('os').path.dirname(__file__))
_argv = sys.argv; sys.argv = sys.argv[:1]
import analyse_judge as A
sys.argv = _argv
from scans.classifier import stratified_folds, classifier_tensors
from scans.vectors import crossfit_contrast_scores, classifier_scores
y, sev, dev, old, groups, N, F = A.y, A.sev, A.dev, A.old, A.groups, A.N, A.F
ref = torch.load('refall.pt').numpy()
hi = list(range(12, A.L)); R = 8; S = int(sys.argv[1]) if len(sys.argv) > 1 else 4
X = {k: torch.as_tensor(F[k][:, hi]).double() for k in ("uend", "inst")}
def oof_per_split(tr, seed):
    """(R, len(tr)) joint out-of-fold signal per split."""
    yt = y[tr]; out = []
    for r in range(R):
        f = torch.as_tensor(stratified_folds(yt, 4, seed if r == 0 else [seed, r]))
        out.append(np.maximum(*[crossfit_contrast_scores(X[k][tr], torch.as_tensor(yt), [f], 0.1)[0].numpy() for k in ("uend", "inst")]))
    return np.array(out)
def heldout(tr, te):
    s = []
    for k in ("uend", "inst"):
        t = classifier_tensors("instruction", X[k][tr], y[tr], [0.1], range(len(hi)))[0]
        s.append(classifier_scores("instruction", t, X[k][te], range(len(hi))).numpy())
    return np.maximum(*s)
def thr(o, tr): return min(A.conformal(o[y[tr] & ref[tr]], 0.02), A.conformal(o[sev[tr] & ref[tr]], 0.02))
for outer_seed in (1, 2, 3):
    outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=outer_seed)
    folds = list(outer.split(dev, y[dev], groups[dev]))
    res = {v: np.zeros((S, len(folds))) for v in ("single", "avg", "meanthr")}
    st = {v: [np.zeros(N, bool) for _ in range(S)] for v in res}
    for fi, (a, b) in enumerate(folds):
        tr = np.r_[old, dev[a]]; te = dev[b]; e = heldout(tr, te)
        for s in range(S):
            o = oof_per_split(tr, 1000 * s)
            ts = {"single": thr(o[0], tr), "avg": thr(o.mean(0), tr), "meanthr": float(np.mean([thr(x, tr) for x in o]))}
            for v, t in ts.items():
                res[v][s, fi] = t; st[v][s][te] = e < t
    d = dev; yd, rf, sv = y[d], ref[d], sev[d]
    for v in res:
        rb = [st[v][s][d][~yd & rf].mean() for s in range(S)]; rh = [st[v][s][d][yd & rf].mean() for s in range(S)]
        ns = [int((st[v][s][d] & yd & rf & sv).sum()) for s in range(S)]
        print(f"outer {outer_seed} {v:8s} thr sd per fold {np.round(res[v].std(0, ddof=1), 3)} mean {np.round(res[v].mean(0), 3)} | "
              f"refused-benign steered {' '.join(f'{x:.2f}' for x in rb)} | refused-harmful {' '.join(f'{x:.3f}' for x in rh)} | severe {ns}", flush=True)
