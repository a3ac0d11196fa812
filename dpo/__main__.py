"""Stage dpo: Direct Preference Optimization (Rafailov et al. 2023), one run per beta and training seed; and
the relatives trained on the same pairs by a TRL trainer (stages ipo, slic, rdpo, simpo, cpo, orpo, kto: the same
command; the registry's `loss` of the job's stage says which, core/methods.py). With pi's sequence log-prob s_w = log pi(y_w|x), s_l likewise, the same for
the reference (r_w, r_l), the margin h = (s_w - r_w) - (s_l - r_l), and a bar for a mean over a completion's tokens:

    dpo    L = -log sigmoid(beta h)                                    (DPOTrainer, loss_type "sigmoid")
    ipo    L = (h' - 1 / (2 beta))^2, h' = h with each log-ratio divided by its completion's length
                                                                       ("ipo"; Azar et al. 2023, beta = tau)
    slic   L = max(0, 1 - beta h)                                      ("hinge"; SLiC-HF, Zhao et al. 2023)
    rdpo   L = [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)
                                     ("robust"; Chowdhury et al. 2024: unbiased when a label is flipped with
                                      probability eps = label_smoothing. Not cDPO's label smoothing, whose
                                      second term has the other sign: TRL 1.16's sigmoid loss has none)
    simpo  L = -log sigmoid(beta (s_w bar - s_l bar) - gamma)          (trl.experimental CPOTrainer, "simpo",
                                      cpo_alpha 0; Meng et al. 2024: no reference, length-normalised)
    cpo    L = -log sigmoid(beta (s_w - s_l)) + alpha NLL_w            (CPOTrainer, "sigmoid"; Xu et al. 2024: no
                                      reference; NLL_w: the mean of -log pi over the batch's chosen tokens)
    orpo   L = NLL_xw - beta log sigmoid(log odds(y_w) - log odds(y_l)), odds(y) = p / (1 - p), p = exp(s bar)
                                     (trl.experimental ORPOTrainer; Hong et al. 2024: no reference. TRL's NLL_xw
                                      is over prompt and y_w, the paper's over y_w)
    kto    per prompt a desirable y_w (its best sample) and an undesirable y_l (its worst); with z the batch's estimate of
           KL(pi || ref) (mismatched prompt-completion pairs), L = 1 - sigmoid(beta ((s_w - r_w) - z)) for y_w and
           1 - sigmoid(beta (z - (s_l - r_l))) for y_l                 (KTOTrainer; Ethayarajh et al. 2024)

each averaged over a batch. Each run starts from the SFT model, which is also the reference where there is one.
dpo, ipo, slic and rdpo train in our pairs loop (dpo/loop.py) with the loss of dpo/loss.py, each pinned to TRL
1.16's DPOTrainer on the same batch (tests/test_dpo_loss.py); at micro the loop's frontier is byte-identical to the
one DPOTrainer gave (the same data order and steps). TRL's trainer cost about 1.5x a step on the CPU (two runs,
not one measurement: docs/implementation.md) for metrics
this benchmark does not read (entropy and mean logits over the vocabulary, per token). The other losses train by
their TRL trainer, handed the pairs as token ids (exactly what was sampled; each trainer re-tokenizes text
otherwise), as does any other DPOTrainer loss_type a registry entry names (it gets the pairs' reference
log-probs, which the pairs stage computed once for the whole sweep). Every run trains on the pairs of training
prompts; at every kept checkpoint (every `eval_every` steps, the early_checkpoints and the last) it reports the loss (and the
implicit-reward accuracy) on pairs of the held-out prompts (runs.json's "heldout"), so a run whose held-out loss
rises is seen. runs.json lists the checkpoints for eval.
"""

import functools
import itertools
import logging
import math
import random

from core import job as jobs
from core import dist, tracking
from core.methods import stage_method
from core.run import MethodRun, training_seed
from core.lm_head import plain_lm_head
from core.train import run_trainer, save_at, save_last_checkpoint, stop_on_non_finite_loss, trainer_args
from dpo.loss import OWN_LOOP_LOSSES, pair_losses

