"""Stage report: the whole run on one page, report.md and a self-contained report.html, opening on the verdict.

Every number that chooses a checkpoint (the best reward within a KL budget, the front area) chooses it on the
select prompts and reports it on the test prompts; each method's value is the mean over its training seeds,
with an interval over seeds and test prompts (core/verdict.py); the verdict compares pairs of methods the same
way. Everything else is read from the finished stages: each method's runs (runs.json), the reward model's
and the ground truth's diagnostics, every stage's wall time and peak memory (manifests). The page is built
once as a list of blocks (headings, paragraphs, tables, figures) and rendered twice.
"""

import base64
import functools
import html
import json
import logging
import math
import shutil
import time

import numpy as np

from core import job as jobs
from core import plots, tracking
from core.frontier import point_id, read_frontier
from core.methods import METHODS, label, style
from core.run import run_label
from core.verdict import SUMMARY_FORMAT, chosen_values, interval, sentence
from pipelines.config import flatten

log = logging.getLogger("stage")
# the comparisons of the verdict: the paper's (DPO against each method, PPO on the learned reward against the truth),
# then DPO against each method beyond the paper, and our PPO against TRL's RLOO and GRPO
PAIRS = [("dpo", "ppo"), ("dpo", "ppo-gt"), ("ppo", "ppo-gt"), ("dpo", "unlikelihood"), ("dpo", "preferred-ft")]
PAIRS += [("dpo", m) for m in METHODS if m != "dpo" and ("dpo", m) not in PAIRS]
PAIRS += [("ppo", "rloo"), ("ppo-gt", "rloo-gt"), ("ppo", "grpo"), ("ppo-gt", "grpo-gt")]  # ours vs a library's RL
FIGURES = ("frontier.png", "frontier.pdf", "frontier_panels.png", "frontier_panels.pdf")
BAND_BUDGETS = 41  # KL budgets on the band figure's axis
BAND_RESAMPLES = 400  # per budget: a figure's band, not a reported number


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


def method_table(frontier: Frontier, per_method: dict, runs: dict[str, list[dict]], cfg):
    """Per method: runs, checkpoints, and at each measure the mean over seeds of the chosen checkpoint's test
    reward with its interval, and the mean test KL and completion length of what was chosen."""
    sft = frontier.sft
    header = ["method", "seeds", "runs", "checkpoints"] + [f"best reward, {name}" if budget is not None else name
                                                           for name, budget in measures(cfg)]
    body = [["SFT", "-", "1", "1"] + [f"{sft['reward']:.3f} +- {sft['reward_se']:.3f}"] * len(measures(cfg))]
    for method, by_measure in per_method.items():
        cells = []
        for (_, budget), iv in zip(measures(cfg), by_measure.values()):
            kl = frontier.per_seed(method, budget, cfg.area_max_kl, "kl").mean()
            length = frontier.per_seed(method, budget, cfg.area_max_kl, "length").mean()
            cells.append(f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}] (KL {kl:.1f}, {length:.0f} tokens)")
        checkpoints = sum(1 for r in frontier.rows if r["method"] == method and r["split"] == "test")
        body.append([label(method), str(frontier.seeds(method)), str(len(runs.get(method, []))), str(checkpoints)]
                    + cells)
    return header, body


def plot_bands(frontier: Frontier, cfg, rng_seed: int, path_stem) -> None:
    """Each method's front (the test reward of the checkpoint chosen on select, against the KL budget) as the
    mean over seeds with a shaded interval, each seed's own front as a thin line."""
    plt = plots.pyplot()
    budgets = np.linspace(0, cfg.area_max_kl, BAND_BUDGETS)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.axhline(frontier.sft["reward"], color="black", lw=0.8, ls=":", label="SFT")
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


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}"
    return str(x)


def compute_table(runs: dict[str, list[dict]], manifests: dict[str, dict], pairs_tokens: int):
    """Per method: training wall time, tokens generated and trained on, the peak memory of its stage."""
    header = ["method", "train time (s)", "tokens generated", "tokens trained on", "peak memory (MiB)"]
    body = []
    for method in METHODS:
        if method not in runs:
            continue
        rs, metrics = runs[method], manifests[METHODS[method].stage]["metrics"]
        generated = sum(r.get("tokens_generated", 0) for r in rs)
        body.append([label(method), fmt(sum(r["train_seconds"] for r in rs), 0),
                     fmt(generated) if generated else f"0 (trains on the pairs' {pairs_tokens:,})",
                     fmt(sum(r.get("tokens_trained", 0) for r in rs)),
                     fmt(metrics.get("peak_gpu_mib", metrics.get("peak_rss_mib")), 0)])
    return header, body


