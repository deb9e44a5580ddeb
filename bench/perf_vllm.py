"""Throughput of SCANS on the vLLM backend next to the transformers backend (same prompts).

    nice -n 19 /work/vllm-venv/bin/python bench/perf_vllm.py [--n 16] [--new-tokens 16] [--repeats 2]

Run it from the virtual environment that has vLLM (see the README's vLLM backend section).
Each backend runs in its own subprocess (its own peak RSS and thread settings): model and
profile load (timed separately), a warm-up on 4 prompts, then the best of ``--repeats``
timed runs of ``Scans.generate`` / ``VLLMScans.generate`` on the first ``--n`` prompts of
``bench/eval_prompts.jsonl``, every prompt forced to exactly ``--new-tokens`` new tokens
(classification and per-prompt steering included on both sides, greedy).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def load(n: int) -> list[str]:
    rows = [json.loads(line) for line in open(HERE / "eval_prompts.jsonl") if line.strip()]
    return [r["prompt"] for r in rows[:n]]


def run_backend(backend: str, n: int, new_tokens: int, repeats: int) -> dict:
    start = time.perf_counter()
    if backend == "vllm":
        from scans.backends.vllm import VLLMScans

        scans = VLLMScans.from_pretrained()
    else:
        from scans import Scans

        scans = Scans.from_pretrained()
    scans.load()
    load_s = time.perf_counter() - start
    best, answers = float("inf"), []
    for prompts in [load(4)] + [load(n)] * repeats:
        t0 = time.perf_counter()
        kwargs = {"progress": False} if backend == "transformers" else {}
        gens = scans.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - t0
        if len(prompts) == n:
            best = min(best, seconds)
            answers = [g.response for g in gens]
    import torch

    return {
        "backend": backend, "n": n, "new_tokens": new_tokens, "seconds": round(best, 2),
        "prompts_per_s": round(n / best, 3), "tokens_per_s": round(n * new_tokens / best, 1),
        "load_s": round(load_s, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(), "answers": answers,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", choices=["transformers", "vllm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(json.dumps(run_backend(args.only, args.n, args.new_tokens, args.repeats)))
        return
    results = {}
    for backend in ("transformers", "vllm"):
        cmd = [sys.executable, __file__, "--only", backend, "--n", str(args.n),
               "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[backend] = json.loads(out.strip().splitlines()[-1])
    same = sum(a == b for a, b in zip(results["transformers"]["answers"], results["vllm"]["answers"]))
    print("| backend | prompts | seconds | prompts/s | tokens/s | load s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['backend']} | {r['n']} | {r['seconds']} | {r['prompts_per_s']} | {r['tokens_per_s']} "
              f"| {r['load_s']} | {r['peak_rss_mb']} |")  # fmt: skip
    ratio = results["transformers"]["seconds"] / results["vllm"]["seconds"]
    print(f"vllm speed-up over transformers: {ratio:.2f}x; identical answers: {same}/{args.n}")


if __name__ == "__main__":
    main()
