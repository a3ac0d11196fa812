"""The report's own figures: each method's front over seeds with its band, and the proxy against the ground truth."""

import numpy as np

from core import plots
from core.comparison import Frontier
from core.methods import METHODS, label, style
from core.verdict import interval

BAND_BUDGETS = 41  # KL budgets on the band figure's axis
BAND_RESAMPLES = 400  # per budget: a figure's band, not a reported number


def plot_bands(frontier: Frontier, cfg, rng_seed: int, path_stem) -> None:
    """Each method's front (the test reward of the checkpoint chosen on select, against the KL budget) as the
    mean over seeds with a shaded interval, each seed's own front as a thin line."""
    plt = plots.pyplot()
    budgets = np.linspace(0, cfg.area_max_kl, BAND_BUDGETS)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sft = [r["reward"] for r in frontier.sft_models]  # each seed's own SFT model, where each trained one: their mean
    ax.axhline(float(np.mean(sft)), color="black", lw=0.8, ls=":", label="SFT" if len(sft) == 1 else
               f"SFT (mean of {len(sft)})")
    for method in frontier.methods:
        per_budget = [frontier.per_seed(method, b, cfg.area_max_kl) for b in budgets]  # [S, P] each
        seeds = np.stack([v.mean(-1) for v in per_budget], axis=1)  # [S, budgets]
        ivs = [interval(v, None, cfg.confidence, BAND_RESAMPLES, rng_seed) for v in per_budget]
        color = style(method)[0]
        for curve in seeds:
            ax.step(budgets, curve, where="post", color=color, lw=0.6, alpha=0.45)
        ax.step(budgets, [iv.estimate for iv in ivs], where="post", color=color, lw=1.8,
                label=f"{label(method)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})")
        ax.fill_between(budgets, [iv.low for iv in ivs], [iv.high for iv in ivs], step="post", color=color, alpha=0.15)
    ax.set_xlabel(r"KL budget: KL($\pi\,\|\,\pi_{ref}$) of the chosen checkpoint on the select prompts")
    ax.set_ylabel("Reward on the test prompts")
    ax.set_title(f"Best reward within a KL budget: seed mean, {cfg.confidence:.0%} band, each seed thin")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    plots.save(fig, path_stem, dpi=150)


def trend(kl: np.ndarray, y: np.ndarray, bins: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Means of y in KL bins of equal counts (a figure's guide line). -> (bin mean KL, bin mean y)."""
    order = np.argsort(kl)
    parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)]
    return np.array([kl[p].mean() for p in parts]), np.array([y[p].mean() for p in parts])


def plot_overoptimisation(rows: list[dict], path_stem, shift: float, scale: float) -> None:
    """Gao et al. (2022)'s picture, per method: the ground-truth reward and the learned reward model's score (the
    proxy) of every checkpoint against its KL, on the test prompts, on one axis: both standardised on the SFT
    model's samples (the proxy by the reward_model stage, the truth here by shift and scale: the pairs' SFT samples'
    mean and std of P(positive), as PPO-GT's training reward). Where a method that optimises the proxy keeps
    raising it while the ground truth lags or falls, it over-optimises. Methods that optimise the reward model
    come first."""
    test = [r for r in rows if r["split"] == "test"]
    sft = next(r for r in test if r["method"] == "sft")
    present = [m for m in METHODS if any(r["method"] == m for r in test)]
    methods = sorted(present, key=lambda m: METHODS[m].learns_from != "reward model")
    fig, axes = plots.panels(len(methods), 4.2, 3.3, sharey=True)
    for ax, method in zip(axes, methods):
        pts = [sft] + [r for r in test if r["method"] == method]
        kl = np.array([r["kl"] for r in pts])
        color, marker = style(method)
        truth = (np.array([r["reward"] for r in pts]) - shift) / scale
        proxy = np.array([r["proxy_reward"] for r in pts])
        for y, face, ls, name in ((truth, color, "-", "ground truth"), (proxy, "none", "--", "reward model (proxy)")):
            ax.scatter(kl, y, marker=marker, s=18, facecolors=face, edgecolors=color, alpha=0.7)
            ax.plot(*trend(kl, y), color=color, lw=1.5, ls=ls, label=name)
        ax.axhline(0, color="black", lw=0.6, ls=":")
        ax.set_xlabel(r"KL($\pi\,\|\,\pi_{ref}$)")
        ax.set_ylabel("reward, standardised on SFT samples")
        ax.set_title(f"{label(method)} (learns from the {METHODS[method].learns_from})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    plots.save(fig, path_stem, dpi=120)