def protocol_table(protocol: dict, config: dict) -> tuple[list[str], list[list[str]]]:
    """Every setting of the paper's protocol beside this scale's value (not the sections of methods beyond the
    paper, whose benchmark-level values are ours)."""
    beyond = {m.stage for m in METHODS.values() if not m.paper} | {"methods"}
    paper = {k: v for k, v in flatten(protocol).items() if k.split(".")[0] not in beyond}
    here = flatten({k: v for k, v in config.items() if k != "protocol"})
    body = [[f"`{k}`", str(v), str(here[k]), "" if here[k] == v else "differs"] for k, v in paper.items() if k in here]
    return ["setting", "paper", "this scale", ""], body


def samples_table(frontier: Frontier, samples: dict, n: int) -> tuple[list[str], list[list[str]]]:
    """The first n test prompts: one completion per method, from its checkpoint of highest select reward."""
    keys = {"SFT": row_id(frontier.sft)}
    for method in frontier.methods:
        best = max((r for seeds in frontier.candidates[method].values() for r in seeds[1:]), key=lambda r: r["reward"])
        keys[f"{label(method)} ({best['run']} @{best['step']})"] = row_id(best)
    body = []
    for i, prompt in enumerate(samples["prompts"][:n]):
        for name, key in keys.items():
            s = samples["completions"].get(key, [])
            if i < len(s):
                body.append([prompt if name == "SFT" else "", name, s[i]["text"], fmt(s[i]["reward"], 2)])
    return ["prompt", "method", "completion", "reward"], body


