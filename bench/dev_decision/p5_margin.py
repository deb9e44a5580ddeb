import torch, numpy as np
from sklearn.metrics import roc_auc_score
from scans.models import load_model
from scans.refusal import refusal_first_ids
d = torch.load('all4.pt', weights_only=False); rows = d['rows']
lm = load_model(None); head = lm.model.get_output_embeddings()
x = d['inst'][:, -1].to(head.weight.dtype)
with torch.no_grad(): lg = torch.cat([head(x[i:i+256]).float() for i in range(0, len(x), 256)])
lp = torch.log_softmax(lg, -1)
ids = torch.tensor(sorted(refusal_first_ids(lm.tokenizer)))
pref = torch.logsumexp(lp[:, ids], -1)
m = lp.clone(); m[:, ids] = -1e9
margin = pref - m.max(-1).values
ent = -(lp.exp() * lp).sum(-1)
torch.save({'pref': pref, 'margin': margin, 'ent': ent}, 'margin.pt')
ref = torch.load('refall.pt').numpy()
y = np.array([r['label'] == 'harmful' for r in rows]); dev = np.array([r['set'] == 'tax' and r.get('split') == 'dev' for r in rows])
for name, v in (('pref', pref), ('margin', margin), ('entropy', ent)):
    v = v.numpy()
    for sel, nm in ((dev, 'dev all'), (dev & ref, 'dev refused')):
        print(name, nm, 'AUROC harmful vs benign', round(roc_auc_score(y[sel], v[sel]), 3))
