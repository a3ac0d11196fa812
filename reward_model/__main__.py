"""Stage reward_model: a Bradley-Terry reward model learned from the preference pairs.

    L_BT = -E log sigmoid( r(x, y_w) - r(x, y_l) )

Initialised from the SFT model with a scalar head (same tokenizer as the policy), trained with TRL's
RewardTrainer on the pairs' token ids, less those of the pairs stage's held-out prompts: the manifest reports
accuracy on their pairs (labels from the ground truth) and the Spearman correlation with the ground
truth on their SFT samples. As prior RLHF work does, rewards are then shifted so SFT samples on training
prompts score mean 0 (and scaled to std 1 if asked); the offsets are saved with the model.
The score is the head on the last token (the usual choice) or its mean over all tokens (`pooling`).
"""

import logging
import math
import shutil
import time

import numpy as np

from core import dist, tracking
from core import job as jobs
from core.reward import RewardModel, pool_mean, save_reward_meta
from core.train import run_trainer, stop_on_non_finite_loss, trainer_args

log = logging.getLogger("stage")


def train_reward_model(job, seed: int, out) -> dict | None:
    """A reward model from training seed `seed`'s SFT model and pairs into `out` (its head's initialisation and
    data order from that seed). -> its metrics (main process)."""
    import torch
    from datasets import Dataset, load_from_disk
    from scipy.stats import spearmanr
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from core.run import training_seed

    cfg = job.section("reward_model")
    pairs = load_from_disk(str(job.upstream("pairs", seed) / "dataset"))
    samples = load_from_disk(str(job.upstream("pairs", seed) / "samples"))
    is_held = pairs["heldout"]  # the pairs stage's held-out prompts
    seqs = {side: [p + c for p, c in zip(pairs["prompt_ids"], pairs[f"{side}_ids"])] for side in ("chosen", "rejected")}
    train = Dataset.from_dict({f"{side}_ids": [s for s, h in zip(seqs[side], is_held) if not h]
                               for side in ("chosen", "rejected")})

    tokenizer = AutoTokenizer.from_pretrained(job.upstream("sft", seed))
    torch.manual_seed(training_seed(job.seed, seed))  # the fresh head
    model = AutoModelForSequenceClassification.from_pretrained(job.upstream("sft", seed), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.pooling == "mean":
        pool_mean(model)
    steps = math.ceil(len(train) / cfg.batch_size * cfg.epochs)
    args = RewardConfig(
        output_dir=str(out / "trainer"), num_train_epochs=cfg.epochs,
        per_device_train_batch_size=dist.per_process("reward_model.batch_size", cfg.batch_size),
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", max_length=None,
        save_strategy="steps", save_steps=max(1, steps // 10), save_total_limit=1,
        logging_steps=max(1, steps // 10), report_to=tracking.report_to(job), seed=training_seed(job.seed, seed),
        **trainer_args(job),
        disable_tqdm=not dist.is_main(), center_rewards_coefficient=None, logging_nan_inf_filter=False,
    )
    t0 = time.time()
    log.info("training on %d pairs (%d held out)", len(train), sum(is_held))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                            callbacks=[stop_on_non_finite_loss()])
    # a killed run resumes from the newest of its checkpoints (every tenth of the steps)
    run_trainer(trainer, out / "trainer")
    train_seconds = time.time() - t0
    trainer.save_model(str(out))  # the main process writes (gathering sharded weights first)
    if not dist.is_main():  # the rest (normalising, evaluating) is small: the main process does it
        return None
    shutil.rmtree(out / "trainer", ignore_errors=True)

    # Normalise on SFT samples of training prompts (raw scores: the saved model with no offsets yet);
    # evaluate on held-out prompts.
    save_reward_meta(out, 0.0, 1.0, cfg.pooling)
    sample_seqs = [p + c for p, c in zip(samples["prompt_ids"], samples["completion_ids"])]
    sample_held = np.array(samples["heldout"])
    raw = RewardModel(out)(sample_seqs, 128).numpy()
    shift = float(raw[~sample_held].mean())
    scale = float(raw[~sample_held].std()) if cfg.normalize_scale else 1.0
    save_reward_meta(out, shift, scale, cfg.pooling)

    rm = RewardModel(out)  # evaluate through the saved artifact, exactly as PPO will use it
    held_idx = [i for i, h in enumerate(is_held) if h]
    r_c = rm([seqs["chosen"][i] for i in held_idx], 128)
    r_r = rm([seqs["rejected"][i] for i in held_idx], 128)
    accuracy = float((r_c > r_r).float().mean())
    gt = np.array(samples["score"])[sample_held]
    rho = float(spearmanr(rm([s for s, h in zip(sample_seqs, sample_held) if h], 128).numpy(), gt).statistic)
    normalized_train_mean = float(((raw[~sample_held] - shift) / scale).mean())
    log.info("held-out pair accuracy %.3f, Spearman with the ground truth %.3f", accuracy, rho)
    return {"heldout_pair_accuracy": accuracy, "spearman_with_ground_truth": rho,
            "heldout_pairs": len(held_idx), "train_pairs": len(train), "shift": shift, "scale": scale,
            "normalized_train_mean": normalized_train_mean, "train_seconds": round(train_seconds, 2)}


def main():
    job = jobs.start()
    run = tracking.start(job)
    metrics = jobs.each_own_seed(job, lambda seed, out: train_reward_model(job, seed, out))
    if dist.is_main():
        jobs.finish(job, metrics, run)


if __name__ == "__main__":
    jobs.run(main)