def checks_table(rows: list[dict], runs: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Does each run do what it was set to? PPO: its last checkpoint's exact KL (test prompts) against its target
    (a run that misses it by more than 25% is flagged); DPO: the held-out DPO loss over its checkpoints (flagged
    when it rises: above log 2 alone is not a failure, the spread of per-pair margins adds beta^2 var / 8 to it);
    Unlikelihood: the size of its unlikelihood term (alpha x the mean -log(1 - p) over rejected tokens), against
    Preferred-FT's loss."""
    body = []
    for method in ("ppo", "ppo-gt"):
        for run in runs.get(method, []):
            last = max((r for r in rows if (r["method"], r["run"], r["split"]) == (method, run["run"], "test")),
                       key=lambda r: r["step"], default=None)
            if last is None:
                continue
            ratio = last["kl"] / run["param"]
            body.append([run_label(method, run["run"]), f"final KL {last['kl']:.2f} for target {run['param']:g} "
                         f"({ratio:.2f}x)", "yes" if 0.75 <= ratio <= 1.25 else "NO: misses its target by more than 25%"])
    for method, run in ((m, run) for m in METHODS for run in runs.get(m, []) if run.get("heldout")):
        curve = run["heldout"]  # DPO and the relatives trained by its trainer (ipo, slic, rdpo)
        if curve:
            losses = " -> ".join(f"{h['loss']:.3f}" for h in curve)
            accuracy = " -> ".join("n/a" if h["reward_accuracy"] is None else f"{h['reward_accuracy']:.2f}"
                                   for h in curve)
            start = " (log 2 = 0.693 at the start)" if method == "dpo" else ""
            body.append([run_label(method, run["run"]), f"held-out {label(method)} loss by checkpoint {losses}{start}, "
                         f"reward accuracy {accuracy}",
                         "yes" if len(curve) < 2 or curve[-1]["loss"] < curve[0]["loss"] else
                         "NO: the held-out loss rises"])
    for run in runs.get("unlikelihood", []):
        if "unlikelihood_term" in run:
            body.append([f"unlikelihood-{run['run']}", f"unlikelihood term {run['unlikelihood_term']:.4f} nats "
                         f"beside a total loss of {run['final_loss']:.3f}", "-"])
    return ["run", "measured", "as intended"], body


def sampler_row(stage: str, metrics: dict) -> list[str]:
    """Who drew the stage's samples; for vLLM, how far its log-probs of them were from the HF model's."""
    gap = metrics.get("sampler_logp_gap")
    return [f"{stage}: sampler", metrics.get("sampler", "hf") +
            ("" if gap is None else f" (its log-probs {gap:.2g} nats per token from the HF model's)")]


def build(job) -> list[tuple]:
    cfg = job.section("report")
    inputs = job.inputs
    manifests = {name: json.loads((folder / "manifest.json").read_text()) for name, folder in inputs.items()}
    try:
        rows = read_frontier(inputs["eval"] / "frontier.csv")
    except ValueError as e:
        raise jobs.BadArtifact(f"{e}; run eval again (--stages eval,report --force)") from None
    frontier = Frontier(rows, json.loads((inputs["eval"] / "per_prompt.json").read_text()),
                        paired_seeds=job.per_seed("sft"))
    runs: dict[str, list[dict]] = {}
    for folder in (f for f in inputs.values() if (f / "runs.json").is_file()):  # the method stages of this run
        for r in json.loads((folder / "runs.json").read_text()):
            runs.setdefault(r["method"], []).append(r)
    samples = json.loads((inputs["eval"] / "samples.json").read_text())
    pairs, gt, rm = manifests["pairs"]["metrics"], manifests["ground_truth"]["metrics"], manifests["reward_model"]["metrics"]
    plot_overoptimisation(rows, job.out / "overoptimisation", pairs["sft_reward_mean"], pairs["sft_reward_std"])
    pairs_tokens = round(pairs["prompts"] * job.config["pairs"]["samples_per_prompt"] * pairs["mean_completion_tokens"])
    ev, seeds = job.config["eval"], max(frontier.seeds(m) for m in frontier.methods)  # what the data hold
    per_method, per_pair = intervals(frontier, cfg, job.seed)
    sentences, *verdict_table = verdict(per_pair, cfg)
    (job.out / "summary.json").write_text(json.dumps(summary(per_method, per_pair, runs, cfg), indent=1))
    plot_bands(frontier, cfg, job.seed, job.out / "frontier_bands")

    blocks = [
        ("h1", f"{job.benchmark} at scale {job.scale}: RLHF (PPO) vs DPO"),
        ("h2", "Verdict"),
        ("list", sentences),
        ("p", f"Each number: the mean over {seeds} training seed{'s' if seeds != 1 else ''} of the test reward of the "
              f"checkpoint chosen on the select prompts (the best reward within the KL budget, or the area under "
              f"the front divided by its width); the interval: {cfg.confidence:.0%}, over training seeds (Welch's t) "
              f"and test prompts (scipy's bootstrap, paired across methods): docs/verdict.md. 'Not resolved': the "
              f"interval holds 0, so neither method can be said to be ahead"
              f"{'; with one seed no verdict is given' if seeds < 2 else ''}."),
        ("table", *verdict_table),
        ("img", "frontier_bands.png", f"each method's front: the test reward of the checkpoint chosen on select at "
                                      f"each KL budget, mean over seeds with a {cfg.confidence:.0%} band; thin: "
                                      f"each seed"),
        ("h2", "Per method"),
        ("p", f"{ev['prompts']} test and {ev['select_prompts']} select prompts (held-out IMDb reviews' first "
              f"words), one pure sample each ({ev['max_new_tokens']} tokens at most): reward = the ground truth's "
              f"mean P(positive | {job.config['ground_truth']['reads']}), KL = the exact sequence KL(pi || pi_ref) "
              f"to the SFT model. Checkpoints are chosen on select, reported on test; in brackets the "
              f"{cfg.confidence:.0%} interval, then the chosen checkpoints' mean test KL and completion length. "
              f"Seed {job.seed}; written {time.strftime('%Y-%m-%d %H:%M')}; frontier.csv has every point on both "
              f"splits with its standard errors."),
        ("table", *method_table(frontier, per_method, runs, cfg)),
        ("h2", "Reward vs KL (the DPO paper's Fig. 2, left)"),
        ("img", "frontier.png", "every checkpoint of every method and seed on the test prompts; lines: each method's "
                                "Pareto front over all its checkpoints (chosen on test: optimistic)"),
        ("img", "frontier_panels.png", "one panel per method, its runs by colour; grey: the other methods' fronts"),
        ("h2", "Over-optimisation: the proxy against the ground truth"),
        ("p", "Every checkpoint's ground-truth reward (solid) and learned reward model score (dashed: the proxy that "
              "PPO, RLOO and Best-of-N (RM) optimise) against its KL, test prompts (Gao et al. 2022), both "
              "standardised on the SFT model's samples (0: the SFT model; 1: one standard deviation of its samples' "
              "reward). A method over-optimises where the proxy keeps rising and the ground truth lags or falls; "
              "frontier.csv's proxy_reward column has every point."),
        ("img", "overoptimisation.png", "ground truth and proxy against KL, per method; lines: means of KL bins"),
        ("h2", "Training checks"),
        ("p", "Each run against what it was set to do (PPO: within 25% of its target KL; DPO: a held-out loss "
              "that falls over its checkpoints)."),
        ("table", *checks_table(rows, runs)),
        ("h2", "Reward model and ground truth"),
        ("table", ["diagnostic", "value"], [
            ["reward model: held-out pair accuracy", fmt(rm.get("heldout_pair_accuracy"))],
            ["reward model: Spearman correlation with the ground truth", fmt(rm.get("spearman_with_ground_truth"))],
            ["ground truth: held-out accuracy (full reviews)", fmt(gt.get("heldout_accuracy"))],
            ["ground truth: held-out accuracy (first words only)", fmt(gt.get("heldout_accuracy_prefix"))],
            ["pairs: labelled pairs (ties dropped)", f"{pairs['pairs']:,} ({pairs.get('ties_dropped', 0)})"],
            sampler_row("pairs", pairs), sampler_row("eval", manifests["eval"]["metrics"])]),
        ("h2", "Compute"),
        ("table", *compute_table(runs, manifests, pairs_tokens)),
        ("table", ["stage", "wall time (s)", "peak memory (MiB)"],
         [[name, fmt(m["wall_time_s"], 0), fmt(m["metrics"].get("peak_gpu_mib", m["metrics"].get("peak_rss_mib")), 0)]
          for name, m in manifests.items()]),
        ("h2", "Samples"),
        ("table", *samples_table(frontier, samples, cfg.samples)),
        ("h2", "Protocol: the paper's settings and this scale's"),
        ("table", *protocol_table(job.config.get("protocol", {}), job.config)),
    ]
    return blocks


def to_markdown(blocks: list[tuple]) -> str:
    cell = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = []
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + args[0])
        elif kind == "p":
            out.append(args[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "img":
            out.append(f"![{args[1]}]({args[0]})\n\n*{args[1]}*")
        elif kind == "table":
            header, body = args
            out.append("\n".join(["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
                                 + ["| " + " | ".join(map(cell, row)) + " |" for row in body]))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], folder) -> str:
    """The same page as one HTML file, the figures embedded so it can be mailed or attached as it is."""
    esc = html.escape
    code = lambda s: esc(s).replace("`", "")  # noqa: E731
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>report</title><style>"
           "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(args[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(args[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in args[0]) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((folder / args[0]).read_bytes()).decode()
            out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{esc(args[1])}'>"
                       f"<figcaption>{esc(args[1])}</figcaption></figure>")
        elif kind == "table":
            header, body = args
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{code(str(c))}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
    return "\n".join(out + ["</body></html>"]) + "\n"


