"""Dev only: does averaging each prompt's out-of-fold score over R cross-fitting splits steady the
steer threshold across fold seeds? (outer seed 1, 4 outer folds; inner fold seeds 0..S-1)."""
import sys, time, numpy as np
sys.path.insert(0, __import__('os').path.dirname(__file__))
_argv = sys.argv; sys.argv = sys.argv[:1]
import p5_exp as P
sys.argv = _argv
R_list = [int(r) for r in (sys.argv[1] if len(sys.argv) > 1 else "1,8").split(",")]
S = int(sys.argv[2]) if len(sys.argv) > 2 else 6
for R in R_list:
    P.REPEATS = R
    allts = []
    t0 = time.time()
    for iseed in range(S):
        P.INNER_SEED, P.TS[:] = 1000 * iseed, []
        P.run(f"R={R} inner seed {iseed}", [P.make_lda("uend", lam=0.1), P.make_lda("inst", lam=0.1)], seeds=(1,))
        allts.append(list(P.TS))
    A_ = np.array(allts)
    print(f"R={R}: per-fold thresholds over {S} fold seeds:\n", np.round(A_.T, 3))
    print(f"R={R}: sd per outer fold", np.round(A_.std(0, ddof=1), 3), "mean", np.round(A_.mean(0), 3), f"({time.time()-t0:.0f} s)", flush=True)
