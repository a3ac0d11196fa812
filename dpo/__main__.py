"""Stage dpo: Direct Preference Optimization (Rafailov et al. 2023), one run per beta and training seed; and
its relatives that differ only in the loss (stages ipo, slic, rdpo: the same command, the job's stage says which).
With the margin h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)):

    dpo    L = -log sigmoid(beta h)                                    (TRL loss_type "sigmoid")
    ipo    L = (h' - 1 / (2 beta))^2, h' = h with each log-ratio divided by its completion's length
                                                                       ("ipo"; Azar et al. 2023, beta = tau)
    slic   L = max(0, 1 - beta h)                                      ("hinge"; SLiC-HF, Zhao et al. 2023)
    rdpo   L = [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)
                                     ("robust"; Chowdhury et al. 2024: unbiased when a label is flipped with
                                      probability eps = label_smoothing. Not cDPO's label smoothing, whose
                                      second term has the other sign: TRL 1.16's sigmoid loss has none)

each averaged over the pairs of a batch. Each run starts from the SFT model, which is also the reference. Training
is TRL's DPOTrainer, handed the pairs as token ids (exactly what was sampled) and the reference log-probs the
pairs stage computed once for the whole sweep. It trains on the pairs of training prompts; at every kept
checkpoint (every `eval_every` steps and the last) it reports the DPO loss and reward accuracy on pairs of the
held-out prompts (runs.json's "heldout"), so a beta whose held-out loss rises is seen. runs.json lists the
checkpoints for eval.
"""

import functools
import logging
import math

from core import job as jobs
from core import dist, resume, tracking
from core.run import MethodRun
from core.lm_head import plain_lm_head
from core.train import save_last_checkpoint, stop_on_non_finite_loss, trainer_args

log = logging.getLogger("stage")
LOSS_TYPES = {"dpo": "sigmoid", "ipo": "ipo", "slic": "hinge", "rdpo": "robust"}  # stage (= method) -> loss_type
COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps"]
HELDOUT_EVAL_PAIRS = 512  # held-out pairs scored at each checkpoint (a seeded sample of them)


