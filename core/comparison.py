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
from core.verdict import SUMMARY_FORMAT, chosen_values, interval, sentence

# the comparisons of the verdict, from the registry: DPO against each method, PPO on the learned reward against the
# truth, our PPO against TRL's RLOO and GRPO (core.methods.Method.against), in the registry's order
PAIRS = [(other, m.name) for m in METHODS.values() for other in m.against]


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
        self.sft = next(r for r in rows if r["method"] == "sft" and r["split"] == "test")
        self.methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
        self.candidates: dict[str, dict[str, list[dict]]] = {}  # method -> seed -> [select rows], SFT first
        for r in rows:
            if r["split"] == "select" and r["method"] != "sft":
                sft = sft_select.get(r["seed"], sft_select.get(""))
                self.candidates.setdefault(r["method"], {}).setdefault(r["seed"], [sft]).append(r)

    def seeds(self, method: str) -> int:
        return len(self.candidates.get(method, {}))

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


def verdict(per_pair: dict, cfg) -> tuple[list[str], list[str], list[list[str]]]:
    """Every pair of PAIRS present, at every measure: A - B with its interval and the word.
    -> (one sentence per pair, the table's header, its rows: one per pair and measure)."""
    sentences, body = [], []
    for (a, b), by_measure in per_pair.items():
        said = []
        for (name, budget), iv in zip(measures(cfg), by_measure.values()):
            said.append((f"at {name}" if budget is not None else f"on the front area (KL 0-{cfg.area_max_kl:g})", iv))
            body.append([f"{label(a)} vs {label(b)}", name, f"{iv.estimate:+.3f}", f"[{iv.low:+.3f}, {iv.high:+.3f}]",
                         str(iv.seeds), iv.word(label(a), label(b))])
        sentences.append(sentence(label(a), label(b), said))
    if not sentences:
        sentences = ["No comparison: the verdict compares DPO with every other method and PPO with PPO-GT; this run's "
                     "methods hold none of those pairs (add dpo to methods)."]
    header = ["comparison", "measure", "A - B (test reward)", f"{cfg.confidence:.0%} interval", "seeds", "verdict"]
    return sentences, header, body


def summary(per_method: dict, per_pair: dict, runs: dict[str, list[dict]], cfg) -> dict:
    """summary.json, what a ladder (imdb-scaling) reads of each rung: per method and measure the mean over seeds
    of the chosen checkpoint's test reward with its interval (core.verdict.Interval's fields); per comparison of
    PAIRS, A - B likewise; per method its training cost."""
    def entries(by_measure):  # an interval's variance and degrees of freedom (null: a normal one) for the ladder
        return {name: {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "seeds": iv.seeds,
                       "variance": iv.variance, "df": iv.df if math.isfinite(iv.df) else None}
                for name, iv in by_measure.items()}

    compute = {method: {key: sum(r.get(key, 0) for r in runs.get(method, []))
                        for key in ("train_seconds", "tokens_generated", "tokens_trained")} for method in per_method}
    return {"format": SUMMARY_FORMAT, "confidence": cfg.confidence, "measures": [name for name, _ in measures(cfg)],
            "methods": {m: entries(by_measure) for m, by_measure in per_method.items()},
            "comparisons": {f"{a} - {b}": entries(by_measure) for (a, b), by_measure in per_pair.items()},
            "compute": compute}
