"""Stage best_of_n: Best-of-N from the SFT model, choosing by the learned reward model (best-of-n) or by the
ground truth (best-of-n-gt); one point per N. Nothing is trained.

For each evaluation prompt (eval's test and select prompts, the same list eval samples), `samples` = M pure
samples from the SFT model (temperature 1, top_k 0, top_p 1), each scored by the ground truth (P(positive)) and
by the reward model (normalised, the proxy PPO optimises). Best-of-N draws N samples and keeps the one the
chooser scores highest. Its expected value on a prompt is estimated from the M samples without drawing subsets:
averaged over all C(M, N) subsets of them, the sample of chooser-rank i (ascending, 1..M) is the kept one in
C(i - 1, N - 1) of them (`best_of_n_weights`), an unbiased estimate with far less variance than one draw of N.

KL: Best-of-N has no model to measure, so eval's exact KL does not apply. KL(best-of-N || SFT) <= log N -
(N - 1) / N (Beirami et al. 2024), with equality in the limit where no single outcome has a noticeable
probability (the kept sample's rank is then the maximum of N uniforms); outcomes that repeat make it lower. The
value reported is that upper bound; the stage counts the ties among each prompt's samples (metrics:
chooser_ties), the sign of repeated outcomes, to say how tight it is.

Writes points.json (per method, N and training seed: every prompt's ground-truth reward, proxy reward, length
and KL, in eval's prompt order, and the first prompts' chosen texts) and runs.json (the runs, no checkpoints).
Training seeds: the SFT model is shared unless reseed_shared, and Best-of-N trains nothing, so every seed's
point is the same draw; re-seeded, each seed samples its own SFT model and scores with its own reward model.
"""

import json
import logging
import math
import time

import numpy as np

from core import dist
from core import job as jobs
from core import lm
from core.reward import RewardModel
from core.scorer import GroundTruth

log = logging.getLogger("stage")
TEXTS_KEPT = 8  # chosen completions kept per point, for the report's samples table (eval's SAMPLES_KEPT)
CHOOSERS = {"best-of-n": "proxy_reward", "best-of-n-gt": "reward"}  # method -> the score that picks the sample


def best_of_n_weights(m: int, n: int) -> np.ndarray:
    """P(the sample of rank i is kept) when N of the M samples are drawn without replacement and the best kept:
    C(i - 1, N - 1) / C(M, N) for ranks i = 1..M, ascending by the chooser's score. -> [M], summing to 1."""
    if not 1 <= n <= m:
        raise ValueError(f"best_of_n_weights: N = {n} needs 1 <= N <= M = {m}")
    total = math.comb(m, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)])


