"""core/frontier.choice_weights and core/verdict.py: checkpoints chosen on select and reported on test, intervals
over seeds and prompts that cover a known truth, and the words they allow."""

import math

import numpy as np
import pytest
from scipy import stats

from core.frontier import choice_weights
from core.verdict import Interval, chosen_values, clause, independent_difference, interval, sentence

# (kl, reward) on the select prompts: SFT, then three checkpoints
SELECT = [(0.0, 0.50), (1.0, 0.60), (3.0, 0.70), (6.0, 0.65)]


def test_a_budget_picks_the_best_select_reward_within_it():
    assert choice_weights(SELECT, 0.5, 10) == [1, 0, 0, 0]  # only the SFT model is inside
    assert choice_weights(SELECT, 2.0, 10) == [0, 1, 0, 0]
    assert choice_weights(SELECT, 5.0, 10) == [0, 0, 1, 0]
    assert choice_weights(SELECT, 10.0, 10) == [0, 0, 1, 0]  # 6.0 is inside but worse
    assert choice_weights([(0.5, 0.6)], 0.1, 10) == [0]  # nothing inside: no choice


def test_the_front_area_weights_each_point_by_the_budgets_it_is_chosen_for():
    # budgets [0, 1): SFT; [1, 3): the second; [3, 10]: the third (the fourth is never on the front)
    assert choice_weights(SELECT, None, 10) == pytest.approx([0.1, 0.2, 0.7, 0.0])
    test = np.array([[0.5], [0.6], [0.7], [0.9]])  # one prompt: the area is the step function's mean
    assert chosen_values(SELECT, test, None, 10)[0] == pytest.approx(0.1 * 0.5 + 0.2 * 0.6 + 0.7 * 0.7)
    assert choice_weights(SELECT, None, 2) == pytest.approx([0.5, 0.5, 0, 0])  # the front cut at max_kl


def test_a_checkpoint_best_only_on_the_test_prompts_is_not_chosen():
    """The fourth checkpoint has the best test reward at KL <= 10 but not the best select reward: the reported
    number is the chosen one's test reward (0.71), not the test prompts' maximum (0.90)."""
    test = np.array([[0.49, 0.51], [0.58, 0.62], [0.70, 0.72], [0.88, 0.92]])  # [checkpoint, prompt]
    assert chosen_values(SELECT, test, 10.0, 10).tolist() == [0.70, 0.72]
    assert chosen_values(SELECT, test, 10.0, 10).mean() < test.mean(1).max()


def test_select_and_test_prompts_are_disjoint_and_cover_the_evaluated_list():
    from eval.__main__ import prompt_splits

    splits = prompt_splits(256, 128)
    test, select = (set(range(384)[s]) for s in (splits["test"], splits["select"]))
    assert len(test) == 256 and len(select) == 128 and not test & select and test | select == set(range(384))


# ------------------------------------------------------------------------------------------------ coverage
TRUE_KL = [0.0, 1.0, 3.0, 6.0]
TRUE_REWARD = {"A": [0.50, 0.56, 0.63, 0.70], "B": [0.50, 0.54, 0.60, 0.68]}
PROMPT_SD = 0.10


def synthetic_experiment(rng, seed_sd, sample_sd, seeds=3, prompts=64, select_prompts=32, budget=5.0):
    """Both methods' [seeds, prompts] chosen test rewards at a KL budget. A checkpoint's reward on a prompt is its
    true reward + its seed's effect (shared by the seed's checkpoints) + the prompt's effect (shared by every
    method and checkpoint: which prompts were drawn) + sampling noise; the SFT model's values are shared."""
    prompt_test, prompt_select = rng.normal(0, PROMPT_SD, prompts), rng.normal(0, PROMPT_SD, select_prompts)
    sft_test = TRUE_REWARD["A"][0] + prompt_test + rng.normal(0, sample_sd, prompts)
    sft_select = TRUE_REWARD["A"][0] + prompt_select.mean() + rng.normal(0, sample_sd / select_prompts**0.5)
    out = {}
    for method, rewards in TRUE_REWARD.items():
        per_seed = []
        for _ in range(seeds):
            effect = rng.normal(0, seed_sd)
            test = [sft_test] + [r + effect + prompt_test + rng.normal(0, sample_sd, prompts) for r in rewards[1:]]
            select = [(0.0, sft_select)] + [
                (kl, r + effect + prompt_select.mean() + rng.normal(0, sample_sd / select_prompts**0.5))
                for kl, r in zip(TRUE_KL[1:], rewards[1:])]
            per_seed.append(chosen_values(select, np.stack(test), budget, 10.0))
        out[method] = np.stack(per_seed)
    return out["A"], out["B"]


