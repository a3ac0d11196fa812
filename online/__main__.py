"""Stages rloo, grpo and online_dpo: online preference methods through TRL's trainers, on the learned reward model
(rloo, grpo, online-dpo) and on the ground truth (rloo-gt, grpo-gt, online-dpo-gt), one run per coefficient beta
and training seed, from the same SFT model, on the same rewards as our PPO. The job's stage says which:

    rloo        RLOO (Ahmadian et al. 2024; TRL's RLOOTrainer). k = num_generations completions per prompt, each
                rewarded with the paper's KL-regularised reward at the sequence level,
                    R(x, y) = r(x, y) - beta * sum_t [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)],
                its advantage R minus the mean R of its k - 1 siblings (the leave-one-out baseline).
    grpo        GRPO (Shao et al. 2024; TRL's GRPOTrainer, loss_type "grpo"). k completions per prompt, advantage
                (r - mean_group r) / std_group r; the KL to the reference is not in the reward but a penalty in
                the loss, beta x the per-token k3 estimate exp(q) - q - 1 (q = log ref - log pi), averaged with the
                policy-gradient term over each completion's tokens: beta is per token, not per sequence.
    online_dpo  Online DPO (Guo et al. 2024; trl.experimental's OnlineDPOTrainer). 2 completions per prompt from
                the current policy, the one r prefers is y_w: DPO's loss -log sigmoid(beta h) on that pair, h the
                margin of sequence log-ratios to the reference.

r is core.reward.training_reward: the reward model's, or the ground truth's on the same normalised scale. The
reference is the SFT model. Generation is pure sampling (temperature 1, top_k 0, top_p 1, no min_p or repetition
penalty: pinned in `config()` whatever TRL's or the model's defaults; tested on each trainer's own samples). The
prompts are the training split's, as PPO's, given to TRL as the token ids they are (each trainer re-tokenizes text
otherwise). With `epochs` > 1 (rloo, grpo) each batch takes that many optimiser steps under PPO's clipped ratio
(clip 0.2). A checkpoint every `eval_every` batches and at the end, which eval measures as it measures PPO's. Runs
resume from their latest checkpoint (TRL's resume).
"""

import logging

from core import job as jobs
from core import dist, lm, tracking
from core.lm_head import plain_lm_head
from core.methods import METHODS
from core.reward import training_reward
from core.run import MethodRun
from core.train import run_trainer, save_last_checkpoint, stop_on_non_finite_loss, trainer_args

log = logging.getLogger("stage")
PURE_SAMPLING = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, generation_kwargs=None)


def make_trainer_class(stage: str):
    """The stage's TRL trainer, taking its prompts as token ids (`prompt_ids`: text -> ids)."""
    if stage == "online_dpo":
        return _online_dpo_trainer_class()
    from trl import GRPOTrainer, RLOOTrainer

    class IdsTrainer({"rloo": RLOOTrainer, "grpo": GRPOTrainer}[stage]):
        """TRL re-tokenizes the prompt texts (adding special tokens), which need not give back the ids the prompts
        are; here each text maps to its own ids."""

        def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs):
            super().__init__(*args, **kwargs)
            self.prompt_ids = prompt_ids
            if self.ref_model is not None:  # TRL loads it again: it scores left-padded rows (see lm)
                lm.positions_from_mask(self.ref_model)
            if self.accelerator.device.type == "cpu":  # TRL's chunked log-prob head is slow without Triton
                plain_lm_head(self.model)
                if self.ref_model is not None:
                    plain_lm_head(self.ref_model)

        def _tokenize_prompts(self, prompts: list):
            return [self.prompt_ids[p] for p in prompts], None, {}

    return IdsTrainer


