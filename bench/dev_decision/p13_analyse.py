"""Summarise p13_toward.py's output (dev only): among the prompts the model answers, how many
benign / harmful / severe ones a refuse threshold r would steer toward refusal (both signals
over r, and judged harmful), and how many of those the steered answer then refuses.

    python bench/dev_decision/p13_analyse.py OUT.json THRESHOLD [R ...]
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    rows = json.load(open(sys.argv[1]))
    harmful_t = float(sys.argv[2])
    rs = [float(x) for x in sys.argv[3:]] or [-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    answered = [r for r in rows if not r["refuses"]]
    groups = {
        "benign": [r for r in answered if not r["harmful"]],
        "harmful": [r for r in answered if r["harmful"]],
        "severe": [r for r in answered if r["severe"]],
    }
    print({k: len(v) for k, v in groups.items()}, "answered of", len(rows))
    for k, v in groups.items():
        n_ref = sum(r["toward_refused"] for r in v)
        print(f"  all {k} answered, steered toward refusal: {n_ref}/{len(v)} refuse")
    for r_t in rs:
        parts = []
        for k, v in groups.items():
            sel = [r for r in v if min(r["score"], r["inst"]) > r_t and r["score"] >= harmful_t]
            ref = sum(r["toward_refused"] for r in sel)
            parts.append(f"{k} {len(sel)}/{len(v)} steered, {ref} now refuse")
        print(f"r = {r_t:+.2f}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
