"""Best-of-N's estimators against brute force: the subset average, the kept sample's rank, the KL bound."""

import itertools
import math

import numpy as np
import pytest

from best_of_n.__main__ import best_of_n_weights, expected_best, kl_upper_bound, points_of, ties


@pytest.mark.parametrize("m", [1, 5, 8])
def test_weights_are_the_share_of_subsets_whose_best_is_each_rank(m):
    for n in range(1, m + 1):
        counts = np.zeros(m)
        for subset in itertools.combinations(range(m), n):  # ranks 0..m-1, ascending
            counts[max(subset)] += 1
        assert np.allclose(best_of_n_weights(m, n), counts / counts.sum())


def test_expected_best_is_the_average_over_every_subset():
    rng = np.random.default_rng(0)
    chooser, values = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))  # chosen by one score, measured by another
    for n in (1, 3, 7):
        brute = [np.mean([values[p, max(s, key=lambda i: chooser[p, i])]
                          for s in itertools.combinations(range(7), n)]) for p in range(3)]
        assert np.allclose(expected_best(chooser, values, n), brute)
    assert np.allclose(expected_best(chooser, values, 1), values.mean(1))  # N = 1: the SFT model's mean
    assert np.allclose(expected_best(chooser, values, 7), values[np.arange(3), chooser.argmax(1)])


def test_weights_refuse_n_above_the_samples():
    with pytest.raises(ValueError, match="N = 5 needs 1 <= N <= M = 4"):
        best_of_n_weights(4, 5)


def best_of_n_kl(k: int, n: int) -> float:
    """KL(best-of-N || uniform) over k outcomes with distinct rewards: the kept one has rank i (1..k) with
    probability (i/k)^N - ((i-1)/k)^N."""
    i = np.arange(1, k + 1)
    p = (i / k) ** n - ((i - 1) / k) ** n
    p = p[p > 0]  # the low ranks of a large k underflow: they add nothing
    return float((p * np.log(k * p)).sum())


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_kl_bound_is_reached_as_ties_vanish_and_never_exceeded(n):
    bound = kl_upper_bound(n)
    assert bound == pytest.approx(math.log(n) - (n - 1) / n)
    few, many = best_of_n_kl(8, n), best_of_n_kl(200_000, n)  # 8 outcomes: samples often tie; 200k: rarely
    assert few <= many <= bound + 1e-12
    assert many == pytest.approx(bound, abs=2e-3)
    if n > 1:
        assert few < many - 1e-3


class Chars:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i) for i in ids)


def test_points_choose_by_the_reward_model_or_by_the_ground_truth():
    """best-of-n keeps the proxy's best, best-of-n-gt the ground truth's: where they disagree the points differ."""
    proxy = np.array([[0.0, 1.0, 2.0, 3.0]])  # the reward model prefers the last sample
    truth = np.array([[0.9, 0.1, 0.2, 0.3]])  # the ground truth the first
    drawn = {"proxy_reward": proxy, "reward": truth, "length": np.array([[1.0, 2.0, 3.0, 4.0]]),
             "completions": [[0], [1], [2], [3]]}
    points = {(p["method"], p["n"]): p for p in points_of(drawn, ["best-of-n", "best-of-n-gt"], [1, 4], Chars())}
    assert points["best-of-n", 4]["reward"] == pytest.approx([0.3]) and points["best-of-n", 4]["texts"] == ["d"]
    assert points["best-of-n-gt", 4]["reward"] == pytest.approx([0.9]) and points["best-of-n-gt", 4]["texts"] == ["a"]
    assert points["best-of-n", 4]["proxy_reward"] == pytest.approx([3.0])
    assert points["best-of-n", 1]["reward"] == pytest.approx([truth.mean()]) and points["best-of-n", 1]["kl"] == 0
    assert ties(np.array([[1.0, 1.0, 2.0], [0.0, 0.5, 1.0]])) == 1