def _online_dpo_trainer_class():
    from contextlib import nullcontext

    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from trl.experimental.online_dpo import OnlineDPOTrainer
    from trl.experimental.utils import truncate_right
    from trl.models.utils import unwrap_model_for_generation

    class IdsOnlineDPOTrainer(OnlineDPOTrainer):
        """OnlineDPOTrainer sampling from our prompt ids (it re-tokenizes the texts without special tokens, which
        can merge a prompt's last tokens), and logging the mean completion length (its cost)."""

        def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs):
            super().__init__(*args, **kwargs)
            self.prompt_ids = prompt_ids
            self.stats["completions/mean_length"] = []

        def _generate(self, model, prompts, images=None):
            """TRL's _generate for text prompts, from the prompts' ids: 2 completions per prompt, cut after EOS.
            -> prompt ids / mask [2B, P] (left-padded), completion ids / mask [2B, T]."""
            device = next(model.parameters()).device
            ids, mask = lm.left_pad([self.prompt_ids[p] for p in prompts], self._tokenizer.pad_token_id)
            ids, mask = ids.repeat(2, 1).to(device), mask.repeat(2, 1).to(device)
            with (unwrap_model_for_generation(model, self.accelerator,  # as TRL's: DeepSpeed / FSDP gather
                                              gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                              generation_kwargs=self.generation_kwargs) as unwrapped,
                  torch.no_grad(),
                  FSDP.summon_full_params(self.model_wrapped, recurse=False) if self.is_fsdp_enabled else nullcontext()):
                out = unwrapped.generate(input_ids=ids, attention_mask=mask, generation_config=self.generation_config)
            completion_ids, completion_mask = truncate_right(out[:, ids.size(1):], self.eos_token_ids,
                                                             self._tokenizer.pad_token_id)
            self.stats["completions/mean_length"].append(completion_mask.sum(1).float().mean().item())
            return ids, mask, completion_ids, completion_mask, None

    return IdsOnlineDPOTrainer


def config(stage: str, cfg, beta: float, run, job):
    """TRL's config for one run of the stage. Generation is pinned to pure sampling."""
    common = dict(
        output_dir=str(run.folder), learning_rate=cfg.learning_rate, lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps, save_strategy="steps", save_total_limit=None, logging_steps=1,
        report_to=tracking.report_to(job), seed=run.training_seed, data_seed=run.training_seed,
        remove_unused_columns=False,  # the dataset is the prompts' texts, which the trainers read themselves
        disable_tqdm=not dist.is_main(), logging_nan_inf_filter=False, **PURE_SAMPLING, **trainer_args(job))
    if stage == "online_dpo":
        from trl.experimental.online_dpo import OnlineDPOConfig

        return OnlineDPOConfig(
            beta=[beta], loss_type="sigmoid", max_new_tokens=cfg.max_new_tokens, missing_eos_penalty=None,
            per_device_train_batch_size=dist.per_process("online_dpo.prompts_per_step", cfg.prompts_per_step),
            max_steps=cfg.steps, save_steps=cfg.eval_every, **common)
    from trl import GRPOConfig, RLOOConfig

    completions = cfg.prompts_per_step * cfg.num_generations
    shared = dict(
        beta=beta, num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens,
        per_device_train_batch_size=dist.per_process(f"{stage}.prompts_per_step x num_generations", completions),
        max_steps=cfg.steps * cfg.epochs, num_iterations=cfg.epochs, mask_truncated_completions=False,
        save_steps=cfg.eval_every * cfg.epochs,  # every eval_every batches
        log_completions=False, **common)
    if stage == "rloo":
        return RLOOConfig(normalize_advantages=False, **shared)
    return GRPOConfig(loss_type="grpo", scale_rewards="group", **shared)


