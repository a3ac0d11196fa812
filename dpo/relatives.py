"""Stages unlikelihood and preferred_ft: the two baselines beside DPO in the paper's Fig. 2, on the same pairs; and
unlikelihood_token, Welleck et al.'s token-level form (METHODS=all).

Preferred-FT fine-tunes the SFT model on the chosen completion of each pair, ignoring the rejected one:

    L_PFT = -mean over chosen tokens of log pi(y_w,t | x, y_w,<t)

Unlikelihood as the DPO paper has it (Sec. 6.1, App. C.3) maximises log p(y_w | x) and minimises log p(y_l | x),
weighted by alpha (token means, as Preferred-FT's):

    L_UL = L_PFT + alpha * mean over rejected tokens of log pi(y_l,t | x, y_l,<t)

unbounded below: the paper blames the baseline's meaningless text on this unconstrained minimisation, and each
checkpoint's held-out log p(y_l) is recorded (runs.json "heldout_logps") so the report shows it. Welleck et al.'s
unlikelihood (2019), which App. C.3 cites, is bounded: it pushes down every rejected token's probability,

    L_UL-token = L_PFT - alpha * mean over rejected tokens of log(1 - pi(y_l,t | x, y_l,<t))

Neither needs a reference model. Both train in the pairs loop (dpo/loop.py; the losses are not TRL's). With
several processes each step's batch is split over them; each divides its share of the loss by the whole batch's
token counts, so the averaged gradients x N are the one-process gradient.
Run as `python -m dpo.relatives job.json`; the job's stage says which method (core/methods.py).
"""

import functools
import logging

import torch

from core import job as jobs
from core import dist, lm
from core.config import sweep_lists
from core.methods import stage_method
from core.run import MethodRun
from core.train import loop_accelerator
from dpo import loop
from dpo.loop import completion_token_logps

log = logging.getLogger("stage")
HELDOUT_PAIRS = 512  # held-out pairs scored at each checkpoint of an unlikelihood run (a seeded sample of them)


