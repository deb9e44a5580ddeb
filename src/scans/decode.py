"""Step-wise batched decoding from the shared prefill, with per-row settings.

``decode`` continues a ``Prefill`` (KV cache of all but the last prompt column) one token
per step, like ``engine.generate_from`` but with its own loop, so that every row has its
own temperature, top-p, seed, token budget and stop strings, streams text deltas, and
leaves the batch (and the KV cache, and the steering plan) as soon as it is finished or
cancelled. Greedy rows give exactly what ``model.generate`` gives.

``chat_batch`` is the whole SCANS path for a batch of conversations: one prefill, the
probe pass (verdicts), a per-row steering plan, and ``decode``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .engine import Prefill, prefill
from .models import cache_kwarg, model_device
from .prompts import encode_messages_with_end, left_pad_encoded
from .steering import SteeringPlan, steer

if TYPE_CHECKING:
    from .api import Scans, Verdict

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass
class RowSettings:
    """Decoding settings of one row. ``temperature <= 0`` is greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    on_text: Callable[[str], None] | None = None  # called with each new piece of text
    cancelled: Callable[[], bool] | None = None  # checked before every step


@dataclass
class RowResult:
    """One row's output: generated token ids (EOS excluded), text (stop string cut off)."""

    token_ids: list[int]
    text: str
    finish_reason: str


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
    return int(torch.multinomial(probs, 1, generator=row.generator))


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else random.randrange(2**63))
    return gen


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
) -> list[RowResult]:
    """Decode every row of ``pre`` step by step under ``plan`` (hooks only inside this call).

    Rows leave the batch (input, attention mask, KV cache, plan rows) when they hit EOS, a
    stop string, their ``max_tokens`` or are cancelled. ``copy_cache=False`` consumes
    ``pre.cache``. ``on_forward(rows)`` is called before every forward pass.
    """
    batch = pre.batch
    n = batch.input_ids.shape[0]
    if len(settings) != n:
        raise ValueError(f"{len(settings)} row settings for a batch of {n}")
    device = model_device(model)
    rows = [
        _Row(s, _make_generator(s.seed, device) if s.temperature and s.temperature > 0 else None)
        for s in settings
    ]
    eos = eos_ids(model, tokenizer)
    kwarg = cache_kwarg(model)
    cache = copy.deepcopy(pre.cache) if copy_cache else pre.cache
    mask = batch.attention_mask.to(device)
    step_ids = batch.input_ids[:, -1:].to(device)
    active = list(range(n))  # original row index of each batch row
    for i in list(active):
        if rows[i].settings.max_tokens < 1:
            rows[i].finish = FINISH_LENGTH
    if plan is not None:  # private copy: its rows are re-indexed as rows leave
        plan = dataclasses.replace(plan, sign=plan.sign.clone(), start=plan.start.clone())
        if not bool((plan.sign != 0).any()):
            plan = None
    with steer(model, plan) if plan is not None else nullcontext():
        while True:
            for i in active:
                cancel = rows[i].settings.cancelled
                if rows[i].finish is None and cancel is not None and cancel():
                    rows[i].finish = FINISH_CANCELLED
            keep = [k for k, i in enumerate(active) if rows[i].finish is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, step_ids = mask[index], step_ids[index]
                if plan is not None:
                    plan.sign, plan.start = plan.sign[index.cpu()], plan.start[index.cpu()]
                active = [active[k] for k in keep]
            if on_forward is not None:
                on_forward(len(active))
            positions = mask.long().cumsum(-1)[:, -1:] - 1
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{kwarg: cache},
            )
            logits = out.logits[:, -1]
            tokens = logits.argmax(-1).tolist()
            for k, i in enumerate(active):
                row = rows[i]
                token = tokens[k] if row.generator is None else _sample(logits[k], row)
                tokens[k] = token
                if token in eos:
                    row.finish = FINISH_STOP
                    continue
                row.push(tokenizer, token)
                if len(row.ids) >= row.settings.max_tokens:
                    row.finish = FINISH_LENGTH
                    row.flush(tokenizer)
                if row.check_stop():
                    row.finish = FINISH_STOP
                row.emit(final=False)
            step_ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
    results = []
    for row in rows:
        if not row.cut:  # EOS, length or cancelled: pending text out (it may hold a stop string)
            row.flush(tokenizer)
            if row.check_stop() and row.finish != FINISH_CANCELLED:
                row.finish = FINISH_STOP
        if row.finish != FINISH_CANCELLED:
            row.emit(final=True)
        results.append(RowResult(row.ids, row.text, row.finish or FINISH_LENGTH))
    return results


# ---------------------------------------------------------------- conversations with SCANS
@dataclass
class ChatResult:
    """One conversation's answer: the verdict, whether it was steered, the decoded row."""

    verdict: Verdict
    steered: bool
    sign: int
    prompt_tokens: int
    result: RowResult


def encode_conversations(
    scans: Scans, conversations: Sequence[Sequence[dict[str, str]]]
) -> list[tuple[list[int], int]]:
    """``(ids, user_end)`` of each conversation, formatted with the profile's system prompt."""
    system = scans.profile.system if scans.profile is not None else None
    return [encode_messages_with_end(scans.tokenizer, c, system) for c in conversations]


@torch.no_grad()
def chat_batch(
    scans: Scans,
    encoded: Sequence[tuple[list[int], int]],
    settings: Sequence[RowSettings],
    *,
    steer_rows: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
    on_verdicts: Callable[[list[Verdict], list[int]], None] | None = None,
    on_forward: Callable[[int], None] | None = None,
) -> list[ChatResult]:
    """Classify and answer a batch of encoded conversations (``encode_conversations``) in one
    shared prefill, each row steered by its own verdict unless ``steer_rows[i]`` is False.

    ``on_verdicts(verdicts, signs)`` is called before decoding starts (to send headers).
    """
    n = len(encoded)
    steer_rows = list(steer_rows) if steer_rows is not None else [True] * n
    labels = list(labels) if labels is not None else [""] * n
    batch = left_pad_encoded(scans.tokenizer, encoded)
    if on_forward is not None:
        on_forward(n)  # prefill
    pre = prefill(scans.model, batch)
    if on_forward is not None:
        on_forward(n)  # probe pass
    verdicts = scans._verdicts(labels, pre)
    plan = scans.plan(verdicts, pre, enabled=steer_rows)
    signs = [int(s) for s in plan.sign.tolist()]
    if on_verdicts is not None:
        on_verdicts(verdicts, signs)
    results = decode(
        scans.model, scans.tokenizer, pre, settings, plan, copy_cache=False, on_forward=on_forward
    )
    return [
        ChatResult(v, s != 0, s, len(ids), r) for v, s, (ids, _), r in zip(verdicts, signs, encoded, results)
    ]


def chat(
    scans: Scans,
    conversations: Sequence[Sequence[dict[str, str]]],
    settings: Sequence[RowSettings] | RowSettings | None = None,
    *,
    steer_rows: Sequence[bool] | None = None,
) -> list[ChatResult]:
    """Answer a batch of OpenAI-style conversations with SCANS (one batch, per-row settings)."""
    settings = settings or RowSettings()
    if isinstance(settings, RowSettings):
        settings = [dataclasses.replace(settings) for _ in conversations]
    labels = [c[-1]["content"] for c in conversations]
    return chat_batch(
        scans, encode_conversations(scans, conversations), settings, steer_rows=steer_rows, labels=labels
    )
