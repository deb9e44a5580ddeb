"""The safety budget's conformal steer threshold: its finite-sample guarantee on synthetic scores."""

import math

import numpy as np
import pytest

from scans.calibration import clopper_pearson_upper, safety_budget


@pytest.mark.parametrize("max_loss,n", [(0.02, 99), (0.05, 60), (0.1, 30), (0.02, 250)])
def test_guarantee_holds_over_resamples(max_loss: float, n: int) -> None:
    # harmful scores from a heavy-tailed distribution; a fresh harmful prompt is steered when
    # its score falls below the threshold calibrated on n others: that rate must stay <= max_loss
    rng = np.random.default_rng(0)
    trials = 20000
    cal = rng.standard_t(3, size=(trials, n))
    new = rng.standard_t(3, size=trials)
    below = np.array([new[i] < safety_budget(cal[i], max_loss).threshold for i in range(trials)])
    k = math.floor(max_loss * (n + 1))
    exact = k / (n + 1)
    se = math.sqrt(exact * (1 - exact) / trials)
    assert below.mean() <= max_loss + 3 * se
    assert abs(below.mean() - exact) <= 4 * se + 1e-9  # the bound is tight for continuous scores


def test_threshold_is_the_kth_smallest_and_zero_k_steers_nothing() -> None:
    scores = np.array([5.0, -1.0, 3.0, 0.5, 2.0, 4.0, 1.5, -0.5, 2.5, 3.5])
    b = safety_budget(scores, 0.2)  # k = floor(0.2 * 11) = 2 -> second smallest
    assert (b.k, b.threshold, b.below) == (2, -0.5, 1)
    assert safety_budget(scores, 0.05).threshold == -math.inf  # k = 0


def test_ties_never_raise_the_steered_rate() -> None:
    scores = np.zeros(50)
    b = safety_budget(scores, 0.1)
    assert b.below == 0 and not (scores < b.threshold).any()


def test_clopper_pearson_known_values() -> None:
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-9)
    assert clopper_pearson_upper(5, 5) == 1.0
    # more failures, higher bound; more trials, lower bound
    assert clopper_pearson_upper(3, 100) > clopper_pearson_upper(2, 100) > clopper_pearson_upper(2, 200)


def test_rule_budget_is_the_joint_bound_of_both_classes() -> None:
    from scans.calibration import rule_budget
    from scans.errors import ScansError

    rng = np.random.default_rng(1)
    n_h, n_b = 300, 300
    score = np.r_[rng.normal(1, 1, n_h), rng.normal(-1, 1, n_b)]
    inst = np.r_[rng.normal(1, 1, n_h), rng.normal(-1, 1, n_b)]
    harmful = np.r_[np.ones(n_h, bool), np.zeros(n_b, bool)]
    severe = np.zeros(n_h + n_b, bool)
    severe[:100] = True
    t, rec = rule_budget(score, inst, harmful, severe, 0.05)
    joint = np.maximum(score, inst)
    assert t == min(
        safety_budget(joint[harmful], 0.05).threshold, safety_budget(joint[severe], 0.05).threshold
    )
    steer = joint < t
    assert steer[harmful].mean() <= 0.05 and steer[severe].mean() <= 0.05
    assert rec["steered_fraction"]["benign"] == pytest.approx(steer[~harmful].mean())
    assert set(rec["budget"]) == {"harmful", "severe"}
    with pytest.raises(ScansError, match=r"100 severe prompts .* 0.005 budget .*fix:"):
        rule_budget(score, inst, harmful, severe, 0.005)


