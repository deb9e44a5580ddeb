from protoB import *
layers = list(range(12, L)); XU = d["uend"].float().numpy(); XI = d["inst"].float().numpy()
def oof_and_eval(X, tr, ev, lab):
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    oof = np.zeros(len(tr))
    for ia, ib in inner.split(tr, lab, groups[tr]):
        oof[ib] = fit_score(X[tr[ia]], lab[ia], X[tr[ib]], layers, "lda", 0.3)[1]
    return oof, fit_score(X[tr], lab, X[ev], layers, "lda", 0.3)[1]
outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
res = collections.defaultdict(lambda: [0, 0, 0]); nb = nh = 0
for a, b in outer.split(newdev, y[newdev], groups[newdev]):
    tr = np.r_[oldtr, newdev[a]]; ev = newdev[b]; ye = y[ev]
    ou, eu = oof_and_eval(XU, tr, ev, y[tr]); oi, ei = oof_and_eval(XI, tr, ev, y[tr])
    for eps in (0.02,):
        strat = lambda o: min(conformal(o[y[tr]], eps), conformal(o[sev[tr]], eps))
        om, em = np.maximum(ou, oi), np.maximum(eu, ei)
        rules = {"AND per-signal strat": (eu < strat(ou)) & (ei < strat(oi)),
                 "max joint strat": em < strat(om), "max joint": em < conformal(om[y[tr]], eps),
                 "uend strat": eu < strat(ou)}
        for k, st in rules.items():
            res[k][0] += st[~ye].sum(); res[k][1] += st[ye].sum(); res[k][2] += st[ye & sev[ev]].sum()
    nb += (~ye).sum(); nh += ye.sum()
for k, (s_, l_, ls) in res.items(): print(f"{k:24s} benign steered {s_/nb:.3f} leak {l_/nh:.3f} ({l_}, severe {ls})")