def true_value(method: str, seed_sd: float, sample_sd: float, select_prompts: int, budget=5.0) -> float:
    """What the statistic estimates: the expected true reward of the checkpoint chosen on noisy select means
    (the selection sometimes misses the best one inside the budget), by simulating 400,000 selections."""
    rng = np.random.default_rng(0)
    rewards = np.array(TRUE_REWARD[method])
    select = rewards + rng.normal(0, sample_sd / select_prompts**0.5, (400_000, len(rewards)))
    select[:, 1:] += rng.normal(0, seed_sd, (400_000, 1))  # the seed's effect, on its checkpoints (not the SFT's)
    inside = [i for i, kl in enumerate(TRUE_KL) if kl <= budget]
    return float(rewards[np.array(inside)[select[:, inside].argmax(1)]].mean())


@pytest.mark.parametrize("seed_sd,sample_sd,prompts,select_prompts", [(0.03, 0.10, 64, 32), (0.03, 0.30, 256, 128)])
def test_the_95_percent_interval_covers_a_known_truth_90_to_99_percent_of_the_time(seed_sd, sample_sd, prompts,
                                                                                    select_prompts):
    """300 simulated experiments of 3 seeds a method, in two regimes: seeds dominate (s.d. 0.03 against
    sampling noise 0.10 a sample, 64 test prompts), and the tiny scale's (one sample's P(positive) spreads
    ~0.3; 256 test and 128 select prompts). The truth at KL <= 5 is true_value's (A ~0.63, A - B ~0.03). Our
    interval covers it at 90-99%; a percentile bootstrap over the seeds alone (the obvious alternative)
    covers far less where the seeds dominate."""
    rng = np.random.default_rng(2026)
    truth_a = true_value("A", seed_sd, sample_sd, select_prompts)
    truth_diff = truth_a - true_value("B", seed_sd, sample_sd, select_prompts)
    covered_a = covered_diff = naive_diff = 0
    experiments = 300
    for i in range(experiments):
        a, b = synthetic_experiment(rng, seed_sd, sample_sd, prompts=prompts, select_prompts=select_prompts)
        one, diff = interval(a, None, resamples=300, rng=i), interval(a, b, resamples=300, rng=i)
        covered_a += one.low <= truth_a <= one.high
        covered_diff += diff.low <= truth_diff <= diff.high
        naive = stats.bootstrap((a.mean(1) - b.mean(1),), np.mean, n_resamples=300, method="percentile",
                                rng=i).confidence_interval
        naive_diff += naive.low <= truth_diff <= naive.high
    assert 0.90 <= covered_a / experiments <= 0.99, covered_a
    assert 0.90 <= covered_diff / experiments <= 0.99, covered_diff
    assert naive_diff / experiments < 0.88, naive_diff  # why the seeds are not bootstrapped (core/verdict.py)


def test_paired_seeds_difference_seed_by_seed():
    """reseed_shared: seed k of both methods shares its SFT model; a per-seed offset common to both cancels,
    and two methods choosing the same point at every seed give exactly 0."""
    rng = np.random.default_rng(4)
    shared = rng.normal(0, 0.2, (3, 1)) + rng.normal(0, 0.1, (3, 128))  # each seed's own SFT model
    a, b = shared + 0.05 + rng.normal(0, 0.01, (3, 128)), shared + rng.normal(0, 0.01, (3, 128))
    paired, unpaired = interval(a, b, paired_seeds=True), interval(a, b)
    assert paired.low > 0 and unpaired.word() == "not resolved"
    same = interval(shared, shared, paired_seeds=True)
    assert same.estimate == same.low == same.high == 0.0
    with pytest.raises(ValueError, match="as many on both sides"):
        interval(a, b[:2], paired_seeds=True)


