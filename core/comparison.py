"""The verdict's statistics over a finished eval: per method and measure the test reward of the checkpoints chosen on
the select prompts, as a mean over training seeds with its interval, and every comparison of PAIRS as A - B.

A measure is the best reward within a KL budget, or the area under the front (core/verdict.py: chosen_values,
interval). The report states them (report/__main__.py) and writes them to summary.json, which a ladder reads
(scaling/__main__.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from core.frontier import point_id
from core.methods import METHODS, label
from core.verdict import SUMMARY_FORMAT, chosen_values, holm, interval, p_value, sentence

# the comparisons of the verdict, from the registry (core.methods.Method.against): the paper's (DPO against each of its
# methods, PPO on the learned reward against the truth), then DPO against each method beyond the paper, then the rest
# (our PPO against TRL's RLOO and GRPO), each tier in the registry's order
PAIRS = sorted([(other, m.name) for m in METHODS.values() for other in m.against],
               key=lambda pair: (0,) if all(METHODS[x].paper for x in pair) else (1, pair[0] != "dpo"))


def row_id(row: dict) -> str:
    """A frontier.csv row's key in per_prompt.json and samples.json."""
    return point_id(row["method"], row["run"], row["step"])


class Frontier:
    """frontier.csv and per_prompt.json as what the statistics need: per method and training seed, the
    candidates (the SFT model and the seed's checkpoints) with their select points and test per-prompt values."""

    def __init__(self, rows: list[dict], per_prompt: dict, paired_seeds: bool = False):
        self.rows = rows
        self.paired_seeds = paired_seeds  # reseed_shared: seed k of every method started from the same SFT model
        test = slice(*per_prompt["splits"]["test"])
        self.test_values = {pid: {k: np.asarray(v[k][test], dtype=np.float64) for k in ("reward", "kl", "length")}
                            for pid, v in per_prompt["points"].items()}
        # the SFT point: shared by every seed, or one per seed (reseed_shared: each seed's own SFT model)
        sft_select = {r["seed"]: r for r in rows if r["method"] == "sft" and r["split"] == "select"}
        self.sft_models = [r for r in rows if r["method"] == "sft" and r["split"] == "test"]  # one, or one per seed
        self.sft = self.sft_models[0]
        self.methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        self.candidates: dict[str, dict[str, list[dict]]] = {}  # method -> seed -> [select rows], SFT first
        for r in rows:
            if r["split"] == "select" and r["method"] != "sft":
                sft = sft_select.get(r["seed"], sft_select.get(""))
                self.candidates.setdefault(r["method"], {}).setdefault(r["seed"], [sft]).append(r)

    def seeds(self, method: str) -> int:
        return len(self.candidates.get(method, {}))

    def checkpoint_kls(self, method: str) -> list[list[float]]:
        """Per seed, the KLs on select of its trained checkpoints (the SFT model left out)."""
        return [[c["kl"] for c in candidates[1:]] for candidates in self.candidates[method].values()]

    def coverage(self, method: str, budget: float | None, max_kl: float) -> str | None:
        """None when the method's checkpoints cover the budget at every seed: a trained checkpoint within KL <= b
        and one at or beyond b (on select; for the front area, b = max_kl: its width). Then its best within the
        budget is the method's. Otherwise why not, as a phrase after its label: a method stopped below b (or never
        inside it) is measured at where its training ended, not at the budget."""
        b = max_kl if budget is None else budget
        kls = self.checkpoint_kls(method)
        none = sum(1 for k in kls if not k or min(k) > b)
        short = sum(1 for k in kls if k and max(k) < b)
        if none == len(kls):
            return f"has no checkpoint within KL <= {b:g}"
        if short == len(kls):
            return f"did not reach KL {b:g}"
        if none or short:
            return f"covers KL {b:g} at {len(kls) - none - short} of {len(kls)} seeds"
        return None

    def grid(self, method: str, budget: float) -> str | None:
        """None when at every seed whose checkpoints cover the budget one lies in the budget's upper half, b/2 < KL
        <= b (on select). Otherwise a phrase: the method's best within b is then a checkpoint below b/2 (or the SFT
        model), and a denser grid of checkpoints could raise it; the comparison at b measures the grid as much as
        the method."""
        coarse, below = 0, []
        for kls in self.checkpoint_kls(method):
            if not kls or min(kls) > budget or max(kls) < budget:  # not covered: coverage says so
                continue
            highest = max(k for k in [0.0] + kls if k <= budget)
            if highest <= budget / 2:
                coarse += 1
                below.append(highest)
        if not coarse:
            return None
        return (f"no checkpoint between KL {budget / 2:g} and {budget:g} at {coarse} of {self.seeds(method)} seeds "
                f"(the highest below: KL {max(below):.2f})")

    @functools.lru_cache(maxsize=None)  # the verdict, both tables and the bands ask for the same ones
    def per_seed(self, method: str, budget: float | None, max_kl: float, value: str = "reward") -> np.ndarray:
        """[seeds, test prompts]: each seed's chosen checkpoint(s) (on select) on the test prompts."""
        out = []
        for candidates in self.candidates[method].values():
            select_points = [(c["kl"], c["reward"]) for c in candidates]
            values = np.stack([self.test_values[row_id(c)][value] for c in candidates])
            out.append(chosen_values(select_points, values, budget, max_kl))
        return np.stack(out)


