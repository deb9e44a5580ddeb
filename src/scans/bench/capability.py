"""Capability under steering: MMLU accuracy (5-shot, letter logits) and answer perplexity.

Both reuse the prefill: only the positions from the instruction end on are steered, so a
method's answer logits need one extra column (MMLU) or the answer's tokens (perplexity)
after the shared prompt cache. A subject's five dev shots are the same for all its
questions, so the shared-prefix prefill runs them once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..activations import forward_capture
from ..api import Scans
from ..engine import Prefill, continue_hidden, prefill
from ..models import model_device
from ..progress import progress_bar
from ..prompts import build_batch, context_length
from ..steering import SteeringPlan
from .data import MMLUQuestion, MMLUSubject
from .methods import Method
from .runner import group_methods, method_decisions

LETTERS = ("A", "B", "C", "D")


def format_question(q: MMLUQuestion, with_answer: bool) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices))
    return f"{q.question}\n{options}\nAnswer:" + (f" {q.answer}\n\n" if with_answer else "")


def mmlu_prompt(subject: MMLUSubject, q: MMLUQuestion, shots: int = 5) -> str:
    """The classic 5-shot MMLU prompt, sent as one user message through the chat template."""
    topic = subject.name.replace("_", " ")
    head = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
    return head + "".join(format_question(s, True) for s in subject.dev[:shots]) + format_question(q, False)


def letter_ids(tokenizer: Any) -> list[list[int]]:
    """Single-token ids of each answer letter, with and without a leading space."""
    out = []
    for letter in LETTERS:
        ids = set()
        for variant in (letter, " " + letter):
            toks = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.add(int(toks[0]))
        out.append(sorted(ids))
    return out


@torch.no_grad()
def next_token_logits(
    model: torch.nn.Module, pre: Prefill, plan: SteeringPlan | None, layers_path: str | None
) -> torch.Tensor:
    """(B, V) logits after the full prompt (the instruction end run under ``plan``)."""
    batch = pre.batch
    zeros = torch.zeros(batch.input_ids.shape[0], dtype=torch.long)
    _, logits = forward_capture(
        model,
        batch.input_ids[:, -1:],
        batch.attention_mask,
        {"inst": zeros},
        cache=pre.fresh_cache(),
        plan=plan,
        logits_at="inst",
        layers_path=layers_path,
    )
    assert logits is not None
    return logits.cpu()


def run_mmlu(
    scans: Scans,
    methods: Sequence[Method],
    subjects: dict[str, MMLUSubject],
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Accuracy per method (overall and per subject) from the answer-letter logits."""
    model, tok = scans.model, scans.tokenizer
    letters = letter_ids(tok)
    correct: dict[str, dict[str, list[bool]]] = {m.name: {} for m in methods}
    steered: dict[str, int] = {m.name: 0 for m in methods}
    flagged: dict[str, int] = {m.name: 0 for m in methods}  # judged harmful by the method's classifier
    work = [(name, subject) for name, subject in subjects.items() if subject.test]
    for members in group_methods(methods):
        lead = members[0]
        for name, subject in progress_bar(work, "mmlu", progress):
            prompts = [mmlu_prompt(subject, q) for q in subject.test]
            full = build_batch(tok, prompts, system=lead.system, max_length=context_length(model))
            for start in range(0, len(prompts), batch_size):
                rows = list(range(start, min(start + batch_size, len(prompts))))
                with lead.active(model):
                    pre = prefill(model, full.select(rows))
                    decisions = method_decisions(members, scans, pre, [prompts[i] for i in rows])
                    for m in members:
                        signs = decisions[m.name].signs
                        steered[m.name] += sum(1 for s in signs if s)
                        flagged[m.name] += sum(1 for f in decisions[m.name].flagged if f)
                        logits = next_token_logits(model, pre, m.plan(pre, signs), scans.layers_path)
                        scores = torch.stack([logits[:, ids].max(-1).values for ids in letters], dim=-1)
                        picks = scores.argmax(-1).tolist()
                        for row, pick in zip(rows, picks):
                            correct[m.name].setdefault(name, []).append(
                                LETTERS[pick] == subject.test[row].answer
                            )
    out = {}
    for method, per in correct.items():
        flat = [c for values in per.values() for c in values]
        out[method] = {
            "accuracy": sum(flat) / max(1, len(flat)),
            "n": len(flat),
            "steered": steered[method],
            "flagged": flagged[method],
            "per_subject": {s: {"accuracy": sum(v) / len(v), "n": len(v)} for s, v in sorted(per.items())},
        }
    return out


@torch.no_grad()
def answer_nll(
    model: torch.nn.Module, pre: Prefill, answers: Sequence[Sequence[int]], plan: SteeringPlan | None
) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood of each row's answer tokens after its prompt, and their count."""
    device = model_device(model)
    batch = pre.batch
    width = max(len(a) for a in answers)
    tail = torch.zeros((len(answers), width), dtype=torch.long)
    tail_mask = torch.zeros_like(tail)
    for i, ids in enumerate(answers):
        tail[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        tail_mask[i, : len(ids)] = 1
    ids = torch.cat([batch.input_ids[:, -1:].cpu(), tail], dim=1).to(device)
    mask = torch.cat([batch.attention_mask.cpu(), tail_mask], dim=1).to(device)
    hidden = continue_hidden(model, pre, ids, mask, plan)
    logits = model.get_output_embeddings()(hidden[:, :-1]).float()
    logp = F.log_softmax(logits, dim=-1).cpu()
    token_logp = logp.gather(-1, tail[:, :, None])[..., 0] * tail_mask
    return (-token_logp.sum(-1)).tolist(), tail_mask.sum(-1).tolist()


def run_perplexity(
    scans: Scans,
    methods: Sequence[Method],
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Perplexity of reference answers (e.g. TruthfulQA best answers) given their questions, per method."""
    model, tok = scans.model, scans.tokenizer
    questions = [q for q, _ in pairs]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for _, a in pairs]
    totals = {m.name: [0.0, 0, 0] for m in methods}  # nll, tokens, steered rows
    for members in group_methods(methods):
        lead = members[0]
        full = build_batch(tok, questions, system=lead.system, max_length=context_length(model))
        starts = range(0, len(pairs), batch_size)
        for start in progress_bar(starts, "perplexity", progress):
            rows = list(range(start, min(start + batch_size, len(pairs))))
            with lead.active(model):
                pre = prefill(model, full.select(rows))
                decisions = method_decisions(members, scans, pre, [questions[i] for i in rows])
                for m in members:
                    signs = decisions[m.name].signs
                    nll, count = answer_nll(model, pre, [answers[r] for r in rows], m.plan(pre, signs))
                    totals[m.name][0] += sum(nll)
                    totals[m.name][1] += sum(count)
                    totals[m.name][2] += sum(1 for s in signs if s)
    return {
        name: {"ppl": math.exp(nll / max(1, n)), "n_tokens": n, "n_texts": len(pairs), "steered": k}
        for name, (nll, n, k) in totals.items()
    }
