"""The one decoder: step-wise batched decoding from the shared prefill, with per-row settings.

``decode`` continues a ``Prefill`` (KV cache of all but the last prompt column) one token
per step, so that every row has its own temperature, top-p, seed, token budget and stop
strings, streams text deltas, and leaves the batch (and the KV cache, and the steering plan)
as soon as it is finished or cancelled. Greedy rows give what ``model.generate`` gives.
``generate_from`` (the API, the fit's refusal openings: one ``RowSettings`` for every row) and the bench runner, the server and
``scans chat`` all decode here.

The whole SCANS path for a batch of conversations (prefill, verdicts, plan, ``decode``) is
:mod:`scans.conversations`.

One module (a little over 400 lines) because the per-row state (incremental detokenisation,
stop strings, streaming), the batch that rows join and leave (cache, mask and plan rows kept
aligned) and the loop that drives them change together.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine import Prefill
from .models import cache_kwarg, model_device
from .steering import SteeringPlan, steer

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED, FINISH_ERROR = "stop", "length", "cancelled", "error"


@dataclass
class RowSettings:
    """Decoding settings of one row. ``temperature <= 0`` is greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0  # the end of sequence is suppressed until this many tokens
    stop: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None  # called with each new piece of text
    cancelled: Callable[[], bool] | None = None  # checked before every step


@dataclass
class RowResult:
    """One row's output: generated token ids (EOS excluded), text (stop string cut off)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    error: BaseException | None = None  # set when finish_reason is "error"


@dataclass
class _Row:
    """Per-row decoding state: tokens, incremental detokenization, emitted text."""

    settings: RowSettings
    generator: torch.Generator | None
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (complete characters only)
    sent: int = 0  # characters of ``text`` handed to on_text
    prefix_offset: int = 0
    read_offset: int = 0
    finish: str | None = None
    cut: bool = False  # text was cut at a stop string
    error: BaseException | None = None

    def push(self, tokenizer: Any, token: int) -> None:
        """Append a token and extend ``text`` once it decodes to complete characters."""
        self.ids.append(token)
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def flush(self, tokenizer: Any) -> None:
        """At the end: whatever is still pending, even an incomplete character."""
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix):
            self.text += full[len(prefix) :]
        self.prefix_offset = self.read_offset = len(self.ids)

    def check_stop(self) -> bool:
        """Cut ``text`` at the first stop string; True if one occurred."""
        stops = [s for s in self.settings.stop if s]
        if not stops:
            return False
        longest = max(len(s) for s in stops)
        lo = max(0, self.sent - longest + 1)
        hits = [i for i in (self.text.find(s, lo) for s in stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.cut = True
            return True
        return False

    def emit(self, final: bool) -> None:
        """Hand new text to the callback, holding back a tail that may start a stop string."""
        end = len(self.text)
        if not final:
            for s in self.settings.stop:
                for k in range(min(len(s) - 1, len(self.text) - self.sent), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        if end > self.sent:
            if self.settings.on_text is not None:
                self.settings.on_text(self.text[self.sent : end])
            self.sent = end


def eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the model's generation config, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _sample(logits: torch.Tensor, row: _Row) -> int:
    """Temperature and top-p (nucleus, as transformers' TopPLogitsWarper) sampling of one row."""
    s = row.settings
    scores = logits.float() / s.temperature
    if s.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - s.top_p)
        remove[-1] = False  # keep at least one token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise ValueError(f"temperature {s.temperature:g} gives no finite sampling distribution")
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else random.randrange(2**63))
    return gen


def _cache_layers(cache: Any) -> list[Any]:
    """The per-layer key/value holders of a ``DynamicCache``; ValueError for other caches."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(
        getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers
    ):
        raise ValueError("rows can join a running batch only with a full-attention DynamicCache")
    return list(layers)


def can_join(cache: Any) -> bool:
    """Whether rows can join a decoding batch that uses this cache (see ``DecodeBatch.add``)."""
    try:
        _cache_layers(cache)
    except ValueError:
        return False
    return True


def _left_pad_cache(cache: Any, columns: int) -> None:
    if columns > 0:
        for layer in _cache_layers(cache):
            if layer.keys is not None and layer.keys.numel():
                layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, columns, 0))
                layer.values = torch.nn.functional.pad(layer.values, (0, 0, columns, 0))


def _concat_caches(a: Any, b: Any) -> None:
    """Append ``b``'s rows to ``a`` (same length), in place."""
    for la, lb in zip(_cache_layers(a), _cache_layers(b)):
        la.keys = torch.cat([la.keys, lb.keys], dim=0)
        la.values = torch.cat([la.values, lb.values], dim=0)


def _plan_rows(plan: SteeringPlan | None, index: torch.Tensor) -> SteeringPlan | None:
    """The plan of the given rows only (plans are never written to: a new one)."""
    return None if plan is None else dataclasses.replace(plan, sign=plan.sign[index], start=plan.start[index])


