"""Dev only: nonlinear and stacked probes vs the shrunk LDA, in p5_exp's 4-fold protocol
(outer seeds 1 / 2 / 3, budget 0.02 over refused harmful and refused severe prompts)."""
import sys, os, numpy as np
sys.path.insert(0, os.path.dirname(__file__))
_argv = sys.argv; sys.argv = sys.argv[:1]
import p5_exp as P
sys.argv = _argv
from sklearn.neural_network import MLPClassifier
from sklearn.linear_model import LogisticRegression
F, y = P.F, P.y
HI = list(range(12, 24))


def _norm(X, mu):
    Z = X - mu
    return Z / (np.linalg.norm(Z, axis=-1, keepdims=True) + 1e-8)


def make_knn(feat, k=10, layers=HI):
    """Mean cosine to the k nearest harmful minus to the k nearest benign rows, averaged over layers;
    z-scored on the training rows' leave-self-out scores."""
    def raw(Ztr, ytr, Zq, self_mask=None):
        out = []
        for j in range(Ztr.shape[1]):
            S = Zq[:, j] @ Ztr[:, j].T
            if self_mask is not None:
                S[self_mask] = -np.inf
            h = np.sort(np.where(ytr[None], S, -np.inf), 1)[:, -k:].mean(1)
            b = np.sort(np.where(~ytr[None], S, -np.inf), 1)[:, -k:].mean(1)
            out.append(h - b)
        return np.mean(out, 0)

    def fit(tr):
        X = F[feat][tr][:, layers].astype(np.float64); mu = X.mean(0)
        Z = _norm(X, mu); yt = y[tr]
        s = raw(Z, yt, Z, np.eye(len(tr), dtype=bool)); m, sd = s.mean(), s.std() + 1e-8
        return lambda idx: (raw(Z, yt, _norm(F[feat][idx][:, layers].astype(np.float64), mu)) - m) / sd
    return fit


def make_mlp(feats, layers=(12, 15, 18, 21), hidden=64, alpha=1.0, pca=128, seed=0):
    def feats_of(idx):
        return np.concatenate([F[f][idx][:, list(layers)].reshape(len(idx), -1) for f in feats], 1).astype(np.float64)

    def fit(tr):
        X = feats_of(tr); mu, sd = X.mean(0), X.std(0) + 1e-4; Z = (X - mu) / sd
        U, S, Vt = np.linalg.svd(Z, full_matrices=False); V = Vt[:pca].T
        m = MLPClassifier((hidden,), alpha=alpha, max_iter=500, random_state=seed).fit(Z @ V, y[tr])
        def score(idx):
            p = m.predict_proba(((feats_of(idx) - mu) / sd) @ V)[:, 1].clip(1e-6, 1 - 1e-6)
            return np.log(p / (1 - p))
        return score
    return fit


def make_stack(feats, lam=0.1, layers=HI, C=1.0):
    """Per-layer shrunk LDA scores of every position, weighted by a logistic regression fitted on
    inner out-of-fold per-layer scores (a learned combination over layers and positions)."""
    from sklearn.model_selection import StratifiedKFold
    def per_layer(ws, feat, idx):
        return np.stack([(F[feat][idx][:, l].astype(np.float64) @ w - m) / s for l, w, m, s in ws], 1)

    def fit(tr):
        oof = np.zeros((len(tr), len(feats) * len(layers)))
        for a, b in StratifiedKFold(4, shuffle=True, random_state=0).split(tr, y[tr]):
            oof[b] = np.concatenate([per_layer(P.lda_w(F[f][tr[a]], y[tr[a]], layers, lam), f, tr[b]) for f in feats], 1)
        lr = LogisticRegression(C=C, max_iter=1000).fit(oof, y[tr])
        full = [P.lda_w(F[f][tr], y[tr], layers, lam) for f in feats]
        return lambda idx: lr.decision_function(np.concatenate([per_layer(ws, f, idx) for ws, f in zip(full, feats)], 1))
    return fit


def zmax(*fitters):
    """max of several fitters' scores, each z-scored on the training rows (in-sample)."""
    def fit(tr):
        fs = [f(tr) for f in fitters]
        st = [(s(tr).mean(), s(tr).std() + 1e-8) for s in fs]
        return lambda idx: np.max([(s(idx) - m) / sd for s, (m, sd) in zip(fs, st)], 0)
    return fit


if __name__ == "__main__":
    which = sys.argv[1:] or ["base"]
    lda = lambda f: P.make_lda(f, lam=0.1)
    if "base" in which:
        P.run("base max(uend,inst) lda .1", [lda("uend"), lda("inst")])
    if "knn" in which:
        for k in (5, 20):
            P.run(f"knn k{k} max(uend,inst)", [make_knn("uend", k), make_knn("inst", k)])
    if "knnlda" in which:
        P.run("max(lda uend, lda inst, knn20 uend, knn20 inst)", [lda("uend"), lda("inst"), make_knn("uend", 20), make_knn("inst", 20)])
    if "mlp" in which:
        for a in (1.0, 10.0):
            P.run(f"mlp uend+inst 4 layers pca128 alpha {a}", [make_mlp(["uend", "inst"], alpha=a)])
    if "stack" in which:
        for C in (0.1, 1.0):
            P.run(f"stack lr over per-layer lda (uend,inst) C{C}", [make_stack(["uend", "inst"], C=C)])
    if "lr" in which:
        for C in (0.01, 0.1):
            P.run(f"logreg uend+inst 12,15,18,21 C{C}", [P.make_logreg(["uend", "inst"], [12, 15, 18, 21], C)])
