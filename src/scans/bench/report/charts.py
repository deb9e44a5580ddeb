"""The report's charts: PNGs drawn with matplotlib (Agg), one function per chart."""

from __future__ import annotations

import io
from typing import Any

from .. import metrics as M


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
