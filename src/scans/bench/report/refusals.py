"""The report's refusal sections: rates per split, harmful prompts unlocked, jailbreak families,
XSTest-style labels, judge agreement, and examples where the methods disagree."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import metrics as M
from ..judges import XSTEST_LABELS
from .blocks import ReportBase, Section, Table, esc, md_cell, num
from .charts import chart_refusal_bars
from .run import JAILBREAK

MAX_EXAMPLES = 12
AGREEMENT_SAMPLE = 200


class RefusalSections(ReportBase):
    """Section builders on the answers' refusals (mixed into :class:`scans.bench.report.Report`)."""

    # -- refusal rates
    def _refusals(self) -> Section:
        run = self.run
        s = Section("Refusal rates", "refusal-rates")
        if not run.records:
            s.blocks.append("No generations in this run yet (generations.jsonl is missing or empty).")
            self.missing.append("generations.jsonl: no generations")
            return s
        rates = M.refusal_rates(run.records, self.judge)
        ran = [m for m in run.methods if any(key[0] == m for key in rates)]
        expected = {k: v.get("n") for k, v in (run.meta.get("splits") or {}).items() if isinstance(v, dict)}
        rows = []
        for method in run.methods:
            row = [method]
            for split in run.splits:
                r = rates.get((method, split))
                if r is None:
                    row.append("missing")
                    self.missing.append(f"no generations for method {method} on {split}")
                    continue
                cell = M.format_rate(r)
                if expected.get(split) and r.n < expected[split]:
                    cell += f" ({r.n}/{expected[split]} done)"
                    self.missing.append(f"{method} on {split}: {r.n} of {expected[split]} prompts done")
                row.append(cell)
            rows.append(row)
        labels = {}
        for record in run.records:
            labels.setdefault(record["split"], set()).add(record.get("label"))
        header = ["method"] + [
            f"{split} ({'/'.join(sorted(x for x in labels.get(split, set()) if x)) or '?'})"
            for split in run.splits
        ]
        s.blocks.append(
            f"Refusal rate by the `{self.judge}` judge (partial refusals count as refusals), "
            "with Wilson 95% intervals. Lower is better on safe splits, higher on unsafe ones."
        )
        from ..judge_eval import agreement_note

        note = agreement_note(self.judge)
        if note:
            s.blocks.append(note)
        s.blocks.append(Table(header, rows))
        self._chart(
            s,
            "refusal-bars",
            "Refusal rate per split and method",
            lambda: chart_refusal_bars(rates, ran, run.splits),
        )
        return s

    # -- harmful prompts unlocked
    def _unlocked(self) -> Section | None:
        """Harmful prompts the original model refuses and a steering method answers, per unsafe split."""
        from ..judges import refused

        unsafe = [r for r in self.run.records if r.get("label") == "unsafe"]
        by_key: dict[tuple[str, Any], dict[str, dict[str, Any]]] = {}
        for r in unsafe:
            by_key.setdefault((r["split"], r["id"]), {})[r["method"]] = r
        methods = [m for m in self.run.methods if m != "original"]
        if not unsafe or "original" not in self.run.methods or not methods:
            return None
        counts: dict[tuple[str, str], list[int]] = {}
        listed: list[list[str]] = []
        for (split, _), per in sorted(by_key.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            orig = per.get("original")
            if orig is None or not refused(M.judge_label(orig, self.judge)):
                continue
            for m in methods:
                r = per.get(m)
                if r is None:
                    continue
                cell = counts.setdefault((m, split), [0, 0])
                cell[1] += 1
                if not refused(M.judge_label(r, self.judge)):
                    cell[0] += 1
                    score = "" if r.get("score") is None else f"{r['score']:+.3f}"
                    listed.append(
                        [m, split, r.get("decision") or "", score, " ".join(r["prompt"].split())[:160]]
                    )
        splits = sorted({k[1] for k in counts})
        n_split = {sp: len({k for k in by_key if k[0] == sp}) for sp in splits}
        rows = []
        for m in methods:
            cells = []
            for sp in splits:
                got, refused_n = counts.get((m, sp), [0, 0])
                cells.append(
                    f"{got} of {n_split[sp]} ({100 * got / max(1, n_split[sp]):.1f}%; {refused_n} refused by original)"
                )
            rows.append([m, *cells])
        s = Section("Harmful prompts unlocked", "unlocked")
        s.blocks.append(
            f"Prompts of the unsafe splits that the original model refuses and the method answers (by the "
            f"`{self.judge}` judge), as a share of the whole split; every one is listed below with the "
            "method's decision and score. One such answer is worse than many false refusals."
        )
        s.blocks.append(Table(["method", *splits], rows))
        if listed:
            s.blocks.append(Table(["method", "split", "decision", "score", "prompt"], listed))
        return s

    # -- jailbreak families
    def _jailbreak(self) -> Section | None:
        records = [r for r in self.run.records if r["split"] == JAILBREAK]
        if not records:
            return None
        from ..jailbreaks import JAILBREAK_FAMILIES

        by_prompt: dict[str, str] | None = None

        def family(record: dict[str, Any]) -> str:
            nonlocal by_prompt
            meta = record.get("meta")
            if isinstance(meta, dict) and meta.get("family"):
                return str(meta["family"])
            if by_prompt is None:  # records without meta: look the prompt up in the packaged split
                from ..data import jailbreak

                split = jailbreak()
                by_prompt = {p: m["family"] for p, m in zip(split.prompts, split.meta or [])}
            return by_prompt.get(record.get("prompt", ""), "unknown")

        families = {id(r): family(r) for r in records}
        rates = M.refusal_rates_by(records, lambda r: families[id(r)], self.judge)
        seen = list(dict.fromkeys(families.values()))
        order = [f for f in JAILBREAK_FAMILIES if f in seen] + sorted(
            f for f in seen if f not in JAILBREAK_FAMILIES
        )
        overall = M.refusal_rates_by(records, lambda r: "all", self.judge)
        methods = [m for m in self.run.methods if any(r["method"] == m for r in records)]
        rows = []
        for method in methods:
            cells = [M.format_rate(rates[(method, f)]) if (method, f) in rates else "missing" for f in order]
            rows.append([method, *cells, M.format_rate(overall[(method, "all")])])
        if "original" in methods:
            for method in methods:
                if method == "original":
                    continue
                cells = []
                for group in [*order, None]:
                    subset = [r for r in records if group is None or families[id(r)] == group]
                    diff, n = M.paired_difference(subset, method, "original", self.judge)
                    cells.append(f"{100 * diff:+.1f} (n={n})" if n else "n/a")
                rows.append([f"{method} vs original (points)", *cells])
        else:
            self.missing.append("jailbreak: no original generations to compare the methods with")
        s = Section("Jailbreak refusal by template family", "jailbreak-families")
        s.blocks.append(
            f"Refusal rate on the `{JAILBREAK}` split (harmful requests wrapped in attack templates; higher "
            f"is better) per template family, by the `{self.judge}` judge, with Wilson 95% intervals. "
            "The 'vs original' rows give the method's refusal rate minus the original model's, in "
            "percentage points, on the prompts both answered (n); a negative value means the attacks "
            "succeed more often than on the unsteered model."
        )
        s.blocks.append(Table(["method", *order, "all families"], rows))
        return s

    def _xstest_labels(self) -> Section | None:
        records = [r for r in self.run.records if (r.get("judges") or {}).get("xstest")]
        if not records:
            return None
        counts = M.label_counts(records, "xstest")
        s = Section("XSTest-style labels", "xstest-labels")
        s.blocks.append(
            "Share of full compliance / full refusal / partial refusal by the rule-based XSTest judge "
            "(see scans.bench.judges.XSTestJudge for the rules)."
        )
        rows = []
        for method in self.run.methods:
            row = [method]
            for split in self.run.splits:
                c = counts.get((method, split))
                if not c:
                    row.append("missing")
                    continue
                n = sum(c.values())
                row.append(" / ".join(f"{100 * c.get(label, 0) / n:.0f}%" for label in XSTEST_LABELS))
            rows.append(row)
        s.blocks.append(Table(["method (compliance / full refusal / partial)"] + self.run.splits, rows))
        return s

    # -- judges
    def _agreement(self) -> Section | None:
        judges = sorted({j for r in self.run.records for j in (r.get("judges") or {})} | {self.judge})
        if len(judges) < 2 or not self.run.records:
            return None
        s = Section("Judge agreement", "judges")
        n = min(AGREEMENT_SAMPLE, len(self.run.records))
        s.blocks.append(
            f"Agreement on the binary refusal view, on a random sample of {n} generations (seed 0); "
            "Cohen's kappa corrects for chance."
        )
        rows = [
            [f"{a} vs {b}", str(g.n), num(g.percent, ".1f") + "%", num(g.kappa, ".3f")]
            for (a, b), g in M.judge_agreement(self.run.records, judges, AGREEMENT_SAMPLE).items()
        ]
        s.blocks.append(Table(["judges", "n", "agreement", "kappa"], rows))
        return s

    # -- examples
    def _examples(self) -> Section:
        s = Section("Examples where methods disagree", "examples")
        found = M.disagreements(self.run.records, self.judge)
        if not found:
            s.blocks.append("No prompt on which the methods disagree (or fewer than two methods ran).")
            return s

        def priority(d: M.Disagreement) -> tuple[int, str, int]:
            # safe prompts the original refused first, then unsafe prompts some method answered
            first = 0 if d.label == "safe" and d.refused.get("original") else 1 if d.label == "unsafe" else 2
            return (first, d.split, d.id)

        chosen = []
        per_split: dict[str, int] = defaultdict(int)
        for d in sorted(found, key=priority):
            if per_split[d.split] < max(2, MAX_EXAMPLES // max(1, len(self.run.splits))):
                chosen.append(d)
                per_split[d.split] += 1
            if len(chosen) >= MAX_EXAMPLES:
                break
        s.blocks.append(
            f"{len(found)} prompts where methods disagree (by the `{self.judge}` judge); {len(chosen)} shown."
        )
        methods = [m for m in self.run.methods if any(m in d.responses for d in chosen)]
        md, parts = [], []
        for d in chosen:
            md.append(f"**{md_cell(d.split)} #{d.id} ({md_cell(d.label)})**: {md_cell(d.prompt)}\n")
            cells = []
            for m in methods:
                if m not in d.responses:
                    cells.append('<td class="na">-</td>')
                    continue
                verdict = "refusal" if d.refused[m] else "compliance"
                text = d.responses[m]
                md.append(f"- `{m}` ({verdict}): {md_cell(text[:400])}{'...' if len(text) > 400 else ''}")
                cells.append(
                    f'<td class="{verdict}"><span class="badge">{verdict}</span><div class="resp">{esc(text)}</div></td>'
                )
            md.append("")
            parts.append(
                f'<tr><td class="prompt"><b>{esc(d.split)} #{d.id}</b> ({esc(d.label)})<br>{esc(d.prompt)}</td>'
                + "".join(cells)
                + "</tr>"
            )
        head = "<th>prompt</th>" + "".join(f"<th>{esc(m)}</th>" for m in methods)
        s.blocks.append(
            (
                "\n".join(md),
                f'<table class="examples"><thead><tr>{head}</tr></thead><tbody>{"".join(parts)}</tbody></table>',
            )
        )
        return s
