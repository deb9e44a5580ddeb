"""How much the fit's data matters (dev only): the decisions of several profiles (fitted with
smaller anchor sets and pools, e.g. ``scans fit --n-fit 32 --n-heldout 2 --pool-size 160``) on the
project's own dev prompts that none of them read (``bench/eval_prompts.jsonl`` and the taxonomy's
dev prompts outside every profile's pool), each prompt's activations computed once. Prints, per
profile, the refused benign / harmful / severe prompts steered away from refusal and the answered
ones steered toward it (first answer token), and lists the refused harmful prompts it steers.
Never reads benchmarks.

    PYTHONPATH=src python bench/dev_decision/p14_data_size.py OUT.json PROFILE...
"""
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from p12_layers_splits import dev_rows
from scans.api import Scans
from scans.engine import probe_pass
from scans.fit_data import prompt_key
from scans.refusal import first_token_refuses
from scans.verdict import decide

out, paths = sys.argv[1], sys.argv[2:]
scans = Scans.from_pretrained("embedded")
profiles = [scans.load(p) for p in paths]
used = set()
for p in profiles:
    used |= set(p.anchors["used_prompt_keys"])
rows = [r for r in dev_rows() if prompt_key(r["prompt"]) not in used]
print(len(rows), "dev rows no profile read", flush=True)
acts_all = {}
refs = []
B = 16
for s in range(0, len(rows), B):
    prompts = [r["prompt"] for r in rows[s:s+B]]
    with torch.no_grad():
        pre = scans.prefill_prompts(prompts)
        own = probe_pass(scans.model, scans.tokenizer, pre, profiles[0].probe, scans.layers_path)
        ref = first_token_refuses(scans.model, scans.tokenizer, own["inst"][:, -1])
    for k, v in own.items():
        acts_all.setdefault(k, []).append(v)
    refs.append(ref)
    print(s + len(prompts), flush=True)
acts = {k: torch.cat(v) for k, v in acts_all.items()}
acts["refuses"] = torch.cat(refs)
prompts = [r["prompt"] for r in rows]
res = {"n": len(rows), "profiles": {}}
for path, prof in zip(paths, profiles):
    v = decide(prof, acts, prompts)
    rec = {"steer_threshold": prof.steer_threshold, "refuse_threshold": getattr(prof, "refuse_threshold", None),
           "decisions": [(x.decision, x.sign, round(float(x.score), 4)) for x in v]}
    res["profiles"][path] = rec
    ref = acts["refuses"].tolist()
    def count(pred):
        return sum(1 for r, x, f in zip(rows, v, ref) if pred(r, x, f))
    rb = count(lambda r, x, f: not r["harmful"] and f)
    rh = count(lambda r, x, f: r["harmful"] and f)
    rs = count(lambda r, x, f: r["severe"] and f)
    sb = count(lambda r, x, f: not r["harmful"] and f and x.sign < 0)
    sh = count(lambda r, x, f: r["harmful"] and f and x.sign < 0)
    ss = count(lambda r, x, f: r["severe"] and f and x.sign < 0)
    ab = count(lambda r, x, f: not r["harmful"] and not f)
    ah = count(lambda r, x, f: r["harmful"] and not f)
    tb = count(lambda r, x, f: not r["harmful"] and not f and x.sign > 0)
    th = count(lambda r, x, f: r["harmful"] and not f and x.sign > 0)
    print(f"{path}: steer {prof.steer_threshold:.3f} refuse {rec['refuse_threshold']}: refused benign steered {sb}/{rb} = {100*sb/rb:.1f}%, "
          f"refused harmful steered {sh}/{rh}, severe {ss}/{rs}; toward refusal: answered benign {tb}/{ab}, answered harmful {th}/{ah}", flush=True)
    for r, x, f in zip(rows, v, ref):
        if r["harmful"] and f and x.sign < 0:
            print("   steered harmful:", round(float(x.score), 3), r["prompt"][:90])
Path(out).write_text(json.dumps(res))