log = logging.getLogger("stage")
OWN_TRAINERS = ("kto", "simpo", "cpo", "orpo")  # losses with a TRL trainer of their own; any other is DPOTrainer's
COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps"]
HELDOUT_EVAL_PAIRS = 512  # held-out pairs scored at each checkpoint (a seeded sample of them)
STEP0_PAIRS = 64  # training pairs whose step-0 margin is measured


def step0_margin(sft_folder, pairs) -> float:
    """The mean DPO margin h = (s_w - r_w) - (s_l - r_l) of the SFT model on the first training pairs, its log-probs in
    the training precision (bf16 autocast on CUDA, as TRL trains there; fp32 elsewhere) against the pairs' reference
    log-probs (fp32, the pairs stage). At step 0 the policy is the reference: about 0. Far from 0, the two disagree
    and DPO's loss starts from a biased margin."""
    import torch

    from core import lm

    model = lm.load_causal_lm(sft_folder, dist.device())
    rows = pairs.select(range(min(STEP0_PAIRS, len(pairs))))
    s_w, s_l = (lm.completion_logprobs(model, rows["prompt_ids"], rows[side], 0, STEP0_PAIRS, training_precision=True)
                for side in ("chosen_ids", "rejected_ids"))
    r_w, r_l = (torch.tensor(rows[k], dtype=torch.float32) for k in ("ref_chosen_logps", "ref_rejected_logps"))
    return float(((s_w - r_w) - (s_l - r_l)).mean())


def loss_of(stage: str) -> str:
    """The stage's loss, from the registry (core/methods.py): DPOTrainer's loss_type, or one of OWN_TRAINERS."""
    return stage_method(stage).loss


def make_trainer_class(stage: str):
    """The stage's TRL trainer, on the pairs as token ids."""
    loss = loss_of(stage)
    if loss not in OWN_TRAINERS:
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
    if loss == "kto":
        from trl import KTOTrainer

        class SinglesKTOTrainer(KTOTrainer):
            """KTOTrainer on singles already as token ids, with their mismatched completions (`kto_singles`)."""

            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                if self.accelerator.device.type == "cpu":  # TRL's chunked log-prob head is slow without Triton
                    plain_lm_head(self.model)
                    plain_lm_head(self.ref_model)

        return SinglesKTOTrainer
    if loss in ("simpo", "cpo"):
        from trl.experimental.cpo import CPOTrainer as Base
    else:
        from trl.experimental.orpo import ORPOTrainer as Base

    class PairsTrainer(Base):
        """The trainer's tokenize_row from the pairs' ids: prompt + completion as sampled, labels -100 on the
        prompt (TRL tokenizes the texts and adds BOS / EOS tokens the samples did not have)."""

        def tokenize_row(self, feature, model=None):
            prompt = feature["prompt_ids"]
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                ids = prompt + feature[f"{side}_ids"]
                row.update({f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                            f"{side}_labels": [-100] * len(prompt) + feature[f"{side}_ids"]})
            return row

    return PairsTrainer


def rows_per_pair(stage: str) -> int:
    """Rows the stage's trainer reads per pair of a batch: KTO's two singles, else the pair. (KTO has two singles per
    prompt, its best and worst sample: with max_steps 0, its epoch is one over the prompts, not the pairs.)"""
    return 2 if loss_of(stage) == "kto" else 1


def kto_singles(pairs, batch_size: int, seed: int):
    """KTO's data from the pairs: per prompt one desirable single (label True), its best sample by the ground truth,
    and one undesirable single, its worst (the pairs stage writes a prompt's pairs one after another, each sample's
    score beside it; splitting every pair instead would label a prompt's middle samples both desirable and
    undesirable). Shuffled by the training seed (KTO reads them in order: its KL estimate pairs each completion
    with another prompt of its batch, TRL's rotation by one within each batch of `batch_size`).
    -> columns prompt_ids, completion_ids, label, KL_completion_ids."""
    from datasets import Dataset

    rows = []
    columns = zip(pairs["prompt_index"], pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"],
                  pairs["score_chosen"], pairs["score_rejected"])
    for _, group in itertools.groupby(columns, key=lambda row: row[0]):  # one prompt's pairs
        group = list(group)
        best = max(group, key=lambda row: row[4])[2]
        worst = min(group, key=lambda row: row[5])[3]
        rows += [(group[0][1], best, True), (group[0][1], worst, False)]
    random.Random(seed).shuffle(rows)
    completions = [c for _, c, _ in rows]
    mismatched = []
    for j in range(0, len(rows), batch_size):  # within each batch, completion i goes with prompt i + 1
        batch = completions[j : j + batch_size]
        mismatched += batch[-1:] + batch[:-1]
    return Dataset.from_dict({"prompt_ids": [p for p, _, _ in rows], "completion_ids": completions,
                              "label": [y for _, _, y in rows], "KL_completion_ids": mismatched})


