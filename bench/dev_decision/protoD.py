from protoB import *
layers = list(range(12, L)); X = d["uend"].float().numpy()
def cv(sub_n=None, eps=0.02, sev_on=True, seed=0):
    outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
    rng = np.random.default_rng(seed)
    st = lk = nb = nh = 0; lk_sev = 0; st_nosev = 0
    for a, b in outer.split(newdev, y[newdev], groups[newdev]):
        nd = newdev[a]
        if sub_n: nd = rng.choice(nd, size=min(sub_n, len(nd)), replace=False)
        tr = np.r_[oldtr, nd]; ev = newdev[b]
        inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
        oof = np.zeros(len(tr)); oofsev = np.full(len(tr), np.nan)
        sevtr = np.flatnonzero(~y[tr] | sev[tr])  # severe vs benign
        ysev = sev[tr]
        for ia, ib in inner.split(tr, y[tr], groups[tr]):
            oof[ib] = fit_score(X[tr[ia]], y[tr[ia]], X[tr[ib]], layers, "lda", 0.3)[1]
            A = np.intersect1d(ia, sevtr); B = np.intersect1d(ib, sevtr)
            oofsev[B] = fit_score(X[tr[A]], ysev[A], X[tr[B]], layers, "lda", 0.3)[1]
        t = conformal(oof[y[tr]], eps)
        s_ev = fit_score(X[tr], y[tr], X[ev], layers, "lda", 0.3)[1]
        ts = conformal(oofsev[ysev], eps)
        v_ev = fit_score(X[tr[sevtr]], ysev[sevtr], X[ev], layers, "lda", 0.3)[1]
        steer = (s_ev < t) & ((v_ev < ts) if sev_on else True)
        st += steer[~y[ev]].sum(); lk += steer[y[ev]].sum(); nb += (~y[ev]).sum(); nh += y[ev].sum()
        lk_sev += steer[y[ev] & sev[ev]].sum(); st_nosev += (s_ev < t)[~y[ev]].sum()
    print(f"pool old+{sub_n or 'all'} eps {eps}: benign steered {st/nb:.3f} (no sev veto {st_nosev/nb:.3f}) leak {lk/nh:.3f} ({lk} of {nh}; severe {lk_sev})", flush=True)
cv(None); cv(None, eps=0.05); cv(300); cv(150); cv(0)
