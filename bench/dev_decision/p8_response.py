"""Does the steered answer tell benign from harmful better than the request? (extraction)

For every prompt of the taxonomy's dev split and of bench/eval_prompts.jsonl, with the default
profile PROFILE: the block outputs of layers 12-23 at the end of the user's text (`uend`) and at
the instruction end (`inst`) of the request; the original model's first 8 greedy tokens (is it a
refusal?); the first N greedy tokens steered away from refusal (sign -1 for every row); and the
block outputs of the request + steered answer, read unsteered, at the answer's last token
(`rlast`), at the end of the rendered assistant turn (`rend`) and averaged over the answer's
tokens (`rmean`).

    PYTHONPATH=src python bench/dev_decision/p8_response.py PROFILE OUT.pt [N]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from scans import Scans
from scans.decode import RowSettings, generate_from
from scans.engine import probe_pass
from scans.judge import is_refusal
from scans.models import find_layers
from scans.prompts import format_chat

LAYERS = list(range(12, 24))


def rows() -> list[dict]:
    out = []
    for line in open("src/scans/anchors/taxonomy.jsonl"):
        r = json.loads(line)
        if r["split"] == "dev":
            out.append({**r, "set": "dev", "group": r.get("pair") or r["id"]})
    for i, line in enumerate(open("bench/eval_prompts.jsonl")):
        r = json.loads(line)
        out.append({**r, "set": "eval", "group": f"eval{i}"})
    return out


@torch.no_grad()
def read_answers(s: Scans, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    """Block outputs at rlast / rend / rmean of each request + answer, unsteered."""
    tok, model = s.tokenizer, s.model
    system = s.profile.system
    texts, starts, lasts = [], [], []
    for p, a in zip(prompts, answers):
        head = format_chat(tok, p, system)
        conv = tok.apply_chat_template(
            ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": p}, {"role": "assistant", "content": a or "."}],
            tokenize=False,
        ).rstrip()
        n_head = len(tok(head, add_special_tokens=False)["input_ids"])
        n_ans = len(tok(head + (a or "."), add_special_tokens=False)["input_ids"])
        ids = tok(conv, add_special_tokens=False)["input_ids"]
        texts.append(ids)
        starts.append(n_head)
        lasts.append(n_ans - 1)
    width = max(len(t) for t in texts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(t)) + t for t in texts])
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in texts])
    caps: dict[int, torch.Tensor] = {}
    layers = find_layers(model)
    hooks = [
        layers[li].register_forward_hook(
            lambda m, i, o, li=li: caps.__setitem__(li, (o[0] if isinstance(o, tuple) else o).float())
        )
        for li in LAYERS
    ]
    try:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    h = torch.stack([caps[li] for li in LAYERS], dim=1)  # B, L, T, D
    out = {"rlast": [], "rend": [], "rmean": []}
    for b, t in enumerate(texts):
        off = width - len(t)
        out["rlast"].append(h[b, :, off + lasts[b]])
        out["rend"].append(h[b, :, width - 1])
        out["rmean"].append(h[b, :, off + starts[b] : off + lasts[b] + 1].mean(1))
    return {k: torch.stack(v) for k, v in out.items()}


def main() -> None:
    profile, out_path = sys.argv[1], Path(sys.argv[2])
    n_new = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    s = Scans.from_pretrained(profile=profile)
    data = rows()
    if len(sys.argv) > 4:
        data = data[:: int(sys.argv[4])]
    prompts = [r["prompt"] for r in data]
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("uend", "inst", "rlast", "rend", "rmean")}
    plain_txt: list[str] = [""] * len(prompts)
    steer_txt: list[str] = [""] * len(prompts)
    order: list[int] = []
    buckets = s._buckets(prompts, 32)
    for bi, idx in enumerate(buckets):
        chunk = [prompts[i] for i in idx]
        pre = s.prefill_prompts(chunk)
        acts = probe_pass(s.model, s.tokenizer, pre, s.profile.probe)
        feats["uend"].append(acts["uend"][:, LAYERS].float())
        feats["inst"].append(acts["inst"][:, LAYERS].float())
        plain = generate_from(s.model, s.tokenizer, pre, RowSettings(8))
        start = (pre.batch.attention_mask.sum(-1) - 1).cpu()
        plan = s.profile.steering_plan([-1] * len(chunk), start)
        steered = generate_from(s.model, s.tokenizer, pre, RowSettings(n_new), plan)
        r = read_answers(s, chunk, steered)
        for k in ("rlast", "rend", "rmean"):
            feats[k].append(r[k])
        for i, p_, s_ in zip(idx, plain, steered):
            plain_txt[i], steer_txt[i] = p_, s_
        order.extend(idx)
        print(f"batch {bi + 1}/{len(buckets)}", flush=True)
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(order))
    tensors = {k: torch.cat(v)[inv] for k, v in feats.items()}
    torch.save(
        {
            **tensors,
            "rows": data,
            "plain": plain_txt,
            "steered": steer_txt,
            "refused": [is_refusal(t) for t in plain_txt],
            "steered_refused": [is_refusal(t) for t in steer_txt],
        },
        out_path,
    )
    print("saved", out_path)


if __name__ == "__main__":
    main()
