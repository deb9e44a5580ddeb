"""Steered fractions of fitted profiles on a labelled prompt file (dev use only).

    PYTHONPATH=src python bench/dev_decision/p11_eval.py DATA.jsonl OUT.jsonl PROFILE [PROFILE ...]
        [--where key=value ...]

For each row (``prompt``, ``label``, optional ``severity``/``type``/``split``/``batch``): whether
the answering model's greedy first answer token opens a refusal (``scans.refusal``), and each
profile's decision (``verdict.decide``, the package's one rule). Prints, per profile, the share of
the refused benign rows that would be steered and of the refused harmful / severe ones, and the
benign share per type; writes one JSON object per row to OUT.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from scans.engine import probe_pass
from scans.api import Scans
from scans.refusal import first_token_refuses
from scans.verdict import decide


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--where", action="append", default=[])
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    for cond in args.where:
        key, value = cond.split("=", 1)
        rows = [r for r in rows if str(r.get(key, "1" if key == "batch" else "")) == value]
    prompts = [r["prompt"] for r in rows]
    scans = Scans.from_pretrained("embedded")
    decisions: dict[str, list[str]] = {}
    scores: dict[str, list[float]] = {}
    refuses: list[bool] = []
    for k, path in enumerate(args.profiles):
        profile = scans.load(path)
        decisions[path], scores[path] = [], []
        for start in range(0, len(prompts), args.batch):
            chunk = prompts[start : start + args.batch]
            with torch.no_grad():
                pre = scans.prefill_prompts(chunk)
                own = probe_pass(scans.model, scans.tokenizer, pre, profile.probe, scans.layers_path)
                ref = first_token_refuses(scans.model, scans.tokenizer, own["inst"][:, -1])
                acts = scans.signal_acts(chunk, pre, own=own)
            acts.setdefault("refuses", ref)
            if k == 0:
                refuses.extend(bool(x) for x in ref.tolist())
            for v in decide(profile, acts, chunk):
                decisions[path].append(v.decision)
                scores[path].append(v.score)
    with open(args.out, "w") as f:
        for i, r in enumerate(rows):
            rec = dict(r, refuses=refuses[i])
            rec["decisions"] = {p: decisions[p][i] for p in args.profiles}
            rec["scores"] = {p: round(scores[p][i], 4) for p in args.profiles}
            f.write(json.dumps(rec) + "\n")
    harm = [r["label"] != "benign" for r in rows]
    severe = [r.get("severity") == "severe" or r["label"] == "severe" for r in rows]
    n_rb = sum(1 for h, x in zip(harm, refuses) if not h and x)
    n_rh = sum(1 for h, x in zip(harm, refuses) if h and x)
    n_rs = sum(1 for s, x in zip(severe, refuses) if s and x)
    print(f"{len(rows)} rows: benign {harm.count(False)} ({n_rb} refused), harmful {sum(harm)} "
          f"({n_rh} refused, {n_rs} severe refused)")
    for p in args.profiles:
        d = decisions[p]
        sb = sum(1 for h, x, y in zip(harm, refuses, d) if not h and x and y == "benign")
        sh = sum(1 for h, x, y in zip(harm, refuses, d) if h and x and y == "benign")
        ss = sum(1 for s, x, y in zip(severe, refuses, d) if s and x and y == "benign")
        print(f"{p}: refused benign steered {sb}/{n_rb} = {sb / max(1, n_rb):.1%}; refused harmful steered "
              f"{sh}/{n_rh} = {sh / max(1, n_rh):.1%}; severe {ss}/{n_rs}")
        by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r, h, x, y in zip(rows, harm, refuses, d):
            if not h and x:
                by_type[r.get("type", "?")][0] += y == "benign"
                by_type[r.get("type", "?")][1] += 1
        print("   benign by type: " + ", ".join(f"{t} {a}/{b}" for t, (a, b) in sorted(by_type.items())))


if __name__ == "__main__":
    main()
