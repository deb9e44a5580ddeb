"""The report's capability sections (MMLU, perplexity, HumanEval) and the run's settings and timings."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .. import metrics as M
from .blocks import ReportBase, Section, Table, num, pct
from .run import METHOD_ORDER, ordered, read_json


class CapabilitySections(ReportBase):
    """Section builders on capability and cost (mixed into :class:`scans.bench.report.Report`)."""

    # -- capability
    def _capability(self) -> Section:
        s = Section("Capability: MMLU and perplexity", "capability")
        cap = self.run.capability
        if not isinstance(cap, dict):
            s.blocks.append("capability.json is missing: MMLU and perplexity were not run.")
            self.missing.append("capability.json (MMLU, perplexity)")
            return s
        mmlu = cap.get("mmlu") or {}
        if mmlu:
            base = mmlu.get("original", {}).get("accuracy")
            rows = []
            for method, m in mmlu.items():
                n = int(m.get("n") or 0)
                acc = float(m.get("accuracy", float("nan")))
                lo, hi = M.wilson(acc * n, n) if n and not math.isnan(acc) else (float("nan"), float("nan"))
                cell = pct(acc) if math.isnan(lo) else f"{100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                delta = "" if base is None or method == "original" else f"{100 * (acc - base):+.1f}"
                subjects = len(m.get("per_subject") or {})
                rows.append([method, cell, str(n), str(subjects), delta])
            s.blocks.append(
                Table(
                    ["method", "MMLU accuracy [95% CI]", "questions", "subjects", "vs original (points)"],
                    rows,
                )
            )
        else:
            s.blocks.append("No MMLU results in capability.json.")
            self.missing.append("MMLU results")
        ppl = cap.get("perplexity") or {}
        if ppl:
            base = ppl.get("original", {}).get("ppl")
            rows = []
            for method, p in ppl.items():
                value = p.get("ppl")
                delta = (
                    ""
                    if not base or method == "original" or value is None
                    else f"{100 * (value / base - 1):+.1f}%"
                )
                rows.append(
                    [method, num(value, ".3f"), str(p.get("n_tokens", "")), str(p.get("n_texts", "")), delta]
                )
            s.blocks.append(Table(["method", "perplexity", "tokens", "texts", "vs original"], rows))
        else:
            s.blocks.append("No perplexity results in capability.json.")
            self.missing.append("perplexity results")
        return s

    # -- HumanEval
    def _humaneval(self) -> Section | None:
        records = self.run.humaneval
        if not records:
            return None  # not run: the report is as before
        from ..humaneval import summarize

        s = Section("HumanEval", "humaneval")
        summary = self.run.humaneval_summary if isinstance(self.run.humaneval_summary, dict) else {}
        settings = summary.get("settings") or {}
        timeouts: dict[str, int] = defaultdict(int)
        for r in records:
            timeouts[r["method"]] += int(r.get("status") == "timeout")
        per = summarize(records)
        methods = ordered([m for m in self.run.methods if m in per], list(per), METHOD_ORDER)
        base = per.get("original", {}).get("pass_at_1")
        rows = []
        for method in methods:
            m = per[method]
            cell = M.format_rate(M.rate(m["passed"], m["n"]))
            delta = "" if base is None or method == "original" else f"{100 * (m['pass_at_1'] - base):+.1f}"
            rows.append(
                [
                    method,
                    cell,
                    f"{m['passed']}/{m['n']}",
                    str(m["steered"]),
                    delta,
                    str(timeouts[method]),
                    num(m["seconds"], ".1f"),
                    num(m["exec_seconds"], ".1f"),
                ]
            )
        parts = [
            "pass@1 with greedy decoding, 95% Wilson interval; each answer's code ran against the problem's "
            "tests in a separate, resource-limited interpreter (docs/humaneval.md)."
        ]
        if settings:
            parts.append(
                f"Settings: {settings.get('limit')} problems, {settings.get('max_new_tokens')} new tokens, "
                f"{settings.get('timeout_s')} s per program."
            )
        if summary.get("wall_seconds") is not None:
            parts.append(f"Last run: {num(float(summary['wall_seconds']), '.1f')} s (generation and tests).")
        s.blocks.append(" ".join(parts))
        s.blocks.append(
            Table(
                [
                    "method",
                    "pass@1 [95% CI]",
                    "passed",
                    "steered",
                    "vs original (points)",
                    "timeouts",
                    "generation s",
                    "test s",
                ],
                rows,
            )
        )
        return s

    # -- settings
    def _settings(self) -> Section:
        meta = self.run.meta
        s = Section("Run settings", "settings")
        keys = (
            "model",
            "fingerprint",
            "scans_version",
            "backend",
            "dtype",
            "max_new_tokens",
            "batch_size",
            "threshold",
            "started",
            "command",
        )
        rows = [[key, str(meta[key])] for key in keys if key in meta]
        splits = meta.get("splits") or {}
        if splits:
            rows.append(
                ["splits", ", ".join(f"{k} ({v.get('n')}, {v.get('label')})" for k, v in splits.items())]
            )
        if rows:
            s.blocks.append(Table(["setting", "value"], rows))
        else:
            s.blocks.append("meta.json is missing: settings unknown.")
        by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.run.records:
            by_method[record["method"]].append(record)
        timings = self.run.timings if isinstance(self.run.timings, dict) else {}
        rows = []
        for method in self.run.methods:
            recs = by_method.get(method, [])
            t = timings.get(method) or {}
            if not recs and not t:
                continue
            seconds = t.get("seconds", sum(float(r.get("seconds") or 0.0) for r in recs))
            count = t.get("rows", len(recs))
            tokens = M.mean(
                float(r["new_tokens"]) for r in recs if isinstance(r.get("new_tokens"), (int, float))
            )
            per_row = seconds / count if count else float("nan")
            rows.append(
                [method, str(count), num(float(seconds), ".1f"), num(per_row, ".2f"), num(tokens, ".1f")]
            )
        if rows:
            source = "timings.json" if timings else "sum of per-row seconds in generations.jsonl"
            s.blocks.append(f"Generation time per method (from {source}).")
            s.blocks.append(Table(["method", "rows", "seconds", "s/row", "mean new tokens"], rows))
        tp = read_json(self.run.path / "throughput.json", [])  # written by the vllm backend
        if isinstance(tp, dict) and tp.get("wall_s"):
            s.blocks.append(
                f"Throughput of the last `scans bench` invocation on the {tp.get('backend', '?')} backend "
                "(requests: unique engine requests, shared between methods; wall: generation and probe "
                "passes, engine load excluded)."
            )
            cols = (
                "rows",
                "requests",
                "new_tokens",
                "wall_s",
                "rows_per_s",
                "requests_per_s",
                "new_tokens_per_s",
                "engine_load_s",
            )
            s.blocks.append(Table(list(cols), [[str(tp.get(c, "")) for c in cols]]))
        return s