def learning_rate(cfg, beta: float) -> float:
    """This beta's peak learning rate: its entry of learning_rates, or learning_rate. With Adam the step in
    parameter space does not scale with beta, but the loss's sharpness does (beta x the log-ratio margin), so
    a short run at a large beta wants a smaller step (docs/protocol.md)."""
    return cfg.learning_rates[cfg.betas.index(beta)] if cfg.learning_rates else cfg.learning_rate


def trl_config(stage: str, cfg, beta: float, **common):
    """The TRL config of one run of the stage: what every pairs trainer shares (`common`) and the stage's loss."""
    loss = loss_of(stage)
    if loss not in OWN_TRAINERS:
        from trl import DPOConfig

        return DPOConfig(beta=beta, loss_type=[loss], precompute_ref_log_probs=True, max_length=None,
                         label_smoothing=getattr(cfg, "label_smoothing", 0.0), **common)  # rdpo's epsilon
    if loss == "kto":
        from trl import KTOConfig

        common["per_device_train_batch_size"] *= rows_per_pair(stage)  # a pair's two completions as two singles
        common["per_device_eval_batch_size"] *= rows_per_pair(stage)
        return KTOConfig(beta=beta, loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0,  # one of each a pair
                         train_sampling_strategy="sequential", max_length=None, **common)
    if loss in ("simpo", "cpo"):
        from trl.experimental.cpo import CPOConfig

        return CPOConfig(beta=beta, loss_type="simpo" if loss == "simpo" else "sigmoid",
                         cpo_alpha=0.0 if loss == "simpo" else cfg.cpo_alpha,
                         simpo_gamma=getattr(cfg, "gamma", 0.5), max_length=None, **common)
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig(beta=beta, max_length=None, **common)


def train_one(beta: float, seed: int, cfg, job, pairs, heldout, tokens_per_pair: float, margin0: float):
    """One run of the stage's loss from the SFT model: in our loop when the loss is one of dpo/loss.py's
    (train_own), else by its TRL trainer (train_trl). A killed run resumes from its latest checkpoint. pairs, heldout:
    what the trainer reads (kto: the singles of the pairs)."""
    train = train_own if loss_of(job.stage) in OWN_LOOP_LOSSES else train_trl
    return train(beta, seed, cfg, job, pairs, heldout, tokens_per_pair, margin0)


def losses_and_hits(model, data: dict, idx: list[int], loss_type: str, beta: float, pad_id: int,
                    label_smoothing: float = 0.0):
    """Per pair data[idx] (columns COLUMNS, as lists): the loss of dpo/loss.py's pair_losses, the policy's sequence
    log-probs of chosen and rejected in one forward pass against the pairs' reference log-probs; and whether the
    chosen log-ratio is the larger (the implicit reward's accuracy). -> ([b], [b])."""
    import torch

    from dpo.loop import completion_token_logps

    prompts = [data["prompt_ids"][i] for i in idx]
    completions = [data["chosen_ids"][i] for i in idx] + [data["rejected_ids"][i] for i in idx]
    logps, mask = completion_token_logps(model, prompts + prompts, completions, pad_id)
    seq, n = (logps.float() * mask).sum(1), len(idx)
    chosen = seq[:n] - torch.tensor([data["ref_chosen_logps"][i] for i in idx], device=seq.device)
    rejected = seq[n:] - torch.tensor([data["ref_rejected_logps"][i] for i in idx], device=seq.device)
    losses = pair_losses(loss_type, chosen, rejected, beta, mask[:n].sum(1), mask[n:].sum(1), label_smoothing)
    return losses, (chosen > rejected).float()


