"""Throughput of SCANS against plain generation and a one-prompt-at-a-time SCANS loop.

    python bench/perf.py [--n 64] [--loop-n 16] [--new-tokens 16] [--batch-size 32]
    python bench/perf.py --fit-runs 3      # time `scans fit` instead (packed vs --no-pack)
    python bench/perf.py --fit-runs 3 --fit-args "--pool-size all"   # with other fit options

Side by side in one run, each method in its own subprocess (so peak RSS is its own):
  a  plain batched greedy `generate` of the prompts (no classification, no steering)
  e  the same without SCANS on this project's engine: length-sorted buckets and the shared
     prefill (system prompt run once), then `generate`: b/e is what SCANS itself costs
  b  this project's SCANS: shared prefill, batched probe pass, per-row steered generation
  c  the paper's code path: per prompt, a full forward pass with every layer's hidden
     states copied to the CPU in half precision to classify, then a second full forward
     pass plus decoding under steering (run on the first --loop-n prompts; its rate is
     per prompt, so b/c compares seconds per prompt)
All generate exactly --new-tokens tokens per prompt (min_new_tokens). Each method warms
up on 4 prompts; a, e and b alternate in fresh processes (a, e, b, a, e, b, ...) and the best of
--repeats runs of each counts (c runs once). Prints prompts/s,
tokens/s, peak RSS and the ratios; also the machine's measured fp32 matmul throughput and
the fraction of it that a batched forward pass reaches (plain, and on weights prepacked
by ``scans.packing`` as ``scans fit`` runs them).

With ``--fit-runs K``: the whole ``scans --quiet fit`` command (defaults, the model already
cached), K times with its prepacked linears and K times with ``--no-pack``, alternating;
prints every wall time, the medians and their ratio, and where the fit's time went (the
stage timings each profile records); then the token positions the fit ran through the decoder
blocks and their FLOPs (2 x block parameters each, as the profile records them) against the
machine's measured fp32 matmul rate: the time no fp32 fit of these anchors can beat here.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def load(n: int) -> list[str]:
    rows = [json.loads(line) for line in open(HERE / "eval_prompts.jsonl") if line.strip()]
    return [r["prompt"] for r in rows[:n]]


def run_method(method: str, n: int, new_tokens: int, batch_size: int, repeats: int) -> dict:
    """Time one method in this process: a warm-up, then the best of ``repeats`` runs."""
    from scans import Scans

    scans = Scans.from_pretrained()
    scans.load()
    model, tok, profile = scans.model, scans.tokenizer, scans.profile
    best = float("inf")
    for prompts in [load(4)] + [load(n)] * repeats:  # a warm-up on 4 prompts, then timed runs
        start = time.perf_counter()
        _one_run(method, scans, model, tok, profile, prompts, new_tokens, batch_size)
        seconds = time.perf_counter() - start
        if len(prompts) == n:
            best = min(best, seconds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "n": n, "seconds": best, "peak_rss_mb": peak_mb, "repeats": repeats}


def _one_run(method, scans, model, tok, profile, prompts, new_tokens, batch_size) -> None:
    import torch

    from scans.decode import RowSettings
    from scans.prompts import build_batch, pad_id_of
    from scans.steering import SteeringPlan, steer
    from scans.vectors import transitions

    if method == "a":
        for i in range(0, len(prompts), batch_size):
            batch = build_batch(tok, prompts[i : i + batch_size])
            with torch.no_grad():
                model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=pad_id_of(tok),
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
    elif method == "e":  # this project's engine without SCANS: same buckets and shared prefill
        from scans.decode import generate_from

        config = RowSettings(max_tokens=new_tokens, min_tokens=new_tokens)
        for rows in scans._buckets(prompts, batch_size):
            generate_from(model, tok, scans.prefill_prompts([prompts[i] for i in rows]), config)
    elif method == "b":
        scans.generate(
            prompts,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            batch_size=batch_size,
            progress=False,
        )
    else:
        for prompt in prompts:
            full = build_batch(tok, [prompt], probe=profile.probe)
            with torch.no_grad():
                out = model(
                    input_ids=full.input_ids, attention_mask=full.attention_mask, output_hidden_states=True
                )
            hidden = [h[0].half().cpu() for h in out.hidden_states[1:]]  # (T, D) per layer
            inst, probe = int(full.positions["inst"][0]), int(full.positions["probe"][0])
            h_inst = torch.stack([h[inst] for h in hidden]).float()[None]
            h_probe = torch.stack([h[probe] for h in hidden]).float()[None]
            uend = torch.stack([h[int(full.positions["uend"][0])] for h in hidden]).float()[None]
            score = float(profile.scores(transitions(h_inst, h_probe), uend)[0])
            sign = profile.harmful_sign if score >= profile.threshold else -1
            batch = build_batch(tok, [prompt])
            plan = SteeringPlan(
                vectors={l: profile.vectors[l] for l in profile.steer_layers},
                alphas={l: profile.coefficient(l) for l in profile.steer_layers},
                sign=[float(sign)],
                start=batch.attention_mask.sum(-1) - 1,
            )
            with steer(model, plan), torch.no_grad():
                model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=pad_id_of(tok),
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )


def machine_throughput() -> dict:
    import torch

    from scans import Scans
    from scans.fit import TokenMeter
    from scans.packing import packed_linears
    from scans.prompts import build_batch

    def best_of(runs: int, work: Any) -> float:
        work()
        best = float("inf")
        for _ in range(runs):  # a busy machine only ever makes it slower
            start = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - start)
        return best

    a, weight = torch.randn(1024, 896), torch.randn(4864, 896)  # the embedded model's MLP shape
    flops = 10 * 2 * 1024 * 896 * 4864
    layer = torch.nn.Linear(896, 4864, bias=False)
    layer.weight.data = weight

    def ten() -> None:
        with torch.no_grad():
            for _ in range(10):
                layer(a)

    matmul = flops / best_of(5, ten) / 1e9
    with packed_linears(layer):
        matmul_packed = flops / best_of(5, ten) / 1e9
    scans = Scans.from_pretrained()
    model = scans.model
    batch = build_batch(scans.tokenizer, load(32))
    tokens = int(batch.attention_mask.sum())
    body = TokenMeter(model).parameters  # the decoder blocks' weights, as the fit counts its FLOPs

    def forward_pass() -> None:
        with torch.no_grad():
            model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    padded = batch.input_ids.numel()
    forward = 2 * body * padded / best_of(3, forward_pass) / 1e9
    with packed_linears(model):
        forward_packed = 2 * body * padded / best_of(3, forward_pass) / 1e9
    return {
        "matmul_gflops": matmul,
        "forward_gflops": forward,
        "matmul_packed_gflops": matmul_packed,
        "forward_packed_gflops": forward_packed,
        "tokens": tokens,
        "padded_tokens": padded,
    }


def time_fits(runs: int, extra: list[str], gflops: float) -> None:
    """``scans --quiet fit`` with and without packed linears, alternating, in fresh processes;
    ``gflops``: the machine's measured fp32 matmul rate, to set against the fit's forward FLOPs."""
    import statistics
    import tempfile

    walls: dict[str, list[float]] = {"packed": [], "--no-pack": []}
    stages: dict[str, dict] = {}
    last_extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            for mode in walls:
                out = Path(tmp) / f"{mode.strip('-')}-{i}"
                cmd = [
                    sys.executable,
                    "-c",
                    "from scans.cli import run; run()",
                    "--quiet",
                    "fit",
                    "--out",
                    str(out),
                ]
                cmd += [mode] if mode != "packed" else []  # the same as the `scans` console command
                cmd += extra
                start = time.perf_counter()
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:  # the fit's own one-line error (e.g. a bad --fit-args option)
                    lines = (done.stderr or done.stdout).strip().splitlines() or [
                        f"exit status {done.returncode}"
                    ]
                    sys.exit(f"perf.py: `scans fit {' '.join(cmd[5:])}` failed: {lines[-1]}")
                walls[mode].append(time.perf_counter() - start)
                profile = json.loads((out / "profile.json").read_text())
                stages[mode] = profile["extra"]["timings_s"]
                last_extra = profile["extra"]
                print(
                    f"run {i + 1} {mode:9s} wall {walls[mode][-1]:6.1f} s  layers {profile['steer_layers'][0]}-"
                    f"{profile['steer_layers'][-1]}  threshold {profile['threshold']:.4f}",
                    flush=True,
                )
    med = {mode: statistics.median(values) for mode, values in walls.items()}
    for mode, values in walls.items():
        print(
            f"{mode:9s} median {med[mode]:.1f} s (min {min(values):.1f}, max {max(values):.1f}); "
            f"stages of its last run: {stages[mode]}"
        )
    print(f"packed / --no-pack median wall time: {med['packed'] / med['--no-pack']:.3f}")
    tokens, flops = last_extra.get("forward_tokens") or {}, last_extra.get("forward_flops") or {}
    if tokens:  # what the fit's forward passes cost at the machine's best measured matmul rate
        total = sum(flops.values())
        print(
            f"the fit's forward passes: {sum(tokens.values()):,} token positions through the decoder "
            f"blocks, {total / 1e12:.2f} TFLOP in their weights ({tokens}); at this machine's "
            f"fp32 matmul rate ({gflops:.0f} GFLOP/s) no fp32 fit runs them in under {total / gflops / 1e9:.0f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description="SCANS throughput benchmark")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--loop-n", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of a and b (best counts)")
    ap.add_argument(
        "--fit-runs", type=int, default=0, help="time `scans fit` this many times per mode instead"
    )
    ap.add_argument(
        "--fit-args",
        default="",
        help="extra `scans fit` options for --fit-runs, one string (e.g. '--pool-size all')",
    )
    ap.add_argument("--only", choices=["a", "e", "b", "c", "machine"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fit_runs < 0:
        ap.error(
            f"--fit-runs {args.fit_runs}; fix: pass a positive number of runs per mode (0: time generation)"
        )

    def run(method: str, repeats: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--only",
            method,
            "--n",
            str(args.n),
            "--loop-n",
            str(args.loop_n),
            "--new-tokens",
            str(args.new_tokens),
            "--batch-size",
            str(args.batch_size),
            "--repeats",
            str(repeats),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        return json.loads(out)

    if args.fit_runs:
        try:
            extra = shlex.split(args.fit_args)
        except ValueError as e:
            ap.error(
                f"--fit-args {args.fit_args!r}: {e}; fix: quote it as one shell string, e.g. '--pool-size all'"
            )
        m = run("machine", 1)  # in its own process: this one holds no model while the fits run
        print(
            f"fp32 matmul {m['matmul_gflops']:.0f} GFLOP/s (prepacked {m['matmul_packed_gflops']:.0f}); "
            f"batched forward {m['forward_gflops']:.0f} (prepacked {m['forward_packed_gflops']:.0f})",
            flush=True,
        )
        time_fits(args.fit_runs, extra, max(m["matmul_gflops"], m["matmul_packed_gflops"]))
        return
    if args.only:
        if args.only == "machine":
            print(json.dumps(machine_throughput()))
        else:
            n = args.loop_n if args.only == "c" else args.n
            repeats = 1 if args.only == "c" else args.repeats
            print(json.dumps(run_method(args.only, n, args.new_tokens, args.batch_size, repeats)))
        return

    results = {"machine": run("machine", 1)}
    # a and b alternate (a, b, a, b, ...), each in a fresh process, the best run of each
    # counting: a burst of load from another process hits both, not just one of them
    for _ in range(args.repeats):
        for method in "aeb":
            r = run(method, 1)
            prev = results.get(method, r)
            best = r if r["seconds"] <= prev["seconds"] else prev
            results[method] = {**best, "peak_rss_mb": max(r["peak_rss_mb"], prev["peak_rss_mb"])}
    results["c"] = run("c", 1)
    m = results["machine"]
    print(
        f"fp32 matmul: {m['matmul_gflops']:.0f} GFLOP/s; batched forward pass (32 prompts, "
        f"{m['padded_tokens']} padded tokens): {m['forward_gflops']:.0f} GFLOP/s = "
        f"{m['forward_gflops'] / m['matmul_gflops']:.0%} of it; on prepacked weights (as scans fit "
        f"runs): matmul {m['matmul_packed_gflops']:.0f}, forward {m['forward_packed_gflops']:.0f} GFLOP/s = "
        f"{m['forward_packed_gflops'] / m['matmul_packed_gflops']:.0%}"
    )
    names = {
        "a": "plain batched generate",
        "e": "plain, this project's engine",
        "b": "SCANS (this project)",
        "c": "one-at-a-time SCANS loop",
    }
    print(
        f"{'method':28s} {'prompts':>7s} {'seconds':>8s} {'prompts/s':>9s} {'tokens/s':>8s} {'peak RSS':>9s}"
    )
    for key in "aebc":
        r = results[key]
        rate = r["n"] / r["seconds"]
        print(
            f"{names[key]:28s} {r['n']:7d} {r['seconds']:8.1f} {rate:9.3f} {rate * args.new_tokens:8.1f} "
            f"{r['peak_rss_mb']:7.0f}MB"
        )
    per = {k: results[k]["seconds"] / results[k]["n"] for k in "aebc"}
    print(
        f"b/a wall time: {per['b'] / per['a']:.3f}   b/e (SCANS over the same engine unsteered): "
        f"{per['b'] / per['e']:.3f}   c/b time per prompt: {per['c'] / per['b']:.1f}   "
        f"peak RSS b/a: {results['b']['peak_rss_mb'] / results['a']['peak_rss_mb']:.3f}"
    )


if __name__ == "__main__":
    main()