def measures(cfg) -> list[tuple[str, float | None]]:
    """(name, budget) of every reported statistic: best reward within each KL budget, then the front area."""
    return [(f"KL <= {b:g}", b) for b in cfg.kl_budgets] + [(f"front area, KL 0-{cfg.area_max_kl:g}", None)]


def intervals(frontier: Frontier, cfg, rng_seed: int) -> tuple[dict, dict]:
    """Every interval the report states, computed once (each is a bootstrap over test prompts).
    -> ({method: {measure: its mean over seeds}}, {(A, B) of PAIRS present: {measure: A - B}})."""
    def at(method, budget):
        return frontier.per_seed(method, budget, cfg.area_max_kl)

    per_method = {m: {name: interval(at(m, budget), None, cfg.confidence, cfg.resamples, rng_seed)
                      for name, budget in measures(cfg)} for m in frontier.methods}
    per_pair = {(a, b): {name: interval(at(a, budget), at(b, budget), cfg.confidence, cfg.resamples, rng_seed,
                                        paired_seeds=frontier.paired_seeds)
                         for name, budget in measures(cfg)}
                for a, b in PAIRS if a in frontier.methods and b in frontier.methods}
    return per_method, per_pair


def coverage(frontier: Frontier, cfg) -> dict:
    """{method: {measure: None, or why its checkpoints do not cover the measure's budget}} (Frontier.coverage)."""
    return {m: {name: frontier.coverage(m, budget, cfg.area_max_kl) for name, budget in measures(cfg)}
            for m in frontier.methods}


def grids(frontier: Frontier, cfg) -> dict:
    """{method: {measure: None, or where its checkpoints leave the budget's upper half empty}} (Frontier.grid), at
    every KL budget the method is compared at (where its checkpoints do not cover one, coverage says so)."""
    return {m: {name: None if frontier.coverage(m, budget, cfg.area_max_kl) else frontier.grid(m, budget)
                for name, budget in measures(cfg) if budget is not None}
            for m in frontier.methods}


def not_compared(covered: dict, a: str, b: str, measure: str) -> str | None:
    """Why A and B are not compared at a measure: a side's checkpoints do not cover its budget. None: compared."""
    reasons = [f"{label(m)} {covered[m][measure]}" for m in (a, b) if covered[m][measure]]
    return "; ".join(reasons) or None


