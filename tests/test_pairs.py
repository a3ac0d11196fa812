"""Labelling every pair of a prompt's samples by the ground truth."""

import importlib

import numpy as np

pairs = importlib.import_module("pairs.__main__")


def test_all_six_pairs_oriented_by_score():
    got, ties = pairs.label_pairs(np.array([0.2, 0.9, 0.5, 0.1]))
    assert ties == 0
    assert sorted(got) == sorted([(1, 0), (2, 0), (0, 3), (1, 2), (1, 3), (2, 3)])


def test_exact_ties_are_dropped():
    got, ties = pairs.label_pairs(np.array([0.5, 0.5, 0.7, 0.5]))
    assert ties == 3
    assert sorted(got) == [(2, 0), (2, 1), (2, 3)]
