"""The reward-vs-KL frontier as numbers: Pareto front, best reward within a KL budget, area under the front.

A point is (kl, reward). Every method can stay at the SFT model, so the callers include the SFT point
(0, reward_sft) in each method's points.
"""

from __future__ import annotations

import csv

# frontier.csv's columns, one row per (point, split): eval writes them, the report reads them (read_frontier)
FIELDS = ["method", "run", "param", "seed", "step", "split", "kl", "kl_se", "kl_mc", "reward", "reward_se",
          "proxy_reward", "length", "n"]
NUMBERS = ("kl", "kl_se", "kl_mc", "reward", "reward_se", "proxy_reward", "length")


TARGET_TOLERANCE = 0.25  # a PPO run lands on its target KL when its last checkpoint is within 25% of it


def on_target(kl: float, target: float) -> bool:
    """Whether a run's final KL lands on its target: within TARGET_TOLERANCE of it (0.75x to 1.25x)."""
    return abs(kl / target - 1) <= TARGET_TOLERANCE


def read_frontier(path) -> list[dict]:
    """frontier.csv's rows with their numbers parsed. A file with other columns (another version's eval, or an
    edit) or a value that is not a number is a ValueError naming the file, not a KeyError later."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{path} has the columns {reader.fieldnames}, not this version's {FIELDS}: it was "
                             f"written by another version of eval, or edited")
        rows = list(reader)
    for line, r in enumerate(rows, start=2):
        try:
            for k in NUMBERS:
                r[k] = float(r[k])
            r["step"], r["n"] = int(r["step"]), int(r["n"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {line}: a value of {NUMBERS + ('step', 'n')} is not a number") from None
    return rows


def run_label(method: str, run: str) -> str:
    """A run's name among every method's runs (wandb, logs): dpo-beta0.1-seed0, ppo-gt-kl3-seed1 (PPO's runs are
    named after their method already), sft."""
    return run if run == method or run.startswith(f"{method}-") else f"{method}-{run}"


def point_id(method: str, run: str, step) -> str:
    """A point's key in eval's per_prompt.json and samples.json, which the report reads: "sft" (the shared SFT
    model), "sft/seed<k>" (seed k's own, under reseed_shared), "<method>/<run>/step<n>"."""
    if method == "sft":
        return "sft" if run == "sft" else f"sft/{run}"
    return f"{method}/{run}/step{step}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats (lower or equal KL and higher reward), by increasing KL."""
    front: list[tuple[float, float]] = []
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or reward > front[-1][1]:
            front.append((kl, reward))
    return front


def best_within(points: list[tuple[float, float]], kl_budget: float) -> float | None:
    """The highest reward among points with KL <= kl_budget; None when there is none."""
    inside = [r for k, r in points if k <= kl_budget]
    return max(inside) if inside else None


def frontier_area(points: list[tuple[float, float]], max_kl: float) -> float | None:
    """Mean over KL budgets b uniform in [0, max_kl] of best_within(points, b): the area under the Pareto
    front's step function up to max_kl, divided by max_kl (so it reads as a reward). None without a point at
    KL <= 0 (the step function would be undefined near 0)."""
    front = [p for p in pareto_front(points) if p[0] <= max_kl]
    if not front or front[0][0] > 0:
        return None
    area = 0.0
    for (kl, reward), nxt in zip(front, front[1:] + [(max_kl, None)]):
        area += (nxt[0] - kl) * reward
    return area / max_kl


def choice_weights(select_points: list[tuple[float, float]], budget: float | None, max_kl: float) -> list[float]:
    """Which checkpoints a statistic reports, chosen on the select prompts, as weights over the points.

    select_points: (kl, reward) of each candidate on the select prompts, the SFT model's (0, r) among them.
    budget: a KL budget -> one-hot on the best select reward with select KL <= budget (ties: the first);
    None -> the front area up to max_kl: each point weighted by the share of budgets in [0, max_kl] for which
    it is that best one. The statistic is then sum_i w_i * (point i's reward on the test prompts): chosen on
    one set of prompts, measured on another, so a checkpoint that is best only by the test prompts' noise
    is not picked by it. -> [len(select_points)] weights summing to 1 (0 everywhere when none is inside).
    """
    weights = [0.0] * len(select_points)
    if budget is not None:
        inside = [i for i, (kl, _) in enumerate(select_points) if kl <= budget]
        if inside:
            weights[max(inside, key=lambda i: (select_points[i][1], -i))] = 1.0
        return weights
    order = sorted(range(len(select_points)), key=lambda i: (select_points[i][0], -select_points[i][1], i))
    front = []  # (kl, index) of the select Pareto front
    for i in order:
        if not front or select_points[i][1] > select_points[front[-1]][1]:
            front.append(i)
    front = [i for i in front if select_points[i][0] <= max_kl]
    if not front or select_points[front[0]][0] > 0:
        return weights
    edges = [select_points[i][0] for i in front[1:]] + [max_kl]
    for i, start, end in zip(front, [select_points[i][0] for i in front], edges):
        weights[i] += (end - start) / max_kl
    return weights
