"""Leave-one-type-out vs grouped 4-fold for the 0.5B and the 1.5B guard signals, by LDA shrinkage
and layer half (design-notes, "Unseen prompt types").

    python bench/dev_decision/p9_sweep.py  (reads /work/dev/p9/all.pt and guard15.pt)
"""

import sys, numpy as np, torch
sys.path.insert(0, "bench/dev_decision")
import p8_analyse as P
d=torch.load("/work/dev/p9/all.pt",weights_only=False); g=torch.load("/work/dev/p9/guard15.pt",weights_only=False)
rows=d["rows"]; dev=np.array([r["set"]=="dev" for r in rows]); y=np.array([r["label"]!="benign" for r in rows],dtype=int)[dev]
ref=np.array(d["refused"])[dev]; types=np.array([r["type"] for r in rows if r["set"]=="dev"]); groups=[r["group"] for r in rows if r["set"]=="dev"]
F={"self":{k:d[k].numpy()[dev].astype(np.float64) for k in ("uend","inst")},"guard":{k:g[k].numpy()[dev].astype(np.float64) for k in ("uend","inst")}}
def run(feats, split, shrink, lsel):
    P.SHRINK=shrink
    s=[]
    for k,x in feats.items():
        x=x[:,lsel]; o=np.zeros(len(y))
        for f in np.unique(split):
            tr,te=split!=f,split==f; o[te]=P.lda_score(P.lda_fit(x[tr],y[tr]),x[te])
        s.append(o)
    s=np.max(s,0); t=P.threshold(s[(y==1)&ref]); st=s<t
    return st[(y==0)&ref].mean(), st[(y==1)&ref].mean()
for who in ("self","guard"):
    L=F[who]["uend"].shape[1]
    for lname,lsel in (("all",slice(None)),("first half",slice(0,L//2)),("second half",slice(L//2,None))):
        for sh in (0.1,0.3,0.6,0.9,1.0):
            a=run(F[who],types,sh,lsel); b=run(F[who],P.folds(groups,4,1),sh,lsel)
            print(f"{who:6s} layers {lname:12s} shrink {sh}: LOTO {a[0]:.0%} ({a[1]:.1%})  4fold {b[0]:.0%} ({b[1]:.1%})",flush=True)
