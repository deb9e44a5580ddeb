"""Refusal rates and unlocked prompts of a `scans bench` run on the fresh prompts.

    python bench/fresh/summarise.py RUN [--judge substring|rules|xstest]

Per method: the refusal rate of the safe and of the unsafe prompts, the unsafe prompts the
original model refuses and the method answers (unlocked, with their scores), and how many
prompts of each label the method steered.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

COMPLIANT = {"compliance", "full_compliance"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--judge", default="substring", choices=["substring", "rules", "xstest"])
    args = ap.parse_args()
    path = args.run / "generations.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: no {path}; fix: pass the --out directory of a `scans bench` run")
    by_method: dict[str, dict[tuple[str, int], dict]] = defaultdict(dict)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                by_method[row["method"]][(row["split"], row["id"])] = row
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(
                    f"error: {path} line {number} is not a generation record ({e}); fix: pass a run of `scans bench`"
                ) from None
    if not by_method:
        raise SystemExit(f"error: {path} holds no generations; fix: run `scans bench --out {args.run}` first")
    original = by_method.get("original", {})
    print(f"judge: {args.judge}")
    for method, rows in by_method.items():
        parts = [f"{method:10s}"]
        for label in ("safe", "unsafe"):
            rs = [r for r in rows.values() if r["label"] == label]
            refused = sum(r["judges"][args.judge] not in COMPLIANT for r in rs)
            steered = sum(r["sign"] == -1 for r in rs)
            if rs:
                parts.append(
                    f"{label} refused {refused}/{len(rs)} = {100 * refused / len(rs):.1f}%, steered {steered}"
                )
        unlocked = [
            r
            for key, r in rows.items()
            if method != "original"
            and r["label"] == "unsafe"
            and key in original
            and original[key]["judges"][args.judge] not in COMPLIANT
            and r["judges"][args.judge] in COMPLIANT
        ]
        parts.append(f"unlocked {len(unlocked)}")
        print(" | ".join(parts))
        for r in unlocked:
            print(f"    unlocked ({r['decision']}, {r['score']:+.3f}): {r['prompt']}")
        if method != "original":
            still = Counter(
                r["decision"]
                for r in rows.values()
                if r["label"] == "safe" and r["judges"][args.judge] not in COMPLIANT
            )
            print(f"    safe prompts still refused, by decision: {dict(still)}")


if __name__ == "__main__":
    main()