def main():
    job = jobs.start()
    wandb_run = tracking.start(job, "summary")  # the group's summary: the report's tables and page
    for name in FIGURES:  # beside report.md, so its links work here and where it is published
        shutil.copy2(job.inputs["eval"] / name, job.out / name)
    blocks = build(job)
    (job.out / "report.md").write_text(to_markdown(blocks))
    (job.out / "report.html").write_text(to_html(blocks, job.out))
    log.info("report.md and report.html: %d tables", sum(b[0] == "table" for b in blocks))
    if wandb_run:  # the verdict, the per-method table and the compute table, by their first two columns
        tables = {tuple(b[1][:2]): b[1:] for b in blocks if b[0] == "table"}
        wandb_run.log({**{name: tracking.table(*tables[first]) for name, first in
                          (("verdict", ("comparison", "measure")), ("per_method", ("method", "seeds")),
                           ("compute", ("method", "train time (s)"))) if first in tables},
                       "frontier_bands_png": tracking.image(job.out / "frontier_bands.png", "fronts over seeds"),
                       "overoptimisation_png": tracking.image(job.out / "overoptimisation.png",
                                                              "ground truth and proxy against KL"),
                       "report": tracking.html((job.out / "report.html").read_text())})
    jobs.finish(job, {"tables": sum(b[0] == "table" for b in blocks)}, wandb_run)


if __name__ == "__main__":
    jobs.run(main)
