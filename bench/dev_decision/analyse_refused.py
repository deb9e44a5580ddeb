"""Dev only: the safety budget counted over all harmful pool prompts vs over those the model refuses."""
import numpy as np, torch
from sklearn.model_selection import StratifiedGroupKFold
import analyse_judge as A  # the 4-fold protocol of the two-signal rule (its main does not run on import)
r = torch.load("refusal.pt", weights_only=False)
ref_by_id = {row["id"]: bool(x) for row, x in zip(r["rows"], r["refused"])}
first_by_id = {row["id"]: int(f) for row, f in zip(r["rows"], r["first"])}
refused = np.array([ref_by_id.get(row["id"], False) for row in A.rows])
y, sev, dev, old, groups, N = A.y, A.sev, A.dev, A.old, A.groups, A.N
hi = list(range(12, A.L)); feats = [("uend", hi), ("inst", hi)]

def run(mode, eps=0.02, seed=1):
    outer = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
    st = np.zeros(N, bool); ts = []
    for a, b in outer.split(dev, y[dev], groups[dev]):
        tr = np.r_[old, dev[a]]; te = dev[b]
        oof, ev = A.signals(feats, tr, te); o, e = oof.max(0), ev.max(0)
        if mode == "all":
            t = min(A.conformal(o[y[tr]], eps), A.conformal(o[sev[tr]], eps))
        elif mode == "refused":
            t = min(A.conformal(o[y[tr] & refused[tr]], eps), A.conformal(o[sev[tr] & refused[tr]], eps))
        elif mode == "refused+allsev":
            t = min(A.conformal(o[y[tr] & refused[tr]], eps), A.conformal(o[sev[tr]], eps))
        st[te] = e < t; ts.append(t)
    d = dev; yd = y[d]; s = st[d]; rf = refused[d]
    print(f"{mode:16s} eps {eps:.3f} seed {seed} t {np.round(ts,3)} benign steered {s[~yd].mean():.3f} | harmful steered {s[yd].mean():.3f} "
          f"refused-harmful steered (unlock risk) {s[yd & rf].mean():.3f} ({(s & yd & rf).sum()}/{(yd & rf).sum()}) severe-refused steered {(s & yd & rf & sev[d]).sum()}", flush=True)

for mode in ("all", "refused", "refused+allsev"):
    for eps in (0.02, 0.01):
        run(mode, eps)
for seed in (1, 2, 3):
    run("all", 0.02, seed)
    run("refused", 0.02, seed)
    run("refused", 0.015, seed)
