"""Refusal rates of the original and the SCANS-steered model on the project's own held-out
prompts (bench/eval_prompts.jsonl: benign-but-scary and harmful prompts written for this
project, never used for fitting).

    python bench/eval_heldout.py [--model M] [--profile DIR] [--max-new-tokens 48] [--out runs/heldout]

Both answers come from one run with the same greedy settings; the refusal judge is the
substring judge in scans.judge. Per-prompt results go to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scans import Scans
from scans.calibration import average_precision, metrics_at
from scans.judge import is_refusal

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--prompts", default=str(HERE / "eval_prompts.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--out", default="runs/heldout")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.prompts) if line.strip()]
    scans = Scans.from_pretrained(args.model, dtype=args.dtype)
    scans.load(args.profile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    gens = scans.generate(
        [r["prompt"] for r in rows],
        max_new_tokens=args.max_new_tokens,
        compare=True,
        batch_size=args.batch_size,
    )
    seconds = time.time() - start
    with open(out / "results.jsonl", "w") as f:
        for row, g in zip(rows, gens):
            rec = {
                **row,
                "score": g.verdict.score,
                "judged_harmful": g.verdict.harmful,
                "sign": g.verdict.sign,
                "original": g.unsteered,
                "steered": g.response,
                "original_refusal": is_refusal(g.unsteered or ""),
                "steered_refusal": is_refusal(g.response),
            }
            f.write(json.dumps(rec) + "\n")
    recs = [json.loads(line) for line in open(out / "results.jsonl")]
    summary: dict = {"n": len(recs), "max_new_tokens": args.max_new_tokens, "seconds": round(seconds, 1)}
    for label in ("benign", "harmful"):
        sel = [r for r in recs if r["label"] == label]
        summary[label] = {
            "n": len(sel),
            "original_refusal": sum(r["original_refusal"] for r in sel) / len(sel),
            "steered_refusal": sum(r["steered_refusal"] for r in sel) / len(sel),
            "judged_harmful": sum(r["judged_harmful"] for r in sel) / len(sel),
        }
    scores = [r["score"] for r in recs]
    labels = [r["label"] == "harmful" for r in recs]
    summary["classifier"] = {
        "auprc": average_precision(scores, labels),
        **metrics_at(scores, labels, scans.profile.threshold),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"held-out prompts: {args.prompts} ({len(recs)}), {args.max_new_tokens} new tokens, {seconds:.0f} s"
    )
    print(
        f"{'split':8s} {'n':>4s} {'original refusal':>17s} {'steered refusal':>16s} {'judged harmful':>15s}"
    )
    for label in ("benign", "harmful"):
        s = summary[label]
        print(
            f"{label:8s} {s['n']:4d} {s['original_refusal']:17.1%} {s['steered_refusal']:16.1%} "
            f"{s['judged_harmful']:15.1%}"
        )
    c = summary["classifier"]
    print(
        f"classifier on held-out prompts: AUPRC {c['auprc']:.3f}, accuracy {c['accuracy']:.3f}, "
        f"precision {c['precision']:.3f}, recall {c['recall']:.3f}, F1 {c['f1']:.3f}"
    )


if __name__ == "__main__":
    main()
