"""Chat formatting and the two named positions SCANS needs.

Every prompt goes through the tokenizer's own chat template with the generation prompt
added. The *instruction end* is the last token of that formatted prompt (where the
assistant is about to speak); the *probe* position is the last token of a short
affirmative assistant prefix ("Sure") appended after it. Prompt and probe are tokenized
separately and concatenated as ids, so no template can merge tokens across the boundary
and the instruction end is at the same index with or without the probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ScansError

DEFAULT_PROBE = "Sure"


def format_chat(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """Render one user prompt with the chat template (generation prompt added)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ScansError("empty prompt; fix: pass a non-empty prompt text")
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates without a system role raise inside Jinja
        if not system:
            raise ScansError(f"chat template failed: {exc}; fix: check the tokenizer") from None
        merged = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def encode_chat(tokenizer: Any, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of the formatted prompt (special tokens come from the template text)."""
    return encode_chat_with_end(tokenizer, prompt, system)[0]


def encode_chat_with_end(tokenizer: Any, prompt: str, system: str | None = None) -> tuple[list[int], int]:
    """Token ids of the formatted prompt and the index of the last token of the user's text
    (the *instruction's own end*, before the template's closing tokens)."""
    text = format_chat(tokenizer, prompt, system)
    # The template already carries BOS when the model needs it; avoid adding a second one.
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    shift = 0
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, shift = [bos, *ids], 1
    cut = text.rfind(prompt.strip())
    end = len(ids) - 1
    if cut >= 0:
        head = tokenizer(text[: cut + len(prompt.strip())], add_special_tokens=False)["input_ids"]
        end = min(len(head) - 1 + shift, len(ids) - 1)
    return ids, end


def encode_probe(tokenizer: Any, probe: str = DEFAULT_PROBE) -> list[int]:
    """Token ids of the affirmative assistant prefix, without special tokens."""
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ScansError(f"probe text {probe!r} tokenizes to nothing; fix: use a word like 'Sure'")
    return list(ids)


@dataclass
class Batch:
    """A left-padded batch. ``positions[name]`` holds, per row, an index into the padded row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: dict[str, torch.Tensor]

    def select(self, rows: Sequence[int]) -> Batch:
        """The given rows, left-padded only as far as the longest of them needs."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        mask = self.attention_mask[index]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-pad columns
        return Batch(
            self.input_ids[index, drop:],
            mask[:, drop:],
            {k: v[index] - drop for k, v in self.positions.items()},
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.positions.items()},
        )


def left_pad(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    named: dict[str, Sequence[int]] | None = None,
) -> Batch:
    """Left-pad id lists; ``named`` positions are given from each row's start and shifted."""
    if not sequences:
        raise ScansError("no prompts given; fix: pass at least one prompt")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        offset = width - len(seq)
        offsets.append(offset)
        ids[row, offset:] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, offset:] = 1
    positions = {}
    for key, values in (named or {}).items():
        positions[key] = torch.tensor([o + v for o, v in zip(offsets, values)], dtype=torch.long)
    return Batch(ids, mask, positions)


def pad_id_of(tokenizer: Any) -> int:
    """The id used for padding (pad, else eos, else 0). Padded positions are masked anyway."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def build_batch(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    system: str | None = None,
    probe: str | None = None,
    max_length: int | None = None,
) -> Batch:
    """Format, tokenize and left-pad prompts.

    Positions: ``"inst"`` = instruction end (last prompt token), ``"uend"`` = last token of
    the user's own text; with ``probe``, also ``"probe"`` = last probe token (the probe ids
    are appended after the prompt).
    """
    encoded = [encode_chat_with_end(tokenizer, p, system) for p in prompts]
    prompt_ids = [ids for ids, _ in encoded]
    probe_ids = encode_probe(tokenizer, probe) if probe else []
    seqs = [ids + probe_ids for ids in prompt_ids]
    if max_length is not None:
        for i, seq in enumerate(seqs):
            if len(seq) > max_length:
                raise ScansError(
                    f"prompt {i} is {len(seq)} tokens, longer than the model's context of "
                    f"{max_length}; fix: shorten the prompt"
                )
    named = {"inst": [len(ids) - 1 for ids in prompt_ids], "uend": [end for _, end in encoded]}
    if probe:
        named["probe"] = [len(s) - 1 for s in seqs]
    return left_pad(seqs, pad_id_of(tokenizer), named)


def context_length(model: Any) -> int | None:
    """The model's maximum context (``max_position_embeddings``), if it states one."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)
