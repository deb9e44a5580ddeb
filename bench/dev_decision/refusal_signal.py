"""Dev split only: does the original model refuse each dev prompt (greedy, 12 tokens, substring
judge), and how well does its first-token distribution at the instruction end predict that?

    python bench/dev_decision/refusal_signal.py /work/dev/all.jsonl /work/dev/refusal.pt
"""

import json
import sys
import time

import torch

from scans.activations import forward_capture
from scans.decode import RowSettings, generate_from
from scans.engine import prefill
from scans.judge import is_refusal
from scans.models import load_model
from scans.prompts import build_batch


def main(inp: str, out: str, bs: int = 48, tokens: int = 12) -> None:
    rows = [json.loads(line) for line in open(inp)]
    lm = load_model(None)
    model, tok = lm.model, lm.tokenizer
    n = len(rows)
    order = sorted(range(n), key=lambda i: len(rows[i]["prompt"]))
    answers: list[str] = [""] * n
    first = torch.zeros(n, dtype=torch.long)
    logp = torch.zeros(n, model.config.vocab_size)
    start = time.time()
    for b in range(0, n, bs):
        idx = order[b : b + bs]
        batch = build_batch(tok, [rows[i]["prompt"] for i in idx])
        last = torch.full((len(idx),), batch.input_ids.shape[1] - 1)
        _, logits = forward_capture(model, batch.input_ids, batch.attention_mask, {"inst": last}, logits_at="inst")
        lp = torch.log_softmax(logits.float(), -1).cpu()
        texts = generate_from(model, tok, prefill(model, batch), RowSettings(max_tokens=tokens))
        for k, i in enumerate(idx):
            answers[i], first[i], logp[i] = texts[k], int(lp[k].argmax()), lp[k]
        print(f"{b + len(idx)}/{n} {time.time() - start:.0f}s", flush=True)
    refused = torch.tensor([is_refusal(a) for a in answers])
    top = torch.topk(logp.exp().mean(0), 20).indices
    torch.save({"rows": rows, "answers": answers, "refused": refused, "first": first,
                "top_logp": logp[:, top], "top_ids": top}, out)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
