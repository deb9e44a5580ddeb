"""Dev only: does the first answer token still open a refusal when steered away with a fraction f of alpha?"""
import sys, time, torch
from scans.activations import forward_capture
from scans.models import load_model
from scans.profile import Profile
from scans.prompts import build_batch
from scans.refusal import refusal_first_ids
d = torch.load('all4.pt', weights_only=False); rows = d['rows']
lm = load_model(None); model, tok = lm.model, lm.tokenizer
prof = Profile.load(sys.argv[1] if len(sys.argv) > 1 else 'profile-seed0')
ids = torch.tensor(sorted(refusal_first_ids(tok)))
fracs = [0.0, 0.2, 0.4, 0.6, 1.0]
n = len(rows); keep = [i for i in range(n) if rows[i]['set'] in ('eval',) or rows[i].get('split') == 'dev']
order = sorted(keep, key=lambda i: len(rows[i]['prompt']))
pref = torch.zeros(len(fracs), n); first = torch.zeros(len(fracs), n, dtype=torch.long)
t0 = time.time()
for b in range(0, len(order), 64):
    idx = order[b:b + 64]
    batch = build_batch(tok, [rows[i]['prompt'] for i in idx], system=prof.system)
    T = batch.input_ids.shape[1]
    last = torch.full((len(idx),), T - 1)
    start = batch.attention_mask.sum(1) - 1
    for j, f in enumerate(fracs):
        plan = prof.steering_plan(torch.full((len(idx),), -f), start) if f else None
        _, lg = forward_capture(model, batch.input_ids, batch.attention_mask, {'inst': last}, plan=plan, logits_at='inst')
        lp = torch.log_softmax(lg.float(), -1)
        pref[j, idx] = torch.logsumexp(lp[:, ids], -1); first[j, idx] = lg.argmax(-1)
    print(b + len(idx), len(order), f'{time.time() - t0:.0f}s', flush=True)
torch.save({'fracs': fracs, 'pref': pref, 'first': first, 'refused': torch.isin(first, ids)}, 'graded.pt')
