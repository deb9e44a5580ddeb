"""Does a prompt's verdict depend on the batch it is scored in?

    python bench/batch_invariance.py [--profile DIR] [--dtype bf16] [--model embedded]

Scores the project's eval prompts (`bench/eval_prompts.jsonl`) once in one call to
`Scans.classify` (length-bucketed batches) and once one prompt at a time, and prints the mean and
largest score difference and how many verdicts (decision or sign) differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="profile directory (default: the model's cached one)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    from scans.errors import ScansError

    try:
        compare(args)
    except ScansError as e:
        raise SystemExit(f"error: {e}") from None


def compare(args: argparse.Namespace) -> None:
    """Score the eval prompts batched and one at a time, and print how they differ."""
    from scans import Scans

    prompts = [json.loads(line)["prompt"] for line in open(HERE / "eval_prompts.jsonl") if line.strip()]
    scans = Scans.from_pretrained(args.model, profile=args.profile, dtype=args.dtype)
    if args.profile is None:
        scans.load()
    batched = scans.classify(prompts)
    single = [scans.classify([p])[0] for p in prompts]
    diff = np.abs([a.score - b.score for a, b in zip(batched, single)])
    flips = [b.prompt for a, b in zip(batched, single) if (a.decision, a.sign) != (b.decision, b.sign)]
    print(
        f"dtype {scans.dtype}: {len(prompts)} prompts, mean |score difference| {diff.mean():.4f}, "
        f"max {diff.max():.4f}, verdicts that differ: {len(flips)}"
    )
    for p in flips:
        print(f"  {p}")


if __name__ == "__main__":
    main()
