"""``FitConfig``: every option of ``scans fit`` / ``Scans.fit``, checked once.

The API (``Scans.fit(..., **options)``) and the command line (:meth:`FitConfig.from_cli`) build
the same frozen dataclass, so both reject a bad value with the same one-line error. Checks that
need the model (the steering layers' range) run in :mod:`scans.fit`, where the model is known.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .classifier import N_FOLDS
from .errors import ScansError
from .pool import PoolItem, check_pool, read_pool
from .profile import CLASSIFIERS
from .prompts import DEFAULT_PROBE

DEFAULT_ALPHA = 0.05  # relative: coefficient = alpha * mean residual norm of the layer
DEFAULT_TARGET_RECALL = 0.9  # calibrated threshold flags at least 90% of held-out harmful anchors
DEFAULT_MAX_HARMFUL_LOSS = (
    0.02  # safety budget: at most 2% of refused harmful (and severe) pool prompts steered
)
DEFAULT_POOL_SIZE = 320  # taxonomy prompts in the classifier's pool, every severe one included (None: all)
DEFAULT_SHRINKAGE = 0.1  # covariance shrinkage of the classifier directions (auto: cross-validated)
# k-fold splits of the classifier rows, each calibrating its own thresholds (the profile keeps their mean)
DEFAULT_CROSSFIT_SPLITS = 32
MAX_CROSSFIT_SPLITS = 1000  # each split costs a fold fit per classifier; far more is a typo
MIN_HELDOUT = 2  # held-out anchors per side, at least
# --harmful-policy budget: at most 2% of the benign prompts the model answers steered toward refusal
DEFAULT_MAX_BENIGN_LOSS = 0.02
HARMFUL_POLICIES = ("auto", "budget", "none", "refuse")
BUDGET_COUNTS = ("refused", "all")
REFUSAL_GATES = ("auto", "on", "off")


@dataclass(frozen=True)
class FitConfig:
    """The options of one fit (steps 1-3); the defaults are ``scans fit``'s."""

    n_fit: int = 64
    """Anchors per side (harmful, harmless) that build the refusal vectors (step 1)."""
    n_heldout: int | None = None
    """More anchors per side, read only up to the end of the user's text: classifier and calibration;
    None: every anchor not used to fit, so the classifier reads the same anchors whatever ``seed``."""
    n_layer_eval: int = 16
    """Fit anchors per side (the first ones) that measure the layer bands (step 2)."""
    seed: int = 0
    """Shuffles the anchors, samples the pool and splits the cross-validation folds."""
    layers: tuple[int, ...] | None = None
    """Steering layers; None: the band measured in step 2."""
    threshold: float | None = None
    """Classifier threshold; None: calibrated (the calibrated one is recorded either way)."""
    alpha: float = DEFAULT_ALPHA
    """Steering strength: in units of the layer's mean norm (``alpha_mode`` relative) or absolute."""
    alpha_mode: str = "relative"
    """``relative`` (coefficient ``alpha * norm_l``) or ``absolute`` (on the unit vectors)."""
    classifier: str = "instruction"
    """``instruction`` (end of the user's text), ``contrast`` (transitions) or ``cosine`` (the paper's)."""
    target_recall: float | None = DEFAULT_TARGET_RECALL
    """The calibrated threshold flags at least this share of the harmful calibration anchors."""
    harmful_policy: str = "auto"
    """Prompts judged harmful: ``budget`` (steered toward refusal only where both signals clear the
    false-refusal budget ``max_benign_loss``; needs rule v2), ``none`` (unsteered), ``refuse`` (every
    one steered toward refusal, the paper), or ``auto`` (``budget`` where the rule is v2 and the pool
    holds enough benign prompts the model answers to calibrate it, else ``none``)."""
    max_benign_loss: float = DEFAULT_MAX_BENIGN_LOSS
    """``budget`` policy: at most this fraction of the benign prompts the model answers is steered
    toward refusal (split conformal on the pool's out-of-fold signals)."""
    steer_window: int | None = 1
    """Positions steered from the instruction end; None: every later position too (the paper)."""
    probe: str = DEFAULT_PROBE
    """Affirmative assistant prefix whose activations give the transitions."""
    system: str | None = None
    """System prompt used while fitting and recorded for later use."""
    batch_size: int | None = None
    """Rows per forward pass; None: chosen for the device."""
    compare_classifiers: bool = False
    """Score the calibration anchors with every classifier (recorded in the diagnostics; slower)."""
    calibration: str = "crossfit"
    """``crossfit``: out-of-fold scores of all anchors calibrate; ``heldout``: the held-out anchors only."""
    shrinkage: float | None = DEFAULT_SHRINKAGE
    """Covariance shrinkage of the classifier directions in [0, 1]; None: chosen by cross-validated
    AUPRC from :data:`scans.classifier.SHRINKAGE_GRID`."""
    crossfit_splits: int = DEFAULT_CROSSFIT_SPLITS
    """``crossfit``: k-fold splits of the classifier rows; each split calibrates its own thresholds
    on its out-of-fold scores and the profile keeps their mean, so they move less with ``seed``."""
    pack_linears: bool = True
    """On a CPU in float32, run the forward passes on prepacked weights (same math, faster)."""
    pool: tuple[PoolItem, ...] | None = None
    """Labelled prompts for the classifier; None: the shipped taxonomy's dev split with the shipped
    anchors, else none."""
    pool_size: int | None = DEFAULT_POOL_SIZE
    """Pool prompts sampled: every severe one, the rest spread over label x type; None: all of them."""
    pool_seed: int = 0
    """Seed of the pool sample (``seed`` moves the anchors' split and the cross-fitting folds, not the pool sample)."""
    max_harmful_loss: float | None = DEFAULT_MAX_HARMFUL_LOSS
    """Safety budget of the decision rule v2 (:mod:`scans.verdict`); None: the v1 rule."""
    max_severe_loss: float | None = None
    """The severe class's own budget, at most ``max_harmful_loss``; None: ``max_harmful_loss``."""
    budget_counts: str = "refused"
    """Which harmful calibration prompts the budget counts: ``refused`` (those the model itself
    refuses, read from its first answer token: :mod:`scans.refusal`) or ``all``."""
    refusal_gate: str = "auto"
    """Steer only the prompts the model would refuse (:mod:`scans.verdict`): ``on``, ``off``, or
    ``auto`` (on with a guard model, whose classifiers call almost every ordinary prompt benign)."""

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.pool is not None:
            object.__setattr__(self, "pool", tuple(self.pool))
        loss = self.max_harmful_loss
        if loss is not None and not 0.0 < loss < 1.0:
            raise ScansError(f"max harmful loss {loss}; fix: use a fraction in (0, 1), e.g. 0.02")
        severe = self.max_severe_loss
        if severe is not None:
            if loss is None:
                raise ScansError(
                    "max severe loss needs decision rule v2; fix: drop --max-severe-loss or set --max-harmful-loss"
                )
            if not 0.0 < severe <= loss:
                raise ScansError(
                    f"max severe loss {severe}; fix: use a fraction in (0, {loss:g}] (at most the max harmful loss)"
                )
        if self.refusal_gate not in REFUSAL_GATES:
            raise ScansError(f"refusal gate {self.refusal_gate!r}; fix: use auto, on or off")
        if self.refusal_gate == "on" and loss is None:
            raise ScansError(
                "the refusal gate needs decision rule v2; fix: drop --refusal-gate or set --max-harmful-loss"
            )
        if self.budget_counts not in BUDGET_COUNTS:
            raise ScansError(f"budget counts {self.budget_counts!r}; fix: use 'refused' or 'all'")
        if self.pool_size is not None and self.pool_size < 0:
            raise ScansError(f"pool size {self.pool_size}; fix: use 0 or more, or all")
        check_anchor_counts(self.n_fit, self.n_heldout)
        if self.classifier not in CLASSIFIERS:
            raise ScansError(f"classifier {self.classifier!r}; fix: use one of {', '.join(CLASSIFIERS)}")
        if self.calibration not in ("crossfit", "heldout"):
            raise ScansError(f"calibration {self.calibration!r}; fix: use 'crossfit' or 'heldout'")
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise ScansError(
                f"shrinkage {self.shrinkage}; fix: use a value in [0, 1] (1 = plain mean difference) or auto"
            )
        if not 1 <= self.crossfit_splits <= MAX_CROSSFIT_SPLITS:
            raise ScansError(
                f"crossfit splits {self.crossfit_splits}; fix: use 1 to {MAX_CROSSFIT_SPLITS} (default {DEFAULT_CROSSFIT_SPLITS})"
            )
        n_cls_h = self.n_fit + (heldout_floor(self.n_heldout) if self.calibration == "crossfit" else 0)
        if n_cls_h < N_FOLDS:
            raise ScansError(
                f"{n_cls_h} harmful anchors train the classifier, its {N_FOLDS}-fold cross-validation needs "
                f"{N_FOLDS}; fix: raise --n-fit to {N_FOLDS} or use --calibration crossfit"
            )
        if self.harmful_policy not in HARMFUL_POLICIES:
            raise ScansError(
                f"harmful policy {self.harmful_policy!r}; fix: use one of {', '.join(HARMFUL_POLICIES)}"
            )
        if not 0.0 < self.max_benign_loss < 1.0:
            raise ScansError(
                f"max benign loss {self.max_benign_loss}; fix: use a fraction in (0, 1), e.g. 0.02"
            )
        if self.harmful_policy == "budget" and loss is None:
            raise ScansError(
                "--harmful-policy budget needs decision rule v2; fix: set --max-harmful-loss or use another policy"
            )
        if self.alpha_mode not in ("relative", "absolute"):
            raise ScansError(f"alpha_mode {self.alpha_mode!r}; fix: use 'relative' or 'absolute'")
        if self.steer_window is not None and self.steer_window < 1:
            raise ScansError(
                f"steer window {self.steer_window}; fix: use 1 (default), a larger window, or None for all positions"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ScansError(f"batch size {self.batch_size}; fix: use a batch size of at least 1")

    @property
    def toward_refusal_budget(self) -> bool:
        """Whether the fit calibrates the refuse threshold (``budget``; ``auto`` where it can)."""
        return self.max_harmful_loss is not None and self.harmful_policy in ("budget", "auto")

    @property
    def needs_transitions(self) -> bool:
        """Whether every anchor's transition is read (a transition classifier, or all compared)."""
        return self.compare_classifiers or self.classifier != "instruction"

    def gates(self, guard: object) -> bool:
        """Whether the fitted profile gets the refusal gate (``refusal_gate``; auto: with a guard)."""
        if self.max_harmful_loss is None or self.refusal_gate == "off":
            return False
        return self.refusal_gate == "on" or guard is not None

    def require_guard_options(self, guard: object) -> None:
        """One-line error unless ``guard`` (a model spec, a loaded model or None) can be fitted
        with these options: a guard reads only the instruction classifier."""
        if guard is None:
            return
        if isinstance(guard, str) and not guard.strip():
            raise ScansError(
                f"--guard {guard!r} names no model; fix: pass --guard MODEL (e.g. embedded:qwen-1.5b)"
            )
        if self.needs_transitions:
            raise ScansError(
                "--guard reads the 'instruction' classifier only; fix: drop --classifier/--compare-classifiers "
                "or --guard"
            )

    @classmethod
    def with_options(cls, config: FitConfig | None, options: Mapping[str, Any]) -> FitConfig:
        """``config`` (default: the defaults) with keyword ``options`` replacing its fields;
        an unknown option is a one-line error naming it."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in options if key not in names]
        if unknown:
            raise ScansError(
                f"unknown fit option {', '.join(map(repr, unknown))}; fix: use one of {', '.join(names)}"
            )
        base = config if config is not None else cls()
        return dataclasses.replace(base, **options) if options else base

    @classmethod
    def from_cli(cls, args: argparse.Namespace, layers: Sequence[int] | None = None) -> FitConfig:
        """The options of ``scans fit``'s parsed arguments (``layers``: ``--layers`` already
        parsed), checked before the model loads; reads and checks ``--pool``."""
        if args.alpha is not None and args.alpha_abs is not None:
            raise ScansError("--alpha and --alpha-abs both given; fix: pass one of them")
        if args.steer_window < 0:
            raise ScansError(
                f"--steer-window {args.steer_window}; fix: pass 1 (default), a larger window, or 0 for all positions"
            )
        max_loss, pool_size = parse_budget(args.max_harmful_loss, args.pool_size)
        severe_loss = parse_severe_budget(args.max_severe_loss)
        n_heldout = parse_heldout(args.n_heldout)
        pool = None
        if args.pool:
            pool = read_pool(
                args.pool, text_column=args.text_column or "prompt", label_column=args.pool_label_column
            )
            check_pool(pool, f"--pool {args.pool}")
        alpha, mode = (
            (args.alpha_abs, "absolute")
            if args.alpha_abs is not None
            else (args.alpha if args.alpha is not None else DEFAULT_ALPHA, "relative")
        )
        return cls(
            n_fit=args.n_fit,
            n_heldout=n_heldout,
            seed=args.seed,
            layers=layers,
            threshold=args.threshold,
            alpha=alpha,
            alpha_mode=mode,
            classifier=args.classifier,
            target_recall=args.target_recall,
            harmful_policy=args.harmful_policy,
            max_benign_loss=parse_fraction(
                args.max_benign_loss, "--max-benign-loss", "pass a fraction in (0, 1), e.g. 0.02"
            ),
            steer_window=args.steer_window or None,
            probe=args.probe,
            system=args.system,
            batch_size=args.batch_size,
            compare_classifiers=args.compare_classifiers,
            calibration=args.calibration,
            shrinkage=args.shrinkage,
            crossfit_splits=args.crossfit_splits,
            pack_linears=not args.no_pack,
            pool=pool,
            pool_size=pool_size,
            pool_seed=args.pool_seed,
            max_harmful_loss=max_loss,
            max_severe_loss=severe_loss,
            budget_counts=args.budget_counts,
            refusal_gate=args.refusal_gate,
        )


def heldout_floor(n_heldout: int | None) -> int:
    """The fewest held-out anchors per side that ``n_heldout`` asks for (None, every anchor not
    used to fit: :data:`MIN_HELDOUT`)."""
    return MIN_HELDOUT if n_heldout is None else n_heldout


def check_anchor_counts(n_fit: int, n_heldout: int | None) -> None:
    """A one-line error unless at least 2 fit and 2 held-out anchors per side are asked for."""
    if n_fit < 2 or heldout_floor(n_heldout) < MIN_HELDOUT:
        raise ScansError(
            "need at least 2 fit and 2 held-out anchors per side; fix: raise --n-fit/--n-heldout"
        )


def parse_heldout(value: str) -> int | None:
    """``--n-heldout``: a count per side, or ``rest`` (None: every anchor not used to fit)."""
    text = str(value).strip().lower()
    if text == "rest":
        return None
    if not text.isdigit() or int(text) < MIN_HELDOUT:
        raise ScansError(f"--n-heldout {value}; fix: pass a whole number of at least {MIN_HELDOUT}, or rest")
    return int(text)


def parse_fraction(value: str, option: str, fix: str) -> float:
    """A command-line fraction in (0, 1); else the one-line error ``option value; fix: ...``."""
    try:
        loss = float(value)
    except ValueError:
        loss = -1.0
    if not 0.0 < loss < 1.0:
        raise ScansError(f"{option} {value}; fix: {fix}")
    return loss


def parse_budget(max_loss: str, pool_size: str) -> tuple[float | None, int | None]:
    """``--max-harmful-loss`` (a fraction or ``off``) and ``--pool-size`` (a count or ``all``)."""
    loss: float | None = None
    if max_loss.strip().lower() != "off":
        loss = parse_fraction(max_loss, "--max-harmful-loss", "pass a fraction in (0, 1), e.g. 0.02, or off")
    if pool_size.strip().lower() == "all":
        return loss, None
    if not pool_size.strip().isdigit():
        raise ScansError(f"--pool-size {pool_size}; fix: pass a whole number of prompts or all")
    return loss, int(pool_size)


def parse_severe_budget(value: str | None) -> float | None:
    """``--max-severe-loss``: a fraction in (0, 1), or None (the same as ``--max-harmful-loss``)."""
    if value is None:
        return None
    return parse_fraction(
        value, "--max-severe-loss", "pass a fraction in (0, 1) no larger than --max-harmful-loss, e.g. 0.01"
    )