def test_prompts_shared_by_both_methods_cancel_in_a_difference():
    """A prompt effect common to A and B widens each method's interval, not the difference's."""
    rng = np.random.default_rng(0)
    prompt = rng.normal(0, 0.3, 128)
    a = 0.6 + prompt + rng.normal(0, 0.01, (3, 128))
    b = 0.5 + prompt + rng.normal(0, 0.01, (3, 128))
    one, diff = interval(a), interval(a, b)
    assert diff.high - diff.low < (one.high - one.low) / 5
    assert diff.estimate == pytest.approx(a.mean() - b.mean()) and diff.low > 0


def test_independent_difference_adds_variances_with_welch_satterthwaite_degrees_of_freedom():
    small = Interval(0.10, 0.0, 0.2, 3, 0.0009, 2.0)
    large = Interval(-0.05, -0.2, 0.1, 3, 0.0016, 4.0)
    d = independent_difference(small, large)
    df = 0.0025**2 / (0.0009**2 / 2 + 0.0016**2 / 4)  # = 5.98
    assert (d.estimate, d.variance, d.seeds) == (pytest.approx(-0.15), pytest.approx(0.0025), 3)
    assert d.df == pytest.approx(df)
    assert (d.high - d.low) / 2 == pytest.approx(stats.t.ppf(0.975, df) * 0.05)
    one_seed = independent_difference(Interval(0, 0, 0, 1, 0.0009, math.inf), Interval(0, 0, 0, 1, 0.0016, math.inf))
    assert one_seed.df == math.inf and (one_seed.high - one_seed.low) / 2 == pytest.approx(stats.norm.ppf(0.975) * 0.05)


def test_independent_difference_of_two_3_seed_intervals_covers_93_to_97_percent():
    """Two rungs of 3 seeds each, the seeds' spread (s.d. 0.05) above the prompts': the change's 95% interval
    covers the true change at its level (95.7% here, t at ~4 degrees of freedom). Reading each rung's
    half-width as a normal one (the ladder's change before) covered 97.7% with intervals 1.3x as wide; a normal
    quantile on the summed variance covers 89.8%."""
    rng = np.random.default_rng(7)
    covered, experiments = 0, 400
    for i in range(experiments):
        small = interval(0.20 + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (3, 64)), resamples=200, rng=i)
        large = interval(0.30 + rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.1, (3, 64)), resamples=200, rng=i)
        change = independent_difference(small, large)
        covered += change.low <= 0.10 <= change.high
    assert 0.93 <= covered / experiments <= 0.97, covered


def test_words_and_sentences():
    ahead = Interval(0.06, 0.03, 0.09, 3, 4.86e-5, 2.0)
    assert ahead.word("DPO", "PPO") == "DPO ahead"
    assert clause("DPO", "PPO", ahead) == ("DPO ahead", "by 0.060 [+0.030, +0.090]")
    behind = Interval(-0.05, -0.08, -0.02, 3, 4.86e-5, 2.0)
    assert behind.word("DPO", "PPO") == "PPO ahead"
    assert clause("DPO", "PPO", behind) == ("PPO ahead", "by 0.050 [+0.020, +0.080]")
    same = Interval(0.0, 0.0, 0.0, 3, 0.0, 2.0)  # both chose the SFT model at every seed
    assert same.word() == "not resolved" and clause("A", "B", same) == ("the same checkpoint at every seed", "")
    unresolved = Interval(0.01, -0.02, 0.04, 3, 4.86e-5, 2.0)
    assert unresolved.word() == "not resolved"
    assert clause("A", "B", unresolved) == ("not resolved", "+0.010 [-0.020, +0.040]")
    said = sentence("DPO", "PPO", [("at KL <= 2", unresolved), ("at KL <= 5", behind), ("at KL <= 10", behind),
                                   ("on the front area (KL 0-10)", unresolved), ("at KL <= 1", same)])
    assert said == ("DPO vs PPO (3 seeds): not resolved at KL <= 2 (DPO - PPO = +0.010 [-0.020, +0.040]) and on the "
                    "front area (KL 0-10) (+0.010 [-0.020, +0.040]); PPO ahead at KL <= 5 by 0.050 [+0.020, +0.080] "
                    "and at KL <= 10 by 0.050 [+0.020, +0.080]; the same checkpoint at every seed at KL <= 1.")
    one_seed = Interval(0.2, 0.1, 0.3, 1, 0.0026, math.inf)  # an interval clear of 0, but over the prompts only
    assert one_seed.word() == "not resolved"
    assert sentence("A", "B", [("on the front area (KL 0-10)", one_seed)]) == (
        "A vs B (one seed: no training-seed variance is known, so no verdict): not resolved on the front area "
        "(KL 0-10) (A - B = +0.200 [+0.100, +0.300]).")