def expected_best(chooser: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The expected value of the sample Best-of-N keeps, per prompt, over every N-subset of its M samples.

    chooser [P, M]: the score that picks (ties broken by sample order); values [P, M]: what is measured of
    each sample (the ground-truth reward, the proxy reward, the length). -> [P]."""
    order = np.argsort(chooser, axis=1, kind="stable")  # ascending: the last is the best
    return (np.take_along_axis(values, order, axis=1) * best_of_n_weights(chooser.shape[1], n)).sum(1)


def kl_upper_bound(n: int) -> float:
    """KL(best-of-N || base) <= log N - (N - 1) / N, reached when no outcome has a noticeable probability."""
    return math.log(n) - (n - 1) / n


def sample_and_score(job, seed: int, prompts: list[list[int]], m: int, eval_cfg, tokenizer) -> dict:
    """M samples per prompt from seed `seed`'s SFT model, with their ground-truth and proxy rewards and lengths.
    -> {"completions": [P * M] (prompt-major), "reward", "proxy_reward", "length": [P, M] arrays} on the main
    process; None on the others."""
    sft = job.upstream("sft", seed)
    model = lm.load_causal_lm(sft)
    rows = [p for p in prompts for _ in range(m)]  # prompt-major: prompt j's samples are rows j*M .. j*M + M-1
    seeds = lm.sample_seeds(len(rows), "best-of-n", job.seed, seed)
    completions, _ = lm.sample(eval_cfg.sampler, model, sft, dist.shard(rows), eval_cfg.max_new_tokens,
                               tokenizer.eos_token_id, eval_cfg.batch_size, dist.shard(seeds))
    completions = dist.gather(completions)
    if not dist.is_main():
        return None
    ground_truth = GroundTruth(job.inputs["ground_truth"], job.section("ground_truth").reads, tokenizer)
    reward_model = RewardModel(job.upstream("reward_model", seed), lm.device())
    shape = (len(prompts), m)
    return {"completions": completions,
            "reward": ground_truth(rows, completions).reshape(shape),
            "proxy_reward": reward_model([p + c for p, c in zip(rows, completions)], eval_cfg.batch_size)
            .double().numpy().reshape(shape),
            "length": np.array([len(c) for c in completions], dtype=np.float64).reshape(shape)}


def points_of(drawn: dict, methods: list[str], ns: list[int], tokenizer) -> list[dict]:
    """Every (method, N) point of one draw: per prompt its expected ground-truth reward, proxy reward and length,
    the KL bound, and the first prompts' kept completion (the best of their first N samples) with its own
    ground-truth reward."""
    m = drawn["reward"].shape[1]
    out = []
    for method in methods:
        chooser = drawn[CHOOSERS[method]]
        for n in ns:
            # the shown example: the best of the prompt's first n samples, ties broken as expected_best breaks them
            kept = [j * m + int(np.argsort(chooser[j, :n], kind="stable")[-1])
                    for j in range(min(TEXTS_KEPT, len(chooser)))]
            out.append({"method": method, "n": n, "kl": kl_upper_bound(n),
                        **{key: expected_best(chooser, drawn[key], n).tolist()
                           for key in ("reward", "proxy_reward", "length")},
                        "texts": [lm.decode(tokenizer, drawn["completions"][i]) for i in kept],
                        "text_rewards": [float(drawn["reward"].flat[i]) for i in kept]})
    return out


def ties(chooser: np.ndarray) -> int:
    """Samples whose chooser score equals another sample's of the same prompt."""
    return int(sum(len(row) - len(np.unique(row)) for row in chooser))


def main():
    job = jobs.start()
    cfg, eval_cfg, data_cfg = job.section("best_of_n"), job.section("eval"), job.section("data")
    methods = job.config["methods"]  # of best-of-n and best-of-n-gt, the ones this run puts on the frontier
    tokenizer = lm.load_tokenizer(job.upstream("sft"))
    prompts = lm.split_prompts(data_cfg, job.seed, "eval", eval_cfg.prompts + eval_cfg.select_prompts, tokenizer)
    per_seed_sft = job.per_seed("sft")
    points, runs, tie_counts = [], [], {}
    drawn_seeds = range(job.seeds) if per_seed_sft else [0]
    for seed in drawn_seeds:
        t0 = time.time()
        log.info("seed %d: %d samples for each of %d prompts from %s", seed, cfg.samples, len(prompts),
                 job.upstream("sft", seed))
        drawn = sample_and_score(job, seed, prompts, cfg.samples, eval_cfg, tokenizer)
        if drawn is None:  # not the main process
            continue
        seconds = time.time() - t0
        tie_counts.update({f"{k}_seed{seed}": ties(drawn[v]) for k, v in CHOOSERS.items() if k in methods})
        # shared SFT model: every training seed's point is this draw (Best-of-N trains nothing). The draw's cost is
        # counted once: on the first method's points of the seed that drew it, split over its N
        first, drawn_points = True, points_of(drawn, methods, cfg.ns, tokenizer)
        for k in (range(job.seeds) if not per_seed_sft else [seed]):
            for point in drawn_points:
                run = f"n{point['n']}-seed{k}"
                pays = first and point["method"] == methods[0]
                points.append({**point, "run": run, "seed": k})
                runs.append({"method": point["method"], "run": run, "param": point["n"], "param_name": "n",
                             "seed": k, "checkpoints": [],
                             "train_seconds": round(seconds / len(cfg.ns), 2) if pays else 0.0,
                             "tokens_generated": int(drawn["length"].sum() / len(cfg.ns)) if pays else 0,
                             "kl_upper_bound": point["kl"]})
                log.info("%s %s: test+select reward %.3f, proxy %.3f, KL <= %.2f", point["method"], run,
                         np.mean(point["reward"]), np.mean(point["proxy_reward"]), point["kl"])
            first = False
    if not dist.is_main():
        return
    (job.out / "points.json").write_text(json.dumps(points))
    jobs.finish_runs(job, runs, (), samples_per_prompt=cfg.samples, prompts=len(prompts), chooser_ties=tie_counts)


if __name__ == "__main__":
    jobs.run(main)