def make_trainer_class():
    from trl import DPOTrainer

    class PairsDPOTrainer(DPOTrainer):
        """DPOTrainer on pre-tokenized pairs with precomputed reference log-probs.

        TRL would re-tokenize prompt + completion text (merging tokens across the join) and recompute the
        reference log-probs for every run; both are already in the pairs dataset."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            missing = set(COLUMNS) - set(dataset.column_names)
            if missing:
                raise ValueError(f"pairs dataset lacks columns {sorted(missing)}")
            return dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.accelerator.device.type == "cpu":
                plain_lm_head(self.model)

    return PairsDPOTrainer


def learning_rate(cfg, beta: float) -> float:
    """This beta's peak learning rate: its entry of learning_rates, or learning_rate. With Adam the step in
    parameter space does not scale with beta, but the loss's sharpness does (beta x the log-ratio margin), so
    a short run at a large beta wants a smaller step (docs/protocol.md)."""
    return cfg.learning_rates[cfg.betas.index(beta)] if cfg.learning_rates else cfg.learning_rate


def train_one(beta: float, seed: int, cfg, job, pairs, heldout):
    """One run of the stage's loss from the SFT model; a killed run resumes from its latest checkpoint (TRL's
    resume). The training seed sets the data order (TRL's seed and data_seed)."""
    run = MethodRun(job, job.stage, f"beta{beta:g}", "beta", beta, seed)
    if run.summary:
        return run.summary
    from trl import DPOConfig

    from core import lm

    model = lm.load_causal_lm(job.upstream("sft", seed))  # the SFT model of this seed (one unless reseed_shared)
    model.train()
    tokenizer = lm.load_tokenizer(job.upstream("sft", seed))
    steps = cfg.max_steps or math.ceil(len(pairs) / cfg.batch_size)
    args = DPOConfig(
        output_dir=str(run.folder), beta=beta, loss_type=[LOSS_TYPES[job.stage]], precompute_ref_log_probs=True,
        label_smoothing=getattr(cfg, "label_smoothing", 0.0),  # rdpo's epsilon
        learning_rate=learning_rate(cfg, beta), optim="rmsprop" if cfg.optimizer == "rmsprop" else "adamw_torch",
        warmup_steps=cfg.warmup_steps, lr_scheduler_type="constant_with_warmup",
        per_device_train_batch_size=dist.per_process(f"{job.stage}.batch_size", cfg.batch_size), max_steps=steps,
        max_length=None,
        save_strategy="steps", save_steps=cfg.eval_every, save_total_limit=None,
        eval_strategy="steps", eval_steps=cfg.eval_every,  # the held-out DPO loss at every checkpoint
        per_device_eval_batch_size=dist.per_process(f"{job.stage}.batch_size", cfg.batch_size),
        logging_steps=max(1, cfg.eval_every // 4), report_to=tracking.report_to(job), seed=run.training_seed,
        data_seed=run.training_seed,
        **trainer_args(job), disable_tqdm=not dist.is_main(), remove_unused_columns=False,
        logging_nan_inf_filter=False,
    )
    run.start()  # TRL's callback logs into its wandb run; TRL resumes the training itself
    trainer = make_trainer_class()(model=model, args=args, train_dataset=pairs, eval_dataset=heldout,
                                   processing_class=tokenizer, callbacks=[stop_on_non_finite_loss()])
    result = trainer.train(resume_from_checkpoint=resume.latest_trainer_checkpoint(run.folder))
    history = [h for h in trainer.state.log_history if "loss" in h]
    if save_last_checkpoint(trainer, run.folder, cfg.eval_every):
        trainer.evaluate()  # its held-out loss too
    heldout_curve = [{"step": h["step"], "loss": h["eval_loss"], "reward_accuracy": h.get("eval_rewards/accuracies")}
                     for h in trainer.state.log_history if "eval_loss" in h]
    per_pair = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(pairs["prompt_ids"], pairs["chosen_ids"],
                                                                    pairs["rejected_ids"])) / len(pairs)
    return run.finish(
        steps=result.global_step,
        tokens_trained=round(per_pair * result.global_step * cfg.batch_size),  # pairs seen x mean pair length
        final_loss=history[-1]["loss"] if history else None,
        final_reward_accuracy=history[-1].get("rewards/accuracies") if history else None,
        heldout=heldout_curve)  # per checkpoint: DPO loss and reward accuracy on held-out prompts' pairs


def main():
    job = jobs.start()
    cfg = job.section(job.stage)
    from datasets import load_from_disk

    @functools.cache  # each pairs folder once (one unless reseed_shared)
    def training_and_heldout(folder):
        data = load_from_disk(str(folder / "dataset"))
        heldout = data.filter(lambda r: r["heldout"]).select_columns(COLUMNS)
        return (data.filter(lambda r: not r["heldout"]).select_columns(COLUMNS),
                heldout.shuffle(seed=job.seed).select(range(min(HELDOUT_EVAL_PAIRS, len(heldout)))))

    runs = []
    for seed in range(job.seeds):
        pairs, heldout = training_and_heldout(job.upstream("pairs", seed))
        for beta in cfg.betas:
            log.info("%s beta=%g, training seed %d, on %d pairs", job.stage, beta, seed, len(pairs))
            runs.append(train_one(beta, seed, cfg, job, pairs, heldout))
            log.info("%s: %d steps in %.0fs, final loss %s, held-out loss by checkpoint %s", runs[-1]["run"],
                     runs[-1]["steps"], runs[-1]["train_seconds"], runs[-1]["final_loss"],
                     [round(h["loss"], 4) for h in runs[-1]["heldout"]])
    jobs.finish_runs(job, runs, ("final_loss",))


if __name__ == "__main__":
    jobs.run(main)
