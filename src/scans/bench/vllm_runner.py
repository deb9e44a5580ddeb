"""``scans bench --backend vllm``: the same runs, answered by a vLLM engine (``VLLMScans``).

Same splits, methods, greedy decoding, token budget, judges and ``generations.jsonl`` records
as :mod:`scans.bench.runner` (resumable the same way), so ``scans report`` reads the run
directory unchanged. Work is shared the same way too: per chunk of prompts, each system
prompt is encoded once and its probe pass (verdicts) runs once in the engine; a method's
rows become requests with their per-row sign, and requests that are the same computation
(same system prompt, same steering plan and sign, or unsteered) are sent once. Every unique
request of a chunk goes to the engine in one call, which batches them itself.

Supported methods: ``original``, ``scans``, ``scans-paper``, ``always-away`` and ``prompt``
(a method is a system prompt, a sign per row and a steering profile, all of which the
engine's hooks follow). ``ablate`` projects a direction out of every layer and position,
which the vLLM hooks do not do: it is refused. MMLU and perplexity (letter logits and
answer likelihoods) are not run on this backend. The run records its backend in
``meta.json`` and its throughput in ``throughput.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.vllm import PROFILE_PLAN
from ..errors import ScansError
from .data import Split
from .methods import Method, get_methods
from .options import build_methods, load_splits
from .runner import BenchConfig, RunLog, _judges, split_items, with_meta, write_meta, write_timings

THROUGHPUT = "throughput.json"
UNSUPPORTED = {
    "ablate": "it projects the refusal direction out of every layer and position, which the vLLM hooks do not do",
}
DEFAULT_CHUNK = 128


def check_methods(names: str | Sequence[str]) -> None:
    """Refuse methods this backend cannot run (before any model loads)."""
    for cls in get_methods(names if isinstance(names, str) else list(names)):
        if cls.name in UNSUPPORTED:
            raise ScansError(
                f"method {cls.name} is not supported with --backend vllm ({UNSUPPORTED[cls.name]}); "
                f"fix: leave it out of --methods, or run it with --backend transformers"
            )


def run_generations_vllm(
    engine: Any,
    splits: Sequence[Split],
    methods: Sequence[Method],
    run_dir: Path,
    config: BenchConfig,
    progress: bool = True,
) -> tuple[RunLog, dict[str, Any]]:
    """Answer every prompt of every split with every method on ``engine``; resumable.
    Returns the log and this call's throughput (requests, tokens, wall seconds)."""
    from tqdm.auto import tqdm

    check_methods([m.name for m in methods])
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir)
    judges = _judges()
    profile = engine.require_profile()
    items = split_items(splits)
    todo = [it for it in items if any(not log.done(m.name, it) for m in methods)]
    chunk = config.batch_size or DEFAULT_CHUNK
    stats: dict[str, Any] = {"rows": 0, "requests": 0, "prompt_tokens": 0, "new_tokens": 0,
                             "probe_s": 0.0, "generate_s": 0.0}  # fmt: skip
    started = time.perf_counter()
    bar = tqdm(
        total=len(todo), desc=f"bench vllm [{', '.join(m.name for m in methods)}]", disable=not progress
    )
    for lo in range(0, len(todo), chunk):
        rows = todo[lo : lo + chunk]
        prompts = [r.prompt for r in rows]
        t0 = time.perf_counter()
        encoded: dict[str | None, list[tuple[list[int], int]]] = {}
        acts: dict[str | None, dict[str, Any]] = {}
        signals: dict[str | None, dict[str, Any]] = {}
        requests: list[tuple[Any, Any]] = []
        slots: dict[tuple[Any, ...], int] = {}  # (system, plan or None, sign, row) -> request index
        plans: list[tuple[Method, list[int], Any]] = []  # method, rows needed, decision
        for m in methods:
            need = [j for j, r in enumerate(rows) if not log.done(m.name, r)]
            if not need:
                continue
            system = m.system
            if system not in encoded:
                encoded[system] = engine.encode(prompts, system, profile_system=False)
            if m.needs_probe and system not in acts:
                acts[system] = engine.probe_activations(
                    encoded[system], profile.probe, refuses=profile.refusal_gate
                )
            if m.reads_signals and system not in signals:  # a guard profile's guard pass, once
                signals[system] = engine.signal_acts(prompts, encoded[system], own=acts[system])
            decision = m.decide((signals if m.reads_signals else acts).get(system), len(rows))
            plan = engine.plan_for(m.steering_profile()) if any(decision.signs[j] for j in need) else None
            for j in need:
                sign = decision.signs[j]
                key = (system, plan if sign else None, sign, j)
                if key not in slots:
                    slots[key] = len(requests)
                    ids = encoded[system][j][0]
                    stats["prompt_tokens"] += len(ids)
                    requests.append(
                        engine.request(ids, sign, max_tokens=config.max_new_tokens, plan=plan or PROFILE_PLAN)
                    )
            plans.append((m, need, (decision, plan)))
        t1 = time.perf_counter()
        outs = engine.run(requests)
        t2 = time.perf_counter()
        per = (t2 - t0) / max(len(requests), 1)
        for m, need, (decision, plan) in plans:
            records = []
            for j in need:
                r = rows[j]
                sign = decision.signs[j]
                out = outs[slots[(m.system, plan if sign else None, sign, j)]]
                records.append(with_meta({
                    "method": m.name, "split": r.split, "id": r.id, "prompt": r.prompt, "label": r.label,
                    "response": out.text,
                    "judges": {name: judge.judge(r.prompt, out.text) for name, judge in judges.items()},
                    "score": decision.scores[j], "flagged": decision.flagged[j], "sign": sign,
                    "decision": decision.decisions[j] if decision.decisions else None,
                    "new_tokens": len(out.token_ids), "seconds": round(per, 4),
                    "max_new_tokens": config.max_new_tokens,
                }, r))  # fmt: skip
            log.append(records)
        stats["rows"] += sum(len(need) for _, need, _ in plans)
        stats["requests"] += len(requests)
        stats["new_tokens"] += sum(len(o.token_ids) for o in outs)
        stats["probe_s"] += t1 - t0
        stats["generate_s"] += t2 - t1
        bar.update(len(rows))
    bar.close()
    wall = time.perf_counter() - started
    stats.update({"wall_s": round(wall, 1), "probe_s": round(stats["probe_s"], 1),
                  "generate_s": round(stats["generate_s"], 1)})  # fmt: skip
    if wall > 0 and stats["requests"]:
        stats["requests_per_s"] = round(stats["requests"] / wall, 3)
        stats["rows_per_s"] = round(stats["rows"] / wall, 3)
        stats["new_tokens_per_s"] = round(stats["new_tokens"] / wall, 1)
    return log, stats


