"""Stage pairs: the preference data, as in the paper's App. C.1.

For each training prompt (the first 2-8 tokens of a review longer than 200 characters), draw
`samples_per_prompt` completions from the SFT model by pure sampling (temperature 1, top_k 0, top_p 1),
score each with the ground truth (by default P(positive | prompt + completion), the paper's r(x, y)), and
label every pair of them: chosen = the higher P(positive).
Exact ties carry no preference and are dropped.

The sampler is ours (pairs.sampler = "hf") or vLLM (core/vllm_sampling.py), with the same contract.
Token ids travel with the text, so DPO trains on exactly the sampled sequences. The reference (SFT)
log-probs of every completion are computed here, once, and stored with the pairs: they do not depend
on beta, so the whole DPO sweep shares them.
With several processes each samples (and computes the log-probs of) its block of the prompts; the main
process gathers them in order and writes the dataset.
"""

import itertools
import logging
import random
import time

import numpy as np

from core import dist, lm, tracking, vllm_sampling
from core import job as jobs
from core.scorer import GroundTruth

log = logging.getLogger("stage")


def label_pairs(scores: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    """All pairs of one prompt's samples as (chosen, rejected) indices, ties dropped. -> (pairs, n_ties)."""
    pairs, ties = [], 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        if scores[i] == scores[j]:
            ties += 1
        else:
            pairs.append((i, j) if scores[i] > scores[j] else (j, i))
    return pairs, ties


def heldout_prompt_set(prompts: list[list[int]], share: float, seed: int) -> set[tuple]:
    """A seeded share of the distinct prompts (at least one): their pairs are held out from every method's
    training, for the reward model's accuracy and DPO's held-out loss."""
    distinct = sorted(set(map(tuple, prompts)))
    random.Random(seed).shuffle(distinct)
    return set(distinct[: max(1, round(share * len(distinct)))])


def make_pairs(job, seed: int, out, prompts, held, tokenizer, ground_truth) -> dict | None:
    """The pairs of training seed `seed`'s SFT model into `out` (`prompts` and the held-out set `held` are every
    seed's; re-seeded, another model's samples drawn with that seed's generators). -> its metrics (main process)."""
    from datasets import Dataset

    from core.run import training_seed

    cfg = job.section("pairs")
    sft = job.upstream("sft", seed)
    model = lm.load_causal_lm(sft)
    k = cfg.samples_per_prompt
    repeated = [p for p in prompts for _ in range(k)]

    t0 = time.time()
    mine = dist.shard(repeated)  # this process's block of the rows; seeds keep each row's draw the same
    draws = lm.sample_seeds(len(repeated), "pairs", training_seed(job.seed, seed))
    completions, sampler_logps = lm.sample(cfg.sampler, model, sft, mine, cfg.max_new_tokens,
                                           tokenizer.eos_token_id, cfg.batch_size, dist.shard(draws))
    t_sample = time.time() - t0
    ref_logps = lm.completion_logprobs(model, mine, completions, tokenizer.pad_token_id, cfg.batch_size)
    extra = {}
    if sampler_logps is not None:  # vLLM sampled (one process): does its model give the HF model's log-probs?
        extra["sampler_logp_gap"] = vllm_sampling.logprob_gap(sampler_logps, ref_logps.tolist(), completions)
        log.info("vLLM vs HF log-probs of the samples: %.2g nats per token apart", extra["sampler_logp_gap"])
    completions, ref_logps = dist.gather(completions), dist.gather(ref_logps.tolist())
    if not dist.is_main():
        return None
    completion_texts = [lm.decode(tokenizer, c) for c in completions]
    scores = ground_truth(repeated, completions)  # what the ground truth reads: prompt + completion by default
    log.info("%d samples in %.0fs (%.0f tokens/s); mean reward %.3f", len(completions), t_sample,
             sum(map(len, completions)) / t_sample, scores.mean())

    rows, n_ties = [], 0
    for p, prompt in enumerate(prompts):
        block = range(p * k, (p + 1) * k)
        pairs, ties = label_pairs(scores[p * k : (p + 1) * k])
        n_ties += ties
        prompt_text = lm.decode(tokenizer, prompt)
        for c, r in pairs:
            c, r = block[c], block[r]
            rows.append(dict(prompt=prompt_text, chosen=completion_texts[c], rejected=completion_texts[r],
                             score_chosen=float(scores[c]), score_rejected=float(scores[r]), prompt_ids=prompt,
                             chosen_ids=completions[c], rejected_ids=completions[r],
                             ref_chosen_logps=float(ref_logps[c]), ref_rejected_logps=float(ref_logps[r]),
                             heldout=tuple(prompt) in held, prompt_index=p))
    Dataset.from_list(rows).save_to_disk(str(out / "dataset"))
    Dataset.from_dict(dict(prompt_ids=repeated, completion_ids=completions, score=scores.tolist(),
                           heldout=[tuple(p) in held for p in repeated])).save_to_disk(
        str(out / "samples"))
    margins = np.array([r["score_chosen"] - r["score_rejected"] for r in rows])
    return {"pairs": len(rows), "prompts": len(prompts), "ties_dropped": n_ties,
            "heldout_prompts": len(held), "heldout_pairs": sum(r["heldout"] for r in rows),
            "sft_reward_mean": float(scores.mean()), "sft_reward_std": float(scores.std()),
            "mean_margin": float(margins.mean()) if len(rows) else 0.0,
            "sample_seconds": round(t_sample, 2), "sampler": cfg.sampler, **extra,
            "mean_completion_tokens": float(np.mean([len(c) for c in completions]))}


def main():
    job = jobs.start()
    run = tracking.start(job)
    cfg = job.section("pairs")
    tokenizer = lm.load_tokenizer(job.upstream("sft"))  # one tokenizer for every seed's SFT model
    ground_truth = GroundTruth(job.inputs["ground_truth"], job.section("ground_truth").reads, tokenizer)
    prompts = lm.split_prompts(job.section("data"), job.seed, "train", cfg.prompts, tokenizer)
    held = heldout_prompt_set(prompts, cfg.heldout_prompts, job.seed)  # held out from every method, every seed
    metrics = jobs.each_own_seed(job, lambda seed, out: make_pairs(job, seed, out, prompts, held, tokenizer,
                                                                   ground_truth))
    if dist.is_main():
        jobs.finish(job, metrics, run)


if __name__ == "__main__":
    jobs.run(main)