def test_one_seed_gives_a_prompt_only_interval_and_bad_shapes_are_refused():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.1, (1, 64)), rng.normal(0.5, 0.1, (1, 64))
    iv = interval(a, b)
    assert iv.seeds == 1 and iv.low < iv.estimate < iv.high and iv.word() == "not resolved"
    with pytest.raises(ValueError, match="same prompts"):
        interval(a, rng.normal(size=(2, 63)))
    with pytest.raises(ValueError, match="at least 2"):
        interval(a[:, :1])


def synthetic_frontier(paths: dict[str, list[list[float]]]):
    """A Frontier whose methods' checkpoints sit at the given select KLs, one list per seed (rewards arbitrary)."""
    from core.comparison import Frontier
    from core.frontier import point_id

    rows, points = [], {}

    def add(method, run, seed, step, kl):
        for split in ("select", "test"):
            rows.append(dict(method=method, run=run, param="", seed=seed, step=step, split=split, kl=kl, reward=0.5))
        points[point_id(method, run, step)] = {k: [0.5] * 4 for k in ("reward", "proxy_reward", "kl", "length")}

    add("sft", "sft", "", 0, 0.0)
    for method, seeds in paths.items():
        for seed, kls in enumerate(seeds):
            for step, kl in enumerate(kls, start=1):
                add(method, f"r-seed{seed}", seed, step, kl)
    return Frontier(rows, {"splits": {"test": [0, 2], "select": [2, 4]}, "points": points})


def test_a_method_is_compared_only_at_budgets_its_checkpoints_cover():
    """Covered at b: at every seed a checkpoint within KL <= b and one at or beyond b. Otherwise the verdict does
    not compare it there: a method stopped below b is measured where its training ended, not at b."""
    f = synthetic_frontier({"dpo": [[1.0, 4.0, 7.0], [1.5, 6.0]], "ppo": [[3.0, 9.0, 12.0], [2.5, 11.0]],
                            "best-of-n": [[0.5, 1.5, 3.2]]})
    assert [f.coverage("dpo", b, 10) for b in (2, 5, 10)] == [None, None, "did not reach KL 10"]
    assert [f.coverage("ppo", b, 10) for b in (2, 2.7, 5, 10)] == [
        "has no checkpoint within KL <= 2", "covers KL 2.7 at 1 of 2 seeds", None, None]
    assert f.coverage("dpo", None, 10) == "did not reach KL 10" and f.coverage("ppo", None, 10) is None
    assert f.coverage("ppo", None, 2) == "has no checkpoint within KL <= 2"  # its front over [0, 2] is the SFT model
    assert f.coverage("best-of-n", 5, 10) == "did not reach KL 5"


def test_a_budget_whose_upper_half_holds_no_checkpoint_is_marked_coarse():
    """DPO's tiny sweep once jumped from KL 0.5 to 4: its best within KL <= 5 was a checkpoint at KL 4 or 0.5,
    however good the path between. The grid check names such a budget (per seed, only where the budget is
    covered), and leaves the comparison to coverage."""
    from types import SimpleNamespace

    from core.comparison import grids

    f = synthetic_frontier({"dpo": [[0.4, 4.6, 9.0, 21.0], [0.5, 2.4, 12.0]], "ppo": [[1.2, 3.0, 6.0, 11.0]],
                            "preferred-ft": [[0.3, 0.9]]})
    assert f.grid("ppo", 2) is None and f.grid("ppo", 5) is None and f.grid("ppo", 10) is None
    assert f.grid("dpo", 2) == "no checkpoint between KL 1 and 2 at 2 of 2 seeds (the highest below: KL 0.50)"
    assert f.grid("dpo", 5) == "no checkpoint between KL 2.5 and 5 at 1 of 2 seeds (the highest below: KL 2.40)"
    assert f.grid("dpo", 10) == "no checkpoint between KL 5 and 10 at 1 of 2 seeds (the highest below: KL 2.40)"
    assert f.grid("preferred-ft", 2) is None  # stopped below the budget: coverage's to say, not the grid's
    cfg = SimpleNamespace(kl_budgets=[2.0, 5.0], area_max_kl=10.0)
    assert grids(f, cfg)["ppo"] == {"KL <= 2": None, "KL <= 5": None}  # the budgets only, not the front area
    # a budget a method is not compared at (covered at 1 of 2 seeds) is coverage's to say, though one seed is coarse
    g = synthetic_frontier({"dpo": [[0.4, 2.0, 9.0], [0.5, 1.5]]})
    assert g.grid("dpo", 5) is not None and g.coverage("dpo", 5, 10) == "covers KL 5 at 1 of 2 seeds"
    assert grids(g, cfg)["dpo"]["KL <= 5"] is None


