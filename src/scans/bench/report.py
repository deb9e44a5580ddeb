"""``scans report RUN_DIR``: Markdown and self-contained HTML from a benchmark run directory.

A run directory (written by ``scans bench``) holds ``meta.json``, ``generations.jsonl`` and,
optionally, ``capability.json``, ``humaneval.jsonl`` (+ ``humaneval.json``), ``lens.json``,
``timings.json`` and ``profile/``. Partial runs
are fine: whatever is missing is listed in the report instead of failing. Charts are PNGs drawn
with matplotlib (Agg); the HTML inlines them as base64 (no external assets), the Markdown links
to copies under ``charts/``. Every chart's ``<img>`` has ``id="chart-<name>"`` and
``data-chart="<name>"``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScansError
from . import metrics as M
from .judges import DEFAULT_JUDGE, XSTEST_LABELS

METHOD_ORDER = ("original", "scans", "scans-paper", "always-away", "ablate", "prompt")
SPLIT_ORDER = ("xstest-safe", "xstest-unsafe", "oktest", "harmfulq", "advbench", "truthfulqa", "jailbreak")
JAILBREAK = "jailbreak"  # the packaged split of harmful requests in attack templates
MAX_EXAMPLES = 12
AGREEMENT_SAMPLE = 200


@dataclass
class RunData:
    """Everything read from a run directory; ``notes`` lists what was skipped or missing."""

    path: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    capability: dict[str, Any] | None = None
    lens: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    humaneval: list[dict[str, Any]] = field(default_factory=list)  # humaneval.jsonl records
    humaneval_summary: dict[str, Any] | None = None  # humaneval.json (settings, wall time)

    @property
    def methods(self) -> list[str]:
        return _ordered(self.meta.get("methods") or [], [r["method"] for r in self.records], METHOD_ORDER)

    @property
    def splits(self) -> list[str]:
        return _ordered(list(self.meta.get("splits") or {}), [r["split"] for r in self.records], SPLIT_ORDER)


def _ordered(declared: list[str], seen: list[str], preferred: tuple[str, ...]) -> list[str]:
    out = list(dict.fromkeys(declared))
    extra = [x for x in dict.fromkeys(seen) if x not in out]
    extra.sort(key=lambda x: (preferred.index(x) if x in preferred else len(preferred), x))
    return out + extra


def read_generations(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of ``generations.jsonl`` (last one per (method, split, id)) and notes on skipped lines."""
    notes: list[str] = []
    if not path.is_file():
        return [], notes
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    bad = []
    required = ("method", "split", "id")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(record, dict) or any(k not in record for k in required):
            bad.append(number)
            continue
        records.append(record)
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    if bad == [last]:
        notes.append(f"{path.name}: skipped the truncated last line {last} (a killed run)")
    elif bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        notes.append(f"{path.name}: skipped {len(bad)} unreadable line(s): {shown}")
    return M.dedupe(records), notes


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        notes.append(f"{path.name}: unreadable ({' '.join(str(exc).split())}), ignored")
        return None


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory; ScansError when it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ScansError(
            f"run directory {path} does not exist; fix: pass the directory written by scans bench"
        )
    notes: list[str] = []
    meta = _read_json(path / "meta.json", notes)
    records, gen_notes = read_generations(path / "generations.jsonl")
    notes += gen_notes
    if meta is None and not records:
        raise ScansError(
            f"{path} is not a scans run directory (no meta.json and no generations in generations.jsonl); "
            f"fix: pass the directory written by scans bench"
        )
    if not isinstance(meta, dict):
        notes.append("meta.json missing: model and settings unknown")
        meta = {}
    profile = _read_json(path / "profile" / "profile.json", notes)
    humaneval, he_notes = read_generations(path / "humaneval.jsonl")
    notes += he_notes
    return RunData(
        path=path,
        meta=meta,
        records=records,
        capability=_read_json(path / "capability.json", notes),
        lens=_read_json(path / "lens.json", notes),
        profile=profile if isinstance(profile, dict) else None,
        timings=_read_json(path / "timings.json", notes),
        notes=notes,
        humaneval=humaneval,
        humaneval_summary=_read_json(path / "humaneval.json", notes),
    )