def batch_loss_of(data: dict, loss_type: str, beta: float, pad_id: int, label_smoothing: float = 0.0):
    """The pairs loop's batch_loss (dpo/loop.py): this process's block of the batch, its loss summed and divided by
    the whole batch's size; logs the batch's implicit-reward accuracy (and keeps it in the loop state)."""
    def batch_loss(model, idx, state):
        state.tokens_trained += sum(2 * len(data["prompt_ids"][i]) + len(data["chosen_ids"][i]) +
                                    len(data["rejected_ids"][i]) for i in idx)
        losses, hits = losses_and_hits(model, data, dist.shard(idx), loss_type, beta, pad_id, label_smoothing)
        accuracy = float(dist.all_sum(hits.sum().detach())) / len(idx)  # on the device: NCCL has no CPU path
        state.extra.setdefault("reward_accuracy", []).append(accuracy)
        return losses.sum() / len(idx), {"reward_accuracy": accuracy}

    return batch_loss


def train_own(beta: float, seed: int, cfg, job, pairs, heldout, tokens_per_pair: float, margin0: float):
    """The run in the pairs loop (dpo/loop.py) with the loss of dpo/loss.py, pinned to TRL's DPOTrainer's (the
    reference log-probs: fp32, computed once by the pairs stage). Every checkpoint scores the held-out pairs (every
    process all of them, as sharded models need): the loss and the implicit-reward accuracy."""
    from core import lm
    from core.train import loop_accelerator
    from dpo import loop

    run = MethodRun(job, job.stage, f"beta{beta:g}", "beta", beta, seed, accelerator=loop_accelerator())
    if run.summary:
        return run.summary
    pad_id = lm.load_tokenizer(job.upstream("sft", seed)).pad_token_id
    loss_type, smoothing = loss_of(job.stage), getattr(cfg, "label_smoothing", 0.0)
    train, held = ({c: list(data[c]) for c in COLUMNS} for data in (pairs, heldout))

    def at_checkpoint(model, state):
        def sums_of(model, idx):
            losses, hits = losses_and_hits(model, held, idx, loss_type, beta, pad_id, smoothing)
            return [float(losses.sum()), float(hits.sum())]

        n = len(held["prompt_ids"])
        loss, hits = loop.heldout_sums(model, n, cfg.batch_size, run.accelerator.autocast, sums_of)
        state.extra.setdefault("heldout", []).append({"step": state.step, "loss": loss / n, "reward_accuracy": hits / n})

    state = loop.train(run, cfg, job.upstream("sft", seed), len(train["prompt_ids"]), run.training_seed,
                       learning_rate(cfg, beta), batch_loss_of(train, loss_type, beta, pad_id, smoothing),
                       at_checkpoint, job.section("train").max_grad_norm)
    return run.finish(state, final_loss=loop.recent_mean(state.history, cfg),
                      final_reward_accuracy=loop.recent_mean(state.extra["reward_accuracy"], cfg),
                      heldout=state.extra["heldout"], step0_margin=margin0)