def _zero_plan_like(plan: SteeringPlan, rows: int) -> SteeringPlan:
    sign = torch.zeros((rows, *plan.sign.shape[1:]), dtype=plan.sign.dtype)
    return dataclasses.replace(plan, sign=sign, start=torch.zeros(rows, dtype=torch.long))


def _concat_plans(
    a: SteeringPlan | None, rows_a: int, b: SteeringPlan | None, rows_b: int
) -> SteeringPlan | None:
    if a is None and b is None:
        return None
    a = a if a is not None else _zero_plan_like(b, rows_a)
    b = b if b is not None else _zero_plan_like(a, rows_b)
    return dataclasses.replace(a, sign=torch.cat([a.sign, b.sign]), start=torch.cat([a.start, b.start]))


class DecodeBatch:
    """The running batch of step-wise decoding: rows join (``add``) and leave between steps.

    State: a left-padded attention mask whose last column is each row's next input token,
    the KV cache of all columns before it, the next input tokens and an optional steering
    plan (per-row sign and start, gated by each row's own position, so padding and joining
    do not move it). Rows leave (mask, cache, plan rows) when they hit EOS, a stop string,
    their ``max_tokens``, are cancelled or fail; an error in one row (sampling, callbacks)
    finishes that row with ``finish_reason`` ``"error"`` and leaves the others running.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, on_forward: Callable[[int], None] | None = None
    ) -> None:
        self.model, self.tokenizer, self.on_forward = model, tokenizer, on_forward
        self.device = model_device(model)
        self.eos = eos_ids(model, tokenizer)
        self.kwarg = cache_kwarg(model)
        self.rows: list[_Row] = []  # in batch order
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.step_ids: torch.Tensor | None = None
        self.plan: SteeringPlan | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        pre: Prefill,
        settings: Sequence[RowSettings],
        plan: SteeringPlan | None = None,
        *,
        copy_cache: bool = True,
    ) -> list[_Row]:
        """Join the rows of ``pre`` (``copy_cache=False`` consumes ``pre.cache``); returns their
        states in order. Rows with ``max_tokens < 1`` are finished at once and do not join."""
        n = pre.batch.input_ids.shape[0]
        if len(settings) != n:
            raise ValueError(f"{len(settings)} row settings for a batch of {n}")
        rows = [
            _Row(s, _make_generator(s.seed, self.device) if s.temperature and s.temperature > 0 else None)
            for s in settings
        ]
        keep = []
        for k, row in enumerate(rows):
            if row.settings.max_tokens < 1:
                self._finish(row, FINISH_LENGTH)
            else:
                keep.append(k)
        if not keep:
            return rows
        cache = copy.deepcopy(pre.cache) if copy_cache else pre.cache
        mask = pre.batch.attention_mask.to(self.device)
        step_ids = pre.batch.input_ids[:, -1:].to(self.device)
        if len(keep) < n:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache.batch_select_indices(index)
            mask, step_ids = mask[index], step_ids[index]
            plan = _plan_rows(plan, index.cpu())
        if self.cache is None or not self.rows:
            self.cache, self.mask, self.step_ids, self.plan = cache, mask, step_ids, plan
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            _left_pad_cache(self.cache, width - self.mask.shape[1])
            _left_pad_cache(cache, width - mask.shape[1])
            self.mask = torch.nn.functional.pad(self.mask, (width - self.mask.shape[1], 0))
            mask = torch.nn.functional.pad(mask, (width - mask.shape[1], 0))
            _concat_caches(self.cache, cache)
            self.plan = _concat_plans(self.plan, len(self.rows), plan, len(keep))
            self.mask = torch.cat([self.mask, mask])
            self.step_ids = torch.cat([self.step_ids, step_ids])
        self.rows += [rows[k] for k in keep]
        return rows

    def _finish(self, row: _Row, reason: str) -> None:
        """Close a row: pending text out, stop strings applied, final callback."""
        row.finish = row.finish or reason
        if row.finish == FINISH_ERROR:
            return
        if not row.cut:  # EOS, length or cancelled: pending text out (it may hold a stop string)
            row.flush(self.tokenizer)
            if row.check_stop() and row.finish != FINISH_CANCELLED:
                row.finish = FINISH_STOP
        if row.finish != FINISH_CANCELLED:
            try:
                row.emit(final=True)
            except Exception as exc:  # the caller's callback failed: this row only
                row.finish, row.error = FINISH_ERROR, exc

    def _drop_finished(self) -> list[_Row]:
        keep = [k for k, row in enumerate(self.rows) if row.finish is None]
        gone = [row for row in self.rows if row.finish is not None]
        if len(keep) < len(self.rows):
            if keep:
                index = torch.tensor(keep, dtype=torch.long, device=self.device)
                self.cache.batch_select_indices(index)
                self.mask, self.step_ids = self.mask[index], self.step_ids[index]
                self.plan = _plan_rows(self.plan, index.cpu())
                # columns that are padding in every remaining row (a long row left): cut them
                first = int(self.mask.any(0).long().argmax())
                if first > 0 and can_join(self.cache):
                    for layer in _cache_layers(self.cache):
                        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                    self.mask = self.mask[:, first:]
            else:
                self.cache = self.mask = self.step_ids = self.plan = None
            self.rows = [self.rows[k] for k in keep]
        return gone

    @torch.no_grad()
    def step(self) -> list[_Row]:
        """Cancellations, then one forward pass and one token per row; returns the rows that
        left the batch (finished, cancelled or failed) in this step."""
        for row in self.rows:
            cancel = row.settings.cancelled
            if row.finish is None and cancel is not None and cancel():
                self._finish(row, FINISH_CANCELLED)
        gone = self._drop_finished()
        if not self.rows:
            return gone
        if self.on_forward is not None:
            self.on_forward(len(self.rows))
        plan = self.plan if self.plan is not None and bool((self.plan.sign != 0).any()) else None
        positions = self.mask.long().cumsum(-1)[:, -1:] - 1
        with steer(self.model, plan) if plan is not None else nullcontext():
            out = self.model(
                input_ids=self.step_ids,
                attention_mask=self.mask,
                position_ids=positions,
                use_cache=True,
                **{self.kwarg: self.cache},
            )
        logits = out.logits[:, -1]
        early = [k for k, row in enumerate(self.rows) if len(row.ids) < row.settings.min_tokens]
        if early and self.eos:
            logits = logits.clone()
            logits[torch.tensor(early)[:, None], torch.tensor(sorted(self.eos))[None, :]] = float("-inf")
        tokens = logits.argmax(-1).tolist()
        for k, row in enumerate(self.rows):
            try:
                token = tokens[k] if row.generator is None else _sample(logits[k], row)
                tokens[k] = token
                if token in self.eos:
                    self._finish(row, FINISH_STOP)
                    continue
                row.push(self.tokenizer, token)
                if len(row.ids) >= row.settings.max_tokens:
                    self._finish(row, FINISH_LENGTH)
                    continue
                if row.check_stop():
                    self._finish(row, FINISH_STOP)
                    continue
                row.emit(final=False)
            except Exception as exc:  # this row only; the batch goes on
                row.finish, row.error = FINISH_ERROR, exc
        self.step_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        return gone + self._drop_finished()


def row_result(row: _Row) -> RowResult:
    """The result of a row that left its ``DecodeBatch``."""
    return RowResult(row.ids, row.text, row.finish or FINISH_LENGTH, row.error)


@torch.no_grad()
def decode(
    model: nn.Module,
    tokenizer: Any,
    pre: Prefill,
    settings: Sequence[RowSettings],
    plan: SteeringPlan | None = None,
    *,
    copy_cache: bool = True,
    on_forward: Callable[[int], None] | None = None,
    isolate_errors: bool = False,
) -> list[RowResult]:
    """Decode every row of ``pre`` step by step under ``plan`` (a ``DecodeBatch`` that no row
    joins). ``copy_cache=False`` consumes ``pre.cache``; ``on_forward(rows)`` is called before
    every forward pass. A row's error is raised unless ``isolate_errors`` (then that row's
    result has ``finish_reason`` ``"error"`` and its ``error``)."""
    batch = DecodeBatch(model, tokenizer, on_forward=on_forward)
    rows = batch.add(pre, settings, plan, copy_cache=copy_cache)
    while len(batch):
        batch.step()
    results = [row_result(row) for row in rows]
    if not isolate_errors:
        for r in results:
            if r.error is not None:
                raise r.error
    return results


@torch.no_grad()
def generate_counted(
    model: nn.Module, tokenizer: Any, pre: Prefill, settings: RowSettings, plan: SteeringPlan | None = None
) -> list[tuple[str, int]]:
    """Continuations of the prefilled prompts (optionally under ``plan``), stripped, with the
    number of new tokens of each row (its end of sequence not counted). Every row decodes with
    ``settings``; sampled rows get seeds ``seed``, ``seed + 1``, ..."""
    rows = pre.batch.input_ids.shape[0]
    seeds = [None if settings.seed is None else settings.seed + i for i in range(rows)]
    results = decode(model, tokenizer, pre, [dataclasses.replace(settings, seed=s) for s in seeds], plan)
    return [(r.text.strip(), len(r.token_ids)) for r in results]


def generate_from(
    model: nn.Module, tokenizer: Any, pre: Prefill, settings: RowSettings, plan: SteeringPlan | None = None
) -> list[str]:
    """Continuations of the prefilled prompts, optionally under ``plan``."""
    return [text for text, _ in generate_counted(model, tokenizer, pre, settings, plan)]
