"""Stage report: the whole run on one page, report.md and a self-contained report.html, opening on the verdict.

Every number that chooses a checkpoint (the best reward within a KL budget, the front area) chooses it on the
select prompts and reports it on the test prompts; each method's value is the mean over its training seeds,
with an interval over seeds and test prompts (core/verdict.py); the verdict compares pairs of methods the same
way (core/comparison.py). Everything else is read from the finished stages: each method's runs (runs.json), the
reward model's and the ground truth's diagnostics, every stage's wall time and peak memory (manifests). The page is
built once as a list of blocks and rendered twice (report/page.py); its own figures: report/figures.py.
"""

import json
import logging
import shutil
import time

import numpy as np

from core import job as jobs
from core import tracking
from core.comparison import Frontier, coverage, grids, intervals, measures, row_id, summary, verdict
from core.config import flatten
from core.flops import Model, completions_generated, run_flops
from core.frontier import TARGET_TOLERANCE, on_target, read_frontier, run_label
from core.methods import METHODS, label
from core.verdict import interval

from .figures import plot_bands, plot_overoptimisation
from .page import to_html, to_markdown

log = logging.getLogger("stage")
FIGURES = ("frontier.png", "frontier.pdf", "frontier_panels.png", "frontier_panels.pdf")


def sft_row(frontier: Frontier, cfg, rng_seed: int) -> list[str]:
    """The per-method table's SFT row: the one SFT model's test reward with its standard error, or, where each
    training seed has its own (reseed_shared), their mean over seeds with the interval the methods get."""
    models = frontier.sft_models
    if len(models) == 1:
        return ["SFT", "-", "1", "1"] + [f"{models[0]['reward']:.3f} +- {models[0]['reward_se']:.3f}"] * len(measures(cfg))
    iv = interval(np.stack([frontier.test_values[row_id(r)]["reward"] for r in models]), None, cfg.confidence,
                  cfg.resamples, rng_seed)
    n = str(len(models))
    return ["SFT", n, n, n] + [f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}] (KL 0.0: each seed's own SFT model)"
                               ] * len(measures(cfg))


def method_table(frontier: Frontier, per_method: dict, covered: dict, runs: dict[str, list[dict]], cfg,
                 rng_seed: int):
    """Per method: runs, checkpoints, and at each measure the mean over seeds of the chosen checkpoint's test
    reward with its interval, the mean test KL and completion length of what was chosen, and where its checkpoints
    do not cover the budget, that (the value is then where its training ended). The SFT model first (sft_row)."""
    header = ["method", "seeds", "runs", "checkpoints"] + [f"best reward, {name}" if budget is not None else name
                                                           for name, budget in measures(cfg)]
    body = [sft_row(frontier, cfg, rng_seed)]
    for method, by_measure in per_method.items():
        cells = []
        for (name, budget), iv in zip(measures(cfg), by_measure.values()):
            kl = frontier.per_seed(method, budget, cfg.area_max_kl, "kl").mean()
            length = frontier.per_seed(method, budget, cfg.area_max_kl, "length").mean()
            why = f"; {covered[method][name]}" if covered[method][name] else ""
            cells.append(f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}] (KL {kl:.1f}, {length:.0f} tokens{why})")
        checkpoints = sum(1 for r in frontier.rows if r["method"] == method and r["split"] == "test")
        body.append([label(method), str(frontier.seeds(method)), str(len(runs.get(method, []))), str(checkpoints)]
                    + cells)
    return header, body


def interval_scope(whole_pipeline: bool) -> str:
    """What the verdict's intervals cover and what they hold fixed (a rerun of what they hold fixed could move the
    estimates by more than the intervals say)."""
    redrawn = ("its own SFT model, pairs and reward model, and the method's own training (data order, fresh "
               "heads, rollouts)" if whole_pipeline else
               "the method's own training only (data order, fresh heads, rollouts); the SFT model, the pairs and the "
               "reward model are one draw, held fixed (reseed_shared = true redraws them per seed)")
    return (f"What the intervals cover: the test prompts, and the training seeds, each of which redraws {redrawn}. "
            f"Held fixed: the data split, the ground truth, the evaluation prompts and their sampling draws.")


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}"
    return str(x)


