"""Leave one type out with the classifiers trained on a random 25 / 50 / 75 / 100% of the other
types (three draws each): does a wider variety of prompt types help on an unseen type?

    python bench/dev_decision/p9_typecurve.py  (reads /work/dev/p9/all.pt and guard15.pt)
"""

import sys, numpy as np, torch
sys.path.insert(0, "bench/dev_decision")
import p8_analyse as P
d=torch.load("/work/dev/p9/all.pt",weights_only=False); g=torch.load("/work/dev/p9/guard15.pt",weights_only=False)
rows=d["rows"]; dev=np.array([r["set"]=="dev" for r in rows]); y=np.array([r["label"]!="benign" for r in rows],dtype=int)[dev]
ref=np.array(d["refused"])[dev]; types=np.array([r["type"] for r in rows if r["set"]=="dev"])
F={"self":{k:d[k].numpy()[dev].astype(np.float64) for k in ("uend","inst")},"guard":{k:g[k].numpy()[dev].astype(np.float64) for k in ("uend","inst")}}
uniq=np.unique(types); print(len(uniq),"types")
for who in ("self","guard"):
  for frac in (0.25,0.5,0.75,1.0):
    res=[]
    for rep in range(3 if frac<1 else 1):
        rng=np.random.default_rng(rep)
        s=[]
        oo={k:np.zeros(len(y)) for k in F[who]}
        for ty in uniq:
            others=[t for t in uniq if t!=ty]
            keep=set(rng.choice(others, max(2,int(round(frac*len(others)))), replace=False))
            tr=np.isin(types,list(keep)); te=types==ty
            if len(set(y[tr]))<2: continue
            for k,x in F[who].items():
                oo[k][te]=P.lda_score(P.lda_fit(x[tr],y[tr]),x[te])
        s=np.maximum(oo["uend"],oo["inst"]); t=P.threshold(s[(y==1)&ref]); st=s<t
        res.append(st[(y==0)&ref].mean())
    print(who, frac, " ".join(f"{r:.0%}" for r in res), f"mean {np.mean(res):.0%}", flush=True)
