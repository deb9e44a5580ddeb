"""Do two code versions behave the same? Compares two profiles (every tensor bit for bit, every
JSON field but version and stage times) and, optionally, two `scans bench` run directories
(every method's answer to every prompt).

    python bench/same_behaviour.py PROFILE_A PROFILE_B [RUN_A RUN_B ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SKIP = ("version", "timings_s")


def _leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def compare_profiles(a: Path, b: Path) -> bool:
    ta, tb = (load_file(next(p.glob("*.safetensors"))) for p in (a, b))
    ma, mb = (json.loads(next(p.glob("*.json")).read_text()) for p in (a, b))
    tensors = [
        k for k in sorted(set(ta) | set(tb)) if k not in ta or k not in tb or not torch.equal(ta[k], tb[k])
    ]
    la, lb = dict(_leaves(ma)), dict(_leaves(mb))
    fields = [
        k for k in sorted(set(la) | set(lb)) if la.get(k) != lb.get(k) and not any(s in k for s in SKIP)
    ]
    print(
        f"profiles: {len(ta)} tensors, {len(tensors)} differ {tensors[:5]}; {len(la)} JSON fields, {len(fields)} differ {fields[:5]}"
    )
    return not tensors and not fields


def compare_runs(a: Path, b: Path) -> bool:
    def answers(run: Path) -> dict:
        rows = (json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines() if line)
        return {(r["method"], r.get("split"), r["prompt"]): r["response"] for r in rows}

    ra, rb = answers(a), answers(b)
    same = sum(ra[k] == rb.get(k) for k in ra)
    print(f"{a} vs {b}: {len(ra)} / {len(rb)} answers, {same} identical")
    return set(ra) == set(rb) and same == len(ra)


if __name__ == "__main__":
    args = [Path(p) for p in sys.argv[1:]]
    ok = compare_profiles(args[0], args[1])
    for i in range(2, len(args) - 1, 2):
        ok = compare_runs(args[i], args[i + 1]) and ok
    print("same behaviour" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)