def compute_table(runs: dict[str, list[dict]], manifests: dict[str, dict], pairs_tokens: int):
    """Per method: training wall time, tokens generated and trained on, the peak memory of its stage; and its budget
    a run (the mean over its runs): completions it sampled, pairs it saw, counted FLOPs (core/flops.py). -> header,
    body, and a sentence naming the methods whose completions a run differ from PPO's (None when none do)."""
    header = ["method", "train time (s)", "tokens generated", "tokens trained on", "peak memory (MiB)",
              "completions a run", "pairs seen a run", "counted TFLOP a run"]
    body, completions = [], {}
    model = Model.of(manifests)
    for method in METHODS:
        if method not in runs:
            continue
        m = METHODS[method]
        rs, manifest = runs[method], manifests[m.stage]
        metrics, section = manifest["metrics"], manifest["config"][m.stage]
        generated = sum(r.get("tokens_generated", 0) for r in rs)
        if m.kind in ("ppo", "online"):
            completions[method] = sum(completions_generated(m.kind, r, section) for r in rs) / len(rs)
        sampled = {"pairs": "0 (the pairs')", "best_of_n": "its stage's"}.get(m.kind) or fmt(completions[method], 0)
        seen = (fmt(sum(r["steps"] * section["batch_size"] for r in rs) / len(rs), 0)
                if m.kind == "pairs" and all("steps" in r for r in rs) else "-")
        counted = (f"{sum(run_flops(m.kind, r, section, model, m.stage) for r in rs) / len(rs) / 1e12:.3g}"
                   if m.kind in ("pairs", "ppo", "online") else "-")
        body.append([label(method), fmt(sum(r["train_seconds"] for r in rs), 0),
                     fmt(generated) if generated else f"0 (trains on the pairs' {pairs_tokens:,})",
                     fmt(sum(r.get("tokens_trained", 0) for r in rs)),
                     fmt(metrics.get("peak_gpu_mib", metrics.get("peak_rss_mib")), 0),
                     sampled, seen, counted])
    ppo = completions.get("ppo")
    differ = [f"{label(m)} {n:,.0f} ({n / ppo:.1f}x)" for m, n in completions.items()
              if ppo and m not in ("ppo", "ppo-gt") and abs(n / ppo - 1) > 0.01]
    note = (f"Sample budgets: PPO samples {ppo:,.0f} completions a run; these methods sample another number: "
            f"{', '.join(differ)}." if differ else None)
    return header, body, note


def tuning_line(config: dict, methods: list[str], scale: str) -> str:
    """Which methods' learning rates were chosen on the tune split (their section's `tuned`) and which were not."""
    tuned = {m: config.get(METHODS[m].stage, {}).get("tuned", "") for m in METHODS
             if m in methods and METHODS[m].kind in ("pairs", "ppo", "online")}  # what the tune command tunes
    done = [f"{label(m)} ({how})" for m, how in tuned.items() if how]
    not_done = [label(m) for m, how in tuned.items() if not how]
    return ("Settings: " + (f"learning rates chosen on the tune split: {'; '.join(done)}. " if done else "") +
            (f"Not tuned on the tune split (settings from earlier sessions, some chosen on test prompts): "
             f"{', '.join(not_done)}; `python -m pipelines tune` chooses them (docs/tuning-{scale}.md)."
             if not_done else "Every method's learning rate was chosen there.") + " " + starts_line(config, methods)
            ).rstrip()


def starts_line(config: dict, methods: list[str]) -> str:
    """What the tune command did besides learning rates: PPO's start coefficients (`starts_tuned`), or not; and
    DPO's per-beta rule, which it does not choose."""
    ppo = any(METHODS[m].kind == "ppo" for m in methods)
    how = config.get("ppo", {}).get("starts_tuned", "") if ppo else ""
    said = ([f"PPO's start KL coefficients went through the tune split ({how}); those it kept were first set on "
             "test-prompt KL in earlier sessions (docs/kl-control.md)."] if how else
            ["PPO's start KL coefficients were not checked on the tune split (earlier sessions set them, some on "
             "test-prompt KL)."] if ppo else [])
    if "dpo" in methods:
        said.append("DPO's per-beta rule (one learning rate per beta) is an earlier session's: the command scales "
                    "its rates together (docs/protocol.md).")
    return " ".join(said)


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
    sft = "SFT" if len(frontier.sft_models) == 1 else f"SFT ({frontier.sft['run']}'s)"  # one example of several
    keys = {sft: row_id(frontier.sft)}
    for method in frontier.methods:
        best = max((r for seeds in frontier.candidates[method].values() for r in seeds[1:]), key=lambda r: r["reward"])
        keys[f"{label(method)} ({best['run']} @{best['step']})"] = row_id(best)
    body = []
    for i, prompt in enumerate(samples["prompts"][:n]):
        for name, key in keys.items():
            s = samples["completions"].get(key, [])
            if i < len(s):
                body.append([prompt if name == sft else "", name, s[i]["text"], fmt(s[i]["reward"], 2)])
    return ["prompt", "method", "completion", "reward"], body


