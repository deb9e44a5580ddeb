"""Conversations with SCANS: one shared prefill of a batch of encoded conversations, the
probe pass (verdicts through ``verdict.decide``), a per-row steering plan, and the one
decoder (:mod:`scans.decode`). The transformers backend's ``Scans.chat_batch`` (the server,
``scans chat``) runs here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from .decode import RowResult, RowSettings, decode
from .engine import Prefill, prefill
from .errors import ScansError
from .prompts import encode_messages_with_end, left_pad_encoded
from .steering import SteeringPlan
from .verdict import Verdict


class Session(Protocol):
    """What the conversation functions need of a transformers session (``scans.Scans``)."""

    model: nn.Module
    tokenizer: Any
    profile: Any

    def verdicts_of(
        self,
        prompts: Sequence[str],
        pre: Prefill,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
    ) -> list[Verdict]: ...

    def plan(
        self, verdicts: Sequence[Verdict], pre: Prefill, enabled: Sequence[bool] | None = None
    ) -> SteeringPlan: ...


@dataclass
class ChatResult:
    """One conversation's answer: the verdict, whether it was steered, the decoded row."""

    verdict: Verdict
    steered: bool
    sign: int
    prompt_tokens: int
    result: RowResult


def encode_conversations(
    scans: Session, conversations: Sequence[Sequence[dict[str, str]]]
) -> list[tuple[list[int], int]]:
    """``(ids, user_end)`` of each conversation, formatted with the profile's system prompt."""
    system = scans.profile.system if scans.profile is not None else None
    return [encode_messages_with_end(scans.tokenizer, c, system) for c in conversations]


@dataclass
class Prepared:
    """A prefilled, classified batch ready to decode: ``prepare_batch``'s output."""

    pre: Prefill
    verdicts: list[Verdict]
    plan: SteeringPlan
    signs: list[int]


@torch.no_grad()
def prepare_batch(
    scans: Session,
    encoded: Sequence[tuple[list[int], int]],
    *,
    steer_rows: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
    on_forward: Callable[[int], None] | None = None,
    conversations: Sequence[Sequence[dict[str, str]]] | None = None,
) -> Prepared:
    """One shared prefill of encoded conversations, the probe pass (verdicts, from
    ``verdict.decide`` via ``Scans.verdicts_of``) and the per-row steering plan. A guard
    profile's verdicts read the ``conversations`` themselves (the messages that ``encoded``
    encodes), in the guard's template."""
    if getattr(scans.profile, "guard", None) and conversations is None:
        raise ScansError(
            "this profile's guard model reads the conversations; fix: pass conversations= "
            "(the message lists that were encoded) to chat_batch / prepare_batch"
        )
    n = len(encoded)
    steer_rows = list(steer_rows) if steer_rows is not None else [True] * n
    labels = list(labels) if labels is not None else [""] * n
    batch = left_pad_encoded(scans.tokenizer, encoded)
    if on_forward is not None:
        on_forward(n)  # prefill
    pre = prefill(scans.model, batch)
    if on_forward is not None:
        on_forward(n)  # probe pass
    verdicts = scans.verdicts_of(labels, pre, conversations)
    plan = scans.plan(verdicts, pre, enabled=steer_rows)
    return Prepared(pre, verdicts, plan, [int(s) for s in plan.sign.tolist()])


def chat_results(
    prepared: Prepared, encoded: Sequence[tuple[list[int], int]], results: Sequence[RowResult]
) -> list[ChatResult]:
    """``ChatResult``s of a prepared batch's decoded rows."""
    return [
        ChatResult(v, s != 0, s, len(ids), r)
        for v, s, (ids, _), r in zip(prepared.verdicts, prepared.signs, encoded, results)
    ]


@torch.no_grad()
def chat_batch(
    scans: Session,
    encoded: Sequence[tuple[list[int], int]],
    settings: Sequence[RowSettings],
    *,
    steer_rows: Sequence[bool] | None = None,
    labels: Sequence[str] | None = None,
    on_verdicts: Callable[[list[Verdict], list[int]], None] | None = None,
    on_forward: Callable[[int], None] | None = None,
    isolate_errors: bool = False,
    conversations: Sequence[Sequence[dict[str, str]]] | None = None,
) -> list[ChatResult]:
    """Classify and answer a batch of encoded conversations (``encode_conversations``) in one
    shared prefill, each row steered by its own verdict unless ``steer_rows[i]`` is False.

    ``on_verdicts(verdicts, signs)`` is called before decoding starts (to send headers);
    ``isolate_errors`` as in ``decode``; ``conversations`` as in ``prepare_batch``.
    """
    prepared = prepare_batch(scans, encoded, steer_rows=steer_rows, labels=labels, on_forward=on_forward,
                             conversations=conversations)  # fmt: skip
    if on_verdicts is not None:
        on_verdicts(prepared.verdicts, prepared.signs)
    results = decode(scans.model, scans.tokenizer, prepared.pre, settings, prepared.plan, copy_cache=False,
                     on_forward=on_forward, isolate_errors=isolate_errors)  # fmt: skip
    return chat_results(prepared, encoded, results)


def chat(
    scans: Session,
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
    return chat_batch(scans, encode_conversations(scans, conversations), settings, steer_rows=steer_rows,
                      labels=labels, conversations=conversations)  # fmt: skip
