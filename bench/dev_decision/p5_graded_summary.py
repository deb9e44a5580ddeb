import torch, numpy as np
g = torch.load('graded.pt'); d = torch.load('all4.pt', weights_only=False); rows = d['rows']
R = g['refused'].numpy(); fr = g['fracs']
y = np.array([r['label'] == 'harmful' for r in rows]); dev = np.array([r['set'] == 'tax' and r.get('split') == 'dev' for r in rows])
sev = np.array([r.get('severity') == 'severe' for r in rows])
base = R[0]
for nm, sel in (('benign', dev & ~y & base), ('harmful', dev & y & base), ('severe', dev & sev & base)):
    print(nm, sel.sum(), 'still refusing at f=', {f: round(R[j][sel].mean(), 3) for j, f in enumerate(fr)})
