"""Steering toward refusal the prompts the model answers (dev only).

    PYTHONPATH=src python bench/dev_decision/p13_toward.py PROFILE OUT.json [--tokens 24]

On the project's own dev prompts that no fit reads (``bench/eval_prompts.jsonl`` and the
taxonomy's dev prompts outside the default pool sample, as ``p12_layers_splits.py``): each
prompt's two signals under PROFILE, the answering model's first answer token (refuses or not),
and, for the prompts it answers, a greedy answer of ``--tokens`` tokens steered toward refusal
(sign +1 at the profile's layers and window), judged by the substring judge. Never reads
benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p12_layers_splits import dev_rows  # noqa: E402

from scans.api import Scans  # noqa: E402
from scans.decode import RowSettings, generate_from  # noqa: E402
from scans.engine import probe_pass  # noqa: E402
from scans.judge import is_refusal  # noqa: E402
from scans.refusal import first_token_refuses  # noqa: E402
from scans.verdict import decide  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    scans = Scans.from_pretrained("embedded")
    profile = scans.load(args.profile)
    rows = dev_rows()
    settings = RowSettings(args.tokens, 0.0, 1.0, None, 0)
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        prompts = [r["prompt"] for r in chunk]
        with torch.no_grad():
            pre = scans.prefill_prompts(prompts)
            own = probe_pass(scans.model, scans.tokenizer, pre, profile.probe, scans.layers_path)
            ref = first_token_refuses(scans.model, scans.tokenizer, own["inst"][:, -1])
            acts = dict(scans.signal_acts(prompts, pre, own=own))
            acts.setdefault("refuses", ref)
            verdicts = decide(profile, acts, prompts)
            answered = [i for i, f in enumerate(ref.tolist()) if not f]
            toward = [""] * len(prompts)
            if answered:  # only the prompts the model answers can be steered into a refusal
                sub = pre.select(answered)
                ends = (sub.batch.attention_mask.sum(-1) - 1).cpu()
                plan = profile.steering_plan([1] * len(answered), ends, scans.layers_path)
                for i, t in zip(answered, generate_from(scans.model, scans.tokenizer, sub, settings, plan)):
                    toward[i] = t
        for r, v, f, t in zip(chunk, verdicts, ref.tolist(), toward):
            r.update(score=round(v.score, 4), inst=round(float(v.inst), 4), decision=v.decision,
                     refuses=bool(f), toward=t, toward_refused=is_refusal(t) if not f else None)
        print(start + len(chunk), "/", len(rows), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