# ----------------------------------------------------------------------------- formatting


_CODE = re.compile(r"`([^`]+)`")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md_cell(text: Any) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, fmt)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(_md_cell(h) for h in self.header) + " |"]
        lines.append("|" + "---|" * len(self.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self, css: str = "") -> str:
        head = "".join(f"<th>{_esc(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@dataclass
class Chart:
    name: str
    title: str
    png: bytes


@dataclass
class Section:
    """A report section: ordered blocks, each a paragraph (str), a Table, a Chart or raw (md, html)."""

    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)


# ----------------------------------------------------------------------------- charts


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def chart_refusal_bars(rates: dict[tuple[str, str], M.Rate], methods: list[str], splits: list[str]) -> bytes:
    """Grouped bars: refusal rate per split (groups) and method (bars), Wilson 95% error bars."""
    import numpy as np

    fig = _figure(max(6.0, 1.4 * len(splits) + 2), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(splits))
    for i, method in enumerate(methods):
        values, lower, upper = [], [], []
        for split in splits:
            r = rates.get((method, split))
            ok = r is not None and r.n > 0
            values.append(100 * r.rate if ok else 0.0)
            lower.append(max(0.0, 100 * (r.rate - r.lo)) if ok else 0.0)
            upper.append(max(0.0, 100 * (r.hi - r.rate)) if ok else 0.0)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            values,
            width,
            yerr=[lower, upper],
            capsize=2,
            label=method,
        )
    ax.set_xticks(x, splits)
    ax.set_ylabel("refusal rate (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(methods), 6), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return _png(fig)


def chart_lens(lens: dict[str, Any]) -> bytes:
    """Heat map of the per-layer vocabulary projection (layers x tokens), the steering band outlined."""
    import numpy as np

    values = np.asarray(lens["values"], dtype=float)
    layers = list(lens.get("layers") or range(values.shape[0]))
    tokens = [str(t) for t in lens.get("tokens") or range(values.shape[1])]
    fig = _figure(max(6.0, 0.35 * len(tokens) + 2.5), max(3.5, 0.22 * len(layers) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, label=str(lens.get("metric", "value")))
    band = lens.get("band")
    if band and len(band) == 2 and band[0] in layers and band[1] in layers:
        top, bottom = layers.index(band[0]) - 0.5, layers.index(band[1]) + 0.5
        from matplotlib.patches import Rectangle

        ax.add_patch(
            Rectangle((-0.5, top), len(tokens), bottom - top, fill=False, edgecolor="red", linewidth=2)
        )
        ax.set_title(f"steering band: layers {band[0]}-{band[1]} (red box)", fontsize=10)
    return _png(fig)


def chart_lens_profile(evidence: list[dict[str, Any]], band: list[int]) -> bytes:
    """Fallback without lens.json: the profile's logit-lens refusal score per layer, band shaded."""
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    layers = [e["layer"] for e in evidence]
    ax.bar(layers, [e.get("lens_score") or 0.0 for e in evidence], color="#4c72b0")
    if band:
        ax.axvspan(min(band) - 0.5, max(band) + 0.5, color="red", alpha=0.15, label="steering band")
        ax.legend()
    ax.set_xlabel("layer")
    ax.set_ylabel("lens refusal score")
    return _png(fig)


def chart_scores(scores: dict[str, list[float]], threshold: float | None, title: str) -> bytes:
    """Histograms of classifier scores of safe vs unsafe prompts, with the threshold line."""
    import numpy as np

    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    everything = [s for values in scores.values() for s in values]
    bins = np.histogram_bin_edges(everything, bins=30) if everything else 10
    colors = {"safe": "#4c9f70", "unsafe": "#c44e52"}
    for label, values in scores.items():
        if values:
            ax.hist(
                values, bins=bins, alpha=0.55, label=f"{label} (n={len(values)})", color=colors.get(label)
            )
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("harmfulness score s(q)")
    ax.set_ylabel("prompts")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def chart_pr(curves: dict[str, tuple[Any, Any, float]]) -> bytes:
    """Precision-recall curves (step) with their AUPRC in the legend."""
    fig = _figure(5.5, 4.0)
    ax = fig.add_subplot()
    for name, (recall, precision, auprc) in curves.items():
        ax.step([0.0, *recall], [precision[0], *precision], where="post", label=f"{name} (AUPRC {auprc:.3f})")
    ax.set_xlabel("recall (unsafe flagged)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


# ----------------------------------------------------------------------------- sections


class Report:
    """Builds the report sections from a :class:`RunData`."""

    def __init__(self, run: RunData, judge: str = DEFAULT_JUDGE) -> None:
        self.run = run
        self.judge = judge
        self.missing: list[str] = list(run.notes)
        self.sections: list[Section] = []
        self.charts: list[Chart] = []
        builders: list[Callable[[], Section | None]] = [
            self._refusals,
            self._unlocked,
            self._jailbreak,
            self._xstest_labels,
            self._classifier,
            self._layers,
            self._capability,
            self._humaneval,
            self._agreement,
            self._settings,
            self._examples,
        ]
        for build in builders:
            try:
                section = build()
            except Exception as exc:  # malformed optional files must not sink the whole report
                name = build.__name__.strip("_")
                detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
                section = Section(f"{name.replace('_', ' ').capitalize()} (failed)", f"failed-{name}")
                section.blocks.append(f"This section could not be built ({detail}).")
                self.missing.append(f"section {name} failed: {detail}")
            if section is not None:
                self.sections.append(section)

    def _chart(self, section: Section, name: str, title: str, draw: Callable[[], bytes]) -> None:
        try:
            png = draw()
        except Exception as exc:  # a chart must never sink the report
            section.blocks.append(f"Chart '{title}' could not be drawn: {' '.join(str(exc).split())}")
            self.missing.append(f"chart {name} failed: {type(exc).__name__}")
            return
        chart = Chart(name, title, png)
        self.charts.append(chart)
        section.blocks.append(chart)

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
        from .judge_eval import agreement_note

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

    # -- jailbreak families
    def _unlocked(self) -> Section | None:
        """Harmful prompts the original model refuses and a steering method answers, per unsafe split."""
        from .judges import refused

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

    def _jailbreak(self) -> Section | None:
        records = [r for r in self.run.records if r["split"] == JAILBREAK]
        if not records:
            return None
        from .data import JAILBREAK_FAMILIES

        by_prompt: dict[str, str] | None = None

        def family(record: dict[str, Any]) -> str:
            nonlocal by_prompt
            meta = record.get("meta")
            if isinstance(meta, dict) and meta.get("family"):
                return str(meta["family"])
            if by_prompt is None:  # records without meta: look the prompt up in the packaged split
                from .data import jailbreak

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

    # -- classifier
    def _threshold(self) -> float | None:
        t = self.run.meta.get("threshold")
        if t is None and self.run.profile:
            t = self.run.profile.get("threshold")
        return float(t) if isinstance(t, (int, float)) else None

    def _classifier(self) -> Section:
        s = Section("Classifier (harmful-prompt detection)", "classifier")
        scored = [
            r for r in self.run.records if r["method"] == "scans" and isinstance(r.get("score"), (int, float))
        ]
        source = "scans"
        if not scored:
            for method in self.run.methods:
                scored = [
                    r
                    for r in self.run.records
                    if r["method"] == method and isinstance(r.get("score"), (int, float))
                ]
                if scored:
                    source = method
                    break
        threshold = self._threshold()
        extra = (self.run.profile or {}).get("extra") or {}
        heldout = extra.get("heldout_scores") or {}
        # cross-fitted profiles record out-of-fold scores of every anchor (each scored by a
        # classifier that never saw it); older ones scores of held-out anchors
        anchors_name = (
            "anchors, out-of-fold" if extra.get("calibration_mode") == "crossfit" else "held-out anchors"
        )
        if not scored and not heldout:
            s.blocks.append("No classifier scores in this run (no method recorded a score).")
            self.missing.append("classifier scores (method scans)")
            return s
        if threshold is None:
            self.missing.append("classifier threshold (meta.json threshold and profile/profile.json)")
        sets: dict[str, list[dict[str, Any]]] = {}
        if scored:
            sets["all splits"] = scored
            families: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in scored:
                families[r["split"].split("-")[0]].append(r)
            for family, rows in families.items():
                splits_in = {r["split"] for r in rows}
                if len(splits_in) > 1 and len({r.get("label") for r in rows}) > 1:
                    sets[f"{family} ({' + '.join(sorted(splits_in))})"] = rows
            for split in self.run.splits:
                rows = [r for r in scored if r["split"] == split]
                if rows:
                    sets[split] = rows
        table = []
        curves = {}
        for name, rows in sets.items():
            scores = [float(r["score"]) for r in rows]
            labels = [r.get("label", "") for r in rows]
            flagged = [r.get("flagged") for r in rows]
            use_flags = all(isinstance(f, bool) for f in flagged)
            if threshold is None and not use_flags:
                continue
            cm = M.classifier_metrics(scores, labels, threshold or 0.0, flagged if use_flags else None)
            table.append(self._cm_row(name, cm))
            if 0 < cm.n_unsafe < cm.n:
                recall, precision, _ = M.pr_curve(scores, labels)
                curves[name] = (recall, precision, cm.auprc)
        if heldout and threshold is not None:
            unsafe = list(heldout.get("harmful") or [])
            safe = list(heldout.get("harmless") or []) + list(heldout.get("borderline") or [])
            if unsafe and safe:
                cm = M.classifier_metrics(
                    unsafe + safe, ["unsafe"] * len(unsafe) + ["safe"] * len(safe), threshold
                )
                table.append(self._cm_row(f"{anchors_name} (profile)", cm))
        s.blocks.append(
            f"Scores of method `{source}`; threshold {_num(threshold, '.4f')}; positives are unsafe prompts. "
            "Flagged = judged harmful (interval: Wilson 95%). Precision/recall/AUPRC need both labels in a set."
        )
        if table:
            s.blocks.append(
                Table(
                    ["set", "n", "unsafe", "flagged", "precision", "recall", "F1", "accuracy", "AUPRC"], table
                )
            )
        if scored:
            by_label: dict[str, list[float]] = defaultdict(list)
            for r in scored:
                by_label[r.get("label", "?")].append(float(r["score"]))
            self._chart(
                s,
                "score-hist",
                "Scores of safe vs unsafe prompts",
                lambda: chart_scores(
                    dict(sorted(by_label.items())), threshold, f"method {source}, all splits"
                ),
            )
        if heldout and heldout.get("harmful"):
            held = {
                "unsafe": list(heldout.get("harmful") or []),
                "safe": list(heldout.get("harmless") or []) + list(heldout.get("borderline") or []),
            }
            self._chart(
                s,
                "score-hist-heldout",
                f"Scores of the {anchors_name}",
                lambda: chart_scores(held, threshold, f"fitting {anchors_name} (profile)"),
            )
        if curves:
            self._chart(s, "pr-curve", "Precision-recall curve", lambda: chart_pr(curves))
        else:
            s.blocks.append("No PR curve: no scored set has both safe and unsafe prompts.")
            self.missing.append("PR curve (needs scored safe and unsafe prompts)")
        return s

    @staticmethod
    def _cm_row(name: str, cm: M.ClassifierMetrics) -> list[str]:
        return [
            name,
            str(cm.n),
            str(cm.n_unsafe),
            M.format_rate(cm.flagged),
            _num(cm.precision),
            _num(cm.recall),
            _num(cm.f1),
            _num(cm.accuracy),
            _num(cm.auprc),
        ]

    # -- layers
    def _layers(self) -> Section:
        s = Section("Layers: vocabulary projection of the refusal vectors", "layers")
        lens = self.run.lens
        profile = self.run.profile or {}
        if isinstance(lens, dict) and lens.get("values"):
            band = lens.get("band")
            s.blocks.append(
                f"Logit lens of each layer's refusal vector ({lens.get('metric', 'value')}) on selected "
                f"tokens; the red box is the steering band (layers {band[0]}-{band[1]})."
                if band
                else "Logit lens of each layer's refusal vector; no steering band recorded."
            )
            self._chart(s, "lens-heatmap", "Per-layer vocabulary projection", lambda: chart_lens(lens))
            return s
        evidence = profile.get("layer_evidence") or []
        if evidence:
            s.blocks.append(
                "lens.json is missing: showing the profile's logit-lens refusal score per layer "
                "(shaded: the steering band)."
            )
            band = list(profile.get("steer_layers") or [])
            self._chart(
                s,
                "lens-heatmap",
                "Logit-lens refusal score per layer",
                lambda: chart_lens_profile(evidence, band),
            )
            rows = [
                [
                    str(e["layer"]),
                    _num(e.get("lens_score"), ".2f"),
                    ", ".join(map(str, (e.get("top_tokens") or [])[:6])),
                ]
                for e in evidence
            ]
            s.blocks.append(Table(["layer", "lens score", "top tokens"], rows))
            self.missing.append("lens.json (per-token heat map)")
            return s
        s.blocks.append("No lens.json and no profile/profile.json in this run: no layer evidence to show.")
        self.missing.append("lens.json and profile/ (layer evidence)")
        return s

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
                cell = _pct(acc) if math.isnan(lo) else f"{100 * acc:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
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
                    [method, _num(value, ".3f"), str(p.get("n_tokens", "")), str(p.get("n_texts", "")), delta]
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
        from .humaneval import summarize

        s = Section("HumanEval", "humaneval")
        summary = self.run.humaneval_summary if isinstance(self.run.humaneval_summary, dict) else {}
        settings = summary.get("settings") or {}
        timeouts: dict[str, int] = defaultdict(int)
        for r in records:
            timeouts[r["method"]] += int(r.get("status") == "timeout")
        per = summarize(records)
        methods = _ordered([m for m in self.run.methods if m in per], list(per), METHOD_ORDER)
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
                    _num(m["seconds"], ".1f"),
                    _num(m["exec_seconds"], ".1f"),
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
            parts.append(f"Last run: {_num(float(summary['wall_seconds']), '.1f')} s (generation and tests).")
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
            [f"{a} vs {b}", str(g.n), _num(g.percent, ".1f") + "%", _num(g.kappa, ".3f")]
            for (a, b), g in M.judge_agreement(self.run.records, judges, AGREEMENT_SAMPLE).items()
        ]
        s.blocks.append(Table(["judges", "n", "agreement", "kappa"], rows))
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
                [method, str(count), _num(float(seconds), ".1f"), _num(per_row, ".2f"), _num(tokens, ".1f")]
            )
        if rows:
            source = "timings.json" if timings else "sum of per-row seconds in generations.jsonl"
            s.blocks.append(f"Generation time per method (from {source}).")
            s.blocks.append(Table(["method", "rows", "seconds", "s/row", "mean new tokens"], rows))
        tp = _read_json(self.run.path / "throughput.json", [])  # written by the vllm backend
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
            md.append(f"**{_md_cell(d.split)} #{d.id} ({_md_cell(d.label)})**: {_md_cell(d.prompt)}\n")
            cells = []
            for m in methods:
                if m not in d.responses:
                    cells.append('<td class="na">-</td>')
                    continue
                verdict = "refusal" if d.refused[m] else "compliance"
                text = d.responses[m]
                md.append(f"- `{m}` ({verdict}): {_md_cell(text[:400])}{'...' if len(text) > 400 else ''}")
                cells.append(
                    f'<td class="{verdict}"><span class="badge">{verdict}</span><div class="resp">{_esc(text)}</div></td>'
                )
            md.append("")
            parts.append(
                f'<tr><td class="prompt"><b>{_esc(d.split)} #{d.id}</b> ({_esc(d.label)})<br>{_esc(d.prompt)}</td>'
                + "".join(cells)
                + "</tr>"
            )
        head = "<th>prompt</th>" + "".join(f"<th>{_esc(m)}</th>" for m in methods)
        s.blocks.append(
            (
                "\n".join(md),
                f'<table class="examples"><thead><tr>{head}</tr></thead><tbody>{"".join(parts)}</tbody></table>',
            )
        )
        return s

    # ------------------------------------------------------------------------- rendering
    def _missing_section(self) -> Section | None:
        if not self.missing:
            return None
        s = Section("Missing or incomplete", "missing")
        s.blocks.append(
            (
                "\n".join(f"- {_md_cell(m)}" for m in dict.fromkeys(self.missing)),
                "<ul>" + "".join(f"<li>{_esc(m)}</li>" for m in dict.fromkeys(self.missing)) + "</ul>",
            )
        )
        return s

    def _all_sections(self) -> list[Section]:
        missing = self._missing_section()
        return self.sections + ([missing] if missing else [])

    def _title(self) -> str:
        return f"SCANS benchmark report: {self.run.meta.get('model', 'unknown model')}"

    def markdown(self, chart_dir: str = "charts") -> str:
        out = [
            f"# {_md_cell(self._title())}",
            "",
            f"Run directory: `{self.run.path}`; judge: `{self.judge}`.",
            "",
        ]
        for section in self._all_sections():
            out += [f"## {section.title}", ""]
            for block in section.blocks:
                if isinstance(block, Table):
                    out.append(block.markdown())
                elif isinstance(block, Chart):
                    out.append(f"![{block.title}]({chart_dir}/{block.name}.png)")
                elif isinstance(block, tuple):
                    out.append(block[0])
                else:
                    out.append(_md_cell(block))
                out.append("")
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = " · ".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in self._all_sections())
        body = []
        for section in self._all_sections():
            body.append(f'<section id="{section.anchor}"><h2>{_esc(section.title)}</h2>')
            for block in section.blocks:
                if isinstance(block, Table):
                    body.append(block.html())
                elif isinstance(block, Chart):
                    data = base64.b64encode(block.png).decode("ascii")
                    body.append(
                        f'<figure><img id="chart-{block.name}" data-chart="{block.name}" alt="{_esc(block.title)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>{_esc(block.title)}</figcaption></figure>'
                    )
                elif isinstance(block, tuple):
                    body.append(block[1])
                else:
                    body.append("<p>" + _CODE.sub(r"<code>\1</code>", _esc(block)) + "</p>")
            body.append("</section>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_esc(self._title())}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_esc(self._title())}</h1>"
            f'<p class="meta">Run directory <code>{_esc(self.run.path)}</code>; judge <code>{_esc(self.judge)}</code>; '
            f"generated {generated}.</p><nav>{nav}</nav>" + "".join(body) + "</body></html>\n"
        )


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:10px 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
figure{margin:12px 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}
nav{font-size:0.9em;margin-bottom:16px}.meta{color:#555;font-size:0.9em}
table.examples td{max-width:320px}.resp{white-space:pre-wrap;font-size:0.85em;max-height:16em;overflow:auto}
td.refusal{background:#fdecea}td.compliance{background:#eaf6ec}
.badge{font-size:0.75em;font-weight:bold;text-transform:uppercase;color:#555}
td.prompt{max-width:260px}
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, judge: str = DEFAULT_JUDGE
) -> tuple[Path, Path]:
    """Write ``report.md`` (+ ``charts/*.png``) and a self-contained ``report.html``; returns their paths."""
    from .judges import get_judge

    get_judge(judge)  # unknown names fail before any work
    run = load_run(run_dir)
    report = Report(run, judge)
    target = Path(out) if out is not None else run.path
    try:
        target.mkdir(parents=True, exist_ok=True)
        charts = target / "charts"
        if report.charts:
            charts.mkdir(exist_ok=True)
        for chart in report.charts:
            (charts / f"{chart.name}.png").write_bytes(chart.png)
        md = target / "report.md"
        md.write_text(report.markdown(), encoding="utf-8")
        page = target / "report.html"
        page.write_text(report.html(), encoding="utf-8")
    except OSError as exc:
        raise ScansError(
            f"cannot write the report to {target}: {exc.strerror or exc}; fix: pass a writable --out DIR"
        ) from None
    return md, page
