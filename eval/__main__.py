"""Stage eval: every checkpoint of every method as one (KL, reward) point, as in the paper's Fig. 2 (left).

For the SFT model (the KL = 0 point) and each kept checkpoint of every training seed: one pure sample per
held-out prompt (temperature 1, top_k 0, top_p 1), on two disjoint prompt sets: `test` (the reported numbers)
and `select` (where the report chooses checkpoints), one row of frontier.csv each; reward = mean ground-truth
P(positive | prompt + completion) (or of the completion alone: ground_truth.reads) with its standard error;
KL = the sequence KL(pi || pi_ref) computed exactly: at every response position the full-vocabulary KL
between the checkpoint's and the SFT model's next-token distributions, summed over the response (prompt
masked), averaged over samples. The Monte-Carlo estimate sum(log pi - log ref) of the sampled tokens is
reported beside it. proxy_reward: the learned reward model's mean score of the same samples (normalised: 0 on
SFT samples of training prompts), the proxy PPO and Best-of-N (RM) optimise; beside the ground truth it shows
over-optimisation (Gao et al. 2022). Each checkpoint samples with the same seed (common random numbers across
points). Best-of-N's points come measured from its own stage (points.json; no model to sample here).
The sampler is ours (eval.sampler = "hf") or vLLM (core/vllm_sampling.py); the KL and the log-probs are
always the HF models' own, in fp32. Every prompt's reward, KL and completion length go to per_prompt.json (the
report's bootstrap resamples prompts). A point whose inputs did not change since the last evaluation is reused
(PointCache), so rerunning one method stage re-evaluates its checkpoints only.
"""

import csv
import json
import logging
import math
import time

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from core import job as jobs
from core import dist, lm, plots, scorer, tracking, vllm_sampling
from core.frontier import FIELDS, pareto_front, point_id, run_label
from core.methods import label, style
from core.reward import RewardModel

from .points import PointCache

log = logging.getLogger("stage")
SAMPLES_KEPT = 8  # completions kept per point, for the report's samples table


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def evaluate(policy, policy_dir, ref, prompts, tokenizer, ground_truth, reward_model, cfg, seed: int) -> dict | None:
    """One checkpoint on every held-out prompt (test and select): per prompt its ground-truth reward, the learned
    reward model's score (the proxy PPO optimises), exact KL, Monte-Carlo KL and completion length, and the first
    completions' texts. With several processes each
    samples its block of the prompts (the same seeds per prompt as one process would use) and computes their
    KL; the main process gathers them in order, scores and returns the result; the others return None. With
    vLLM (one process) it also carries the gap between vLLM's and the HF policy's log-probs of the samples
    (vllm_sampling.logprob_gap)."""
    seeds = lm.sample_seeds(len(prompts), "eval", seed)  # the same for every checkpoint
    mine = dist.shard(prompts)
    completions, sampler_logps = lm.sample(cfg.sampler, policy, policy_dir, mine, cfg.max_new_tokens,
                                           tokenizer.eos_token_id, cfg.batch_size, dist.shard(seeds))
    kl, kl_mc, logp = lm.sequence_kl(policy, ref, mine, completions, tokenizer.pad_token_id, cfg.batch_size)
    gap = {} if sampler_logps is None else \
        {"sampler_logp_gap": vllm_sampling.logprob_gap(sampler_logps, logp.tolist(), completions)}
    completions, kl, kl_mc = dist.gather(completions), dist.gather(kl.tolist()), dist.gather(kl_mc.tolist())
    if not dist.is_main():
        return None
    rewards = ground_truth(prompts, completions)
    proxy = reward_model([p + c for p, c in zip(prompts, completions)], cfg.batch_size)
    return {"reward": [float(r) for r in rewards], "proxy_reward": [float(r) for r in proxy],
            "kl": [float(k) for k in kl], "kl_mc": [float(k) for k in kl_mc],
            "length": [len(c) for c in completions], **gap,
            "texts": [lm.decode(tokenizer, c) for c in completions[:SAMPLES_KEPT]]}


def split_point(result: dict, rows: slice) -> dict:
    """The point of one prompt split (rows of the per-prompt lists): means and their standard errors."""
    reward, reward_se = mean_se(np.asarray(result["reward"][rows], dtype=np.float64))
    kl, kl_se = mean_se(np.asarray(result["kl"][rows], dtype=np.float64))
    return dict(kl=kl, kl_se=kl_se, kl_mc=float(np.mean(result["kl_mc"][rows])), reward=reward, reward_se=reward_se,
                proxy_reward=float(np.mean(result["proxy_reward"][rows])),
                length=float(np.mean(result["length"][rows])), n=len(result["reward"][rows]))


