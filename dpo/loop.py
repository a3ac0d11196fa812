"""The plain training loop of every pairs method we train ourselves: DPO, IPO, SLiC and rDPO (dpo/__main__.py) and
Unlikelihood and Preferred-FT (dpo/relatives.py). A method gives its batch loss; the loop does the rest:

    order = seeded shuffles of the training pairs, one after another, cut into batches of batch_size
    for each step:
        loss = the method's loss on this process's block of the batch, divided by the whole batch's count
        backward(world x loss)             DDP / FSDP average the processes' gradients: x world gives their sum
        clip the gradient norm ([train] max_grad_norm), step the optimizer (AdamW or RMSprop) and the warm-up
        every eval_every steps, at early_checkpoints and at the last: the method's checkpoint hook (held-out
                                           metrics), then a checkpoint (weights, optimizer, scheduler, loop
                                           state, RNG: a killed run resumes)

The learning rate rises linearly over warmup_steps to its peak, (step + 1) / warmup_steps, then stays.
"""

import logging
import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from core import dist, lm
from core.run import LoopState, MethodRun, is_checkpoint

log = logging.getLogger("stage")


def completion_token_logps(model, prompts, completions, pad_id: int):
    """log pi of every completion token, with its mask. -> ([B, T-1], [B, T-1]) on the model's device."""
    dev = next(model.parameters()).device
    ids, attn, resp = lm.completion_batch(prompts, completions, pad_id, dev)
    return lm.next_token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids), resp.float()


@torch.no_grad()
def heldout_sums(model, n: int, batch_size: int, autocast, sums_of: Callable) -> list[float]:
    """Held-out statistics at a checkpoint: sums_of(model, idx) -> [float, ...] for each batch of the n held-out
    pairs' indices, added up (float64), with the model in eval mode (restored to train after). Every process scores
    all n (a few hundred pairs): the same forward passes on each, as a sharded model's collectives need (FSDP)."""
    model.eval()
    total = None
    for start in range(0, n, batch_size):
        with autocast():
            part = torch.tensor(sums_of(model, list(range(start, min(start + batch_size, n)))), dtype=torch.float64)
        total = part if total is None else total + part
    model.train()
    return total.tolist()


def data_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Pair indices for each step: seeded shuffles of the pairs, one after another, cut into batches."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(steps * batch_size / n))])
    return [flat[i * batch_size : (i + 1) * batch_size].tolist() for i in range(steps)]


def recent_mean(values: list[float], cfg) -> float:
    """The mean over the last quarter of a checkpoint interval's steps (TRL's logging window): a run's final loss or
    accuracy, less noisy than one batch's."""
    window = values[-max(1, cfg.eval_every // 4):]
    return sum(window) / len(window)


def steps_of(cfg, n_pairs: int) -> int:
    """max_steps, or one epoch over the pairs (max_steps 0, the paper's)."""
    return cfg.max_steps or math.ceil(n_pairs / cfg.batch_size)


def train_step(accelerator, model, opt, sched, batch_loss: Callable, idx: list[int], state: LoopState,
               max_grad_norm: float) -> tuple[float, dict]:
    """One optimiser step on the batch idx. -> (the batch's loss, summed over the processes' shares; its metrics).
    A non-finite loss is stepped on too: the caller stops the run before saving (run.check_finite)."""
    with accelerator.autocast():
        loss, metrics = batch_loss(model, idx, state)
    total = float(dist.all_sum(loss.detach()))  # the processes' shares add up to the batch's loss
    opt.zero_grad(set_to_none=True)
    accelerator.backward(dist.world_size() * loss)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)  # the suite's one rule ([train])
    opt.step()
    sched.step()
    return total, metrics


def train(run: MethodRun, cfg, sft, n_pairs: int, data_seed: int, learning_rate: float,
          batch_loss: Callable, at_checkpoint: Callable | None, max_grad_norm: float) -> LoopState:
    """Train run from the SFT model (or its latest checkpoint) on n_pairs pairs. batch_loss(model, idx, state) ->
    (this process's share of the loss of the batch idx, {metric: value} to log); at_checkpoint(model, state) runs
    before each checkpoint is saved (the model in train mode; it may switch and must restore). -> the loop state."""
    accelerator = run.accelerator
    model = lm.load_causal_lm(run.latest or sft, accelerator.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.RMSprop(params, lr=learning_rate) if cfg.optimizer == "rmsprop"
           else torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0))
    warmup = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model, opt = accelerator.prepare(model, opt)
    resumable = {"optimizer": opt, "scheduler": sched}
    state = run.start(resumable, model)
    steps = steps_of(cfg, n_pairs)
    bar = tqdm(data_order(n_pairs, steps, cfg.batch_size, data_seed), desc=run.label, unit="step",
               disable=None if dist.is_main() else True)
    for step, idx in enumerate(bar, start=1):
        if step <= state.step:
            continue
        total, metrics = train_step(run.accelerator, model, opt, sched, batch_loss, idx, state, max_grad_norm)
        run.check_finite(total, step)
        state.step = step
        state.history.append(total)
        run.log(step, {"loss": total, "learning_rate": sched.get_last_lr()[0], **metrics})
        if is_checkpoint(step, steps, cfg.eval_every, cfg.early_checkpoints):
            if at_checkpoint:
                at_checkpoint(model, state)
            run.save(state, model, resumable)
            recent = state.history[-cfg.eval_every:]
            log.info("%s step %d/%d: loss %.4f", run.label, step, steps, sum(recent) / len(recent))
    return state
