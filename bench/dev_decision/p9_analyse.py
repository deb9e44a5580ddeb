"""Request signals under two protocols: p8_analyse.py's grouped 4-fold cross-validation (seeds
1-3), and leave-one-type-out (every taxonomy type's out-of-fold scores come from classifiers
trained on the other types only: how the signal does on a kind of prompt it never saw, the
situation of a benchmark). Same LDA, same 2% conformal budget over the refused harmful prompts.

    python bench/dev_decision/p9_analyse.py ALL.pt GUARD.pt JUDGE_0.5B.pt JUDGE_1.5B.pt

Signals: the 0.5B's `uend` / `inst` (the default rule is their max), the 1.5B guard's, the
prompted judgement's last-token states (`judge05`, `judge15`, p9_judge.py) and its zero-shot
logit(yes) - logit(no) (`zs05`, `zs15`, untrained).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from p8_analyse import folds, lda_fit, lda_score, threshold  # noqa: E402


def main() -> None:
    d = torch.load(sys.argv[1], weights_only=False)
    g = torch.load(sys.argv[2], weights_only=False)
    rows = d["rows"]
    dev = np.array([r["set"] == "dev" for r in rows])
    y_all = np.array([r["label"] != "benign" for r in rows], dtype=int)
    ref_all = np.array(d["refused"])
    sref_all = np.array(d["steered_refused"])
    feats = {k: d[k].numpy().astype(np.float64) for k in ("uend", "inst")}
    feats |= {f"guard-{k}": g[k].numpy().astype(np.float64) for k in ("uend", "inst")}
    fixed: dict[str, np.ndarray] = {}
    for path, tag in zip(sys.argv[3:], ("05", "15")):
        j = torch.load(path, weights_only=False)
        feats[f"judge{tag}"] = j["judge"].numpy().astype(np.float64)
        fixed[f"zs{tag}"] = j["zeroshot"].numpy().astype(np.float64)
    y, ref = y_all[dev], ref_all[dev]
    types = np.array([r["type"] for r in rows if r["set"] == "dev"])
    groups = [r["group"] for r in rows if r["set"] == "dev"]
    sev = np.array([r.get("type") == "severe" for r in rows if r["set"] == "dev"]) & (y == 1)
    combos = {
        "max(uend,inst) [default rule]": ["uend", "inst"],
        "max(guard-uend,guard-inst) [guard]": ["guard-uend", "guard-inst"],
        "judge05": ["judge05"],
        "judge15": ["judge15"],
        "zs05 (zero-shot)": ["zs05"],
        "zs15 (zero-shot)": ["zs15"],
        "max(guard, judge15)": ["guard-uend", "guard-inst", "judge15"],
        "max(default, judge05)": ["uend", "inst", "judge05"],
        "max(guard, judge05)": ["guard-uend", "guard-inst", "judge05"],
    }
    combos = {k: v for k, v in combos.items() if all(p in feats or p in fixed for p in v)}

    def oof_scores(split: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: v[dev].copy() for k, v in fixed.items()}
        for k, x in feats.items():
            s = np.zeros(len(y))
            for f in np.unique(split):
                tr, te = split != f, split == f
                s[te] = lda_score(lda_fit(x[dev][tr], y[tr]), x[dev][te])
            out[k] = s
        return out

    def evaluate(oof: dict[str, np.ndarray]) -> dict[str, tuple]:
        res = {}
        for name, parts in combos.items():
            s = np.max(np.stack([oof[p] for p in parts]), 0)
            t = threshold(s[(y == 1) & ref])
            st = s < t
            rr, yr = s[ref], y[ref]
            auc = (rr[yr == 1][:, None] > rr[yr == 0][None, :]).mean()
            per_type = {
                ty: st[(types == ty) & (y == 0) & ref].mean()
                for ty in np.unique(types)
                if ((types == ty) & (y == 0) & ref).sum() >= 3
            }
            res[name] = (
                auc,
                st[(y == 0) & ref].mean(),
                st[(y == 1) & ref].mean(),
                int((st & sev & ref).sum()),
                per_type,
            )
        return res

    n_ref_b, n_ref_h = int(((y == 0) & ref).sum()), int(((y == 1) & ref).sum())
    print(f"dev: refused benign {n_ref_b}, refused harmful {n_ref_h}, budget 2%")
    print("\n== grouped 4-fold (seeds 1 / 2 / 3): AUROC(refused), refused benign steered, refused harmful steered, severe")
    runs = [evaluate(oof_scores(folds(groups, 4, seed))) for seed in (1, 2, 3)]
    for name in combos:
        r = [run[name] for run in runs]
        print(
            f"{name:38s} {np.mean([x[0] for x in r]):.3f}  "
            + " / ".join(f"{x[1]:.0%}" for x in r)
            + "   "
            + " / ".join(f"{x[2]:.1%}" for x in r)
            + "   "
            + " / ".join(str(x[3]) for x in r)
        )
    print("\n== leave one type out: AUROC(refused), refused benign steered, refused harmful steered, severe")
    loto = evaluate(oof_scores(types))
    for name, x in loto.items():
        print(f"{name:38s} {x[0]:.3f}  {x[1]:.0%}   {x[2]:.1%}   {x[3]}")
    print("\nleave one type out, refused benign steered per benign type (>= 3 refused):")
    names = list(combos)
    tys = sorted(loto[names[0]][4])
    print(f"{'type':26s}" + "".join(f"{n[:14]:>15s}" for n in names))
    for ty in tys:
        n = int(((types == ty) & (y == 0) & ref).sum())
        print(f"{ty + f' ({n})':26s}" + "".join(f"{loto[nm][4][ty]:15.0%}" for nm in names))

    # eval prompts: classifiers on the whole dev split, threshold from dev (grouped seed 1)
    ev = ~dev
    ye, refe, srefe = y_all[ev], ref_all[ev], sref_all[ev]
    oof1 = oof_scores(folds(groups, 4, 1))
    models = {k: lda_fit(x[dev], y) for k, x in feats.items()}
    print("\neval prompts (60 benign / 60 harmful): benign steered (refused), harmful steered (refused, unlocked)")
    for name, parts in combos.items():
        t = threshold(np.max(np.stack([oof1[p] for p in parts]), 0)[(y == 1) & ref])
        s = np.max(
            np.stack([lda_score(models[p], feats[p][ev]) if p in feats else fixed[p][ev] for p in parts]), 0
        )
        st = s < t
        print(
            f"{name:38s} benign {int(st[ye == 0].sum())}/60 ({int((st & (ye == 0) & refe).sum())}/"
            f"{int(((ye == 0) & refe).sum())}), harmful {int(st[ye == 1].sum())} "
            f"({int((st & (ye == 1) & refe).sum())}, {int((st & (ye == 1) & refe & ~srefe).sum())})"
        )


if __name__ == "__main__":
    main()
