"""Stage rloo: REINFORCE Leave-One-Out (Ahmadian et al. 2024) through TRL's RLOOTrainer, on the learned reward
model (rloo) and on the ground truth (rloo-gt), one run per KL coefficient beta and training seed. A maintained
library's online RL beside our PPO, from the same SFT model, on the same rewards.

Each step, for each of `prompts_per_step` training prompts, k = `num_generations` completions are sampled from
the current policy (pure sampling: temperature 1, top_k 0, top_p 1, no min_p or repetition penalty: pinned in
`config()`, as for PPO) and each gets the paper's KL-regularised reward at the sequence level,

    R(x, y) = r(x, y) - beta * sum_t [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)]

(r: core.reward.training_reward, the reward model's or the ground truth's, on one normalised scale as PPO's);
its advantage is R minus the mean R of its k - 1 siblings (the leave-one-out baseline), and the policy takes one
policy-gradient step per batch (TRL's num_iterations = 1: its clipped ratio is 1, so the clip never binds).
The reference is the SFT model. The prompts are the training split's, as PPO's (TRL sees their token ids as
sampled: `IdsRLOOTrainer`); a checkpoint every `eval_every` steps and at the end, which eval measures as it
measures PPO's. Runs resume from their latest checkpoint (TRL's resume).
"""

import logging

from core import job as jobs
from core import dist, lm, resume, tracking
from core.lm_head import plain_lm_head
from core.methods import METHODS
from core.reward import training_reward
from core.run import MethodRun
from core.train import save_last_checkpoint, stop_on_non_finite_loss, trainer_args

log = logging.getLogger("stage")


def make_trainer_class():
    from trl import RLOOTrainer

    class IdsRLOOTrainer(RLOOTrainer):
        """RLOOTrainer on prompts given as token ids: TRL re-tokenizes the prompt texts (adding special tokens),
        which need not give back the ids the prompts are; here each text maps to its own ids."""

        def __init__(self, *args, prompt_ids: dict[str, list[int]], **kwargs):
            super().__init__(*args, **kwargs)
            self.prompt_ids = prompt_ids
            if self.accelerator.device.type == "cpu":  # TRL's chunked log-prob head is slow without Triton
                plain_lm_head(self.model)
                if self.ref_model is not None:
                    plain_lm_head(self.ref_model)

        def _tokenize_prompts(self, prompts: list):
            return [self.prompt_ids[p] for p in prompts], None, {}

    return IdsRLOOTrainer


def config(cfg, beta: float, run, job):
    """TRL's RLOOConfig for one run. Generation is pinned to pure sampling whatever TRL's or the model's
    defaults."""
    from trl import RLOOConfig

    completions = cfg.prompts_per_step * cfg.num_generations
    return RLOOConfig(
        output_dir=str(run.folder), beta=beta, num_generations=cfg.num_generations,
        per_device_train_batch_size=dist.per_process("rloo.prompts_per_step x num_generations", completions),
        max_steps=cfg.steps * cfg.epochs, learning_rate=cfg.learning_rate, lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps, max_completion_length=cfg.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, generation_kwargs=None,
        num_iterations=cfg.epochs, normalize_advantages=False, mask_truncated_completions=False,
        save_strategy="steps", save_steps=cfg.eval_every * cfg.epochs, save_total_limit=None,  # every eval_every batches
        logging_steps=1, report_to=tracking.report_to(job), seed=run.training_seed, data_seed=run.training_seed,
        remove_unused_columns=False,  # the reward function reads the prompts' token ids
        disable_tqdm=not dist.is_main(), logging_nan_inf_filter=False, log_completions=False,
        **trainer_args(job),
    )


def train_run(method: str, beta: float, seed: int, cfg, job, dataset, prompt_ids: dict, tokenizer, score) -> dict:
    """One RLOO run from seed `seed`'s SFT model. score: (prompt ids, completion ids) -> normalised rewards [B]."""
    run = MethodRun(job, method, f"{method}-beta{beta:g}", "beta", beta, seed)  # rloo-beta0.1-seed0
    if run.summary:
        return run.summary

    def reward(prompts, completions, completion_ids, prompt_ids, **_):
        return score(prompt_ids, completion_ids).tolist()

    reward.__name__ = method  # TRL logs each reward function under its name
    model = lm.load_causal_lm(job.upstream("sft", seed))  # also the reference: TRL loads it again from its folder
    model.train()
    run.start()  # TRL's callback logs into its wandb run; TRL resumes the training itself
    trainer = make_trainer_class()(model=model, reward_funcs=[reward], args=config(cfg, beta, run, job),
                                   train_dataset=dataset, processing_class=tokenizer,
                                   callbacks=[stop_on_non_finite_loss()], prompt_ids=prompt_ids)
    result = trainer.train(resume_from_checkpoint=resume.latest_trainer_checkpoint(run.folder))
    save_last_checkpoint(trainer, run.folder, cfg.eval_every * cfg.epochs)  # TRL saved every eval_every batches
    history = [h for h in trainer.state.log_history if "kl" in h]
    completions = cfg.prompts_per_step * cfg.num_generations
    length = history[-1].get("completions/mean_length", cfg.max_new_tokens) if history else None
    return run.finish(
        steps=result.global_step,
        tokens_generated=round(sum(h.get("completions/mean_length", 0) for h in history) * completions),
        final_kl=history[-1]["kl"] * length if history else None,  # TRL logs the mean per token: x mean length
        final_reward=history[-1].get("reward") if history else None)


def main():
    job = jobs.start()
    cfg, data_cfg = job.section("rloo"), job.section("data")
    methods = job.config["methods"]  # of rloo and rloo-gt, the ones this run puts on the frontier
    tokenizer = lm.load_tokenizer(job.upstream("sft"))  # one tokenizer for every seed's SFT model
    from datasets import Dataset

    ids = lm.split_prompts(data_cfg, job.seed, "train", cfg.prompts_per_step * cfg.steps, tokenizer)
    texts = [lm.decode(tokenizer, p) for p in ids]
    prompt_ids = {}
    for text, p in zip(texts, ids):  # two prompts with one text (rare) train on the first one's ids
        prompt_ids.setdefault(text, p)
    dataset = Dataset.from_dict({"prompt": texts, "prompt_ids": [prompt_ids[t] for t in texts]})

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
