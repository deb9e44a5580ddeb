"""Dev feature extraction: hidden states at uend / inst / mean over user tokens, the
teacher-forced log-prob of a refusal opening, and the greedy 32-token answer's refusal label."""
import json, sys, time
import torch
from scans.models import load_model
from scans.prompts import format_chat
from scans.judge import is_refusal

def main(inp, out, gen=True, bs=16):
    rows = [json.loads(l) for l in open(inp)]
    lm = load_model(None)
    model, tok = lm.model, lm.tokenizer
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    opening = tok("I'm sorry", add_special_tokens=False)["input_ids"]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["prompt"]))
    feats = {k: [None]*len(rows) for k in ("uend", "inst", "mean")}
    lp_open = [None]*len(rows); answers = [None]*len(rows)
    t0 = time.time()
    for b in range(0, len(order), bs):
        idx = order[b:b+bs]
        enc = []
        for i in idx:
            p = rows[i]["prompt"]
            text = format_chat(tok, p)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            cut = text.rfind(p.strip())
            start = len(tok(text[:cut], add_special_tokens=False)["input_ids"])
            end = len(tok(text[:cut+len(p.strip())], add_special_tokens=False)["input_ids"]) - 1
            enc.append((ids, start, end))
        T = max(len(e[0]) for e in enc) + len(opening)
        ids_t = torch.full((len(idx), T), pad); mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, (ids, s, e) in enumerate(enc):
            seq = ids + opening
            ids_t[r, T-len(seq):] = torch.tensor(seq); mask[r, T-len(seq):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            o = model(input_ids=ids_t, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        hs = torch.stack(o.hidden_states[1:], 1)  # B, L, T, D
        logp = torch.log_softmax(o.logits.float(), -1)
        for r, (ids, s, e) in enumerate(enc):
            off = T - len(ids) - len(opening)
            inst = off + len(ids) - 1
            feats["inst"][idx[r]] = hs[r, :, inst].half()
            feats["uend"][idx[r]] = hs[r, :, off+e].half()
            feats["mean"][idx[r]] = hs[r, :, off+s:off+e+1].float().mean(1).half()
            lp = sum(float(logp[r, inst+j, opening[j]]) for j in range(len(opening)))
            lp_open[idx[r]] = lp
        if gen:
            ids2 = ids_t[:, :T-len(opening)]; m2 = mask[:, :T-len(opening)]
            # rows were right-aligned including opening; re-align without it
            ids2 = torch.full((len(idx), T-len(opening)), pad); m2 = torch.zeros_like(ids2)
            for r, (ids, s, e) in enumerate(enc):
                ids2[r, ids2.shape[1]-len(ids):] = torch.tensor(ids); m2[r, ids2.shape[1]-len(ids):] = 1
            with torch.no_grad():
                g = model.generate(input_ids=ids2, attention_mask=m2, max_new_tokens=32, do_sample=False, pad_token_id=pad)
            for r in range(len(idx)):
                answers[idx[r]] = tok.decode(g[r, ids2.shape[1]:], skip_special_tokens=True)
        print(f"{b+len(idx)}/{len(rows)} {time.time()-t0:.0f}s", file=sys.stderr, flush=True)
    torch.save({"rows": rows, **{k: torch.stack(v) for k, v in feats.items()}, "lp_open": torch.tensor(lp_open),
                "answers": answers, "refused": [is_refusal(a) if a is not None else None for a in answers]}, out)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], gen=len(sys.argv) < 4 or sys.argv[3] != "nogen")