def test_a_tighter_severe_budget_binds_only_the_severe_class() -> None:
    from scans.calibration import rule_budget
    from scans.errors import ScansError

    rng = np.random.default_rng(4)
    n_h, n_b = 400, 300
    # severe prompts that score like benign ones more often than the other harmful ones do
    score = np.r_[rng.normal(-0.5, 1, 200), rng.normal(1.5, 1, n_h - 200), rng.normal(-1, 1, n_b)]
    harmful = np.r_[np.ones(n_h, bool), np.zeros(n_b, bool)]
    severe = np.zeros(n_h + n_b, bool)
    severe[:200] = True
    joint = score  # the second signal equal to the first: max(score, inst) is the score
    t_same, rec_same = rule_budget(score, score, harmful, severe, 0.05)
    t, rec = rule_budget(score, score, harmful, severe, 0.05, max_severe_loss=0.01)
    assert rec_same["max_severe_loss"] == 0.05 and rec["max_severe_loss"] == 0.01
    assert rec["budget"]["severe"]["k"] == math.floor(0.01 * 201) == 2
    assert rec["budget"]["harmful"] == rec_same["budget"]["harmful"] | {"below": rec["budget"]["harmful"]["below"],
                                                                         "upper_bound": rec["budget"]["harmful"]["upper_bound"]}  # fmt: skip
    assert t == safety_budget(joint[severe], 0.01).threshold < t_same
    assert (joint[severe] < t).mean() <= 0.01
    with pytest.raises(ScansError, match=r"200 severe prompts .* 0.004 budget .*raise --max-severe-loss"):
        rule_budget(score, score, harmful, severe, 0.05, max_severe_loss=0.004)
    with pytest.raises(AssertionError, match="severe budget"):
        rule_budget(score, score, harmful, severe, 0.05, max_severe_loss=0.1)


def test_several_splits_give_the_mean_of_each_splits_joint_threshold() -> None:
    from scans.calibration import rule_budget

    rng = np.random.default_rng(2)
    n = 400
    harmful = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    severe = np.zeros(n, bool)
    severe[:80] = True
    base = np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 200)]
    score = base + rng.normal(0, 0.3, (5, n))  # five splits' out-of-fold scores
    inst = base + rng.normal(0, 0.3, (5, n))
    t, rec = rule_budget(score, inst, harmful, severe, 0.05)
    per_split = [rule_budget(s, i, harmful, severe, 0.05)[0] for s, i in zip(score, inst)]
    assert rec["split_thresholds"] == pytest.approx(per_split)
    assert t == pytest.approx(np.mean(per_split)) and min(per_split) < t < max(per_split)
    joint = np.maximum(score, inst)
    assert rec["budget"]["harmful"]["below"] == max(int((j[harmful] < t).sum()) for j in joint)


def test_the_mean_of_split_thresholds_keeps_the_guarantee_over_resamples() -> None:
    """Calibration scores carry per-split fold noise on top of each prompt's own score; a new
    prompt is scored once, with noise of the same size. Over many resampled calibration sets,
    the rate at which a new harmful prompt falls under the mean of the splits' conformal
    thresholds stays within the budget (the normal's lower tail is convex there)."""
    from statistics import NormalDist

    rng = np.random.default_rng(3)
    trials, n, splits, noise, max_loss = 1500, 150, 8, 0.5, 0.05
    new_sd = math.sqrt(1 + noise**2)
    rates, single = [], []
    for _ in range(trials):
        z = rng.normal(0, 1, n)
        cal = z + rng.normal(0, noise, (splits, n))
        thresholds = [safety_budget(c, max_loss).threshold for c in cal]
        rates.append(NormalDist(0, new_sd).cdf(float(np.mean(thresholds))))  # exact rate for a new prompt
        single.append(NormalDist(0, new_sd).cdf(thresholds[0]))
    k = math.floor(max_loss * (n + 1))
    assert np.mean(single) <= k / (n + 1) + 0.002  # one split: the split-conformal rate
    assert np.mean(rates) <= np.mean(single) <= max_loss  # the mean of splits: no higher
    # for one calibration sample, the fold assignment (what --seed moves) shifts it far less
    z = rng.normal(0, 1, n)
    draws = [
        [safety_budget(z + rng.normal(0, noise, n), max_loss).threshold for _ in range(splits)]
        for _ in range(200)
    ]
    assert np.std(np.mean(draws, 1)) < np.std([d[0] for d in draws]) / 2


