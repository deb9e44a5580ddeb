"""``scans bench``: run methods over benchmark splits, appending every answer to a JSONL run.

Work is shared wherever the result cannot change: prompts are tokenized once, sorted by
length into batches, and every method of a prefill group (same system prompt, same
whole-pass hooks) reuses one prefill and one probe pass per batch. A row a method leaves
unsteered (sign 0) gets the group's unsteered answer, generated once (for ``original`` and
``scans`` alike: with sign 0 the two runs are the same computation). Each batch's answers
are appended and flushed as soon as they exist, so a killed run loses at most the batch in
flight and a rerun skips what is done.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..activations import batches_by_length
from ..api import Scans
from ..decode import RowSettings, decode
from ..engine import Prefill, auto_batch_size, prefill, probe_pass
from ..errors import ScansError
from ..prompts import build_batch, context_length
from ..version import __version__
from .data import Split
from .methods import Method

GENERATIONS = "generations.jsonl"
META = "meta.json"
JUDGE_NAMES = ("substring", "xstest", "rules")


@dataclass
class BenchConfig:
    """Settings of one benchmark run (recorded in meta.json; a resumed run must match)."""

    max_new_tokens: int = 64
    batch_size: int | None = None  # None: engine.auto_batch_size
    seed: int = 0
    command: str = field(default_factory=lambda: " ".join(sys.argv))


@dataclass
class Item:
    split: str
    id: int
    prompt: str
    label: str
    meta: dict[str, Any] | None = None  # the split's per-prompt meta row, recorded as "meta"


def split_items(splits: Sequence[Split]) -> list[Item]:
    """Every prompt of every split as an :class:`Item` (id: its index in the split)."""
    return [
        Item(s.name, i, p, lab, s.meta[i] if s.meta is not None else None)
        for s in splits
        for i, (p, lab) in enumerate(zip(s.prompts, s.labels))
    ]


def with_meta(record: dict[str, Any], item: Item) -> dict[str, Any]:
    """``record`` plus ``"meta"`` when the item has a meta row (records of other splits are unchanged)."""
    if item.meta is not None:
        record["meta"] = item.meta
    return record


class RunLog:
    """The append-only JSONL of a run: what is done, and durable appends."""

    def __init__(self, run_dir: Path, name: str = GENERATIONS) -> None:
        self.path = run_dir / name
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self.records[(rec["method"], rec["split"], int(rec["id"]))] = rec
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    if n != len(lines) - 1:  # only a killed run's last line may be cut short
                        raise ScansError(
                            f"{self.path} line {n + 1} is not a run record; fix: delete that line or use a new --out"
                        ) from None
            if lines and not lines[-1].endswith("}"):
                self._truncate_partial_line()

    def _truncate_partial_line(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        with self.path.open("r+b") as fh:
            fh.truncate(cut)

    def done(self, method: str, item: Item) -> bool:
        return (method, item.split, item.id) in self.records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self.records[(rec["method"], rec["split"], int(rec["id"]))] = rec
            fh.flush()
            os.fsync(fh.fileno())


def _judges() -> dict[str, Any]:
    from .judges import get_judge

    return {name: get_judge(name) for name in JUDGE_NAMES}


def write_meta(
    run_dir: Path, scans: Scans, splits: Sequence[Split], methods: Sequence[Method], config: BenchConfig
) -> dict[str, Any]:
    """Create or check the run's meta.json (a resumed run must use the same model and settings)."""
    profile = scans.require_profile()
    meta_path = run_dir / META
    engine = scans.capabilities.engine_batching
    meta: dict[str, Any] = {
        "model": scans.name,
        "fingerprint": scans.fingerprint,
        "scans_version": __version__,
        "backend": scans.backend,
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size or (None if engine else auto_batch_size(scans.model)),
        "seed": config.seed,
        "decoding": "greedy",
        "dtype": scans.dtype,
        "methods": [m.name for m in methods],
        "method_settings": {m.name: m.settings() for m in methods},
        "splits": {s.name: {"n": len(s), "label": s.label} for s in splits},
        "command": config.command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "threshold": profile.threshold,
        "torch_threads": torch.get_num_threads(),
    }
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        old.setdefault("backend", "transformers")  # runs from before the vllm backend
        for key in ("fingerprint", "max_new_tokens", "seed", "backend"):
            if old.get(key) != meta[key]:
                raise ScansError(
                    f"{run_dir} holds a run with {key}={old.get(key)!r}, this one has {meta[key]!r}; "
                    "fix: use the same settings to resume, or a new --out directory"
                )
        if abs(float(old.get("threshold", profile.threshold)) - profile.threshold) > 1e-9:
            raise ScansError(
                f"{run_dir} was run with another profile (threshold {old.get('threshold')}); "
                "fix: pass the same --profile to resume, or a new --out directory"
            )
        meta["started"] = old.get("started", meta["started"])
        meta["methods"] = list(dict.fromkeys([*old.get("methods", []), *meta["methods"]]))
        meta["method_settings"] = {**old.get("method_settings", {}), **meta["method_settings"]}
        meta["splits"] = {**old.get("splits", {}), **meta["splits"]}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_path)
    return meta


