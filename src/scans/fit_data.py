"""The fit's data (:mod:`scans.fit`): the anchors split by side and use (``AnchorSet``), their
activations by group and position (``FitActivations``), and step 1's refusal vectors."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .activations import collect
from .calibration import prompts_needed, severe_budget
from .datafiles import shipped_anchors, shipped_borderline
from .engine import Prefill, prefill_probed
from .errors import ScansError
from .fit_config import MIN_HELDOUT, FitConfig, check_anchor_counts, heldout_floor
from .pool import PoolItem, check_pool, sample_pool, shipped_taxonomy
from .prompts import build_batch, context_length
from .vectors import mean_difference, mean_norms

POSITIONS = ("inst", "probe", "uend")


def prompt_key(prompt: str) -> str:
    """A short hash of one prompt (whitespace- and case-insensitive): profiles record the
    anchors they used this way, so benchmarks can leave them out without storing them."""
    return hashlib.sha256(" ".join(prompt.lower().split()).encode()).hexdigest()[:16]


def _hash_prompts(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ anchors
@dataclass(frozen=True)
class AnchorSet:
    """The anchors of one fit, split by side and use, and the classifier's pool.

    The fit anchors (``harmful``, ``harmless``, ``borderline``) build the vectors and train the
    classifier; the held-out ones and the pool are read only to the end of the user's text
    (and at the instruction end for the v2 rule). Every "held" array below is in the order
    held-out harmful, harmless, borderline, then the pool.
    """

    harmful: list[str]
    harmless: list[str]
    borderline: list[str]
    held_harmful: list[str]
    held_harmless: list[str]
    held_borderline: list[str]
    pool: list[PoolItem]
    hashes: dict[str, str]  # "<side>_sha256": a hash of every anchor given for that side

    def held_prompts(self) -> list[str]:
        return [
            *self.held_harmful,
            *self.held_harmless,
            *self.held_borderline,
            *(i.prompt for i in self.pool),
        ]

    @property
    def fit_labels(self) -> np.ndarray:
        return np.array([True] * len(self.harmful) + [False] * (len(self.harmless) + len(self.borderline)))

    @property
    def held_labels(self) -> np.ndarray:
        n_benign = len(self.held_harmless) + len(self.held_borderline)
        return np.array([True] * len(self.held_harmful) + [False] * n_benign + [i.harmful for i in self.pool])

    @property
    def fit_groups(self) -> list[str]:
        """The anchor group of each fit row (for the report's histograms)."""
        return (
            ["harmful"] * len(self.harmful)
            + ["harmless"] * len(self.harmless)
            + ["borderline"] * len(self.borderline)
        )

    @property
    def held_groups(self) -> list[str]:
        groups = ["harmful"] * len(self.held_harmful) + ["harmless"] * len(self.held_harmless)
        groups += ["borderline"] * len(self.held_borderline)
        return groups + [
            ("pool-severe" if i.severe else "pool-harmful") if i.harmful else "pool-benign" for i in self.pool
        ]

    @property
    def held_severe(self) -> list[bool]:
        n_anchors = len(self.held_harmful) + len(self.held_harmless) + len(self.held_borderline)
        return [False] * n_anchors + [i.severe for i in self.pool]

    def record(self, n_layer_eval: int) -> dict:
        """The profile's ``anchors`` entry: counts, hashes, and the keys of every prompt used."""
        used = [*self.harmful, *self.held_harmful, *self.harmless, *self.held_harmless,
                *self.borderline, *self.held_borderline, *(i.prompt for i in self.pool)]  # fmt: skip
        return {
            **self.hashes,
            "n_fit": len(self.harmful),
            "n_fit_borderline": len(self.borderline),
            "n_heldout": len(self.held_harmful),
            "n_heldout_borderline": len(self.held_borderline),
            "n_layer_eval": n_layer_eval,
            "used_prompt_keys": sorted({prompt_key(p) for p in used}),
        }


def split_anchors(
    prompts: Sequence[str], n_fit: int, n_heldout: int | None, seed: int, side: str
) -> tuple[list[str], list[str]]:
    """Seeded split into a fit part and a held-out part (same seed = same pairs per side);
    ``n_heldout`` None: every prompt not in the fit part is held out."""
    prompts = list(prompts)
    need = n_fit + heldout_floor(n_heldout)
    if len(prompts) < need:
        held = f"at least {MIN_HELDOUT}" if n_heldout is None else str(n_heldout)
        raise ScansError(
            f"{len(prompts)} {side} anchors, need {n_fit} to fit + {held} held out; "
            "fix: pass more anchors or lower --n-fit/--n-heldout"
        )
    check_anchor_counts(n_fit, n_heldout)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    chosen = [prompts[i] for i in order]
    stop = len(chosen) if n_heldout is None else n_fit + n_heldout
    return chosen[:n_fit], chosen[n_fit:stop]


def build_anchors(
    harmful: Sequence[str] | None,
    harmless: Sequence[str] | None,
    borderline: Sequence[str] | None,
    config: FitConfig,
) -> AnchorSet:
    """The anchors (default: the shipped ones, with the taxonomy's dev split as the pool), the
    pool sampled and checked, each side shuffled with the seed and split."""
    pool = config.pool
    if pool is None:
        pool = shipped_taxonomy("dev") if harmful is None and harmless is None else []
    budget = severe_budget(config.max_harmful_loss, config.max_severe_loss)
    # twice the severe prompts the budget needs: the model refuses only some of them
    min_severe = 2 * prompts_needed(budget) if budget is not None else 0
    pool_items = sample_pool(pool, config.pool_size, config.pool_seed, min_severe)
    if pool and config.max_harmful_loss is not None:
        check_pool(pool_items, f"the classifier pool ({len(pool_items)} sampled prompts)")
    if pool and config.max_severe_loss is not None:  # known before any forward pass
        n_severe, need = sum(i.severe for i in pool_items), prompts_needed(config.max_severe_loss)
        if n_severe < need:
            raise ScansError(
                f"{n_severe} severe prompts in the classifier pool cannot calibrate a {config.max_severe_loss:g} "
                f"severe budget (need {need}); fix: add severe prompts (--pool FILE) or raise --max-severe-loss"
            )
    if harmful is None or harmless is None:
        shipped_h, shipped_b = shipped_anchors()
        harmful = harmful if harmful is not None else shipped_h
        harmless = harmless if harmless is not None else shipped_b
    if borderline is None:
        borderline = shipped_borderline()
    n_fit, n_held, seed = config.n_fit, config.n_heldout, config.seed
    fit_h, held_h = split_anchors(harmful, n_fit, n_held, seed, "harmful")
    fit_b, held_b = split_anchors(harmless, n_fit, n_held, seed, "harmless")
    n_fit_x = min(n_fit, len(borderline) - heldout_floor(n_held))
    fit_x, held_x = split_anchors(borderline, n_fit_x, n_held, seed, "borderline")
    hashes = {f"{side}_sha256": _hash_prompts(p) for side, p in
              (("harmful", harmful), ("harmless", harmless), ("borderline", borderline))}  # fmt: skip
    return AnchorSet(fit_h, fit_b, fit_x, held_h, held_b, held_x, pool_items, hashes)


# ------------------------------------------------------------------ activations
@dataclass(frozen=True)
class Positions:
    """Block outputs (N, L, D) of a group of prompts at the named positions (None: not read):
    ``inst`` the instruction end, ``probe`` the probe's last token, ``uend`` the user's text end."""

    uend: torch.Tensor
    inst: torch.Tensor | None = None
    probe: torch.Tensor | None = None

    @classmethod
    def of(cls, acts: dict[str, torch.Tensor]) -> Positions:
        return cls(**{name: acts[name].cpu() for name in POSITIONS if name in acts})

    def rows(self, start: int, stop: int) -> Positions:
        return Positions(**{n: None if t is None else t[start:stop] for n, t in self._named()})

    def _named(self) -> list[tuple[str, torch.Tensor | None]]:
        return [("uend", self.uend), ("inst", self.inst), ("probe", self.probe)]

    @staticmethod
    def cat(*parts: Positions) -> Positions:
        """The parts' rows in order; a position read in only some of them is left out."""
        named = [dict(p._named()) for p in parts]
        out = {n: torch.cat([d[n] for d in named]) for n in ("uend", "inst", "probe")
               if all(d[n] is not None for d in named)}  # fmt: skip
        return Positions(**out)


@dataclass(frozen=True)
class FitActivations:
    """The anchors' activations by group, and the prefills step 2 measures the bands on."""

    harmful: Positions  # the fit anchors: inst, probe, uend
    harmless: Positions
    borderline: Positions  # uend; inst too with the v2 rule, probe too when every classifier is fitted
    held: Positions  # held-out harmful, harmless, borderline, then the pool (as the borderline rows)
    band_harmful: Prefill  # the first ``n_band`` fit anchors per side, prefilled
    band_harmless: Prefill
    n_band: int

    @property
    def fit(self) -> Positions:
        """The fit rows: harmful, harmless, then borderline."""
        return Positions.cat(self.harmful, self.harmless, self.borderline)


def collect_activations(
    model: nn.Module, tokenizer: object, anchors: AnchorSet, config: FitConfig, *,
    batch_size: int, layers_path: str | None, progress: bool,
) -> FitActivations:  # fmt: skip
    """The forward passes. The band anchors (the first ``n_layer_eval`` per side) run through the
    inference path (prefill + probe pass, both sides in one batch): their prefix caches are
    reused to measure the bands. The borderline, held-out and pool prompts run in one more
    pass, read only to the end of the user's text unless every classifier is fitted or the v2
    rule needs the instruction end."""
    common = dict(system=config.system, batch_size=batch_size, layers_path=layers_path, progress=progress)
    fit_h, fit_b = anchors.harmful, anchors.harmless
    k = min(config.n_layer_eval, len(fit_h), len(fit_b))
    batch = build_batch(
        tokenizer, [*fit_h[:k], *fit_b[:k]], system=config.system, max_length=context_length(model)
    )
    pre, acts_band = prefill_probed(model, tokenizer, batch, config.probe, layers_path)
    band = Positions.of(acts_band)
    rest = [*fit_h[k:], *fit_b[k:]]
    if rest:
        more = Positions.of(collect(model, tokenizer, rest, probe=config.probe, desc="fit anchors", **common))
    else:  # every fit anchor is also a band anchor
        more = band.rows(0, 0)
    n_rest_h = len(fit_h) - k
    harmful = Positions.cat(band.rows(0, k), more.rows(0, n_rest_h))
    harmless = Positions.cat(band.rows(k, 2 * k), more.rows(n_rest_h, len(rest)))
    every = config.needs_transitions
    prompts = [*anchors.borderline, *anchors.held_prompts()]
    others = Positions.of(collect(model, tokenizer, prompts, probe=config.probe if every else None,
                                  uend_only=config.max_harmful_loss is None and not every,
                                  desc="classifier anchors", **common))  # fmt: skip
    n_x = len(anchors.borderline)
    return FitActivations(
        harmful, harmless, others.rows(0, n_x), others.rows(n_x, len(prompts)),
        pre.select(range(k)), pre.select(range(k, 2 * k)), k,
    )  # fmt: skip


# ------------------------------------------------------------------ step 1: vectors
@dataclass(frozen=True)
class RefusalVectors:
    """Step 1: unit refusal vectors (L, D), mean residual norms (L,), steering coefficients (L,)."""

    vectors: torch.Tensor
    norms: torch.Tensor
    coefficients: torch.Tensor


def refusal_vectors(acts: FitActivations, config: FitConfig) -> RefusalVectors:
    inst_h, inst_b = acts.harmful.inst, acts.harmless.inst
    assert inst_h is not None and inst_b is not None
    norms = mean_norms(inst_h, inst_b)
    relative = config.alpha_mode == "relative"
    coefficients = config.alpha * norms if relative else torch.full_like(norms, config.alpha)
    return RefusalVectors(mean_difference(inst_h, inst_b), norms, coefficients)
