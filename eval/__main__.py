"""Stage eval: every checkpoint of every method as one (KL, reward) point, as in the paper's Fig. 2 (left).

For the SFT model (the KL = 0 point) and each kept checkpoint: one pure sample per held-out prompt
(temperature 1, top_k 0, top_p 1); reward = mean ground-truth P(positive) with its standard error;
KL = the sequence KL(pi || pi_ref) computed exactly: at every response position the full-vocabulary KL
between the checkpoint's and the SFT model's next-token distributions, summed over the response (prompt
masked), averaged over samples. The Monte-Carlo estimate sum(log pi - log ref) of the sampled tokens is
reported beside it. Each checkpoint samples with the same seed (common random numbers across points).
"""

import csv
import json
import logging
import math
import time

import numpy as np
import torch

from core import job as jobs
from core import lm
from core.scorer import load_scorer

log = logging.getLogger("stage")
FIELDS = ["method", "run", "param", "step", "kl", "kl_se", "kl_mc", "reward", "reward_se", "n"]
STYLE = {"sft": ("black", "*"), "dpo": ("tab:red", "o"), "ppo": ("tab:blue", "s"), "ppo-gt": ("tab:cyan", "D"),
         "unlikelihood": ("tab:green", "^"), "preferred-ft": ("tab:purple", "v")}


def mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def evaluate(policy, ref, prompts, tokenizer, scorer, cfg, seed: int) -> tuple[dict, list[str]]:
    torch.manual_seed(seed)
    completions = lm.sample_completions(policy, prompts, cfg.max_new_tokens, tokenizer.eos_token_id, cfg.batch_size)
    texts = [lm.decode(tokenizer, c) for c in completions]
    rewards = np.asarray(scorer(texts), dtype=np.float64)
    kl, kl_mc = lm.sequence_kl(policy, ref, prompts, completions, tokenizer.pad_token_id, cfg.batch_size)
    reward, reward_se = mean_se(rewards)
    kl_mean, kl_se = mean_se(kl.double().numpy())
    point = dict(kl=kl_mean, kl_se=kl_se, kl_mc=float(kl_mc.double().mean()), reward=reward, reward_se=reward_se,
                 n=len(prompts))
    return point, [f"{t} [reward {r:.2f}]" for t, r in zip(texts, rewards)]


def plot(rows: list[dict], path_stem) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method]
        color, marker = STYLE.get(method, ("gray", "x"))
        ax.scatter([r["kl"] for r in pts], [r["reward"] for r in pts], c=color, marker=marker,
                   s=90 if method == "sft" else 28, label=method.upper() if method != "preferred-ft" else "Preferred-FT",
                   zorder=3, edgecolors="black" if method == "sft" else "none")
    ax.set_xlabel(r"KL($\pi\,\|\,\pi_{ref}$)")
    ax.set_ylabel("Reward")
    ax.set_title("IMDb Sentiment Generation")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{path_stem}.png", dpi=150)
    fig.savefig(f"{path_stem}.pdf")
    plt.close(fig)


def main():
    job = jobs.start()
    cfg, data_cfg = job.section("eval"), job.section("data")
    tokenizer = lm.load_tokenizer(job.inputs["sft"])
    ref = lm.load_causal_lm(job.inputs["sft"])
    scorer = load_scorer(job.inputs["ground_truth"])
    prompts = lm.split_prompts(data_cfg, job.seed, "eval", cfg.prompts, tokenizer)

    t0 = time.time()
    point, sft_samples = evaluate(ref, ref, prompts, tokenizer, scorer, cfg, job.seed)
    rows = [dict(method="sft", run="sft", param="", step=0, **point)]
    samples = {"sft": sft_samples}
    log.info("sft: reward %.3f +- %.3f, KL %.3f", point["reward"], point["reward_se"], point["kl"])
    for name, folder in job.inputs.items():
        if not (folder / "runs.json").exists():
            continue  # not a method stage (sft, ground_truth)
        for run in json.loads((folder / "runs.json").read_text()):
            for ckpt in run["checkpoints"]:
                policy = lm.load_causal_lm(folder / ckpt["path"])
                point, texts_ = evaluate(policy, ref, prompts, tokenizer, scorer, cfg, job.seed)
                rows.append(dict(method=run["method"], run=run["run"], param=run["param"], step=ckpt["step"], **point))
                samples[f"{run['run']}/step{ckpt['step']}"] = texts_
                log.info("%s step %d: reward %.3f +- %.3f, KL %.2f (MC %.2f)", run["run"], ckpt["step"],
                         point["reward"], point["reward_se"], point["kl"], point["kl_mc"])

    with open(job.out / "frontier.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    prompt_texts = [lm.decode(tokenizer, p) for p in prompts[:8]]
    (job.out / "samples.json").write_text(json.dumps(
        {"prompts": prompt_texts, "completions": {k: v[:8] for k, v in samples.items()}}, indent=1))
    plot(rows, job.out / "frontier")
    jobs.finish(job, {"points": len(rows), "sft_reward": rows[0]["reward"], "sft_kl": rows[0]["kl"],
                      "best_reward": max(r["reward"] for r in rows), "eval_seconds": round(time.time() - t0, 2)})


if __name__ == "__main__":
    main()
