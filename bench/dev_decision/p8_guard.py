"""Request features of another model (a guard) on p8_response.py's rows: block outputs of the
second half of its layers at the end of the user's text (`uend`) and the instruction end
(`inst`), read with that model's own chat template and default profile's system prompt.

    PYTHONPATH=src python bench/dev_decision/p8_guard.py MODEL PROFILE ROWS.pt OUT.pt
"""

from __future__ import annotations

import sys

import torch

from scans import Scans
from scans.engine import probe_pass


def main() -> None:
    model, profile, rows_path, out_path = sys.argv[1:5]
    s = Scans.from_pretrained(model, profile=profile)
    prompts = [r["prompt"] for r in torch.load(rows_path, weights_only=False)["rows"]]
    layers = list(range(s.n_layers // 2, s.n_layers))
    feats: dict[str, list[torch.Tensor]] = {"uend": [], "inst": []}
    order: list[int] = []
    buckets = s._buckets(prompts, 32)
    for bi, idx in enumerate(buckets):
        chunk = [prompts[i] for i in idx]
        acts = probe_pass(s.model, s.tokenizer, s.prefill_prompts(chunk), s.profile.probe)
        for k in feats:
            feats[k].append(acts[k][:, layers].float())
        order.extend(idx)
        print(f"batch {bi + 1}/{len(buckets)}", flush=True)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    torch.save({k: torch.cat(v)[inv] for k, v in feats.items()} | {"layers": layers}, out_path)
    print("saved", out_path)


if __name__ == "__main__":
    main()
