"""Merge the second batch of taxonomy pairs (written as {type, form, topic, benign, harmful,
category, severity} lines, one file per type) into rows of anchors/taxonomy.jsonl's schema, with
``batch: 2``, ids ``q001-b`` / ``q001-h`` and the split from a hash of the pair id (the first
batch's rule: sha256 % 10 < 3 is test). Then the provenance check: the highest difflib ratio of
each new prompt against the benchmark prompts (read only to compare, never written) and against
the project's own prompts; prompts at or above --max-ratio are listed for rewriting.

    python bench/dev_decision/p11_merge.py DIR OUT.jsonl [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
from pathlib import Path

FIELDS = ("type", "form", "topic", "benign", "harmful", "category", "severity")


def split_of(group: str) -> str:
    return "test" if int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) % 10 < 3 else "dev"


def benchmark_prompts(data_dir: Path) -> list[str]:
    from scans.bench.data import load_split

    names = ("xstest-safe", "xstest-unsafe", "oktest", "harmfulq", "advbench")
    return [p for name in names for p in load_split(name, data_dir).prompts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("out")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--max-ratio", type=float, default=0.75)
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[2]
    taxonomy = [json.loads(x) for x in open(root / "src/scans/anchors/taxonomy.jsonl")]
    own = [r["prompt"] for r in taxonomy if r.get("batch", 1) != 2]  # the batch itself once merged
    own += [json.loads(x)["prompt"] for x in open(root / "src/scans/anchors/borderline.jsonl")]
    for x in open(root / "src/scans/anchors/anchors.jsonl"):
        r = json.loads(x)
        own += [r["harmful"], r["harmless"]]
    own += [json.loads(x)["prompt"] for x in open(root / "bench/eval_prompts.jsonl")]
    bench = benchmark_prompts(Path(args.data_dir))
    rows, n = [], 0
    seen: set[str] = set()
    for path in sorted(Path(args.dir).glob("*.jsonl")):
        for line in open(path, encoding="utf-8"):
            if not line.strip():
                continue
            pair = json.loads(line)
            missing = [k for k in FIELDS if not pair.get(k)]
            assert not missing, f"{path}: {missing}"
            n += 1
            pid = f"q{n:03d}"
            for side in ("benign", "harmful"):
                text = pair[side].strip()
                assert text.lower() not in seen, text
                seen.add(text.lower())
                row = {"id": f"{pid}-{side[0]}", "prompt": text, "label": side, "type": pair["type"],
                       "form": pair["form"]}
                if side == "harmful":
                    row["category"], row["severity"] = pair["category"], pair["severity"]
                row.update(pair=pid, topic=pair["topic"], split=split_of(pid), batch=2)
                rows.append(row)
    flagged = 0
    for row in rows:
        p = row["prompt"].lower()
        for name, pool in (("benchmark", bench), ("own", own)):
            best, arg = 0.0, ""
            for q in pool:
                m = difflib.SequenceMatcher(None, p, q.lower())
                if m.real_quick_ratio() < args.max_ratio or m.quick_ratio() < args.max_ratio:
                    continue
                r = m.ratio()
                if r > best:
                    best, arg = r, q
            if best >= args.max_ratio:
                flagged += 1
                print(f"{row['id']} {name} {best:.2f}: {row['prompt']!r}" + (f" ~ {arg!r}" if name == "own" else ""))
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows ({n} pairs), {sum(r['split'] == 'test' for r in rows)} test; {flagged} flagged")


if __name__ == "__main__":
    main()
