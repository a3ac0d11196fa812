"""Intervals over training seeds and test prompts, and the verdict words they allow.

A method's value at a KL budget (or its front area) is the mean over its training seeds of the test reward of
the checkpoint chosen on the select prompts (core.frontier.choice_weights). Its uncertainty has two sources:
which seeds were drawn (the larger at small scale) and which prompts were drawn. Both are resampled by
scipy.stats.bootstrap at once, as independent samples: the seeds of each method, and the test prompts, which
every method shares (one prompt resample serves both sides of a difference, so the prompts' common part cancels).

The interval is not the bootstrap's percentile interval. With 3 seeds there are 10 distinct resamples of the
seeds, the bootstrap variance of a mean is (n-1)/n of the plug-in one, and a 95% percentile interval covers
the truth ~75% of the time when seeds dominate (tests/test_verdict.py measures it). So the bootstrap gives the
standard error, which is rescaled by sqrt(n/(n-1)) and multiplied by Student's t quantile with n-1 degrees of
freedom (n = the fewer seeds of the two sides: Welch's conservative choice): the t interval over seeds when
seeds dominate, with the prompts' share of the variance added. With one seed nothing is known about seed
variance: the interval covers the prompts only (normal quantile) and no verdict is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    estimate: float  # the mean over seeds (for a difference: A's minus B's)
    low: float
    high: float
    seeds: int  # the fewer seeds of the two sides

    def word(self, a: str = "A", b: str = "B") -> str:
        """'<a> ahead', '<b> ahead' or 'not resolved' (the interval holds 0, or one seed: no seed variance)."""
        if self.seeds < 2 or self.low <= 0 <= self.high:
            return "not resolved"
        return f"{a} ahead" if self.low > 0 else f"{b} ahead"


def _prompt_means(values: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """values [S, P], prompts [R, P] resampled prompt indices -> [R, S]: each seed's mean over each resample."""
    return values[:, prompts].mean(-1).T


def _seed_mean(per_seed: np.ndarray, seeds: np.ndarray | None) -> np.ndarray:
    """per_seed [R, S], seeds [R, S] resampled seed indices (None: no resampling) -> [R]."""
    return per_seed.mean(-1) if seeds is None else np.take_along_axis(per_seed, seeds, axis=-1).mean(-1)


def interval(a: np.ndarray, b: np.ndarray | None = None, confidence: float = 0.95, resamples: int = 2000,
             rng: np.random.Generator | int | None = 0) -> Interval:
    """The interval of mean(a) (or mean(a) - mean(b)) over seeds and prompts.

    a [S_a, P], b [S_b, P]: per training seed (rows) the statistic on each test prompt (columns; the same
    prompts in a and b). -> Interval: the estimate, its confidence interval, the seed count it rests on."""
    a = np.asarray(a, dtype=np.float64)
    b = None if b is None else np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or (b is not None and (b.ndim != 2 or b.shape[1] != a.shape[1])):
        raise ValueError(f"interval: expected [seeds, prompts] arrays on the same prompts, got {a.shape} and "
                         f"{None if b is None else b.shape}")
    estimate = a.mean() - (0.0 if b is None else b.mean())
    sides = [a] if b is None else [a, b]
    resampled = [s for s in sides if s.shape[0] > 1]  # one seed: nothing to resample
    data = [np.arange(s.shape[0]) for s in resampled] + [np.arange(a.shape[1])]

    def statistic(*idx, axis=-1):
        *seed_idx, prompts = [np.atleast_2d(i) for i in idx]  # [R, S] per resampled side, [R, P]
        seed_idx = iter(seed_idx)
        means = [_seed_mean(_prompt_means(s, prompts), next(seed_idx) if s.shape[0] > 1 else None) for s in sides]
        return means[0] if b is None else means[0] - means[1]

    result = stats.bootstrap(data, statistic, n_resamples=resamples, vectorized=True, method="percentile",
                             confidence_level=confidence, rng=rng)
    n = min(s.shape[0] for s in sides)
    if n < 2:
        half = stats.norm.ppf((1 + confidence) / 2) * result.standard_error
    else:
        half = stats.t.ppf((1 + confidence) / 2, n - 1) * result.standard_error * math.sqrt(n / (n - 1))
    return Interval(float(estimate), float(estimate - half), float(estimate + half), n)


def sentence(where: str, a: str, b: str, iv: Interval) -> str:
    """'At KL <= 5, DPO is ahead of PPO by 0.06 [0.03, 0.09] (3 seeds).' or '... not resolved ...'."""
    seeds = f"{iv.seeds} seed{'s' if iv.seeds != 1 else ''}"
    span = f"[{iv.low:+.3f}, {iv.high:+.3f}]"
    word = iv.word(a, b)
    if word == f"{a} ahead":
        return f"{where}, {a} is ahead of {b} by {iv.estimate:.3f} {span} ({seeds})."
    if word == f"{b} ahead":
        return f"{where}, {b} is ahead of {a} by {-iv.estimate:.3f} {span} for {a} - {b} ({seeds})."
    why = " (one seed: no training-seed variance is known)" if iv.seeds < 2 else ""
    return f"{where}, {a} vs {b} is not resolved: {a} - {b} = {iv.estimate:+.3f} {span} ({seeds}){why}."


def chosen_values(select_points: list[tuple[float, float]], test_values: np.ndarray, budget: float | None,
                  max_kl: float) -> np.ndarray:
    """One seed's statistic on each test prompt: the checkpoint chosen on the select prompts (at a KL budget,
    or the front area when budget is None: core.frontier.choice_weights), measured on the test prompts.

    select_points: (kl, reward) per candidate (the SFT model's among them); test_values [C, P]: each
    candidate's value (reward, or KL) on each test prompt. -> [P]."""
    from core.frontier import choice_weights

    weights = np.asarray(choice_weights(select_points, budget, max_kl))
    return weights @ np.asarray(test_values, dtype=np.float64)