def reward_models(rm_metrics: dict) -> list[dict]:
    """The reward model's metrics, one per training seed where each seed trained its own (reseed_shared), else the
    one model's (a list of one)."""
    return rm_metrics.get("per_seed") or [rm_metrics]


def checks_table(rows: list[dict], runs: dict[str, list[dict]], covered: dict, grid: dict,
                 rm_accuracy: list[float | None]) -> tuple[list[str], list[list[str]]]:
    """Does each run do what it was set to? PPO: its last checkpoint's exact KL (test prompts) against its target
    (a run that misses it by more than 25% is flagged); DPO: the held-out DPO loss over its checkpoints (flagged
    when it rises: above log 2 alone is not a failure, the spread of per-pair margins adds beta^2 var / 8 to it);
    every method: whether its checkpoints cover each budget it is compared at (at every seed: one within KL <= b
    and one at or beyond b; the verdict compares it only there) and whether one lies in each budget's upper half
    (grid: where none does, its best within b is a checkpoint below b/2, and a denser grid could raise it); DPO
    and its TRL relatives: held-out loss and
    implicit-reward accuracy by checkpoint beside the held-out accuracy of the reward model trained on the run's
    own pairs (rm_accuracy: one per seed, or one for all);
    Unlikelihood (both forms): the size of its term (alpha x the rejected tokens' mean log p, or mean -log(1 - p)),
    beside the whole loss, and the held-out rejected and chosen completions' log p per token by checkpoint (what
    minimising the rejected likelihood does)."""
    body = []
    for method in ("ppo", "ppo-gt"):
        for run in runs.get(method, []):
            last = max((r for r in rows if (r["method"], r["run"], r["split"]) == (method, run["run"], "test")),
                       key=lambda r: r["step"], default=None)
            if last is None:
                continue
            ratio = last["kl"] / run["param"]
            body.append([run_label(method, run["run"]), f"final KL {last['kl']:.2f} for target {run['param']:g} "
                         f"({ratio:.2f}x)", "yes" if on_target(last["kl"], run["param"]) else
                         f"NO: misses its target by more than {TARGET_TOLERANCE:.0%}"])
    for method, run in ((m, run) for m in METHODS for run in runs.get(m, []) if run.get("heldout")):
        curve = run["heldout"]  # DPO and the relatives trained by its trainer (ipo, slic, rdpo)
        if curve:
            losses = " -> ".join(f"{h['loss']:.3f}" for h in curve)
            accuracy = " -> ".join("n/a" if h["reward_accuracy"] is None else f"{h['reward_accuracy']:.2f}"
                                   for h in curve)
            start = " (log 2 = 0.693 at the start)" if method == "dpo" else ""
            body.append([run_label(method, run["run"]), f"held-out {label(method)} loss by checkpoint {losses}{start}, "
                         f"implicit-reward accuracy {accuracy} (the reward model's on these pairs: "
                         f"{fmt(rm_accuracy[run['seed'] if len(rm_accuracy) > 1 else 0], 2)})",
                         "yes" if len(curve) < 2 or curve[-1]["loss"] < curve[0]["loss"] else
                         "NO: the held-out loss rises"])
    for method, run in ((m, run) for m in METHODS for run in runs.get(m, []) if "unlikelihood_term" in run):
        curve = run.get("heldout_logps") or []
        held = (", held-out log p(y_l) per token by checkpoint " + " -> ".join(f"{h['rejected_logp']:.2f}" for h in curve)
                + " (log p(y_w) " + " -> ".join(f"{h['chosen_logp']:.2f}" for h in curve) + ")") if curve else ""
        body.append([run_label(method, run["run"]), f"unlikelihood term {run['unlikelihood_term']:+.4f} nats beside a "
                     f"total loss of {run['final_loss']:.3f}{held}", "-"])
    for method, by_measure in covered.items():
        missed = [f"{name}: {why}" for name, why in by_measure.items() if why]
        body.append([label(method), "checkpoints cover " + (", ".join(by_measure) if not missed else "; ".join(missed)),
                     "yes" if not missed else "NO: not compared there"])
        gaps = [f"{name}: {why}" for name, why in grid[method].items() if why]
        if gaps:
            body.append([label(method), "checkpoint grid: " + "; ".join(gaps),
                         "coarse: at those seeds its best within the budget is a checkpoint below half of it"])
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
    by_seed = " (seed 0 / 1 / ...: each trained its own)" if rm.get("per_seed") else ""

    def per_seed(key: str) -> str:  # the reward model's diagnostic, every seed's where each seed trained one
        return " / ".join(fmt(m.get(key)) for m in reward_models(rm))
    plot_overoptimisation(rows, job.out / "overoptimisation", pairs["sft_reward_mean"], pairs["sft_reward_std"])
    pairs_tokens = round(pairs["prompts"] * job.config["pairs"]["samples_per_prompt"] * pairs["mean_completion_tokens"])
    ev, seeds = job.config["eval"], max(frontier.seeds(m) for m in frontier.methods)  # what the data hold
    per_method, per_pair = intervals(frontier, cfg, job.seed)
    covered = coverage(frontier, cfg)
    sentences, *verdict_table = verdict(per_pair, covered, cfg)
    (job.out / "summary.json").write_text(json.dumps(summary(per_method, per_pair, covered, runs, cfg), indent=1))
    plot_bands(frontier, cfg, job.seed, job.out / "frontier_bands")

    budget = compute_table(runs, manifests, pairs_tokens)
    blocks = [
        ("h1", f"{job.benchmark} at scale {job.scale}: RLHF (PPO) vs DPO"),
        ("h2", "Verdict"),
        ("list", sentences),
        ("p", f"Each number: the mean over {seeds} training seed{'s' if seeds != 1 else ''} of the test reward of the "
              f"checkpoint chosen on the select prompts (the best reward within the KL budget, or the area under "
              f"the front divided by its width); the interval: {cfg.confidence:.0%}, over training seeds (Welch's t) "
              f"and test prompts (scipy's bootstrap, paired across methods): docs/verdict.md. 'Not resolved': the "
              f"interval holds 0, so neither method can be said to be ahead"
              f"{'; with one seed no verdict is given' if seeds < 2 else ''}; 'not compared': a side's checkpoints do "
              f"not cover the budget at every seed."),
        ("p", interval_scope(frontier.paired_seeds)),
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
        ("table", *method_table(frontier, per_method, covered, runs, cfg, job.seed)),
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
              "that falls over its checkpoints), and each method's coverage: its checkpoints must hold one within "
              "each KL budget and one at or beyond it at every seed, or it is not compared there (a method stopped "
              "below a budget would be measured at where its training ended). A method with no checkpoint in a budget's upper "
              "half (between b/2 and b) at some seed is marked coarse there: it is compared, but its best within b "
              "is a checkpoint below b/2, so the comparison measures its grid of checkpoints too."),
        ("table", *checks_table(rows, runs, covered, grids(frontier, cfg),
                                [m.get("heldout_pair_accuracy") for m in reward_models(rm)])),
        ("p", tuning_line(job.config, list(runs), job.scale)),
        ("h2", "Reward model and ground truth"),
        ("table", ["diagnostic", "value"], [
            ["reward model: held-out pair accuracy" + by_seed, per_seed("heldout_pair_accuracy")],
            ["reward model: Spearman correlation with the ground truth" + by_seed,
             per_seed("spearman_with_ground_truth")],
            ["ground truth: held-out accuracy (full reviews)", fmt(gt.get("heldout_accuracy"))],
            ["ground truth: held-out accuracy (first words only)", fmt(gt.get("heldout_accuracy_prefix"))],
            ["pairs: labelled pairs (ties dropped)", f"{pairs['pairs']:,} ({pairs.get('ties_dropped', 0)})"],
            sampler_row("pairs", pairs), sampler_row("eval", manifests["eval"]["metrics"])]),
        ("h2", "Compute"),
        ("table", *budget[:2]),
        *([("p", budget[2])] if budget[2] else []),
        ("table", ["stage", "wall time (s)", "peak memory (MiB)"],
         [[name, fmt(m["wall_time_s"], 0), fmt(m["metrics"].get("peak_gpu_mib", m["metrics"].get("peak_rss_mib")), 0)]
          for name, m in manifests.items()]),
        ("h2", "Samples"),
        ("table", *samples_table(frontier, samples, cfg.samples)),
        ("h2", "Protocol: the paper's settings and this scale's"),
        ("table", *protocol_table(job.config.get("protocol", {}), job.config)),
    ]
    return blocks


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
