"""The report's sections on the fitted profile: the classifier's quality and the layers' evidence."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import metrics as M
from .blocks import ReportBase, Section, Table, num
from .charts import chart_lens, chart_lens_profile, chart_pr, chart_scores


class FitSections(ReportBase):
    """Section builders on the profile (mixed into :class:`scans.bench.report.Report`)."""

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
            f"Scores of method `{source}`; threshold {num(threshold, '.4f')}; positives are unsafe prompts. "
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
            num(cm.precision),
            num(cm.recall),
            num(cm.f1),
            num(cm.accuracy),
            num(cm.auprc),
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
                    num(e.get("lens_score"), ".2f"),
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
