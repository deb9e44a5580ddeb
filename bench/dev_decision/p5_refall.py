import torch, numpy as np, collections
from scans.models import load_model
from scans.refusal import refusal_first_ids
d = torch.load('all4.pt', weights_only=False)
lm = load_model(None)
head = lm.model.get_output_embeddings()
x = d['inst'][:, -1].to(head.weight.dtype)  # HF's last hidden state is already final-normed
with torch.no_grad(): first = torch.cat([head(x[i:i+256]).argmax(-1) for i in range(0, len(x), 256)])
ref = torch.isin(first, torch.tensor(sorted(refusal_first_ids(lm.tokenizer))))
torch.save(ref, 'refall.pt')
rows = d['rows']
c = collections.Counter((r['set'], r.get('split',''), r['label'], bool(x)) for r, x in zip(rows, ref.tolist()))
for k in sorted(c): print(k, c[k])
r=torch.load('refusal.pt',weights_only=False)
m={row['id']:bool(x) for row,x in zip(r['rows'],r['refused'])}
jr=np.array([m.get(row['id'],False) for row in rows]); hm=np.array([row['id'] in m for row in rows])
print('agree with judge on harmful', (jr==ref.numpy())[hm].mean(), hm.sum())
sev=np.array([r.get('severity')=='severe' for r in rows]); dev=np.array([r['set']=='tax' and r.get('split')=='dev' for r in rows])
print('sev dev refused', (sev&dev&ref.numpy()).sum())