def prompt_splits(n_test: int, n_select: int) -> dict[str, slice]:
    """Where each split's prompts sit in the evaluated list: test first (the reported numbers), then select
    (the prompts checkpoints are chosen on). Disjoint: no prompt chooses a checkpoint and reports it."""
    return {"test": slice(0, n_test), "select": slice(n_test, n_test + n_select)}


def _axes_style(ax, title: str) -> None:
    ax.set_xlabel(r"KL($\pi\,\|\,\pi_{ref}$)")
    ax.set_ylabel("Reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _front_line(ax, rows: list[dict], sft: dict, **style) -> None:
    """A method's Pareto front (its points and the SFT point) as a line."""
    front = pareto_front([(sft["kl"], sft["reward"])] + [(r["kl"], r["reward"]) for r in rows])
    ax.plot([k for k, _ in front], [r for _, r in front], **style)


def plot(rows: list[dict], path_stem) -> None:
    """The paper's Fig. 2 (left): every checkpoint of every method, each method's Pareto front as a line;
    and <stem>_panels: one panel per method, its runs told apart by colour, the other fronts in grey."""
    plt = plots.pyplot()
    sft = next(r for r in rows if r["method"] == "sft")
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "sft"]
    fig, ax = plt.subplots(figsize=(7.4, 4.5))
    ax.scatter([sft["kl"]], [sft["reward"]], c="black", marker="*", s=140, label="SFT", zorder=4)
    for method in methods:
        pts = [r for r in rows if r["method"] == method]
        color, marker = style(method)
        ax.scatter([r["kl"] for r in pts], [r["reward"] for r in pts], c=color, marker=marker, s=26,
                   label=label(method), zorder=3, alpha=0.85)
        _front_line(ax, pts, sft, color=color, lw=1.2, alpha=0.8, zorder=2)
    _axes_style(ax, "IMDb Sentiment Generation")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)  # outside: 11 methods hide points
    plots.save(fig, path_stem, dpi=150)

    fig, axes = plots.panels(len(methods), 4.2, 3.4, sharex=True, sharey=True)
    for ax, method in zip(axes, methods):
        for other in methods:
            if other != method:
                _front_line(ax, [r for r in rows if r["method"] == other], sft, color="lightgray", lw=1)
        pts = [r for r in rows if r["method"] == method]
        runs = list(dict.fromkeys(r["run"] for r in pts))
        cmap = plt.get_cmap("viridis", max(2, len(runs)))
        for i, run in enumerate(runs):
            rp = [r for r in pts if r["run"] == run]
            ax.scatter([r["kl"] for r in rp], [r["reward"] for r in rp], color=cmap(i),
                       marker=style(method)[1], s=24, label=run, zorder=3)
        _front_line(ax, pts, sft, color=style(method)[0], lw=1.5, zorder=2)
        ax.scatter([sft["kl"]], [sft["reward"]], c="black", marker="*", s=100, zorder=4)
        _axes_style(ax, label(method))
        ax.legend(fontsize=6, loc="lower right")
    plots.save(fig, f"{path_stem}_panels", dpi=120)


def checkpoints(inputs: dict) -> list[tuple]:
    """(method, run, param, seed, step, folder, None) of every kept checkpoint of every method stage."""
    out = []
    for folder in inputs.values():
        if (folder / "runs.json").exists():  # a method stage (not sft or ground_truth)
            for run in json.loads((folder / "runs.json").read_text()):
                out += [(run["method"], run["run"], "" if run["param"] is None else run["param"], run["seed"],
                         c["step"], folder / c["path"], None) for c in run["checkpoints"]]
    return out


