"""Fitting a profile (steps 1-3, docs/method.md) as a pipeline of typed steps.

:func:`fit_profile` runs them in order::

    anchors (AnchorSet) -> collect (FitActivations) -> vectors (RefusalVectors)
      -> layers (LayerFit, step 2) -> classifier (ClassifierResult, step 3)
      -> calibrate (Calibrated: threshold and the v2 rule's safety budget) -> Profile

and records what it measured on the way in a :class:`~scans.fit_diagnostics.FitDiagnostics`
(the profile's ``extra``). The options are a :class:`~scans.fit_config.FitConfig`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .engine import auto_batch_size
from .errors import ScansError
from .fit_classify import calibrate_rule, fit_classifiers
from .fit_config import FitConfig
from .fit_data import (
    FitActivations,
    RefusalVectors,
    build_anchors,
    collect_activations,
    refusal_vectors,
)
from .fit_diagnostics import BandRecord, FitDiagnostics
from .guard import Guard
from .hooks import hooks
from .layers import LayerChoice, choose_band, classification_layers, logit_lens, toward_refusal_gain
from .models import dtype_name, find_layers, model_device
from .packing import packed_linears
from .profile import Profile
from .refusal import first_token_refuses
from .vectors import reference_transition, transitions
from .version import __version__


# ------------------------------------------------------------------ step 2: layers
@dataclass(frozen=True)
class LayerFit:
    """Step 2: the steering layers (the user's or the best measured band) and the evidence."""

    steer_layers: list[int]
    choice: LayerChoice
    source: str
    lens_scores: list[float]
    top_tokens: list[list[str]]
    toward_refusal_gain: dict[str, float] | None

    def evidence(self, norms: torch.Tensor) -> list[dict]:
        """The profile's ``layer_evidence``: one entry per layer."""
        by_start = {e.start: e.score for e in self.choice.effects}
        return [
            {"layer": layer, "lens_score": self.lens_scores[layer], "top_tokens": self.top_tokens[layer],
             "band_effect": by_start.get(layer), "norm": float(norms[layer])}
            for layer in range(len(self.lens_scores))
        ]  # fmt: skip


def check_layers(layers: Sequence[int] | None, n_layers: int) -> None:
    """The user's steering layers exist in this model (one-line error otherwise)."""
    if layers is not None and (not layers or min(layers) < 0 or max(layers) >= n_layers):
        raise ScansError(
            f"steering layers {list(layers)} out of range; fix: choose layers in 0..{n_layers - 1}"
        )


def choose_layers(
    model: nn.Module, tokenizer: object, vec: RefusalVectors, acts: FitActivations, config: FitConfig,
    clock: Clock, progress: bool,
) -> LayerFit:  # fmt: skip
    lens_scores, top_tokens = logit_lens(model, tokenizer, vec.vectors)
    clock.lap("vectors and logit lens")
    layers = config.layers
    choice = choose_band(model, tokenizer, vec.vectors, vec.coefficients, acts.band_harmful, acts.band_harmless,
                         width=len(layers) if layers else None, progress=progress)  # fmt: skip
    clock.lap("layer bands (refusal opening, band effects)")
    if layers:
        steer_layers, source = sorted(int(l) for l in layers), "user"
    else:
        steer_layers, source = (
            list(range(choice.band.start, choice.band.end + 1)),
            "measured effect (drop - drift)",
        )
    gain = None
    # a diagnostic of steering toward refusal: only where every prompt judged harmful is steered so
    if config.harmful_policy == "refuse" or config.compare_classifiers:
        gain_h, gain_b = toward_refusal_gain(model, choice, vec.vectors, vec.coefficients)
        gain = {"harmful": gain_h, "harmless": gain_b}
        clock.lap("toward-refusal gain")
    return LayerFit(steer_layers, choice, source, lens_scores, top_tokens, gain)


# ------------------------------------------------------------------ the pipeline
class TokenMeter:
    """Counts the token positions (padding included) that enter a model's first decoder block
    while :meth:`counting`, and the multiply-adds they cost in the blocks' weights: 2 x (block
    parameters) FLOPs per position, the floor of any dense forward pass (attention scores and the
    unembedding are left out). The fit records both per stage, to set its time against the
    machine's arithmetic."""

    def __init__(self, model: nn.Module, layers_path: str | None = None) -> None:
        layers = find_layers(model, layers_path)
        self.first = layers[0]
        self.parameters = sum(p.numel() for p in layers.parameters())
        self.tokens = 0

    def _count(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:  # a diagnostic never stops a fit
            self.tokens += int(hidden.shape[0]) * int(hidden.shape[1])

    @contextmanager
    def counting(self) -> Iterator[TokenMeter]:
        with hooks(pre=[(self.first, self._count)]):
            yield self

    @property
    def flops(self) -> float:
        return 2.0 * self.parameters * self.tokens


class Clock:
    """Wall-clock laps of the fit stages, and the decoder tokens and FLOPs each ran (the
    ``meters``' growth), recorded in the profile (where the time goes)."""

    def __init__(self, meters: Sequence[TokenMeter] = ()) -> None:
        self.laps: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.flops: dict[str, float] = {}
        self.meters = list(meters)
        self._last = time.perf_counter()
        self._tokens, self._flops = self._read()

    def _read(self) -> tuple[int, float]:
        return sum(m.tokens for m in self.meters), sum(m.flops for m in self.meters)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        tokens, flops = self._read()
        self.laps[name] = round(now - self._last, 2)
        if tokens > self._tokens:
            self.tokens[name] = tokens - self._tokens
            self.flops[name] = flops - self._flops
        self._last, self._tokens, self._flops = now, tokens, flops


def fit_profile(
    model: nn.Module,
    tokenizer: object,
    config: FitConfig,
    *,
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    borderline: Sequence[str] | None = None,
    model_name: str = "model",
    fingerprint: str = "",
    n_layers: int,
    layers_path: str | None = None,
    progress: bool = True,
    guard: Guard | None = None,
) -> Profile:
    """Steps 1-3 on ``model``: the profile (with its diagnostics in ``extra``). With ``guard``,
    the classifiers read the guard model's block outputs instead (:mod:`scans.guard`); the
    vectors, the layers and the refusals the budget counts stay ``model``'s."""
    config.require_guard_options(guard)
    anchors = build_anchors(harmful, harmless, borderline, config)
    check_layers(config.layers, n_layers)
    batch_size = config.batch_size if config.batch_size is not None else auto_batch_size(model)
    meters = [TokenMeter(model, layers_path)]
    if guard is not None:
        meters.append(TokenMeter(guard.model, guard.layers_path))
    clock = Clock(meters)
    with ExitStack() as counting:
        for meter in meters:
            counting.enter_context(meter.counting())
        with packed_linears(model, enabled=config.pack_linears):  # CPU float32: see scans.packing
            acts = collect_activations(model, tokenizer, anchors, config, batch_size=batch_size,
                                       layers_path=layers_path, progress=progress)  # fmt: skip
            vec = refusal_vectors(acts, config)
            clock.lap("anchors forward")
            layers = choose_layers(model, tokenizer, vec, acts, config, clock, progress)
        assert acts.harmful.inst is not None and acts.harmful.probe is not None
        reference = reference_transition(transitions(acts.harmful.inst, acts.harmful.probe))
        # the classifiers read the upper half of the layers of the model they read (a guard, if any)
        cls_acts, cls_layers = acts, classification_layers(n_layers)
        if guard is not None:  # the same anchors and pool through the guard
            guard_batch = config.batch_size if config.batch_size is not None else auto_batch_size(guard.model)
            with packed_linears(guard.model, enabled=config.pack_linears):
                cls_acts = collect_activations(guard.model, guard.tokenizer, anchors, config, batch_size=guard_batch,
                                               layers_path=guard.layers_path, progress=progress)  # fmt: skip
            cls_layers = classification_layers(guard.n_layers)
            clock.lap("guard forward")
        classifier = fit_classifiers(cls_acts, anchors, config, cls_layers, reference)
        refused = None
        by_refusal = config.max_harmful_loss is not None and config.budget_counts == "refused"
        if by_refusal or config.toward_refusal_budget:
            # the calibration rows, in the classifier's order; only the last layer is read
            groups = (
                [acts.held]
                if config.calibration == "heldout"
                else [acts.harmful, acts.harmless, acts.borderline, acts.held]
            )
            assert all(g.inst is not None for g in groups)
            last = torch.cat([g.inst[:, -1] for g in groups])  # type: ignore[index]
            refused = first_token_refuses(model, tokenizer, last).numpy()
        calibrated = calibrate_rule(
            cls_acts, anchors, config, classifier, vec, layers.steer_layers, refused, acts
        )
        clock.lap("classifiers and calibration")
    diagnostics = FitDiagnostics(
        bands=[
            BandRecord(e.start, e.end, e.drop, e.drift, e.score, e.anchors) for e in layers.choice.effects
        ],
        refusal_opening=layers.choice.opening,
        anchor_refusal_rate=layers.choice.refusal_rate,
        layers_source=layers.source,
        toward_refusal_gain=layers.toward_refusal_gain,
        calibration_mode=config.calibration,
        shrinkage=classifier.shrinkage,
        cv_auprc=classifier.cv_auprc,
        heldout_auprc=classifier.heldout_auprc,
        vector_separation_auprc=calibrated.vector_separation_auprc,
        heldout_scores=calibrated.heldout_scores,
        timings_s=clock.laps,
        forward_tokens=clock.tokens,
        forward_flops=clock.flops,
        dtype=dtype_name(next(model.parameters()).dtype),
        device=str(model_device(model)),
    )
    threshold = config.threshold if config.threshold is not None else calibrated.stats["threshold"]
    return Profile(
        model_name=model_name,
        fingerprint=fingerprint,
        vectors=vec.vectors,
        norms=vec.norms,
        classifier=config.classifier,
        **classifier.tensors,
        steer_layers=layers.steer_layers,
        cls_layers=cls_layers,
        alpha=config.alpha,
        alpha_mode=config.alpha_mode,
        threshold=float(threshold),
        harmful_sign=1 if config.harmful_policy == "refuse" else 0,
        steer_window=config.steer_window,
        probe=config.probe,
        system=config.system,
        calibration=calibrated.stats,
        layer_evidence=layers.evidence(vec.norms),
        anchors=anchors.record(acts.n_band),
        seed=config.seed,
        version=__version__,
        extra=diagnostics.to_extra(),
        guard=guard.record() if guard is not None else None,
        refusal_gate=config.gates(guard),
        **calibrated.rule_fields(),
    )