def summary(stage: str, history: list[dict], completions_per_step: int) -> dict:
    """Cost and the last logged KL and reward from TRL's log (eval's exact KL is the frontier's). KL: the sequence's
    sum of log-ratios (RLOO / GRPO log the per-token mean: times the mean length; Online DPO's objective/kl also sums
    the pad positions after EOS, which at tiny completions rarely reach). With epochs > 1 only a batch's first step
    samples, and logs the reward and the length."""
    kl_key, reward_key = ("objective/kl", "objective/scores") if stage == "online_dpo" else ("kl", "reward")

    def last(key):
        return next((h[key] for h in reversed(history) if h.get(key) is not None), None)

    kl, length = last(kl_key), last("completions/mean_length")
    return {"tokens_generated": round(sum(h.get("completions/mean_length") or 0 for h in history)
                                      * completions_per_step),
            "final_kl": None if kl is None else kl * (1 if stage == "online_dpo" else length or 1),
            "final_reward": last(reward_key)}


def train_run(method: str, beta: float, seed: int, cfg, job, dataset, prompt_ids: dict, tokenizer, score) -> dict:
    """One run from seed `seed`'s SFT model. score: (prompt ids, completion ids) -> normalised rewards [B]."""
    run = MethodRun(job, method, f"{method}-beta{beta:g}", "beta", beta, seed)  # rloo-beta0.1-seed0
    if run.summary:
        return run.summary
    eos = tokenizer.eos_token_id

    def reward(prompts, completion_ids, **_):
        # Online DPO hands the padded rows: a completion ends at its first EOS
        completion_ids = [c[: c.index(eos) + 1] if eos in c else c for c in completion_ids]
        return score([prompt_ids[p] for p in prompts], completion_ids).tolist()

    reward.__name__ = method  # TRL logs each reward function under its name
    model = lm.load_causal_lm(job.upstream("sft", seed))  # also the reference: TRL copies or reloads it
    model.train()
    run.start()  # TRL's callback logs into its wandb run; TRL resumes the training itself
    args = config(job.stage, cfg, beta, run, job)
    trainer = make_trainer_class(job.stage)(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                                            processing_class=tokenizer, callbacks=[stop_on_non_finite_loss()],
                                            prompt_ids=prompt_ids)
    result = run_trainer(trainer, run.folder)
    epochs = getattr(cfg, "epochs", 1)
    save_last_checkpoint(trainer, run.folder, cfg.eval_every * epochs)  # TRL saved every eval_every batches
    completions = cfg.prompts_per_step * getattr(cfg, "num_generations", 2)
    return run.finish(steps=result.global_step, **summary(job.stage, trainer.state.log_history, completions))


def main():
    job = jobs.start()
    cfg, data_cfg = job.section(job.stage), job.section("data")
    methods = job.config["methods"]  # of the stage's two methods, the ones this run puts on the frontier
    tokenizer = lm.load_tokenizer(job.upstream("sft"))  # one tokenizer for every seed's SFT model
    from datasets import Dataset

    ids = lm.split_prompts(data_cfg, job.seed, "train", cfg.prompts_per_step * cfg.steps, tokenizer)
    texts = [lm.decode(tokenizer, p) for p in ids]
    prompt_ids = {}
    for text, p in zip(texts, ids):  # two prompts with one text (rare) train on the first one's ids
        prompt_ids.setdefault(text, p)
    dataset = Dataset.from_dict({"prompt": texts})

    runs, scores = [], {}
    for seed in range(job.seeds):
        for method in methods:
            key = (method, job.upstream("reward_model", seed), job.upstream("pairs", seed))
            if key not in scores:  # one scorer per reward model and pairs folder (one unless reseed_shared)
                scores[key] = training_reward(METHODS[method].learns_from, job, tokenizer, seed, lm.device())
            for beta in cfg.betas:
                log.info("%s beta=%g, training seed %d", method, beta, seed)
                runs.append(train_run(method, beta, seed, cfg, job, dataset, prompt_ids, tokenizer, scores[key]))
                log.info("%s: %d steps in %.0fs, final reward %s, KL %s", runs[-1]["run"], runs[-1]["steps"],
                         runs[-1]["train_seconds"], runs[-1]["final_reward"], runs[-1]["final_kl"])
    jobs.finish_runs(job, runs, ("final_kl", "final_reward"))


if __name__ == "__main__":
    jobs.run(main)