def test_the_steered_fraction_applies_the_harmful_threshold_first() -> None:
    """A score at or above the harmful threshold is never steered (the rule's first branch), so
    the reported fractions drop those prompts; the steer threshold itself does not move."""
    from scans.calibration import rule_budget

    rng = np.random.default_rng(2)
    score = np.r_[rng.normal(1, 1, 300), rng.normal(-1, 1, 300)]
    inst = np.r_[rng.normal(1, 1, 300), rng.normal(-1, 1, 300)]
    harmful = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    severe = np.zeros(600, bool)
    t, rec = rule_budget(score, inst, harmful, severe, 0.05)
    cap = float(np.quantile(score[~harmful], 0.5))
    assert cap < t
    t2, capped = rule_budget(score, inst, harmful, severe, 0.05, harmful_threshold=cap)
    assert t2 == t
    steer = (np.maximum(score, inst) < t) & (score < cap)
    assert capped["steered_fraction"]["benign"] == pytest.approx(steer[~harmful].mean())
    assert capped["steered_fraction"]["benign"] < rec["steered_fraction"]["benign"]


@pytest.mark.parametrize("max_loss,n", [(0.02, 99), (0.05, 60), (0.1, 30)])
def test_refuse_budget_guarantee_holds_over_resamples(max_loss: float, n: int) -> None:
    # the mirror bound: a fresh benign prompt the model answers is steered toward refusal when
    # both its signals exceed the refuse threshold calibrated on n others; rate <= max_loss
    from scans.calibration import refuse_budget

    rng = np.random.default_rng(2)
    trials = 8000
    harmful = np.zeros(n, bool)
    answered = np.ones(n, bool)
    hits = []
    for _ in range(trials):
        score, inst = rng.standard_t(3, size=n + 1), rng.standard_t(3, size=n + 1)
        r, _ = refuse_budget(score[:n], inst[:n], harmful, answered, max_loss)
        hits.append(min(score[n], inst[n]) > r)
    k = math.floor(max_loss * (n + 1))
    exact = k / (n + 1)
    se = math.sqrt(exact * (1 - exact) / trials)
    assert np.mean(hits) <= max_loss + 3 * se
    assert abs(np.mean(hits) - exact) <= 4 * se + 1e-9  # tight for continuous scores


def test_refuse_budget_counts_only_answered_benign_prompts() -> None:
    from scans.calibration import refuse_budget
    from scans.errors import ScansError

    rng = np.random.default_rng(3)
    n = 200
    score, inst = rng.normal(size=n), rng.normal(size=n)
    harmful = np.arange(n) < 50
    answered = np.arange(n) % 4 != 0  # the model refuses every fourth prompt
    r, rec = refuse_budget(score, inst, harmful, answered, 0.05)
    use = ~harmful & answered
    both = np.minimum(score, inst)[use]
    k = math.floor(0.05 * (use.sum() + 1))
    assert r == pytest.approx(np.sort(both)[::-1][k - 1])  # the k-th largest joint signal
    assert rec["budget"]["n"] == use.sum() and rec["budget"]["k"] == k
    assert rec["budget"]["above"] == int((both > r).sum()) == k - 1
    # a harmful or refused prompt above every benign answered one does not move the threshold
    score2, inst2 = score.copy(), inst.copy()
    score2[0] = inst2[0] = 99.0  # harmful
    score2[52] = inst2[52] = 99.0  # benign, refused (52 % 4 == 0)
    assert refuse_budget(score2, inst2, harmful, answered, 0.05)[0] == r
    # several splits: the mean of each split's threshold
    r2, rec2 = refuse_budget(
        np.stack([score, score + 1]), np.stack([inst, inst + 1]), harmful, answered, 0.05
    )
    assert r2 == pytest.approx(r + 0.5) and rec2["split_thresholds"] == pytest.approx([r, r + 1])
    with pytest.raises(ScansError, match=r"cannot calibrate a 0.002 false-refusal budget.*fix:"):
        refuse_budget(score, inst, harmful, answered, 0.002)