def run_suite_vllm(engine: Any, run_dir: str | Path, opts: Any, progress: bool = True) -> dict[str, Any]:
    """``run_suite`` on the vLLM backend: generations, judges, timings, throughput (no MMLU,
    perplexity or lens heat map: those read logits of the transformers model)."""
    from .judges import DEFAULT_JUDGE
    from .metrics import refusal_rates
    from .runner import save_profile_copy

    run_dir = Path(run_dir)
    anchors = set(engine.require_profile().anchors.get("used_prompt_keys", []))
    splits = load_splits(opts, anchors)  # anchors are never benchmark prompts
    methods = build_methods(engine, opts.methods)
    check_methods([m.name for m in methods])
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(opts.config, batch_size=opts.config.batch_size or DEFAULT_CHUNK)
    write_meta(run_dir, engine, splits, methods, config)
    save_profile_copy(run_dir, engine)
    log, stats = run_generations_vllm(engine, splits, methods, run_dir, config, progress=progress)
    if stats["requests"]:  # a rerun with nothing left to do keeps the last measurement
        throughput = {
            "backend": engine.backend, "dtype": engine.dtype, "engine_load_s": engine.info.get("load_s"),
            "max_new_tokens": config.max_new_tokens, "chunk": config.batch_size,
            "methods": [m.name for m in methods], **stats,
            "note": "rows: records written; requests: unique engine requests (methods share unsteered "
            "answers); wall_s: generation phase of this invocation (probe passes included, engine load not)",
        }  # fmt: skip
        tmp = run_dir / (THROUGHPUT + ".tmp")
        tmp.write_text(json.dumps(throughput, indent=2))
        tmp.replace(run_dir / THROUGHPUT)
    timings = write_timings(run_dir, log)
    rates = refusal_rates(log.records.values(), DEFAULT_JUDGE)
    cap: dict[str, Any] = {}
    return {"rates": rates, "judge": DEFAULT_JUDGE, "capability": cap, "timings": timings, "generation_seconds": stats["wall_s"],
            "throughput": stats}  # fmt: skip