def check_given_point(p, n_prompts: int, path) -> None:
    """BadArtifact unless p is a point as best_of_n writes it: every field, every per-prompt list as long as the
    evaluation's prompts and finite."""
    fields = ("method", "run", "n", "seed", "kl", "reward", "proxy_reward", "length", "texts", "text_rewards")
    if not isinstance(p, dict) or set(fields) - set(p):
        raise jobs.BadArtifact(f"{path}: a point lacks {sorted(set(fields) - set(p or {}))}: run its stage again")
    for key in ("reward", "proxy_reward", "length"):
        values = p[key]
        if not isinstance(values, list) or len(values) != n_prompts or \
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise jobs.BadArtifact(f"{path}: {p['method']} {p['run']} {key} is not {n_prompts} finite numbers (one "
                                   f"per evaluation prompt): run its stage again")
    if not isinstance(p["kl"], (int, float)) or not math.isfinite(p["kl"]) or p["kl"] < 0:
        raise jobs.BadArtifact(f"{path}: {p['method']} {p['run']} kl = {p['kl']!r}; allowed: a finite number >= 0")


def given_points(inputs: dict, n_prompts: int) -> list[tuple]:
    """(method, run, param, seed, 0, None, result) of every point a method stage measured itself (Best-of-N:
    points.json, per prompt in this evaluation's prompt order; its KL is the stage's, with no Monte-Carlo
    estimate)."""
    out, seen = [], set()
    for folder in inputs.values():
        if (folder / "points.json").exists():
            path = folder / "points.json"
            try:
                points = json.loads(path.read_text())
            except ValueError:
                raise jobs.BadArtifact(f"{path} is not JSON: run its stage again (--force)") from None
            for p in points if isinstance(points, list) else [None]:
                check_given_point(p, n_prompts, path)
                if (p["method"], p["run"]) in seen:
                    raise jobs.BadArtifact(f"{path}: {p['method']} {p['run']} is there twice")
                seen.add((p["method"], p["run"]))
                result = {"reward": p["reward"], "proxy_reward": p["proxy_reward"], "kl": [p["kl"]] * n_prompts,
                          "kl_mc": [math.nan] * n_prompts, "length": p["length"], "texts": p["texts"],
                          "text_rewards": p["text_rewards"]}  # the shown texts' own rewards, not the expectation
                out.append((p["method"], p["run"], p["n"], p["seed"], 0, None, result))
    return out


