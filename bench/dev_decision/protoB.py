from analyse import *
import itertools
L = d["uend"].shape[1]
newdev = np.flatnonzero(sp == "dev"); oldtr = np.flatnonzero((src == "old") & ~isold_eval); oldev = np.flatnonzero(isold_eval)
def run(name, feat, layers, kind="lda", lam=0.3, eps=0.02, pool_old=True, verbose=False, combo=None):
    outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
    s_all = np.full(N, np.nan); leak_n = steer_n = nh = nb = 0; ts=[]
    for a, b in outer.split(newdev, y[newdev], groups[newdev]):
        tr = np.r_[oldtr if pool_old else [], newdev[a]].astype(int); ev = newdev[b]
        Xs = [d[f].float().numpy() for f in (combo or [feat])]
        oof = np.zeros(len(tr)); s_ev = np.zeros(len(ev))
        inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
        for X in Xs:
            for ia, ib in inner.split(tr, y[tr], groups[tr]):
                oof[ib] += fit_score(X[tr[ia]], y[tr[ia]], X[tr[ib]], layers, kind, lam)[1]
            s_ev += fit_score(X[tr], y[tr], X[ev], layers, kind, lam)[1]
        t = conformal(oof[y[tr]], eps); ts.append(t)
        s_all[ev] = s_ev
        leak_n += (s_ev[y[ev]] < t).sum(); steer_n += (s_ev[~y[ev]] < t).sum(); nh += y[ev].sum(); nb += (~y[ev]).sum()
        if verbose:
            for i in ev:
                if (y[i] and s_all[i] < t): print("   LEAK", round(s_all[i],2), rows[i]["prompt"][:100])
    m = ~np.isnan(s_all)
    print(f"{name:44s} auc {roc_auc_score(y[m], s_all[m]):.3f} t {np.mean(ts):+.2f} leak {leak_n/nh:.3f} benign-steered {steer_n/nb:.3f}", flush=True)
    return s_all, ts
if __name__ == "__main__":
    run("B uend L12-23 lam.3", "uend", list(range(12, L)))
    run("B uend L12-23 lam.1", "uend", list(range(12, L)), lam=0.1)
    run("B uend L12-23 lam.6", "uend", list(range(12, L)), lam=0.6)
    run("B uend L6-17 lam.3", "uend", list(range(6, 18)))
    run("B uend L4-23 lam.3", "uend", list(range(4, L)))
    run("B mean L12-23 lam.3", "mean", list(range(12, L)))
    run("B uend+mean L12-23", "uend", list(range(12, L)), combo=["uend", "mean"])
    run("B uend+inst L12-23", "uend", list(range(12, L)), combo=["uend", "inst"])
    run("B uend L12-23 newonly", "uend", list(range(12, L)), pool_old=False)