def save_profile_copy(run_dir: Path, scans: Scans) -> None:
    """Keep the profile the run used next to the answers (the report reads its evidence)."""
    target = run_dir / "profile"
    if not (target / "profile.json").exists():
        tmp = run_dir / "profile.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        scans.require_profile().save(tmp)
        tmp.replace(target)


def method_decisions(
    methods: Sequence[Method], scans: Scans, pre: Prefill, prompts: Sequence[str]
) -> dict[str, Any]:
    """Each method's ``Decision`` on a prefilled batch of ``prompts``: the answering model's probe
    pass for the methods that read it, ``Scans.signal_acts`` (a guard profile's guard pass, the
    refusal gate's reading) for those that read it, each computed once and only when some method
    needs it (``signal_acts`` reuses the probe pass, or runs it itself when its rule reads it)."""
    probe = [m for m in methods if m.needs_probe]
    signals = [m for m in probe if m.reads_signals]
    acts = (
        probe_pass(scans.model, scans.tokenizer, pre, scans.require_profile().probe, scans.layers_path)
        if len(signals) < len(probe)
        else None
    )
    signal_acts = scans.signal_acts(prompts, pre, own=acts) if signals else None
    n = pre.batch.input_ids.shape[0]
    return {m.name: m.decide(signal_acts if m.reads_signals else acts, n) for m in methods}


def group_methods(methods: Sequence[Method]) -> list[list[Method]]:
    groups: dict[tuple[Any, ...], list[Method]] = {}
    for m in methods:
        groups.setdefault(m.group, []).append(m)
    return list(groups.values())


