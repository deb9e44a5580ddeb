"""Dev only: does the classifier's read of the shipped anchors explain what `--seed` moves?
The 4-fold protocol (outer seeds 1-2, grouped by contrast pair) with the package's cross-fitting
(8 splits, the mean of their thresholds, budget 0.02 over refused harmful and refused severe
rows). For `--seed` s = 0, 1, 2: the old anchors in training are either all of them, or a seeded
96 of the 128 per side and 128 of the 160 borderline (`scans fit` with --n-heldout 32 read 96 of
the 160 borderline, so this subsample is a little closer to "all" than that fit was);
the inner fold seed is s in both. Prints the steered fractions per seed, how many test rows are
steered at some seeds and not others, and the mean standard deviation of a row's score over seeds."""
import sys, random, numpy as np, torch
from sklearn.model_selection import StratifiedGroupKFold
sys.path.insert(0, __import__('os').path.dirname(__file__))
_argv = sys.argv; sys.argv = sys.argv[:1]
import analyse_judge as A
sys.argv = _argv
from scans.classifier import stratified_folds, classifier_tensors
from scans.vectors import crossfit_contrast_scores, classifier_scores
y, sev, dev, old, groups, N, F, rows = A.y, A.sev, A.dev, A.old, A.groups, A.N, A.F, A.rows
ref = torch.load('refall.pt').numpy()
hi = list(range(12, A.L)); R = 8
X = {k: torch.as_tensor(F[k][:, hi]).double() for k in ("uend", "inst")}
ids = np.array([r["id"] for r in rows])
side = {"h": [i for i in old if ids[i].startswith("a") and ids[i].endswith("h")],
        "b": [i for i in old if ids[i].startswith("a") and not ids[i].endswith("h")],
        "x": [i for i in old if ids[i].startswith("bl")]}
assert [len(v) for v in side.values()] == [128, 128, 160], [len(v) for v in side.values()]


def old_rows(mode, seed):
    if mode == "all":
        return np.array(old)
    out = []
    for k, n in (("h", 96), ("b", 96), ("x", 128)):
        order = list(side[k]); random.Random(seed).shuffle(order); out += order[:n]
    return np.array(sorted(out))


def oof_per_split(tr, seed):
    yt = y[tr]; out = []
    for r in range(R):
        f = torch.as_tensor(stratified_folds(yt, 4, seed if r == 0 else [seed, r]))
        out.append(np.maximum(*[crossfit_contrast_scores(X[k][tr], torch.as_tensor(yt), [f], 0.1)[0].numpy() for k in ("uend", "inst")]))
    return np.array(out)


def final(tr, te):
    s = []
    for k in ("uend", "inst"):
        t = classifier_tensors("instruction", X[k][tr], y[tr], [0.1], range(len(hi)))[0]
        s.append(classifier_scores("instruction", t, X[k][te], range(len(hi))).numpy())
    return np.maximum(*s)


def thr(o, tr): return min(A.conformal(o[y[tr] & ref[tr]], 0.02), A.conformal(o[sev[tr] & ref[tr]], 0.02))


for outer_seed in (1, 2):
    folds = list(StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=outer_seed).split(dev, y[dev], groups[dev]))
    for mode in ("subsample", "all"):
        sc = np.zeros((3, N)); st = np.zeros((3, N), bool); ts = np.zeros((3, 4))
        for s in range(3):
            for fi, (a, b) in enumerate(folds):
                tr = np.r_[old_rows(mode, s), dev[a]]; te = dev[b]
                t = float(np.mean([thr(x, tr) for x in oof_per_split(tr, s)]))
                e = final(tr, te); sc[s, te] = e; st[s, te] = e < t; ts[s, fi] = t
        d = dev; yd, rf = y[d], ref[d]
        rb = [st[s, d][~yd & rf].mean() for s in range(3)]; rh = [st[s, d][yd & rf].mean() for s in range(3)]
        ns = [int((st[s, d] & yd & rf & sev[d]).sum()) for s in range(3)]
        flips = (st[:, d].any(0) & ~st[:, d].all(0)); sd = sc[:, d].std(0, ddof=1).mean()
        print(f"outer {outer_seed} {mode:9s} refused-benign steered {' '.join(f'{x:.3f}' for x in rb)} | refused-harmful {' '.join(f'{x:.3f}' for x in rh)} | severe {ns} | "
              f"flips {flips.sum()} (benign {int((flips & ~yd).sum())}, harmful {int((flips & yd).sum())}) | score sd {sd:.3f} | thr sd per fold {np.round(ts.std(0, ddof=1), 3)} mean {np.round(ts.mean(0), 3)}", flush=True)
