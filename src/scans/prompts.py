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

    def rows(self, rows: Sequence[int]) -> Batch:
        """The given rows with every column kept (column indices stay valid, e.g. for a KV cache)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return Batch(
            self.input_ids[index],
            self.attention_mask[index],
            {k: v[index] for k, v in self.positions.items()},
        )

    def shared_prefix(self, min_length: int = 2) -> int:
        """Length of the token prefix every row starts with (0 if shorter than ``min_length``).

        Capped so that every named position and every row's last token lie after it.
        """
        mask = self.attention_mask.bool()
        lengths = mask.sum(-1)
        if self.input_ids.shape[0] < 2 or int(lengths.min()) < 2:
            return 0
        shortest = int(lengths.min())
        starts = self.input_ids.shape[1] - lengths  # left padded: first real column
        cols = starts[:, None] + torch.arange(shortest)[None, :]
        heads = torch.gather(self.input_ids, 1, cols)
        same = (heads == heads[:1]).all(0).long().cumprod(0)
        length = min(int(same.sum()), shortest - 1)
        for pos in self.positions.values():
            length = min(length, int((pos - starts).min()))
        return length if length >= min_length else 0

    def hoist_prefix(self, length: int) -> Batch:
        """Move a shared ``length``-token prefix to the first columns: [prefix][pads][rest].

        Attention masks and row positions (mask cumsum) are unchanged in meaning, so every
        row computes exactly what it computed left padded; the prefix can then be run once.
        """
        if length <= 0:
            return self
        mask = self.attention_mask.bool()
        lengths = mask.sum(-1)
        starts = self.input_ids.shape[1] - lengths
        assert bool(
            (mask.long().cumsum(-1) - 1 == torch.arange(mask.shape[1]) - starts[:, None])[mask].all()
        ), "hoist_prefix needs a left-padded batch"
        width = self.input_ids.shape[1] - int(starts.min())  # drop all-pad columns
        ids = self.input_ids[:, -width:].clone()
        new_mask = self.attention_mask[:, -width:].clone()
        first = int(starts[0])
        ids[:, :length] = self.input_ids[0, first : first + length]
        new_mask[:, :length] = 1
        for row in range(len(lengths)):  # the row's own copy of the prefix becomes padding
            lo = width - int(lengths[row])
            new_mask[row, max(length, lo) : lo + length] = 0
        shift = width - self.input_ids.shape[1]
        return Batch(ids, new_mask, {k: v + shift for k, v in self.positions.items()})

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


def _head(text: str, width: int = 40) -> str:
    """The start of a prompt, quoted, to name it in an error (indices into a combined list
    of anchors or pool prompts do not say which file row it was)."""
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


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
                    f"prompt {i} ({_head(prompts[i])}) is {len(seq)} tokens, longer than the model's "
                    f"context of {max_length}; fix: shorten the prompt"
                )
    named = {"inst": [len(ids) - 1 for ids in prompt_ids], "uend": [end for _, end in encoded]}
    if probe:
        named["probe"] = [len(s) - 1 for s in seqs]
    return left_pad(seqs, pad_id_of(tokenizer), named)


def context_length(model: Any) -> int | None:
    """The model's maximum context (``max_position_embeddings``), if it states one."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


# ------------------------------------------------------------------ multi-turn conversations
CHAT_ROLES = ("system", "user", "assistant")


