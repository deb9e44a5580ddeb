"""Step 2: find the safety-critical layers, by logit lens and by measured effect.

Lens evidence: project each unit vector ``v_l`` through the final norm and the LM head
and score how strongly it promotes refusal tokens (mean z-score of their logits).
Effect evidence: for each contiguous band of layers, steer away from refusal and measure
(a) how much the log-probability of the model's own refusal opening drops on harmful
anchors and (b) how far the next-token distribution drifts on harmless anchors (KL).
The band with the best ``drop - drift`` is chosen; both kinds of evidence are recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .decode import RowSettings, generate_from
from .engine import Prefill, continue_hidden, prefill
from .errors import ScansError
from .judge import is_refusal
from .models import model_device, unembed
from .progress import progress_bar
from .prompts import build_batch
from .steering import SteeringPlan, SteeringVector

REFUSAL_WORDS = (
    "sorry",
    "Sorry",
    "cannot",
    "Cannot",
    "can't",
    "unable",
    "Unable",
    "apologize",
    "refuse",
    "decline",
    "illegal",
    "unethical",
    "harmful",
    "dangerous",
    "inappropriate",
    "Unfortunately",
    "unfortunately",
    "prohibited",
    "not",
    "No",
)
FALLBACK_OPENING = "I'm sorry"
HALF_MIN = 4  # the halved coarse round needs this many anchors per side in each half


def refusal_token_ids(tokenizer: Any) -> list[int]:
    """Ids of refusal words that are single tokens (with and without a leading space)."""
    ids: set[int] = set()
    for word in REFUSAL_WORDS:
        for variant in (word, " " + word):
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.add(int(toks[0]))
    return sorted(ids)


@torch.no_grad()
def logit_lens(
    model: nn.Module, tokenizer: Any, vectors: torch.Tensor, top_k: int = 8
) -> tuple[list[float], list[list[str]]]:
    """Per-layer refusal score (mean z-score of refusal-token logits) and top tokens."""
    refusal = torch.tensor(refusal_token_ids(tokenizer), dtype=torch.long)
    logits = unembed(model, vectors)  # (L, V): every layer's vector in one product
    logits = logits[:, : len(tokenizer)] if logits.shape[1] > len(tokenizer) else logits
    z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp_min(1e-8)
    scores = z[:, refusal].mean(-1).tolist() if len(refusal) else [0.0] * len(vectors)
    tops = [[tokenizer.decode([int(i)]) for i in row] for row in torch.topk(logits, top_k, dim=-1).indices]
    return scores, tops


@dataclass
class BandEffect:
    """Measured effect of steering one band of layers away from refusal."""

    start: int
    end: int  # inclusive
    drop: float  # mean drop of log P(refusal opening) on harmful anchors (nats)
    drift: float  # mean KL of the first-token distribution on harmless anchors (nats)
    anchors: int = 0  # harmful + harmless anchors it was measured on (0: not recorded)

    @property
    def score(self) -> float:
        return self.drop - self.drift


def refusal_opening(
    model: nn.Module, tokenizer: Any, pre: Prefill, n_tokens: int = 3
) -> tuple[list[int], str, float]:
    """The model's own most common refusal opening on these (harmful) prompts.

    Returns its first ``n_tokens`` ids, its text, and the fraction of prompts refused.
    """
    texts = generate_from(model, tokenizer, pre, RowSettings(max_tokens=6))
    refused = [t for t in texts if is_refusal(t)]
    openings = Counter()
    for text in refused:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
        openings[tuple(ids)] += 1
    rate = len(refused) / max(1, len(texts))
    if not openings:
        ids = tokenizer(FALLBACK_OPENING, add_special_tokens=False)["input_ids"][:n_tokens]
        return list(ids), FALLBACK_OPENING, rate
    ids = list(openings.most_common(1)[0][0])
    return ids, tokenizer.decode(ids), rate


@torch.no_grad()
def suffix_logprobs(
    model: nn.Module, pre: Prefill, suffix_ids: Sequence[int], plan: SteeringPlan | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run [instruction end, *suffix_ids[:-1]] after the prefix cache (optionally steered).

    Returns log P(suffix) per row (B,) and the first-token log-distribution (B, V). The
    suffix's last token is only a target, so it is never run.
    """
    device = model_device(model)
    batch_size = pre.batch.input_ids.shape[0]
    suffix = torch.tensor(list(suffix_ids), dtype=torch.long, device=device).expand(batch_size, -1)
    ids = torch.cat([pre.batch.input_ids[:, -1:], suffix[:, :-1]], dim=1)
    mask = torch.cat([pre.batch.attention_mask, torch.ones_like(suffix[:, :-1])], dim=1)
    logits = model.get_output_embeddings()(continue_hidden(model, pre, ids, mask, plan)).float()
    if suffix.shape[1]:  # log softmax at the targets only: logit - logsumexp
        total = (logits.gather(-1, suffix[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)).sum(-1)
    else:
        total = torch.zeros(batch_size, device=logits.device)
    return total.cpu(), F.log_softmax(logits[:, 0], dim=-1).cpu()


def band_plan(
    vectors: torch.Tensor, coefficients: torch.Tensor, layers: Sequence[int], sign: float, pre: Prefill
) -> SteeringPlan:
    """A plan steering ``layers`` with one sign for every row, from the instruction end."""
    batch_size, width = pre.batch.input_ids.shape
    start = pre.batch.attention_mask.sum(-1) - 1  # row position of the instruction end
    return SteeringPlan(
        SteeringVector.scaled(vectors, coefficients, layers),
        sign=torch.full((batch_size,), float(sign)),
        start=start.cpu(),
    )


def tiled_band_plan(
    vectors: torch.Tensor,
    coefficients: torch.Tensor,
    bands: Sequence[tuple[int, int] | None],
    sign: float,
    pre: Prefill,
    rows: Sequence[Sequence[int]] | None = None,
) -> tuple[Prefill, SteeringPlan]:
    """``pre`` repeated once per band, and a plan steering copy ``i`` on band ``i`` only
    (a ``None`` band leaves its copy unsteered). ``rows[i]``: the rows of copy ``i``
    (default: all of them)."""
    n = pre.batch.input_ids.shape[0]
    rows = [range(n)] * len(bands) if rows is None else rows
    assert len(rows) == len(bands), "one row list per band"
    tiled = pre.select([r for part in rows for r in part])
    layers = sorted({l for band in bands if band is not None for l in range(band[0], band[1] + 1)})
    signs = torch.zeros((tiled.batch.input_ids.shape[0], len(layers)))
    at = 0
    for part, band in zip(rows, bands):
        for col, layer in enumerate(layers):
            if band is not None and band[0] <= layer <= band[1]:
                signs[at : at + len(part), col] = sign
        at += len(part)
    plan = SteeringPlan(
        SteeringVector.scaled(vectors, coefficients, layers),
        sign=signs,
        start=(tiled.batch.attention_mask.sum(-1) - 1).cpu(),
    )
    return tiled, plan


def classification_layers(n_layers: int) -> list[int]:
    """The layers the classifiers read: the upper half of the network (12-23 of 24 layers).

    Fixed by the depth alone, so every seed's classifier reads the same layers (the steering
    band is measured on the seed's anchors and moves by a layer between seeds)."""
    return list(range(n_layers // 2, n_layers))


def candidate_bands(n_layers: int, width: int | None = None) -> list[tuple[int, int]]:
    """Contiguous bands of about a third of the depth, skipping the first and last layer."""
    width = width or max(1, round(n_layers / 3))
    lo, hi = (1, n_layers - 2) if n_layers > width + 2 else (0, n_layers - 1)
    stride = max(1, (hi - lo + 1 - width) // 16)
    return [(s, s + width - 1) for s in range(lo, hi - width + 2, stride)]


@dataclass
class LayerChoice:
    """Outcome of step 2."""

    band: BandEffect
    effects: list[BandEffect]
    opening: str
    opening_ids: list[int]
    refusal_rate: float
    harmful_prefill: Prefill
    harmless_prefill: Prefill


def choose_band(
    model: nn.Module,
    tokenizer: Any,
    vectors: torch.Tensor,
    coefficients: torch.Tensor,
    harmful: Sequence[str] | Prefill,
    harmless: Sequence[str] | Prefill,
    *,
    system: str | None = None,
    width: int | None = None,
    progress: bool = True,
    bands_per_pass: int = 8,
    coarse_to_fine: bool = True,
    halve: bool = True,
) -> LayerChoice:
    """Measure the candidate bands and pick the one with the best drop - drift.

    ``harmful``/``harmless`` are prompts or their prefills (reused, not recomputed).
    Coarse to fine: every other band first, then the unmeasured neighbours of the best
    (the score is smooth in the band's start). With ``halve`` (and at least
    ``2 * HALF_MIN`` anchors per side) the coarse round runs on the first half of the
    anchors only; the best coarse band and its neighbours, the contenders, are then
    measured on every anchor, and the best contender wins: the choice is made on all
    anchors, about a third fewer tokens are run.
    """

    def as_prefill(prompts: Sequence[str] | Prefill) -> Prefill:
        if isinstance(prompts, Prefill):
            return prompts
        return prefill(model, build_batch(tokenizer, prompts, system=system))

    pre_h, pre_b = as_prefill(harmful), as_prefill(harmless)
    opening_ids, opening, rate = refusal_opening(model, tokenizer, pre_h)
    bands = candidate_bands(vectors.shape[0], width)
    if not bands:
        raise ScansError(
            f"no band of {width} layers fits a model with {vectors.shape[0]} layers; fix: pass fewer --layers"
        )
    n_h, n_b = pre_h.batch.input_ids.shape[0], pre_b.batch.input_ids.shape[0]
    # per anchor (row): unsteered log P(opening) and first-token log-distribution, and per
    # band the rows measured with their drop and KL drift; a band's effect is the mean
    base_h: dict[int, float] = {}
    base_b: dict[int, torch.Tensor] = {}
    drops: dict[tuple[int, int], dict[int, float]] = {}
    drifts: dict[tuple[int, int], dict[int, float]] = {}

    def measure(tiles: Sequence[tuple[tuple[int, int] | None, Sequence[int], Sequence[int]]]) -> None:
        # several bands in one forward pass: the anchors repeated once per band, each copy
        # steered on its own band only (a sign matrix over the union of the bands' layers);
        # a None band is the unsteered baseline of its rows, measured before their bands
        group = [band for band, _, _ in tiles]
        rows_h, rows_b = [list(t[1]) for t in tiles], [list(t[2]) for t in tiles]
        tiled_h, plan_h = tiled_band_plan(vectors, coefficients, group, -1, pre_h, rows_h)
        tiled_b, plan_b = tiled_band_plan(vectors, coefficients, group, -1, pre_b, rows_b)
        lp_h, _ = suffix_logprobs(model, tiled_h, opening_ids, plan_h)
        _, lp_b = suffix_logprobs(model, tiled_b, [], plan_b)
        at_h = at_b = 0
        for band, part_h, part_b in zip(group, rows_h, rows_b):
            got_h, got_b = lp_h[at_h : at_h + len(part_h)], lp_b[at_b : at_b + len(part_b)]
            at_h, at_b = at_h + len(part_h), at_b + len(part_b)
            if band is None:
                base_h.update({r: float(v) for r, v in zip(part_h, got_h)})
                base_b.update(dict(zip(part_b, got_b)))
                continue
            drops.setdefault(band, {}).update({r: base_h[r] - float(v) for r, v in zip(part_h, got_h)})
            kl = F.kl_div(got_b, torch.stack([base_b[r] for r in part_b]), log_target=True, reduction="none")
            drifts.setdefault(band, {}).update(dict(zip(part_b, kl.sum(-1).tolist())))

    def effect(band: tuple[int, int]) -> BandEffect:
        drop, drift = drops[band], drifts[band]
        score = sum(drop.values()) / len(drop), sum(drift.values()) / len(drift)
        return BandEffect(band[0], band[1], score[0], score[1], len(drop) + len(drift))

    all_h, all_b = range(n_h), range(n_b)
    coarse_to_fine = coarse_to_fine and len(bands) > 2
    halve = halve and coarse_to_fine and min(n_h, n_b) >= 2 * HALF_MIN
    first_h, first_b = (range(n_h // 2), range(n_b // 2)) if halve else (all_h, all_b)
    coarse = bands[::2] if coarse_to_fine else bands
    passes = [
        [(band, first_h, first_b) for band in coarse[i : i + bands_per_pass]]
        for i in range(0, len(coarse), bands_per_pass)
    ]
    passes[0].insert(0, (None, first_h, first_b))  # the baseline rides along in the first pass
    for tiles in progress_bar(passes, "layer bands", progress):
        measure(tiles)
    if coarse_to_fine:
        top = max(coarse, key=lambda b: effect(b).score)
        at = bands.index(top)
        contenders = [bands[j] for j in (at - 1, at, at + 1) if 0 <= j < len(bands)]
        second_h, second_b = range(len(first_h), n_h), range(len(first_b), n_b)
        tiles = [(None, second_h, second_b)] if halve else []
        for band in contenders:
            if band == top:  # measured on the first half: the second half completes it
                if halve:
                    tiles.append((band, second_h, second_b))
            else:
                tiles.append((band, all_h, all_b))
        if tiles:
            measure(tiles)
    effects = sorted((effect(b) for b in drops), key=lambda e: e.start)
    complete = [e for e in effects if e.anchors == n_h + n_b]  # measured on every anchor
    best = max(complete or effects, key=lambda e: e.score)
    return LayerChoice(best, effects, opening, opening_ids, rate, pre_h, pre_b)


def toward_refusal_gain(
    model: nn.Module, choice: LayerChoice, vectors: torch.Tensor, coefficients: torch.Tensor
) -> tuple[float, float]:
    """Change of log P(refusal opening) when steering the chosen band toward refusal,
    on the harmful and on the harmless anchors (positive = more refusal)."""
    layers = range(choice.band.start, choice.band.end + 1)
    gains = []
    for pre in (choice.harmful_prefill, choice.harmless_prefill):
        base, _ = suffix_logprobs(model, pre, choice.opening_ids, None)
        up, _ = suffix_logprobs(
            model, pre, choice.opening_ids, band_plan(vectors, coefficients, layers, +1, pre)
        )
        gains.append(float((up - base).mean()))
    return gains[0], gains[1]
