"""Steering profiles: tensors in safetensors, metadata in JSON, never pickle."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ScansError
from .fit_diagnostics import FitDiagnostics
from .steering import SteeringPlan, SteeringVector

FORMAT_VERSION = 2
GUARD_FORMAT = 3  # a profile whose classifiers read a guard model (``guard``); older scans refuse it
GATE_FORMAT = 4  # a profile with the refusal gate (``refusal_gate``); older scans refuse it
REFUSE_FORMAT = 5  # a profile with a refuse threshold (``--harmful-policy budget``); older scans refuse it
READABLE_FORMATS = (1, 2, 3, 4, 5)  # format 1 (no second signal, no steer threshold) reads as rule v1
TENSORS = "vectors.safetensors"
METADATA = "profile.json"
CLASSIFIERS = ("instruction", "contrast", "cosine")
TENSOR_FIELDS = (
    "vectors", "reference", "norms", "contrast", "contrast_mean", "contrast_std",
    "inst_contrast", "inst_contrast_mean", "inst_contrast_std", "v1_contrast", "v1_contrast_mean", "v1_contrast_std",
)  # fmt: skip


@dataclass
class Profile:
    """Everything needed to classify and steer one model.

    ``vectors`` (L, D) unit refusal vectors, ``reference`` (L, D) reference transitions,
    ``norms`` (L,) mean residual norm at the instruction end. ``classifier`` is
    ``"cosine"`` (the paper's mean cosine of the transition to ``reference``),
    ``"contrast"`` (standardised projection of the transition on ``contrast``, harmful
    minus benign transitions) or ``"instruction"`` (standardised projection of the block
    outputs at the end of the user's own text on ``contrast``, harmful minus benign). ``alpha`` is in units of
    ``norms[l]`` when ``alpha_mode == "relative"`` (coefficient ``alpha * norms[l]``),
    else the absolute coefficient on the unit vector.
    """

    model_name: str
    fingerprint: str
    vectors: torch.Tensor
    reference: torch.Tensor
    norms: torch.Tensor
    steer_layers: list[int]
    cls_layers: list[int]
    alpha: float
    threshold: float
    alpha_mode: str = "relative"
    classifier: str = "instruction"
    contrast: torch.Tensor | None = None
    contrast_mean: torch.Tensor | None = None
    contrast_std: torch.Tensor | None = None
    harmful_sign: int = 1
    steer_window: int | None = 1  # positions steered from the instruction end (None: all later ones too)
    probe: str = "Sure"
    system: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    layer_evidence: list[dict[str, Any]] = field(default_factory=list)
    anchors: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the fit's diagnostics (FitDiagnostics.to_extra)
    # The decision rule of format 2 (see scans.verdict); None everywhere = the v1 rule.
    steer_threshold: float | None = (
        None  # s(q) below it (and the second signal under inst_threshold): steered away
    )
    max_harmful_loss: float | None = None  # the safety budget the steer threshold was calibrated for
    inst_contrast: torch.Tensor | None = None  # (L, D) the same classifier read at the instruction end
    inst_contrast_mean: torch.Tensor | None = None
    inst_contrast_std: torch.Tensor | None = None
    inst_threshold: float | None = None
    # The previous rule's classifier (the anchors without the taxonomy pool), for `scans bench`'s scans-v1.
    v1_contrast: torch.Tensor | None = None
    v1_contrast_mean: torch.Tensor | None = None
    v1_contrast_std: torch.Tensor | None = None
    v1_threshold: float | None = None
    decision: dict[str, Any] = field(default_factory=dict)  # how the rule's thresholds were calibrated
    # The guard model the classifiers read (scans.guard.Guard.record); None: the model itself.
    guard: dict[str, Any] | None = None
    # Steer a prompt judged benign only where the answering model would refuse it (its greedy
    # first answer token opens a refusal: scans.refusal); the others are left as they are.
    refusal_gate: bool = False
    # --harmful-policy budget: a prompt judged harmful is steered toward refusal only where both
    # signals exceed it (calibrated for the false-refusal budget); None: ``harmful_sign`` for all.
    refuse_threshold: float | None = None

    def __post_init__(self) -> None:
        layers, _ = self.vectors.shape
        assert self.reference.shape == self.vectors.shape, "reference and vectors differ in shape"
        assert self.norms.shape == (layers,), "norms need one entry per layer"
        cls_bound = int(self.guard["n_layers"]) if self.guard else layers
        for name, ids, bound in (
            ("steer_layers", self.steer_layers, layers),
            ("cls_layers", self.cls_layers, cls_bound),
        ):
            if not ids or min(ids) < 0 or max(ids) >= bound:
                raise ScansError(
                    f"{name} {ids} out of range for a model with {bound} layers; "
                    f"fix: choose layers in 0..{bound - 1}"
                )
        if not isinstance(self.refusal_gate, bool):
            raise ScansError(
                f"refusal_gate {self.refusal_gate!r} is not true or false; fix: rerun `scans fit`"
            )
        if self.guard is not None and self.classifier != "instruction":
            raise ScansError(
                f"a guard profile with the {self.classifier!r} classifier; fix: guards read the "
                "'instruction' classifier only"
            )
        if self.classifier not in CLASSIFIERS:
            raise ScansError(f"classifier {self.classifier!r}; fix: use one of {', '.join(CLASSIFIERS)}")
        if self.classifier != "cosine" and self.contrast is None:
            raise ScansError("contrast classifier without a contrast direction; fix: rerun `scans fit`")
        if self.alpha_mode not in ("relative", "absolute"):
            raise ScansError(f"alpha_mode {self.alpha_mode!r}; fix: use 'relative' or 'absolute'")

    @property
    def diagnostics(self) -> FitDiagnostics:
        """The fit's diagnostics, read from ``extra`` (their JSON form)."""
        return FitDiagnostics.from_extra(self.extra)

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    def coefficient(self, layer: int) -> float:
        """The absolute steering coefficient alpha_l of one layer."""
        if self.alpha_mode == "relative":
            return float(self.alpha * self.norms[layer])
        return float(self.alpha)

    def steering_vector(self) -> SteeringVector:
        """``alpha_l * v_l`` at each steering layer."""
        return SteeringVector.scaled(
            self.vectors, {l: self.coefficient(l) for l in self.steer_layers}, self.steer_layers
        )

    def steering_plan(self, signs: Any, start: torch.Tensor, layers_path: str | None = None) -> SteeringPlan:
        """The ``SteeringPlan`` of this profile (layers, vectors, coefficients, window) for
        rows with the given signs, steered from ``start`` (each row's instruction end)."""
        return SteeringPlan(
            self.steering_vector(),
            sign=torch.as_tensor(signs, dtype=torch.float32),
            start=start,
            window=self.steer_window,
            layers_path=layers_path,
        )

    def scores(self, tau: torch.Tensor, uend: torch.Tensor | None = None) -> torch.Tensor:
        """Harmfulness scores s(q), (N,), from transitions tau (N, L, D) and, for the
        ``instruction`` classifier, the block outputs at the end of the user's text."""
        from .vectors import classifier_scores

        if self.classifier == "cosine":
            return classifier_scores("cosine", {"reference": self.reference}, tau, self.cls_layers)
        assert self.contrast is not None and self.contrast_mean is not None and self.contrast_std is not None
        features = tau
        if self.classifier == "instruction":
            assert uend is not None, "the instruction classifier needs the uend activations"
            features = uend
        tensors = {
            "contrast": self.contrast,
            "contrast_mean": self.contrast_mean,
            "contrast_std": self.contrast_std,
        }
        return classifier_scores(self.classifier, tensors, features, self.cls_layers)

    def v1(self) -> Profile:
        """This profile with the previous rule's classifier and threshold, and without the v2 rule
        (itself where it holds no separate v1 classifier)."""
        import dataclasses

        if self.v1_contrast is None or self.v1_threshold is None:
            return dataclasses.replace(self, steer_threshold=None, inst_threshold=None, refuse_threshold=None)
        return dataclasses.replace(
            self, contrast=self.v1_contrast, contrast_mean=self.v1_contrast_mean,
            contrast_std=self.v1_contrast_std, threshold=self.v1_threshold, steer_threshold=None,
            inst_threshold=None, refuse_threshold=None,
        )  # fmt: skip

    def inst_scores(self, inst: torch.Tensor) -> torch.Tensor | None:
        """The second signal (N,): the harmfulness classifier fitted on the block outputs at the
        instruction end (the template's last token), standardised like :meth:`scores`."""
        from .vectors import contrast_scores

        if self.inst_contrast is None or self.inst_contrast_mean is None or self.inst_contrast_std is None:
            return None
        return contrast_scores(
            inst, self.inst_contrast, self.inst_contrast_mean, self.inst_contrast_std, self.cls_layers
        )

    def metadata(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in TENSOR_FIELDS}
        data["format_version"] = (
            REFUSE_FORMAT
            if self.refuse_threshold is not None
            else GATE_FORMAT
            if self.refusal_gate
            else GUARD_FORMAT
            if self.guard
            else FORMAT_VERSION
        )
        data["n_layers"] = self.n_layers
        data["hidden_size"] = int(self.vectors.shape[1])
        return data

    def save(self, path: str | Path) -> Path:
        """Write ``path/vectors.safetensors`` and ``path/profile.json`` atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: getattr(self, name).float().contiguous().cpu()
            for name in TENSOR_FIELDS
            if getattr(self, name) is not None
        }
        _atomic(path / TENSORS, lambda tmp: save_file(tensors, tmp, metadata={"format": "scans"}))
        text = json.dumps(self.metadata(), indent=2, sort_keys=True)
        _atomic(path / METADATA, lambda tmp: Path(tmp).write_text(text + "\n"))
        return path

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> Profile:
        """Load a profile; with ``fingerprint``, refuse one made for another model."""
        path = require_profile_dir(path)
        fix = "fix: rerun `scans fit`"
        try:
            meta = json.loads((path / METADATA).read_text())
            tensors = load_file(str(path / TENSORS))
        except (ValueError, OSError, SafetensorError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScansError(f"corrupt profile at {path}: {first}; {fix}") from None
        required = ("model_name", "fingerprint", "steer_layers", "cls_layers", "alpha", "threshold")
        if not isinstance(meta, dict) or any(key not in meta for key in required):
            raise ScansError(f"corrupt profile at {path}: {METADATA} lacks the profile fields; {fix}")
        if meta.get("format_version") not in READABLE_FORMATS:
            raise ScansError(
                f"profile at {path} has format {meta.get('format_version')}, this scans reads "
                f"{', '.join(map(str, READABLE_FORMATS))}; fix: rerun `scans fit`"
            )
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            raise ScansError(
                f"profile at {path} was fitted on {meta['model_name']} (fingerprint "
                f"{meta['fingerprint']}), not on this model (fingerprint {fingerprint}); "
                "fix: fit a profile for this model with `scans fit --model ...`"
            )
        for key in ("format_version", "n_layers", "hidden_size"):
            meta.pop(key, None)
        missing = [name for name in ("vectors", "reference", "norms") if name not in tensors]
        if missing:
            raise ScansError(f"profile at {path} lacks tensors {missing}; {fix}")
        try:
            return cls(**{k: v for k, v in tensors.items() if k in TENSOR_FIELDS}, **meta)
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            raise ScansError(f"corrupt profile at {path}: {exc}; {fix}") from None


def _atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def require_profile_dir(path: str | Path) -> Path:
    """``path`` if it holds a profile's two files, else a one-line ScansError (cheap: the
    CLI checks a given --profile before it loads the model)."""
    path = Path(path)
    if not (path / METADATA).is_file() or not (path / TENSORS).is_file():
        raise ScansError(
            f"no steering profile at {path} (need {METADATA} and {TENSORS}); "
            "fix: run `scans fit` or pass --profile DIR"
        )
    return path