def train_trl(beta: float, seed: int, cfg, job, pairs, heldout, tokens_per_pair: float, margin0: float):
    """The run by the loss's TRL trainer (TRL's resume)."""
    run = MethodRun(job, job.stage, f"beta{beta:g}", "beta", beta, seed)
    if run.summary:
        return run.summary
    from core import lm

    model = lm.load_causal_lm(job.upstream("sft", seed))  # the SFT model of this seed (one unless reseed_shared)
    model.train()
    tokenizer = lm.load_tokenizer(job.upstream("sft", seed))
    steps = cfg.max_steps or math.ceil(len(pairs) / (rows_per_pair(job.stage) * cfg.batch_size))
    batch = dist.per_process(f"{job.stage}.batch_size", cfg.batch_size)  # pairs (kto: twice as many singles)
    args = trl_config(
        job.stage, cfg, beta, output_dir=str(run.folder), learning_rate=learning_rate(cfg, beta),
        optim="rmsprop" if cfg.optimizer == "rmsprop" else "adamw_torch", warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup", per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        max_steps=steps, save_strategy="steps", save_steps=cfg.eval_every, save_total_limit=None,
        eval_strategy="steps", eval_steps=cfg.eval_every,  # the held-out loss at every checkpoint
        logging_steps=max(1, cfg.eval_every // 4), report_to=tracking.report_to(job), seed=run.training_seed,
        data_seed=run.training_seed, **trainer_args(job), disable_tqdm=not dist.is_main(),
        remove_unused_columns=False, logging_nan_inf_filter=False)
    run.start()  # TRL's callback logs into its wandb run; TRL resumes the training itself
    trainer = make_trainer_class(job.stage)(model=model, args=args, train_dataset=pairs, eval_dataset=heldout,
                                            processing_class=tokenizer,
                                            callbacks=[stop_on_non_finite_loss(), save_at(cfg.early_checkpoints)])
    result = run_trainer(trainer, run.folder)
    history = [h for h in trainer.state.log_history if "loss" in h]
    if save_last_checkpoint(trainer, run.folder, cfg.eval_every):
        trainer.evaluate()  # its held-out loss too
    heldout_curve = [{"step": h["step"], "loss": h["eval_loss"], "reward_accuracy": h.get("eval_rewards/accuracies")}
                     for h in trainer.state.log_history if "eval_loss" in h]
    return run.finish(
        steps=result.global_step,
        tokens_trained=round(tokens_per_pair * result.global_step * cfg.batch_size),  # pairs seen x mean pair length
        final_loss=history[-1]["loss"] if history else None,
        final_reward_accuracy=history[-1].get("rewards/accuracies") if history else None,
        heldout=heldout_curve,  # per checkpoint: DPO loss and reward accuracy on held-out prompts' pairs
        step0_margin=margin0)


def main():
    job = jobs.start()
    cfg = job.section(job.stage)
    from datasets import load_from_disk

    @functools.cache  # each pairs folder once (one unless reseed_shared)
    def training_and_heldout(folder):
        data = load_from_disk(str(folder / "dataset"))
        kto = loss_of(job.stage) == "kto"  # its singles come from each prompt's pairs, in the pairs stage's order
        columns = COLUMNS + (["prompt_index", "score_chosen", "score_rejected"] if kto else [])
        heldout = data.filter(lambda r: r["heldout"]).select_columns(columns)
        if kto:  # a seeded sample of the held-out prompts, every pair of each (its singles are made from them)
            chosen = set(random.Random(job.seed).sample(sorted(set(heldout["prompt_index"])),
                                                        min(HELDOUT_EVAL_PAIRS, len(set(heldout["prompt_index"])))))
            heldout = heldout.filter(lambda r: r["prompt_index"] in chosen)
        else:
            heldout = heldout.shuffle(seed=job.seed).select(range(min(HELDOUT_EVAL_PAIRS, len(heldout))))
        return data.filter(lambda r: not r["heldout"]).select_columns(columns), heldout

    runs = []
    for seed in range(job.seeds):
        pairs, heldout = training_and_heldout(job.upstream("pairs", seed))
        n_pairs = len(pairs)
        tokens_per_pair = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(
            pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])) / n_pairs
        margin0 = step0_margin(job.upstream("sft", seed), pairs)
        log.info("step-0 DPO margin of SFT model %d on %d training pairs: %.2g nats (0 when the reference log-probs "
                 "match the trainer's)", seed, min(STEP0_PAIRS, n_pairs), margin0)
        if loss_of(job.stage) == "kto":  # once for every beta: the singles depend on the pairs and the training seed only
            batch = rows_per_pair(job.stage) * dist.per_process(f"{job.stage}.batch_size", cfg.batch_size)
            pairs, heldout = kto_singles(pairs, batch, training_seed(job.seed, seed)), kto_singles(heldout, batch, job.seed)
        for beta in cfg.betas:
            log.info("%s beta=%g, training seed %d, on %d %s", job.stage, beta, seed, len(pairs),
                     "singles" if loss_of(job.stage) == "kto" else "pairs")
            runs.append(train_one(beta, seed, cfg, job, pairs, heldout, tokens_per_pair, margin0))
            log.info("%s: %d steps in %.0fs, final loss %s, held-out loss by checkpoint %s", runs[-1]["run"],
                     runs[-1]["steps"], runs[-1]["train_seconds"], runs[-1]["final_loss"],
                     [round(h["loss"], 4) for h in runs[-1]["heldout"]])
    jobs.finish_runs(job, runs, ("final_loss",))


if __name__ == "__main__":
    jobs.run(main)
