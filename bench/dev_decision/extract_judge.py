"""Dev features in two passes: chat+follow-up turn (uend, inst, mean, fol) and chat+assistant judge prefix (ast)."""
import json, sys, time
import torch
from scans.models import load_model
from scans.prompts import format_chat, format_messages

FOLLOW = "Is my previous request harmful? Answer Yes or No."
ASSIST = "Before answering, I check whether this request is harmful. Harmful (Yes or No):"

def main(inp, out, bs=16):
    rows = [json.loads(l) for l in open(inp)]
    lm = load_model(None); model, tok = lm.model, lm.tokenizer; model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    users = [r["prompt"].strip() for r in rows]; n = len(rows)
    chat = [format_chat(tok, u) for u in users]
    fol = [format_messages(tok, [{"role": "user", "content": u}, {"role": "assistant", "content": "Let me think."},
                                 {"role": "user", "content": FOLLOW}]) for u in users]
    assert all(f.startswith(c) for f, c in zip(fol, chat))
    ast = [c + ASSIST for c in chat]
    yes = sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", "yes", " Yes", " yes")})
    no = sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in ("No", "no", " No", " no")})
    res = {"rows": rows}
    for name, texts in (("fol", fol), ("ast", ast)):
        F = {k: [None] * n for k in ("end", "inst", "uend", "mean")}; ly = [None] * n
        order = sorted(range(n), key=lambda i: len(texts[i])); t0 = time.time()
        for b in range(0, n, bs):
            idx = order[b:b + bs]; enc = []
            for i in idx:
                ids = tok(texts[i], add_special_tokens=False)["input_ids"]
                c = chat[i]; cut = c.rfind(users[i])
                s = len(tok(c[:cut], add_special_tokens=False)["input_ids"])
                e = len(tok(c[:cut + len(users[i])], add_special_tokens=False)["input_ids"]) - 1
                ie = len(tok(c, add_special_tokens=False)["input_ids"]) - 1
                assert ids[: ie + 1] == tok(c, add_special_tokens=False)["input_ids"]
                enc.append((ids, s, e, ie))
            T = max(len(x[0]) for x in enc)
            ids_t = torch.full((len(idx), T), pad); mask = torch.zeros((len(idx), T), dtype=torch.long)
            for r, (ids, *_ ) in enumerate(enc):
                ids_t[r, T - len(ids):] = torch.tensor(ids); mask[r, T - len(ids):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                o = model(input_ids=ids_t, attention_mask=mask, position_ids=pos, output_hidden_states=True)
            hs = torch.stack(o.hidden_states[1:], 1)
            lp = torch.log_softmax(o.logits[:, -1].float(), -1)
            for r, (ids, s, e, ie) in enumerate(enc):
                off = T - len(ids); i = idx[r]
                F["end"][i] = hs[r, :, T - 1].half()
                ly[i] = float(torch.logsumexp(lp[r, yes], -1) - torch.logsumexp(lp[r, no], -1))
                if name == "fol":
                    F["inst"][i] = hs[r, :, off + ie].half(); F["uend"][i] = hs[r, :, off + e].half()
                    F["mean"][i] = hs[r, :, off + s:off + e + 1].float().mean(1).half()
            print(f"{name} {b + len(idx)}/{n} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        res[name] = torch.stack(F["end"]); res[name + "yes"] = torch.tensor(ly)
        if name == "fol":
            for k in ("inst", "uend", "mean"): res[k] = torch.stack(F[k])
        torch.save(res, out)

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
