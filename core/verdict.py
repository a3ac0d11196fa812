"""Intervals over training seeds and test prompts, and the verdict words they allow.

A method's value at a KL budget (or its front area) is the mean over its training seeds of the test reward of
the checkpoint chosen on the select prompts (core.frontier.choice_weights). Its uncertainty has two parts,
and the interval adds their variances:
- the training seeds (the larger part at small scale): the variance of the mean of the per-seed values,
  s^2 / n per side, as Welch's t-test has it;
- the test prompts, which every method shares: scipy.stats.bootstrap resamples the prompts, paired across
  the two sides of a difference (the prompts' common part cancels), with the seeds held fixed.
The half-width is Student's t quantile at the Welch-Satterthwaite degrees of freedom of the sum (the prompt
part counts as known) times its square root.
Why not a bootstrap over seeds: with 3 seeds there are 10 distinct resamples, the bootstrap variance of a
mean is (n-1)/n of the unbiased one and normal quantiles ignore how little 3 values say about a variance; a
95% percentile interval then covers the truth ~75% of the time (tests/test_verdict.py measures it). With
one seed nothing is known about seed variance: the interval covers the prompts only (normal quantile) and no
verdict is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from core.frontier import choice_weights


@dataclass(frozen=True)
class Interval:
    estimate: float  # the mean over seeds (for a difference: A's minus B's)
    low: float
    high: float
    seeds: int  # the fewer seeds of the two sides
    variance: float  # of the estimate: the half-width is the t quantile at df times its square root
    df: float  # degrees of freedom (math.inf: a normal quantile, as with one seed)

    def word(self, a: str = "A", b: str = "B") -> str:
        """'<a> ahead', '<b> ahead' or 'not resolved' (the interval holds 0, or one seed: no seed variance)."""
        if self.seeds < 2 or self.low <= 0 <= self.high:
            return "not resolved"
        return f"{a} ahead" if self.low > 0 else f"{b} ahead"


def interval(a: np.ndarray, b: np.ndarray | None = None, confidence: float = 0.95, resamples: int = 2000,
             rng: np.random.Generator | int | None = 0, paired_seeds: bool = False) -> Interval:
    """The interval of mean(a) (or mean(a) - mean(b)) over seeds and prompts.

    a [S_a, P], b [S_b, P]: per training seed (rows) the statistic on each test prompt (columns; the same
    prompts in a and b). paired_seeds: seed k of a and seed k of b share what they started from (reseed_shared:
    the same SFT model, pairs and reward model), so the difference is taken seed by seed and its spread is
    what counts. -> Interval: the estimate, its confidence interval, the seed count it rests on.

    Each side is a two-way table, value = mean + seed effect + prompt effect + noise. The variance of its mean
    is var(seed effect) / S + var(prompt effect) / P + var(noise) / (S P). The prompts' part (with the noise's
    share averaged over seeds) is the bootstrap's; the seeds' part is the spread of the seeds' means, which
    carries the noise's share too: counted twice, at most var(noise) / (S P) too much. Taking it out (the
    two-way residual mean square) left the intervals covering 84-92% on tests/test_verdict.py's fronts,
    where the selection of a checkpoint adds its own seed-to-seed spread: the conservative sum stays."""
    a = np.asarray(a, dtype=np.float64)
    b = None if b is None else np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or (b is not None and (b.ndim != 2 or b.shape[1] != a.shape[1])):
        raise ValueError(f"interval: expected [seeds, prompts] arrays on the same prompts, got {a.shape} and "
                         f"{None if b is None else b.shape}")
    if a.shape[1] < 2:
        raise ValueError(f"interval: {a.shape[1]} test prompt; the prompts' variance needs at least 2")
    if b is not None and paired_seeds:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"interval: paired seeds need as many on both sides, got {a.shape[0]} and {b.shape[0]}")
        a, b = a - b, None
    sides = [a] if b is None else [a, b]
    signs = [1.0, -1.0][: len(sides)]
    estimate = sum(sign * side.mean() for sign, side in zip(signs, sides))

    # the prompts: one resample of the prompt indices for both sides, the seeds as they are
    per_prompt = sum(sign * side.mean(0) for sign, side in zip(signs, sides))  # [P]
    prompt_var = stats.bootstrap((per_prompt,), np.mean, n_resamples=resamples, vectorized=True,
                                 method="percentile", rng=rng).standard_error ** 2
    n = min(side.shape[0] for side in sides)
    if n < 2:  # one seed: nothing is known of the seeds' spread
        return _interval(estimate, prompt_var, math.inf, n, confidence)
    # the seeds: each side's seed means' variance / S (Welch's)
    seed_vars = [side.mean(1).var(ddof=1) / side.shape[0] for side in sides]
    total = prompt_var + sum(seed_vars)
    # Welch-Satterthwaite degrees of freedom: each side's seed part carries S - 1, the prompts' counts as known
    # (P is in the hundreds), so the t quantile widens as far as the seeds weigh in the total
    denominator = sum(v**2 / (side.shape[0] - 1) for v, side in zip(seed_vars, sides))
    df = total**2 / denominator if denominator > 0 else math.inf
    return _interval(estimate, total, df, n, confidence)


def independent_difference(a: Interval, b: Interval, confidence: float = 0.95) -> Interval:
    """b - a for two estimates from separate experiments (a ladder's rungs: their own models and seeds): the
    variances add and the degrees of freedom follow Welch-Satterthwaite (a side with a normal quantile counts as
    known). Reading each side's half-width as a normal one instead (the ladder did, before) gave changes 1.3-1.4x
    as wide with 3 seeds a rung, covering ~98% at 95% (tests/test_verdict.py). The rungs share their test
    prompts: counting the prompts' parts as independent leaves the interval on the wide side."""
    variance = a.variance + b.variance
    denominator = sum(iv.variance**2 / iv.df for iv in (a, b) if math.isfinite(iv.df))
    df = variance**2 / denominator if denominator > 0 else math.inf
    return _interval(b.estimate - a.estimate, variance, df, min(a.seeds, b.seeds), confidence)


def p_value(iv: Interval) -> float:
    """Two-sided p-value of "A - B = 0" on the interval's own scale (t at its df, or normal): below 1 - confidence
    exactly when the interval leaves 0 out."""
    if iv.variance <= 0:
        return 1.0 if iv.estimate == 0 else 0.0
    return float(2 * stats.t.sf(abs(iv.estimate) / math.sqrt(iv.variance), iv.df))


def holm(pvalues: list[float], alpha: float) -> list[bool]:
    """Holm's step-down over a family of hypotheses: which are rejected with a family-wise error rate <= alpha.
    With the p-values sorted, p_(1) <= ... <= p_(m), reject while p_(i) <= alpha / (m - i + 1), and stop at the
    first that is not. -> one bool per p-value, in the order given."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def _interval(estimate: float, variance: float, df: float, seeds: int, confidence: float) -> Interval:
    half = stats.t.ppf((1 + confidence) / 2, df) * math.sqrt(variance)  # df = inf: the normal quantile
    return Interval(float(estimate), float(estimate - half), float(estimate + half), seeds, float(variance), float(df))


# summary.json: the report's intervals as a ladder's scaling stage reads them. Raised with every change of its keys;
# a file of another format is refused in one line (read_summary), and the ladder runs that rung's report again.
SUMMARY_FORMAT = 3  # 3: each entry's not_covered; 2: the format key itself; 1 (unnamed): intervals' variance and df
SUMMARY_KEYS = ("format", "confidence", "measures", "methods", "comparisons", "compute")
INTERVAL_KEYS = ("estimate", "low", "high", "seeds", "variance", "df", "not_covered")


def read_summary(path) -> dict:
    """A report's summary.json, checked: ValueError naming the file and what is off when it is missing, not
    JSON, of another format (an older or newer report) or lacks a key this version reads."""
    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__})") from None
    found = summary.get("format") if isinstance(summary, dict) else None
    if found != SUMMARY_FORMAT:
        raise ValueError(f"{path} has format {found!r}; this version reads format {SUMMARY_FORMAT} (written by "
                         f"another version of the report)")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    tables = {kind: summary.get(kind) for kind in ("methods", "comparisons")}
    bad = [kind for kind, table in tables.items() if not isinstance(table, dict)
           or not all(isinstance(by_measure, dict) for by_measure in table.values())]
    bad += [f"{kind}.{name}.{measure}" for kind, table in tables.items() if kind not in bad
            for name, by_measure in table.items() for measure, iv in by_measure.items()
            if not isinstance(iv, dict) or any(k not in iv for k in INTERVAL_KEYS)]
    if missing or bad or not isinstance(summary["measures"], list) or not summary["measures"]:
        raise ValueError(f"{path}: format {SUMMARY_FORMAT} but {', '.join(missing + bad[:3]) or 'measures'} "
                         f"missing or malformed (edited?)")
    return summary


def clause(a: str, b: str, iv: Interval) -> tuple[str, str]:
    """One measure of a comparison as (word, numbers): ('PPO ahead', 'by 0.119 [+0.075, +0.163]') (the lead and its
    interval, from the leader's side), ('not resolved', '-0.013 [-0.074, +0.047]') (A - B), or ('the same
    checkpoint at every seed', '') (both chose e.g. the SFT model: no difference)."""
    word = iv.word(a, b)
    if word == f"{a} ahead":
        return word, f"by {iv.estimate:.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"
    if word == f"{b} ahead":
        return word, f"by {-iv.estimate:.3f} [{-iv.high:+.3f}, {-iv.low:+.3f}]"
    if iv.low == iv.high == iv.estimate:
        return "the same checkpoint at every seed", ""
    return word, f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def sentence(a: str, b: str, measures: list[tuple[str, Interval]]) -> str:
    """One comparison at every measure, on one line, the measures grouped by their word (in the order the words
    first come): 'DPO vs PPO (3 seeds): not resolved at KL <= 2 (DPO - PPO = -0.013 [-0.074, +0.047]) and at KL
    <= 5 (...); PPO ahead at KL <= 10 by 0.119 [+0.075, +0.163].' measures: (where, e.g. "at KL <= 2"; the
    interval of A - B there; optionally why they are not compared there: then "not compared at KL <= 2 (why)")."""
    seeds = min(iv.seeds for _, iv, *_ in measures)
    count = f"{seeds} seed{'s' if seeds != 1 else ''}" if seeds > 1 else \
        "one seed: no training-seed variance is known, so no verdict"
    groups: dict[str, list[str]] = {}
    for where, iv, *why in measures:
        if why and why[0]:
            groups.setdefault("not compared", []).append(f"{where} ({why[0]})")
            continue
        word, numbers = clause(a, b, iv)
        parts = groups.setdefault(word, [])
        if word == "not resolved":  # its numbers are A - B: say so once
            parts.append(f"{where} ({'' if parts else f'{a} - {b} = '}{numbers})")
        else:
            parts.append(f"{where} {numbers}".rstrip())
    return f"{a} vs {b} ({count}): " + "; ".join(f"{w} {' and '.join(p)}" for w, p in groups.items()) + "."


def chosen_values(select_points: list[tuple[float, float]], test_values: np.ndarray, budget: float | None,
                  max_kl: float) -> np.ndarray:
    """One seed's statistic on each test prompt: the checkpoint chosen on the select prompts (at a KL budget,
    or the front area when budget is None: core.frontier.choice_weights), measured on the test prompts.

    select_points: (kl, reward) per candidate (the SFT model's among them); test_values [C, P]: each
    candidate's value (reward, or KL) on each test prompt. -> [P]."""
    weights = np.asarray(choice_weights(select_points, budget, max_kl))
    return weights @ np.asarray(test_values, dtype=np.float64)