def main():
    job = jobs.start()
    wandb_run = tracking.start(job)  # None on all but the main process
    cfg, data_cfg = job.section("eval"), job.section("data")
    tokenizer = lm.load_tokenizer(job.upstream("sft"))  # one tokenizer for every seed's SFT model
    ground_truth = scorer.GroundTruth(job.inputs["ground_truth"], job.section("ground_truth").reads, tokenizer)
    reward_models: dict[Path, RewardModel | None] = {}  # the proxy's scorer of each seed (one unless reseed_shared)
    pool = {"eval": "eval", "tune": "gt_heldout"}[cfg.prompt_split]  # the tune split: for tuning, never the test
    prompts = lm.split_prompts(data_cfg, job.seed, pool, cfg.prompts + cfg.select_prompts, tokenizer)
    splits = prompt_splits(cfg.prompts, cfg.select_prompts)
    prompt_texts = [lm.decode(tokenizer, p) for p in prompts[:SAMPLES_KEPT]]

    t0 = time.time()
    # the SFT point: one, or one per training seed when each seed has its own SFT model (reseed_shared)
    per_seed_sft = job.per_seed("sft")
    todo = [("sft", f"seed{seed}", "", seed, 0, None, None) for seed in range(job.seeds)] if per_seed_sft else \
        [("sft", "sft", "", "", 0, None, None)]
    sft_points = len(todo)
    todo += checkpoints(job.inputs) + given_points(job.inputs, len(prompts))
    references: dict[Path, torch.nn.Module] = {}  # each checkpoint's KL is to the SFT model it started from
    log.info("evaluating %d checkpoints (and %d SFT model%s) on %d test + %d select prompts", len(todo) - sft_points,
             sft_points, "s" if sft_points > 1 else "", cfg.prompts, cfg.select_prompts)
    cache = PointCache(job)
    rows, samples, per_prompt, gaps, reused = [], {}, {}, [], 0
    for method, run, param, seed, step, path, given in tqdm(todo, desc="eval checkpoints", unit="ckpt",
                                                            disable=None if dist.is_main() else True):
        reference = job.upstream("sft", seed or 0)
        key = None if given is not None else cache.key(path, reference)  # given: measured by its own stage
        result = given or cache.get(key)  # every process finds the same files, so all skip the point together
        if given is None and result is not None:
            reused += 1
        elif result is None:
            if reference not in references:
                references[reference] = lm.load_causal_lm(reference)
            ref = references[reference]
            policy = ref if path is None else lm.load_causal_lm(path)
            rm_folder = job.upstream("reward_model", seed or 0)
            if rm_folder not in reward_models:  # it scores the gathered samples: on the main process only
                reward_models[rm_folder] = RewardModel(rm_folder, lm.device()) if dist.is_main() else None
            result = evaluate(policy, path or reference, ref, prompts, tokenizer, ground_truth,
                              reward_models[rm_folder], cfg, job.seed)
        if result is None:  # not the main process: its share is gathered there
            continue
        if key is not None:
            cache.put(key, result)
        points = {split: split_point(result, rows_of) for split, rows_of in splits.items()}
        if not all(math.isfinite(p[k]) for p in points.values() for k in ("kl", "reward")):  # never a NaN in the csv
            raise FloatingPointError(f"{method} {run} step {step}: KL or reward is not finite; the checkpoint {path} "
                                     f"gives non-finite log-probs or scores")
        if "sampler_logp_gap" in result:  # vLLM sampled: its log-probs of the samples vs the HF policy's
            gaps.append(result["sampler_logp_gap"])
        rows += [dict(method=method, run=run, param=param, seed=seed, step=step, split=split, **point)
                 for split, point in points.items()]
        key_of_point = point_id(method, run, step)
        samples[key_of_point] = [{"text": t, "reward": round(r, 4), "kl": round(k, 4)} for t, r, k in
                             zip(result["texts"], result.get("text_rewards", result["reward"]), result["kl"])]
        per_prompt[key_of_point] = {k: [round(v, 6) for v in result[k]] for k in ("reward", "proxy_reward", "kl", "length")}
        test = points["test"]
        log.info("%s %s step %d: test reward %.3f +- %.3f, KL %.2f (MC %.2f); select reward %.3f, KL %.2f", method,
                 run, step, test["reward"], test["reward_se"], test["kl"], test["kl_mc"], points["select"]["reward"],
                 points["select"]["kl"])
        if wandb_run:  # the point against its training step, and its first samples
            wandb_run.log({"train/global_step": step, **{f"eval/{run_label(method, run)}/{k}": test[k] for k in
                                                          ("reward", "reward_se", "proxy_reward", "kl", "kl_se", "kl_mc",
                                                                   "length")}})
            wandb_run.log({f"samples/{key_of_point}": tracking.table(
                ["prompt", "completion", "reward", "kl"],
                [[p, t["text"], t["reward"], t["kl"]] for p, t in zip(prompt_texts, samples[key_of_point])])})
    if not dist.is_main():
        return
    if reused:
        log.info("%d of %d points reused from the last evaluation (same weights, reference, scorers and "
                 "config)", reused, len(todo))

    with open(job.out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    # every prompt's reward, KL and length of every point: the report's bootstrap resamples prompts (paired across
    # methods)
    (job.out / "per_prompt.json").write_text(json.dumps(
        {"splits": {name: [sl.start, sl.stop] for name, sl in splits.items()}, "points": per_prompt}))
    (job.out / "samples.json").write_text(json.dumps(  # the first test prompts' completions, for the report
        {"prompts": prompt_texts, "completions": samples}, indent=1))
    test_rows = [r for r in rows if r["split"] == "test"]
    plot(test_rows, job.out / "frontier")
    if wandb_run:
        frontier = tracking.table(FIELDS, [[str(r[k]) if k in ("param", "seed") else r[k] for k in FIELDS]
                                           for r in rows])  # the SFT row's param and seed are ""
        wandb_run.log({"frontier": frontier,
                       "frontier_scatter": tracking.scatter(frontier, "kl", "reward", "Reward vs KL(pi || pi_ref)"),
                       "frontier_png": tracking.image(job.out / "frontier.png", "every checkpoint of every method"),
                       "frontier_panels_png": tracking.image(job.out / "frontier_panels.png", "one panel per method")})
    given = sum(1 for t in todo if t[6] is not None)  # measured by their own stage (Best-of-N), not sampled here
    jobs.finish(job, {"points": len(test_rows), "points_given": given, "sft_reward": test_rows[0]["reward"], "sft_kl": test_rows[0]["kl"],
                      "best_reward": max(r["reward"] for r in test_rows), "eval_seconds": round(time.time() - t0, 2),
                      "sampler": cfg.sampler, "points_reused": reused,
                      **({"sampler_logp_gap": max(gaps)} if gaps else {})},
                wandb_run)


if __name__ == "__main__":
    jobs.run(main)