def preferred_ft_loss(chosen_logps: torch.Tensor, chosen_mask: torch.Tensor,
                      chosen_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions, averaged over their tokens.

    chosen_logps [B, T]: log pi of each target token; chosen_mask [B, T]: 1 where the target is a chosen
    completion token (prompt and padding 0). chosen_tokens: what the sum is divided by (default the mask's
    count; the whole batch's count when the batch is split over processes, so the parts add up). -> scalar."""
    return -(chosen_logps * chosen_mask).sum() / (chosen_mask.sum() if chosen_tokens is None else chosen_tokens)


def unlikelihood_term(rejected_logps: torch.Tensor, rejected_mask: torch.Tensor,
                      rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """-mean over rejected tokens of log(1 - pi(token)) (>= 0; 0 when the model gives them no mass).

    rejected_logps, rejected_mask [B, T'] as preferred_ft_loss's chosen_*. -> scalar. 1 - p is floored at 1e-6
    so a rejected token the model is certain of gives a large finite loss, not inf."""
    one_minus_p = (-torch.expm1(rejected_logps)).clamp(min=1e-6)
    n_rejected = rejected_mask.sum() if rejected_tokens is None else rejected_tokens
    return -(torch.log(one_minus_p) * rejected_mask).sum() / n_rejected


def unlikelihood_loss(chosen_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_logps: torch.Tensor,
                      rejected_mask: torch.Tensor, alpha: float, chosen_tokens: torch.Tensor | None = None,
                      rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The DPO paper's Unlikelihood: Preferred-FT's loss plus alpha x the rejected tokens' mean log pi (the
    rejected completions' likelihood minimised, unbounded below). chosen_* [B, T], rejected_* [B, T'] as
    preferred_ft_loss's. -> scalar."""
    return (preferred_ft_loss(chosen_logps, chosen_mask, chosen_tokens)
            - alpha * preferred_ft_loss(rejected_logps, rejected_mask, rejected_tokens))


def unlikelihood_token_loss(chosen_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_logps: torch.Tensor,
                            rejected_mask: torch.Tensor, alpha: float, chosen_tokens: torch.Tensor | None = None,
                            rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Welleck et al.'s token-level unlikelihood: Preferred-FT's loss plus alpha x unlikelihood_term.
    chosen_* [B, T], rejected_* [B, T']. -> scalar."""
    return (preferred_ft_loss(chosen_logps, chosen_mask, chosen_tokens)
            + alpha * unlikelihood_term(rejected_logps, rejected_mask, rejected_tokens))


LOSSES = {"unlikelihood": unlikelihood_loss, "unlikelihood-token": unlikelihood_token_loss}  # method -> its loss


def data_seed(method: str, param, training_seed: int) -> int:
    """Each run its own data order: Preferred-FT's is its training seed's, each Unlikelihood alpha has its own
    (they shared Preferred-FT's order once, which made alpha look like it did more than it did)."""
    if method == "preferred-ft":
        return training_seed
    return lm.sample_seeds(1, "unlikelihood-order", training_seed, param)[0]


def heldout_logps(model, heldout: dict, pad_id: int, batch_size: int, autocast) -> dict:
    """Mean log pi per token of the held-out pairs' chosen completions and of their rejected ones (every process
    scores all of them: loop.heldout_sums). -> {"chosen_logp", "rejected_logp"}."""
    def sums_of(model, idx):  # chosen log-prob sum, chosen tokens, rejected sum, rejected tokens
        out = []
        for side in ("chosen_ids", "rejected_ids"):
            logps, mask = completion_token_logps(model, [heldout["prompt_ids"][i] for i in idx],
                                                 [heldout[side][i] for i in idx], pad_id)
            out += [float((logps.float() * mask).sum()), float(mask.sum())]
        return out

    sums = loop.heldout_sums(model, len(heldout["prompt_ids"]), batch_size, autocast, sums_of)
    return {"chosen_logp": sums[0] / sums[1], "rejected_logp": sums[2] / sums[3]}


def train_one(method: str, param, seed: int, cfg, job, pairs: dict, heldout: dict) -> dict:
    """One run from the SFT model. param: alpha (unlikelihood) or None (preferred-ft); seed: the training seed
    (the data order). heldout: pairs of held-out prompts, scored at each checkpoint (unlikelihood). A run killed
    part-way resumes from its latest checkpoint; a finished one is not trained again."""
    name = sweep_name(job.stage)
    run = MethodRun(job, method, f"{name}{param:g}" if name else "", name or "", param, seed,
                    accelerator=loop_accelerator())
    if run.summary:
        return run.summary
    pad_id = lm.load_tokenizer(job.upstream("sft", seed)).pad_token_id
    alpha = param if method in LOSSES else 0.0

    def batch_loss(model, idx, state):
        # the whole batch's token counts; then this process trains on its block of the batch
        chosen_tokens = torch.tensor(float(sum(len(pairs["chosen_ids"][i]) for i in idx)))
        rejected_tokens = torch.tensor(float(sum(len(pairs["rejected_ids"][i]) for i in idx)))
        state.tokens_trained += sum(len(pairs["prompt_ids"][i]) + len(pairs["chosen_ids"][i]) for i in idx)
        if method in LOSSES:
            state.tokens_trained += sum(len(pairs["prompt_ids"][i]) + len(pairs["rejected_ids"][i]) for i in idx)
        idx = dist.shard(idx)
        prompts = [pairs["prompt_ids"][i] for i in idx]
        chosen = [pairs["chosen_ids"][i] for i in idx]
        if method not in LOSSES:
            logps, mask = completion_token_logps(model, prompts, chosen, pad_id)
            return preferred_ft_loss(logps, mask, chosen_tokens), {}
        rejected = [pairs["rejected_ids"][i] for i in idx]  # chosen and rejected in one forward pass
        logps, mask = completion_token_logps(model, prompts + prompts, chosen + rejected, pad_id)
        n = len(idx)
        loss = LOSSES[method](logps[:n], mask[:n], logps[n:], mask[n:], alpha, chosen_tokens, rejected_tokens)
        term = (loss - preferred_ft_loss(logps[:n], mask[:n], chosen_tokens)).detach()  # alpha x its term
        state.extra["unlikelihood_term_sum"] = state.extra.get("unlikelihood_term_sum", 0.0) + \
            float(dist.all_sum(term))
        return loss, {}

    def at_checkpoint(model, state):  # what minimising log p(y_l) does to held-out pairs
        state.extra.setdefault("heldout_logps", []).append(
            {"step": state.step, **heldout_logps(model, heldout, pad_id, cfg.batch_size, run.accelerator.autocast)})

    state = loop.train(run, cfg, job.upstream("sft", seed), len(pairs["prompt_ids"]),
                       data_seed(method, param, run.training_seed), cfg.learning_rate, batch_loss,
                       at_checkpoint if method in LOSSES else None, job.section("train").max_grad_norm)
    extra = {}
    if method in LOSSES:  # how much the term adds to Preferred-FT's loss (alpha x its mean, in nats), and held out
        extra["unlikelihood_term"] = state.extra["unlikelihood_term_sum"] / state.step
        extra["heldout_logps"] = state.extra["heldout_logps"]
    return run.finish(state, final_loss=loop.recent_mean(state.history, cfg), **extra)


def sweep_name(stage: str) -> str | None:
    """The parameter a run of the stage sweeps (alpha: the section's `alphas`), None for Preferred-FT, which sweeps
    nothing (one run per seed)."""
    runs = sweep_lists(stage)[0]
    return runs[:-1] if runs else None


def main():
    job = jobs.start()
    method, sweep_key, name = stage_method(job.stage).name, sweep_lists(job.stage)[0], sweep_name(job.stage)
    cfg = job.section(job.stage)
    dist.check_divisible(f"{job.stage}.batch_size", cfg.batch_size)
    from datasets import load_from_disk

    @functools.cache  # each pairs folder once (one unless reseed_shared)
    def training_and_heldout(folder):
        data = load_from_disk(str(folder / "dataset"))
        train, heldout = (data.filter(lambda r: r["heldout"] == held) for held in (False, True))
        heldout = heldout.shuffle(seed=job.seed).select(range(min(HELDOUT_PAIRS, len(heldout))))
        return tuple({c: list(d[c]) for c in ("prompt_ids", "chosen_ids", "rejected_ids")} for d in (train, heldout))

    runs = []
    for seed in range(job.seeds):
        pairs, heldout = training_and_heldout(job.upstream("pairs", seed))
        for param in getattr(cfg, sweep_key) if sweep_key else [None]:
            log.info("%s%s, training seed %d, on %d pairs", method, f" {name}={param:g}" if name else "", seed,
                     len(pairs["prompt_ids"]))
            runs.append(train_one(method, param, seed, cfg, job, pairs, heldout))
    jobs.finish_runs(job, runs, ("final_loss",))


if __name__ == "__main__":
    jobs.run(main)
