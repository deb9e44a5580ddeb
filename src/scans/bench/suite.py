"""The whole benchmark in one call: splits x methods, capability, layer evidence, timings."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..api import Scans
from ..layers import refusal_token_ids
from ..models import find_final_norm
from . import data
from .options import SuiteOptions, build_methods, load_splits
from .runner import group_methods, run_generations, save_profile_copy, write_meta, write_timings


@torch.no_grad()
def lens_matrix(scans: Scans, n_tokens: int = 16) -> dict[str, Any]:
    """Logit lens of every layer's refusal vector on the refusal words the model promotes most:
    z-scored logits, layers x tokens (the report's heat map), with the steering band."""
    model, tok = scans.model, scans.tokenizer
    profile = scans.require_profile()
    head = model.get_output_embeddings()
    norm = find_final_norm(model)
    ids = torch.tensor(refusal_token_ids(tok), dtype=torch.long)
    rows = []
    device = head.weight.device
    for v in profile.vectors:
        x = v.to(device, head.weight.dtype)[None]
        logits = head(norm(x) if norm is not None else x)[0].float().cpu()
        z = (logits - logits.mean()) / logits.std().clamp_min(1e-8)
        rows.append(z[ids])
    values = torch.stack(rows)  # (L, T)
    order = values.max(0).values.argsort(descending=True)[:n_tokens]
    return {
        "layers": list(range(values.shape[0])),
        "tokens": [tok.decode([int(ids[i])]) for i in order],
        "values": values[:, order].tolist(),
        "band": [min(profile.steer_layers), max(profile.steer_layers)],
        "metric": "z-scored logit of refusal tokens (logit lens of the unit refusal vector)",
    }


def run_suite(scans: Scans, run_dir: str | Path, opts: SuiteOptions, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a benchmark into ``run_dir``; returns a summary."""
    from .judges import DEFAULT_JUDGE
    from .metrics import refusal_rates

    if scans.capabilities.engine_batching:  # the engine schedules every request itself
        from .vllm_runner import run_suite_vllm

        return run_suite_vllm(scans, run_dir, opts, progress=progress)
    run_dir = Path(run_dir)
    anchors = set(scans.require_profile().anchors.get("used_prompt_keys", []))
    splits = load_splits(opts, anchors)  # anchors are never benchmark prompts
    methods = build_methods(scans, opts.methods)
    capability = [m for m in build_methods(scans, opts.capability_methods)] if opts.capability_methods else []
    mmlu_data = ppl_pairs = None  # load (and validate) all data before the long run starts
    if opts.mmlu_limit:
        mmlu_data = data.mmlu(opts.mmlu_subjects, opts.mmlu_limit, opts.data_dir, opts.download)
    if opts.ppl_texts:
        ppl_pairs = data.truthfulqa_answers(opts.data_dir, opts.download)[: opts.ppl_texts]
    problems = None
    if opts.humaneval_limit:
        from .humaneval import load_problems

        problems = load_problems(opts.humaneval_limit)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_meta(run_dir, scans, splits, methods, opts.config)
    save_profile_copy(run_dir, scans)
    (run_dir / "lens.json").write_text(json.dumps(lens_matrix(scans), indent=1))
    t0 = time.perf_counter()
    # the first prefill group (original, scans, ...) first, then capability, then the rest:
    # an interrupted run has the headline comparison and MMLU/perplexity before the baselines
    first = group_methods(methods)[0]
    log = run_generations(scans, splits, first, run_dir, opts.config, progress=progress)
    gen_seconds = time.perf_counter() - t0
    cap_path = run_dir / "capability.json"
    cap = json.loads(cap_path.read_text()) if cap_path.exists() else {}
    cap_settings = {"mmlu_limit": opts.mmlu_limit, "ppl_texts": opts.ppl_texts}
    if cap.get("settings") != cap_settings:
        cap = {"settings": cap_settings}
    from .capability import run_mmlu, run_perplexity

    for key, run, work in (("mmlu", run_mmlu, mmlu_data), ("perplexity", run_perplexity, ppl_pairs)):
        todo = [m for m in capability if m.name not in cap.get(key, {})]
        if work is None or not todo:
            continue
        t1 = time.perf_counter()
        cap.setdefault(key, {}).update(run(scans, todo, work, progress=progress))  # type: ignore[operator]
        cap.setdefault("seconds", {})[key] = round(time.perf_counter() - t1, 1)
        _write_json(cap_path, cap)  # each part is kept as soon as it is done
    humaneval = None
    if problems and capability:
        from dataclasses import replace

        from .humaneval import run_humaneval
        from .sandbox import Limits

        he_config = replace(opts.config, max_new_tokens=opts.humaneval_max_new_tokens)
        limits = Limits(timeout_s=opts.humaneval_timeout)
        humaneval = run_humaneval(scans, capability, problems, run_dir, he_config, limits, progress=progress)
    t0 = time.perf_counter()
    log = run_generations(scans, splits, methods, run_dir, opts.config, progress=progress)
    gen_seconds += time.perf_counter() - t0
    timings = write_timings(run_dir, log)
    rates = refusal_rates(log.records.values(), DEFAULT_JUDGE)
    return {
        "rates": rates,
        "judge": DEFAULT_JUDGE,
        "capability": cap,
        **({"humaneval": humaneval} if humaneval is not None else {}),
        "timings": timings,
        "generation_seconds": gen_seconds,
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
