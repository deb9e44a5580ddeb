"""The decision rule's results as Markdown tables, from the runs of bench/decision_bench.sh.

    python bench/decision_report.py RUNS_DIR [--judge substring]

Per run: refusal rate per split and method (Wilson 95%), harmful prompts unlocked (refused by
the original, answered by the method) per unsafe split, refusals added (answered by the original,
refused by the method) per split, prompts judged harmful / steered toward refusal,
and MMLU prompts judged harmful (from summary.json when present).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from scans.bench.judges import refused
from scans.bench.metrics import format_rate, rate


def records(run: Path) -> list[dict]:
    out = {}
    for line in (run / "generations.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[(r["method"], r["split"], r["id"])] = r
    return list(out.values())


def table(run: Path, judge: str, limit: int | None = None) -> tuple[str, dict]:
    recs = records(run)
    if limit is not None:
        recs = [r for r in recs if r["id"] < limit]
    methods = list(dict.fromkeys(r["method"] for r in recs))
    splits = list(dict.fromkeys(r["split"] for r in recs))
    by = defaultdict(dict)
    for r in recs:
        by[(r["split"], r["id"])][r["method"]] = r
    stats: dict = {}
    lines = [
        "| split | "
        + " | ".join(methods)
        + " | unlocked ("
        + ", ".join(m for m in methods if m != "original")
        + ") | refusals added (answered by the original, refused by the method) |",
        "|---" * (len(methods) + 3) + "|",
    ]
    for sp in splits:
        cells = []
        for m in methods:
            rs = [r for r in recs if r["split"] == sp and r["method"] == m]
            k = sum(refused(r["judges"][judge]) for r in rs)
            stats[(sp, m)] = rate(k, len(rs))
            cells.append(format_rate(stats[(sp, m)]))
        unlocked, added_cells = [], []
        for m in methods:
            if m == "original":
                continue
            n = sum(
                1
                for key, per in by.items()
                if key[0] == sp
                and m in per
                and "original" in per
                and per["original"]["label"] == "unsafe"
                and refused(per["original"]["judges"][judge])
                and not refused(per[m]["judges"][judge])
            )
            total = sum(1 for key in by if key[0] == sp)
            label = next(r["label"] for r in recs if r["split"] == sp)
            stats[(sp, m, "unlocked")] = (n, total)
            unlocked.append(f"{n} ({100 * n / total:.1f}%)" if label == "unsafe" else "-")
            added = sum(
                1
                for key, per in by.items()
                if key[0] == sp
                and m in per
                and "original" in per
                and not refused(per["original"]["judges"][judge])
                and refused(per[m]["judges"][judge])
            )
            stats[(sp, m, "added")] = (added, total)
            added_cells.append(f"{added} ({100 * added / total:.1f}%)")
        lines.append(
            f"| {sp} | "
            + " | ".join(cells)
            + " | "
            + " / ".join(unlocked)
            + " | "
            + " / ".join(added_cells)
            + " |"
        )
    steer = []
    for m in methods:
        rs = [r for r in recs if r["method"] == m and r.get("score") is not None]
        if rs:
            d = defaultdict(int)
            for r in rs:
                d[r.get("decision") or ("harmful" if r.get("flagged") else "benign")] += 1
            toward = sum(1 for r in rs if r.get("sign") == 1)
            steer.append(
                f"{m}: "
                + ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
                + f" (of {len(rs)})"
                + f"; steered toward refusal {toward}"
            )
    summary = run / "capability.json"
    if summary.exists():
        mmlu = json.loads(summary.read_text()).get("mmlu") or {}
        for m, v in mmlu.items():
            if "flagged" in v:
                stats[("mmlu", m)] = (v["flagged"], v["n"])
                steer.append(
                    f"MMLU {m}: judged harmful {v['flagged']}/{v['n']} ({100 * v['flagged'] / v['n']:.1f}%), "
                    f"steered {v['steered']}, accuracy {100 * v['accuracy']:.1f}%"
                )
    return "\n".join(lines + [""] + [f"- {s}" for s in steer]), stats


def unlocked_list(run: Path, judge: str) -> str:
    by = defaultdict(dict)
    for r in records(run):
        by[(r["split"], r["id"])][r["method"]] = r
    out = []
    for key, per in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        o = per.get("original")
        if o is None or o["label"] != "unsafe" or not refused(o["judges"][judge]):
            continue
        for m, r in per.items():
            if m != "original" and not refused(r["judges"][judge]):
                out.append(
                    f"| {m} | {key[0]} | {r.get('decision')} | {r['score']:+.3f} | {' '.join(r['prompt'].split())[:140]} |"
                )
    return "\n".join(["| method | split | decision | score | prompt |", "|---|---|---|---|---|", *out])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs")
    ap.add_argument("--judge", default="substring")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each split only")
    args = ap.parse_args()
    for run in sorted(p for p in Path(args.runs).iterdir() if (p / "generations.jsonl").exists()):
        text, _ = table(run, args.judge, args.limit)
        print(
            f"### {run.name} ({args.judge} judge{'' if args.limit is None else f', first {args.limit} per split'})\n\n{text}\n"
        )
    for run in sorted(p for p in Path(args.runs).iterdir() if (p / "generations.jsonl").exists()):
        print(f"### unlocked: {run.name}\n\n{unlocked_list(run, args.judge)}\n")


if __name__ == "__main__":
    main()
