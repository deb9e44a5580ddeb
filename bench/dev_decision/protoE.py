from protoB import *
layers = list(range(12, L)); XU = d["uend"].float().numpy(); XI = d["inst"].float().numpy(); XM = d["mean"].float().numpy()
def oof_and_eval(X, tr, ev, lab):
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=0)
    oof = np.zeros(len(tr))
    for ia, ib in inner.split(tr, lab, groups[tr]):
        oof[ib] = fit_score(X[tr[ia]], lab[ia], X[tr[ib]], layers, "lda", 0.3)[1]
    return oof, fit_score(X[tr], lab, X[ev], layers, "lda", 0.3)[1]
outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=1)
res = collections.defaultdict(lambda: [0, 0, 0])
nb = nh = 0
for a, b in outer.split(newdev, y[newdev], groups[newdev]):
    tr = np.r_[oldtr, newdev[a]]; ev = newdev[b]; ye = y[ev]
    ou, eu = oof_and_eval(XU, tr, ev, y[tr]); oi, ei = oof_and_eval(XI, tr, ev, y[tr]); om, em = oof_and_eval(XM, tr, ev, y[tr])
    for eps in (0.02,):
        t_u = conformal(ou[y[tr]], eps); t_us = min(t_u, conformal(ou[sev[tr]], eps))
        t_i = conformal(oi[y[tr]], eps)
        oe = ou + om; ee = eu + em; t_e = conformal(oe[y[tr]], eps); t_es = min(t_e, conformal(oe[sev[tr]], eps))
        rules = {"a uend": eu < t_u, "b uend sev-strat": eu < t_us, "d uend&inst": (eu < t_u) & (ei < t_i),
                 "e uend+mean": ee < t_e, "f uend+mean sev-strat": ee < t_es,
                 "g uend+mean & inst": (ee < t_e) & (ei < t_i)}
        for k, st in rules.items():
            res[k][0] += st[~ye].sum(); res[k][1] += st[ye].sum(); res[k][2] += st[ye & sev[ev]].sum()
    nb += (~ye).sum(); nh += ye.sum()
for k, (s_, l_, ls) in res.items(): print(f"{k:24s} benign steered {s_/nb:.3f} leak {l_/nh:.3f} ({l_}, severe {ls})")
