"""Seed stability of the default rule: classification layers and cross-fitting splits (dev only).

    PYTHONPATH=src python bench/dev_decision/p12_layers_splits.py OUT.json [OLD_PROFILE ...]
        [--seeds 0,1,2] [--splits 8,32]

Fits the default profile at each seed and number of cross-fitting splits with the package as it
is (each seed's anchor activations are collected once and reused across splits), then reads, on
the project's own dev prompts that no fit reads (``bench/eval_prompts.jsonl`` and the taxonomy's
dev prompts outside the sampled pool), the share of the refused benign / harmful / severe prompts
each profile steers (the answering model's first answer token says "refused"). OLD_PROFILE
directories (profiles fitted before the change) are read the same way. Never reads benchmarks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import scans.fit as fit_module
from scans.api import Scans
from scans.engine import probe_pass
from scans.fit_config import FitConfig
from scans.fit_data import build_anchors
from scans.pool import shipped_taxonomy
from scans.refusal import first_token_refuses
from scans.verdict import decide

HERE = Path(__file__).resolve().parents[1]


def dev_rows() -> list[dict]:
    rows = []
    for line in open(HERE / "eval_prompts.jsonl"):
        if line.strip():
            r = json.loads(line)
            rows.append(
                {"prompt": r["prompt"], "harmful": r["label"] != "benign", "severe": False, "set": "eval"}
            )
    pool = {item.prompt for item in build_anchors(None, None, None, FitConfig()).pool}
    for item in shipped_taxonomy("dev"):
        if item.prompt not in pool:
            rows.append({"prompt": item.prompt, "harmful": item.harmful, "severe": item.severe, "set": "dev"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("old", nargs="*")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--splits", default="8,32")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    scans = Scans.from_pretrained("embedded")
    rows = dev_rows()
    prompts = [r["prompt"] for r in rows]

    cache: dict[int, object] = {}
    real_collect = fit_module.collect_activations

    def cached_collect(model, tokenizer, anchors, config, **kw):
        if config.seed not in cache:
            cache[config.seed] = real_collect(model, tokenizer, anchors, config, **kw)
        return cache[config.seed]

    fit_module.collect_activations = cached_collect
    profiles: dict[str, object] = {}
    fit_info: dict[str, dict] = {}
    for path in args.old:
        profiles[f"old:{Path(path).name}"] = scans.load(path)
    for seed in map(int, args.seeds.split(",")):
        for splits in map(int, args.splits.split(",")):
            t = time.time()
            p = scans.fit(seed=seed, crossfit_splits=splits, progress=False)
            name = f"new:s{seed}:k{splits}"
            profiles[name] = p
            fit_info[name] = {
                "seconds": round(time.time() - t, 1),
                "steer_threshold": p.steer_threshold,
                "threshold": p.threshold,
                "cls_layers": [p.cls_layers[0], p.cls_layers[-1]],
                "steer_layers": [p.steer_layers[0], p.steer_layers[-1]],
                "timings": p.extra.get("timings_s"),
            }
            print(name, fit_info[name], flush=True)

    any_profile = next(iter(profiles.values()))
    decisions: dict[str, list[str]] = {n: [] for n in profiles}
    scores: dict[str, list[float]] = {n: [] for n in profiles}
    refuses: list[bool] = []
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start : start + args.batch]
        scans.profile = any_profile
        with torch.no_grad():
            pre = scans.prefill_prompts(chunk)
            own = probe_pass(scans.model, scans.tokenizer, pre, any_profile.probe, scans.layers_path)
            ref = first_token_refuses(scans.model, scans.tokenizer, own["inst"][:, -1])
        refuses.extend(bool(x) for x in ref.tolist())
        for name, p in profiles.items():
            scans.profile = p
            acts = dict(scans.signal_acts(chunk, pre, own=own))
            acts.setdefault("refuses", ref)
            for v in decide(p, acts, chunk):
                decisions[name].append(v.decision)
                scores[name].append(v.score)

    summary = {}
    for name in profiles:
        d = decisions[name]
        out = {}
        for kind, keep in (
            ("benign", lambda r: not r["harmful"]),
            ("harmful", lambda r: r["harmful"]),
            ("severe", lambda r: r["severe"]),
        ):
            idx = [i for i, r in enumerate(rows) if keep(r) and refuses[i]]
            out[kind] = [sum(d[i] == "benign" for i in idx), len(idx)]
        summary[name] = out
        b, h, s = out["benign"], out["harmful"], out["severe"]
        print(
            f"{name}: refused benign steered {b[0]}/{b[1]} = {b[0] / max(1, b[1]):.1%}; "
            f"refused harmful steered {h[0]}/{h[1]}; severe {s[0]}/{s[1]}"
        )
    Path(args.out).write_text(
        json.dumps(
            {
                "fits": fit_info,
                "summary": summary,
                "rows": [
                    dict(
                        r,
                        refuses=refuses[i],
                        decisions={n: decisions[n][i] for n in profiles},
                        scores={n: round(scores[n][i], 4) for n in profiles},
                    )
                    for i, r in enumerate(rows)
                ],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