def test_the_verdict_says_why_a_pair_is_not_compared():
    from types import SimpleNamespace

    from core.comparison import coverage, intervals, verdict

    f = synthetic_frontier({"dpo": [[1.0, 4.0, 7.0], [1.5, 6.0]], "ppo": [[3.0, 9.0, 12.0], [2.5, 11.0]]})
    cfg = SimpleNamespace(kl_budgets=[2.0, 5.0, 10.0], area_max_kl=10.0, confidence=0.95, resamples=100)
    covered = coverage(f, cfg)
    per_method, per_pair = intervals(f, cfg, 0)
    sentences, _, body = verdict(per_pair, covered, cfg)
    assert [row[-1] for row in body] == ["-", "not resolved", "-", "-"]  # family-wise: only what is compared
    assert [row[-2] for row in body] == ["not compared: PPO has no checkpoint within KL <= 2",
                                         "not resolved",  # covered at KL <= 5: compared (every reward equal here)
                                         "not compared: DPO did not reach KL 10", "not compared: DPO did not reach KL 10"]
    assert sentences == ["DPO vs PPO (2 seeds): not compared at KL <= 2 (PPO has no checkpoint within KL <= 2) and "
                         "at KL <= 10 (DPO did not reach KL 10) and on the front area (KL 0-10) (DPO did not reach "
                         "KL 10); the same checkpoint at every seed at KL <= 5."]


def test_holm_by_hand():
    from core.verdict import holm

    # m = 4 at alpha 0.05: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values; stops at the first miss
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]  # 0.03 > 0.025: it and 0.04 kept
    assert holm([0.01, 0.015, 0.02, 0.04], 0.05) == [True, True, True, True]
    assert holm([0.2, 0.001], 0.05) == [False, True] and holm([], 0.05) == []


def test_p_value_agrees_with_the_interval():
    from core.verdict import p_value

    for estimate, sd, df in ((0.05, 0.02, 4.0), (0.03, 0.02, 4.0), (-0.1, 0.03, math.inf)):
        iv = Interval(estimate, estimate - 1.96, estimate + 1.96, 3, sd**2, df)  # only variance and df are read
        half = stats.t.ppf(0.975, df) * sd
        assert (p_value(iv) < 0.05) == (abs(estimate) > half)


def test_family_wise_words_keep_the_false_positive_rate_of_a_null_family():
    """20 comparisons whose true differences are all 0 (3 seeds, 40 prompts each side): per comparison the 95%
    intervals reject about 5% of the time, so some word is wrong in most families; Holm's family-wise words are wrong
    in at most about 5% of families."""
    from core.verdict import holm, p_value

    rng = np.random.default_rng(0)
    families, size, any_raw, any_holm = 150, 20, 0, 0
    for f in range(families):
        ivs = []
        for k in range(size):
            a = rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.2, (3, 40))
            b = rng.normal(0, 0.05, (3, 1)) + rng.normal(0, 0.2, (3, 40))
            ivs.append(interval(a, b, resamples=200, rng=f * size + k))
        any_raw += any(iv.low > 0 or iv.high < 0 for iv in ivs)
        any_holm += any(holm([p_value(iv) for iv in ivs], 0.05))
    assert any_raw / families > 0.3  # uncorrected: a wrong word in a third or more of the families
    assert any_holm / families <= 0.08  # family-wise: within its nominal 5% (binomial slack for 150 families)