def family_wise(per_pair: dict, covered: dict, cfg) -> dict:
    """The verdict's words with the family-wise error held at 1 - confidence: Holm's step-down over every
    comparison the verdict makes (each pair at each measure it compares, with at least 2 seeds), on p-values from
    the same intervals. -> {(A, B): {measure: word}} ("not compared" where the verdict does not compare)."""
    family = [(pair, name, iv) for pair, by_measure in per_pair.items() for name, iv in by_measure.items()
              if iv.seeds >= 2 and not not_compared(covered, *pair, name)]
    rejected = holm([p_value(iv) for _, _, iv in family], 1 - cfg.confidence)
    words = {pair: {name: "not compared" if not_compared(covered, *pair, name) else "not resolved"
                    for name in by_measure} for pair, by_measure in per_pair.items()}
    for ((a, b), name, iv), reject in zip(family, rejected):
        if reject:
            words[(a, b)][name] = iv.word(label(a), label(b))
    return words


def verdict(per_pair: dict, covered: dict, cfg) -> tuple[list[str], list[str], list[list[str]]]:
    """Every pair of PAIRS present, at every measure: A - B with its interval and the word, or "not compared" where a
    side's checkpoints do not cover the budget (coverage), and the word family-wise (Holm, family_wise). -> (one
    sentence per pair, the table's header, its rows: one per pair and measure)."""
    sentences, body = [], []
    holm_words = family_wise(per_pair, covered, cfg)
    for (a, b), by_measure in per_pair.items():
        said = []
        for (name, budget), iv in zip(measures(cfg), by_measure.values()):
            why = not_compared(covered, a, b, name)
            said.append((f"at {name}" if budget is not None else f"on the front area (KL 0-{cfg.area_max_kl:g})", iv,
                         why))
            body.append([f"{label(a)} vs {label(b)}", name, f"{iv.estimate:+.3f}", f"[{iv.low:+.3f}, {iv.high:+.3f}]",
                         str(iv.seeds), f"not compared: {why}" if why else iv.word(label(a), label(b)),
                         "-" if why else holm_words[(a, b)][name]])
        sentences.append(sentence(label(a), label(b), said))
    if not sentences:
        sentences = ["No comparison: the verdict compares DPO with every other method and PPO with PPO-GT; this run's "
                     "methods hold none of those pairs (add dpo to methods)."]
    header = ["comparison", "measure", "A - B (test reward)", f"{cfg.confidence:.0%} interval", "seeds", "verdict",
              "family-wise (Holm)"]
    return sentences, header, body


def summary(per_method: dict, per_pair: dict, covered: dict, runs: dict[str, list[dict]], cfg) -> dict:
    """summary.json, what a ladder (imdb-scaling) reads of each rung: per method and measure the mean over seeds
    of the chosen checkpoint's test reward with its interval (core.verdict.Interval's fields); per comparison of
    PAIRS, A - B likewise; per method its training cost. Each entry's "not_covered": null, or why the method's (a
    side's) checkpoints do not cover the measure's budget: a ladder does not compare such a value."""
    def entries(by_measure, why):  # an interval's variance and degrees of freedom (null: a normal one) for the ladder
        return {name: {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "seeds": iv.seeds,
                       "variance": iv.variance, "df": iv.df if math.isfinite(iv.df) else None,
                       "not_covered": why(name)}
                for name, iv in by_measure.items()}

    compute = {method: {key: sum(r.get(key, 0) for r in runs.get(method, []))
                        for key in ("train_seconds", "tokens_generated", "tokens_trained")} for method in per_method}
    return {"format": SUMMARY_FORMAT, "confidence": cfg.confidence, "measures": [name for name, _ in measures(cfg)],
            "methods": {m: entries(by_measure, lambda name, m=m: covered[m][name] and f"{label(m)} {covered[m][name]}")
                        for m, by_measure in per_method.items()},
            "comparisons": {f"{a} - {b}": entries(by_measure, lambda name, a=a, b=b: not_compared(covered, a, b, name))
                            for (a, b), by_measure in per_pair.items()},
            "compute": compute}