def format_messages(tokenizer: Any, messages: Sequence[dict[str, str]], system: str | None = None) -> str:
    """Render a conversation (``[{"role", "content"}]``, last message from the user) with the
    chat template, generation prompt added. ``system`` is used when the conversation has no
    system message; templates without a system role get it merged into the first user turn.
    A single user message renders exactly as ``format_chat`` renders it."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not msgs or msgs[-1]["role"] != "user":
        raise ScansError("a conversation must end with a user message; fix: put the user's turn last")
    for m in msgs:
        if m["role"] not in CHAT_ROLES:
            raise ScansError(f"unknown role {m['role']!r}; fix: use one of {', '.join(CHAT_ROLES)}")
    if not isinstance(msgs[-1]["content"], str) or not msgs[-1]["content"].strip():
        raise ScansError("empty user message; fix: pass a non-empty message text")
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates without a system role raise inside Jinja
        if msgs[0]["role"] != "system":
            raise ScansError(f"chat template failed: {exc}; fix: check the tokenizer and the roles") from None
        head, rest = msgs[0]["content"], msgs[1:]
        first = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
        if first is None:
            raise ScansError("chat template failed; fix: add a user message") from None
        rest[first] = {"role": "user", "content": f"{head}\n\n{rest[first]['content']}"}
        try:
            return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)
        except Exception as exc2:
            raise ScansError(
                f"chat template failed: {exc2}; fix: check the tokenizer and the roles"
            ) from None


def special_token_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into special (control) tokens."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(str(token.content))
    return sorted(t for t in texts if t)


def _encode_content_as_text(
    tokenizer: Any, messages: Sequence[dict[str, str]], system: str | None
) -> tuple[list[int], int]:
    """``encode_messages_with_end`` with every message's content tokenized as plain text:
    the template is rendered around placeholders, its own pieces are tokenized with special
    tokens parsed and each content with them split (``split_special_tokens``)."""
    marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
    text = format_messages(tokenizer, [{**m, "content": k} for m, k in zip(messages, marks)], system)
    ids: list[int] = []
    end = -1
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    rest = text
    for i, mark in sorted(((i, k) for i, k in enumerate(marks) if k in text), key=lambda x: text.find(x[1])):
        head, _, rest = rest.partition(mark)
        if head:
            ids += tokenizer(head, add_special_tokens=False)["input_ids"]
        content = messages[i]["content"]
        if content:
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if i == last_user:
            end = len(ids) - 1
    if rest:
        ids += tokenizer(rest, add_special_tokens=False)["input_ids"]
    ids = list(ids)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, end = [bos, *ids], end + 1
    return ids, end if end >= 0 else len(ids) - 1


def encode_messages_with_end(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    system: str | None = None,
    *,
    parse_special: bool = True,
) -> tuple[list[int], int]:
    """Token ids of the formatted conversation and the index of the last token of the LAST
    user message's text (where the classifier reads). For a single user message this is
    ``encode_chat_with_end``.

    ``parse_special=False`` keeps special-token text inside message contents (e.g. a user
    writing ``<|im_end|>``) as plain text instead of control tokens, so content cannot forge
    turns; contents without such text are tokenized exactly as with ``parse_special=True``.
    """
    if not parse_special:
        specials = special_token_texts(tokenizer)
        if any(s in m["content"] for m in messages for s in specials):
            return _encode_content_as_text(tokenizer, messages, system)
    text = format_messages(tokenizer, messages, system)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    shift = 0
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, shift = [bos, *ids], 1
    last = messages[-1]["content"].strip()
    cut = text.rfind(last)
    end = len(ids) - 1
    if cut >= 0:
        head = tokenizer(text[: cut + len(last)], add_special_tokens=False)["input_ids"]
        end = min(len(head) - 1 + shift, len(ids) - 1)
    return ids, end


def left_pad_encoded(tokenizer: Any, encoded: Sequence[tuple[list[int], int]]) -> Batch:
    """Left-pad ``(ids, user_end)`` pairs into a Batch with positions ``"inst"`` and ``"uend"``."""
    named = {"inst": [len(ids) - 1 for ids, _ in encoded], "uend": [end for _, end in encoded]}
    return left_pad([ids for ids, _ in encoded], pad_id_of(tokenizer), named)


def build_message_batch(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    system: str | None = None,
    max_length: int | None = None,
    parse_special: bool = True,
) -> Batch:
    """Format, tokenize and left-pad conversations (the ``build_batch`` of message lists);
    ``parse_special`` as in ``encode_messages_with_end``."""
    encoded = [
        encode_messages_with_end(tokenizer, c, system, parse_special=parse_special) for c in conversations
    ]
    if max_length is not None:
        for i, (ids, _) in enumerate(encoded):
            if len(ids) > max_length:
                raise ScansError(
                    f"conversation {i} is {len(ids)} tokens, longer than the model's context of "
                    f"{max_length}; fix: shorten the conversation"
                )
    return left_pad_encoded(tokenizer, encoded)