def run_generations(
    scans: Scans,
    splits: Sequence[Split],
    methods: Sequence[Method],
    run_dir: Path,
    config: BenchConfig,
    progress: bool = True,
    items: Sequence[Item] | None = None,
    log_name: str = GENERATIONS,
    finish: Callable[[Item, dict[str, Any]], dict[str, Any]] | None = None,
) -> RunLog:
    """Answer every prompt of every split with every method; resumable.

    ``items`` replaces the splits' prompts and ``log_name`` the JSONL (HumanEval uses both);
    ``finish(item, record)`` completes each record before it is written (no refusal judges then).
    """
    from tqdm.auto import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir, log_name)
    judges = _judges() if finish is None else {}
    torch.manual_seed(config.seed)

    def generate(pre: Prefill, plan: Any = None) -> list[tuple[str, int]]:
        """Greedy answers; finished rows leave the batch (no work is spent on them)."""
        out = decode(
            model, tok, pre, [RowSettings(max_tokens=config.max_new_tokens)] * len(pre.batch.input_ids), plan
        )
        return [(r.text.strip(), len(r.token_ids)) for r in out]

    items = split_items(splits) if items is None else list(items)
    model, tok = scans.model, scans.tokenizer
    for members in group_methods(methods):
        todo = [it for it in items if any(not log.done(m.name, it) for m in members)]
        if not todo:
            continue
        lead = members[0]
        full = build_batch(
            tok, [it.prompt for it in todo], system=lead.system, max_length=context_length(model)
        )
        size = config.batch_size or auto_batch_size(model)
        buckets = batches_by_length(full.attention_mask.sum(-1).tolist(), size)
        # the unsteered answers of a plain group are the original's: reuse those already written
        reuse_original = lead.group == ("plain", scans.require_profile().system)
        names = ", ".join(m.name for m in members)
        for bucket in tqdm(buckets, desc=f"bench [{names}]", disable=not progress):
            rows = [todo[i] for i in bucket]
            with lead.active(model):
                t0 = time.perf_counter()
                pre = prefill(model, full.select(bucket))
                waiting = [m for m in members if any(not log.done(m.name, r) for r in rows)]
                decisions = method_decisions(waiting, scans, pre, [r.prompt for r in rows])
                shared_s = (time.perf_counter() - t0) / len(rows)
                # answers by (steering key, sign, row): methods that would run the same
                # computation on a row (sign 0 anywhere; the same profile and sign) share it
                done_answers: dict[tuple[Any, int, int], tuple[str, int, float]] = {}
                if reuse_original:
                    for j, r in enumerate(rows):
                        rec = log.records.get(("original", r.split, r.id))
                        if rec is not None:
                            done_answers[(None, 0, j)] = (
                                rec["response"],
                                int(rec.get("new_tokens", 0)),
                                float(rec.get("seconds", 0.0)) - shared_s,
                            )
                for m in members:
                    need = [j for j, r in enumerate(rows) if not log.done(m.name, r)]
                    if not need:
                        continue
                    decision = decisions[m.name]
                    key = m.steering_key()

                    def slot(
                        j: int, signs: list[int] = decision.signs, key: Any = key
                    ) -> tuple[Any, int, int]:
                        return (key if signs[j] else None, signs[j], j)

                    missing = [j for j in need if slot(j) not in done_answers]
                    for sign in sorted({decision.signs[j] for j in missing}):
                        part = [j for j in missing if decision.signs[j] == sign]
                        sub = pre.select(part)
                        plan = m.plan(sub, [sign] * len(part)) if sign else None
                        t1 = time.perf_counter()
                        out = generate(sub, plan)
                        per = (time.perf_counter() - t1) / len(part)
                        done_answers.update({slot(j): (text, n, per) for j, (text, n) in zip(part, out)})
                    answers = {j: done_answers[slot(j)] for j in need}
                    records = []
                    for j in need:
                        r = rows[j]
                        text, n_new, secs = answers[j]
                        record = with_meta(
                            {
                                "method": m.name,
                                "split": r.split,
                                "id": r.id,
                                "prompt": r.prompt,
                                "label": r.label,
                                "response": text,
                                "judges": {
                                    name: judge.judge(r.prompt, text) for name, judge in judges.items()
                                },
                                "score": decision.scores[j],
                                "flagged": decision.flagged[j],
                                "sign": decision.signs[j],
                                "decision": decision.decisions[j] if decision.decisions else None,
                                "new_tokens": n_new,
                                "seconds": round(shared_s + max(secs, 0.0), 4),
                                "max_new_tokens": config.max_new_tokens,
                            },
                            r,
                        )
                        if finish is not None:
                            del record["judges"]
                            record["decision"] = decision.decisions[j] if decision.decisions else None
                            record = finish(r, record)
                        records.append(record)
                    log.append(records)
    return log


def write_timings(run_dir: Path, log: RunLog) -> dict[str, dict[str, float]]:
    """Per-method total seconds and rows (from the per-row shares in the log)."""
    timings: dict[str, dict[str, float]] = {}
    for (method, _, _), rec in log.records.items():
        t = timings.setdefault(method, {"seconds": 0.0, "rows": 0, "new_tokens": 0})
        t["seconds"] += float(rec.get("seconds", 0.0))
        t["rows"] += 1
        t["new_tokens"] += int(rec.get("new_tokens", 0))
    for t in timings.values():
        t["seconds"] = round(t["seconds"], 1)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    return timings
