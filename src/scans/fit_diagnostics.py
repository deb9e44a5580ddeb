"""``FitDiagnostics``: what a fit measured on the way, beside the profile's working fields.

A profile stores them as its ``extra`` JSON object, under the keys profiles have always had
(``bands``, ``layers_source``, ``heldout_auprc_<classifier>``, ``timings_s`` ...), so profiles
written before still load and ``scans info`` and ``scans report`` read both alike.
:meth:`FitDiagnostics.to_extra` writes that object, :meth:`FitDiagnostics.from_extra` reads it
back (keys it does not know are kept in ``other``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HELDOUT_AUPRC = "heldout_auprc_"  # key prefix of each classifier's calibration AUPRC
SCORE_GROUPS = ("harmful", "harmless", "borderline", "pool-harmful", "pool-severe", "pool-benign")


@dataclass(frozen=True)
class BandRecord:
    """One layer band's measured effect of steering away from refusal (step 2)."""

    start: int
    end: int  # inclusive
    drop: float  # mean drop of log P(refusal opening) on the harmful anchors (nats)
    drift: float  # mean KL of the first-token distribution on the harmless anchors (nats)
    score: float  # drop - drift
    anchors: int = 0  # harmful + harmless anchors it was measured on (0: not recorded)


@dataclass
class FitDiagnostics:
    """Diagnostics of one fit; none of them is read to classify or steer."""

    bands: list[BandRecord] = field(default_factory=list)
    refusal_opening: str | None = None  # the refusal opening the bands were measured on
    anchor_refusal_rate: float | None = None  # share of the band anchors the model refuses unsteered
    layers_source: str | None = None  # "user" or how the band was chosen
    toward_refusal_gain: dict[str, float] | None = None  # {"harmful", "harmless"}: log P gain
    calibration_mode: str | None = None  # "crossfit" or "heldout"
    shrinkage: dict[str, float | None] = field(default_factory=dict)  # per fitted classifier
    cv_auprc: dict[str, dict[str, float]] = field(default_factory=dict)  # classifier -> shrinkage -> AUPRC
    heldout_auprc: dict[str, float] = field(default_factory=dict)  # classifier -> calibration AUPRC
    vector_separation_auprc: float | None = None  # the refusal vector's projection as a classifier
    heldout_scores: dict[str, list[float]] = field(default_factory=dict)  # anchor group -> scores
    timings_s: dict[str, float] = field(default_factory=dict)  # fit stage -> wall-clock seconds
    # fit stage -> token positions its forward passes ran through the decoder blocks (padding
    # included), and 2 x block parameters x those positions: the FLOPs no dense forward avoids
    forward_tokens: dict[str, int] = field(default_factory=dict)
    forward_flops: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None  # the model's parameter dtype during the fit, e.g. "float32"
    device: str | None = None  # where the fit's forward passes ran, e.g. "cpu", "cuda:0"
    other: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as read

    def to_extra(self) -> dict[str, Any]:
        """The profile's ``extra`` object (JSON types; optional entries left out when absent)."""
        extra: dict[str, Any] = {
            "bands": [dataclasses.asdict(b) for b in self.bands],
            "refusal_opening": self.refusal_opening,
            "anchor_refusal_rate": self.anchor_refusal_rate,
            "layers_source": self.layers_source,
        }
        if self.toward_refusal_gain is not None:
            extra["toward_refusal_gain"] = dict(self.toward_refusal_gain)
        extra["calibration_mode"] = self.calibration_mode
        extra["shrinkage"] = dict(self.shrinkage)
        extra["cv_auprc"] = {name: dict(v) for name, v in self.cv_auprc.items()}
        extra.update({HELDOUT_AUPRC + name: v for name, v in self.heldout_auprc.items()})
        if self.vector_separation_auprc is not None:
            extra["vector_separation_auprc"] = self.vector_separation_auprc
        extra["heldout_scores"] = {g: list(v) for g, v in self.heldout_scores.items()}
        extra["timings_s"] = dict(self.timings_s)
        if self.forward_tokens:
            extra["forward_tokens"] = dict(self.forward_tokens)
            extra["forward_flops"] = dict(self.forward_flops)
        if self.dtype is not None:
            extra["dtype"], extra["device"] = self.dtype, self.device
        return {**self.other, **extra}

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> FitDiagnostics:
        """Read a profile's ``extra`` object (any version: missing entries stay empty)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"heldout_auprc", "other", "bands"}
        bands = [
            BandRecord(
                b["start"],
                b["end"],
                b["drop"],
                b["drift"],
                b.get("score", b["drop"] - b["drift"]),
                b.get("anchors", 0),
            )
            for b in extra.get("bands") or []
        ]
        fields = {k: v for k, v in extra.items() if k in known and v is not None}
        auprc = {k[len(HELDOUT_AUPRC) :]: v for k, v in extra.items() if k.startswith(HELDOUT_AUPRC)}
        other = {
            k: v
            for k, v in extra.items()
            if k not in known and k != "bands" and not k.startswith(HELDOUT_AUPRC)
        }
        return cls(bands=bands, heldout_auprc=auprc, other=other, **fields)
