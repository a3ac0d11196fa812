"""The frontier's numbers: Pareto front, best reward within a KL budget, area under the front."""

import numpy as np
import pytest

from core.frontier import best_within, frontier_area, pareto_front

POINTS = [(0.0, 0.5), (3.0, 0.6), (2.0, 0.7), (5.0, 0.9), (6.0, 0.85), (12.0, 0.95)]


def test_pareto_front_keeps_only_undominated_points():
    assert pareto_front(POINTS) == [(0.0, 0.5), (2.0, 0.7), (5.0, 0.9), (12.0, 0.95)]
    assert pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [(1.0, 0.6)]


def test_best_within_a_budget():
    assert best_within(POINTS, 1.0) == 0.5
    assert best_within(POINTS, 5.0) == 0.9
    assert best_within(POINTS, 100.0) == 0.95
    assert best_within([(3.0, 0.6)], 1.0) is None


def test_frontier_area_by_hand_and_by_brute_force():
    # up to KL 10: 0.5 on [0, 2), 0.7 on [2, 5), 0.9 on [5, 10]; the point at KL 12 is beyond
    assert frontier_area(POINTS, 10.0) == pytest.approx((2 * 0.5 + 3 * 0.7 + 5 * 0.9) / 10)
    grid = np.linspace(0, 10, 200_001)
    brute = np.mean([best_within(POINTS, b) for b in grid[::100]])
    assert frontier_area(POINTS, 10.0) == pytest.approx(brute, abs=2e-3)
    assert frontier_area([(1.0, 0.9)], 10.0) is None  # no point at KL 0
