"""Stage ppo: PPO from the SFT model, on the learned reward (`ppo`) and on the ground truth (`ppo-gt`).

One run per method and target KL. Each PPO step:
  1. Rollouts: one pure sample (temperature 1, top_k 0, top_p 1) per prompt from the current policy.
  2. Score each completion: the reward model's normalised score of prompt + completion (ppo), or the
     ground truth's P(positive) of the completion text (ppo-gt).
  3. Per-token reward: -beta_KL * KL_t(pi || ref) at every response token (k1 or k3 estimate against the
     frozen SFT model), plus the score at the final response token.
  4. Advantages by GAE (gamma, lambda) on the value model's estimates, whitened over the batch.
  5. Several epochs over minibatches: clipped policy loss and clipped value loss.
  6. KL control: the adaptive controller of Ziegler et al. steers beta_KL toward the target sequence KL.
The value model is initialised from the reward model (as in lm-human-preferences), or is a head on the
policy. The parts are pure functions in ppo/algorithm.py. A checkpoint is kept every `eval_every` steps.
Under `accelerate launch` the rollouts and minibatches are split over the processes (see train_run);
on CUDA the forward passes run in bf16 autocast, the losses in fp32.
"""

import json
import logging
import random
import time

import torch
import torch.nn.functional as F

from core import job as jobs
from core import dist, lm, resume, tracking
from core.train import loop_accelerator
from core.reward import RewardModel
from core.scorer import load_scorer
from ppo import algorithm as A

log = logging.getLogger("stage")


def response_view(x: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """Left-align each row's response: [B, T-1] (position t predicts token t+1) -> [B, width]."""
    index = (starts[:, None] + torch.arange(width, device=x.device)[None]).clamp(max=x.shape[1] - 1)
    return torch.gather(x, 1, index)


class ValueModel(torch.nn.Module):
    """V(s_t) at every position: a scalar head on a transformer's hidden states.

    reward_model: a separate network, the reward model's backbone and head (lm-human-preferences' choice);
    policy_head: a new head on the policy's own hidden states (one forward serves both)."""

    def __init__(self, kind: str, reward_model_dir, policy):
        super().__init__()
        self.kind = kind
        if kind == "reward_model":
            from transformers import AutoModelForSequenceClassification

            net = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
            self.backbone, self.head = net.base_model, net.score
        else:
            self.backbone, self.head = None, torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.head.weight), torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, attn, policy_hidden=None):
        hidden = policy_hidden if self.kind == "policy_head" else \
            self.backbone(input_ids=ids, attention_mask=attn).last_hidden_state
        return self.head(hidden).squeeze(-1)[:, :-1]  # V at the state before each next token


def forward_policy(policy, ids, attn, want_hidden: bool, want_entropy: bool = True):
    """Per-position log-prob of the next token and the entropy there. -> ([B, T-1], [B, T-1] or None, hidden)."""
    out = policy(input_ids=ids, attention_mask=attn, output_hidden_states=want_hidden)
    logp_all = F.log_softmax(out.logits[:, :-1].float(), dim=-1)
    logp = torch.gather(logp_all, 2, ids[:, 1:, None]).squeeze(-1)
    entropy = None
    if want_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy, out.hidden_states[-1] if want_hidden else None


def batch_tensors(prompts, completions, pad_id, dev):
    """Right-padded prompt + completion ids, attention mask, response starts and lengths."""
    ids, attn = lm.right_pad([p + c for p, c in zip(prompts, completions)], pad_id)
    starts = torch.tensor([len(p) - 1 for p in prompts])
    lengths = torch.tensor([len(c) for c in completions])
    return ids.to(dev), attn.to(dev), starts.to(dev), lengths.to(dev)


def train_run(method: str, target_kl: float, cfg, job, prompts, tokenizer, score_fn, run_dir):
    """One run from the SFT model. A run killed part-way resumes from its latest checkpoint (weights,
    optimizers, KL coefficient, RNG state); a finished one is not trained again.

    With N processes each samples and scores its block of the step's rollouts and computes their log-probs
    and values; these are gathered, so every process holds the whole batch and computes the same advantages
    and KL coefficient. Each minibatch (the same ones as one process would draw) is split over the
    processes; each divides its part of the loss by the whole minibatch's token count, and the averaged
    gradients, x N, are the one-process gradient."""
    if done := resume.finished_run(run_dir):
        log.info("%s: finished by an earlier attempt", done["run"])
        return done
    accelerator = loop_accelerator()
    dev, world = accelerator.device, dist.world_size()
    last = resume.latest_checkpoint(run_dir)
    policy = lm.load_causal_lm(last[1] if last else job.inputs["sft"], dev)
    ref = lm.load_causal_lm(job.inputs["sft"], dev).requires_grad_(False)
    value = ValueModel(cfg.value_model, job.inputs["reward_model"], policy).to(dev)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    value_opt = torch.optim.Adam(value.parameters(), lr=cfg.value_learning_rate)
    raw_policy, raw_value = policy, value  # for sampling and no-grad passes: no gradient sync needed there
    policy, value, policy_opt, value_opt = accelerator.prepare(policy, value, policy_opt, value_opt)
    kl_ctl = (A.AdaptiveKLController(cfg.init_kl_coef, target_kl, cfg.kl_horizon) if cfg.kl_control == "adaptive"
              else A.FixedKLController(cfg.init_kl_coef))
    order = list(range(len(prompts)))
    random.Random(job.seed).shuffle(order)
    shared_forward = cfg.value_model == "policy_head"
    done_steps, history, tokens_generated, tokens_trained, seconds = 0, [], 0, 0, 0.0
    if last:
        done_steps, _, state = last
        accelerator.unwrap_model(value).load_state_dict(state["value"])
        policy_opt.load_state_dict(state["policy_optimizer"])
        value_opt.load_state_dict(state["value_optimizer"])
        kl_ctl.value = state["kl_coef"]
        torch.set_rng_state(state["rng"])
        history, tokens_generated, tokens_trained = state["history"], state["tokens_generated"], state["tokens_trained"]
        seconds = state["seconds"]
        log.info("%s target %g: resuming after step %d", method, target_kl, done_steps)
    t0 = time.time() - seconds
    run = tracking.start(job, f"{method}-kl{target_kl:g}", method, {"target_kl": target_kl})
    mine = dist.block(cfg.rollouts_per_step)  # this process's rollouts of each step
    for step in range(done_steps + 1, cfg.steps + 1):
        start = (step - 1) * cfg.rollouts_per_step
        batch_prompts = [prompts[order[(start + i) % len(order)]] for i in range(cfg.rollouts_per_step)]

        # 1-2. rollouts and their scores: each process its block, gathered in order
        policy.eval()
        my_prompts = batch_prompts[mine.start : mine.stop]
        seeds = lm.sample_seeds(cfg.rollouts_per_step, "ppo", job.seed, step)[mine.start : mine.stop]
        my_completions = lm.sample_completions(raw_policy, my_prompts, cfg.max_new_tokens, tokenizer.eos_token_id,
                                               cfg.rollouts_per_step, seeds)
        score = dist.gather_tensor(score_fn(my_prompts, my_completions).float().to(dev))
        completions = dist.gather(my_completions)
        tokens_generated += sum(map(len, completions))
        ids, attn, starts, lengths = batch_tensors(batch_prompts, completions, tokenizer.pad_token_id, dev)
        width = int(lengths.max())
        mask = (torch.arange(width, device=dev)[None] < lengths[:, None]).float()
        view = lambda x, rows: response_view(x, starts[rows], width)  # noqa: E731
        rows = slice(mine.start, mine.stop)
        with torch.no_grad():
            with lm.autocast(dev):
                old_logp, _, hidden = forward_policy(raw_policy, ids[rows], attn[rows], shared_forward,
                                                     want_entropy=False)
                ref_logp, _, _ = forward_policy(ref, ids[rows], attn[rows], False, want_entropy=False)
                old_values = raw_value(ids[rows], attn[rows], hidden).float()
            old_logp, ref_logp, old_values = (dist.gather_tensor(view(x, rows)) * mask
                                              for x in (old_logp, ref_logp, old_values))

            # 3-4. per-token rewards, advantages (the whole batch, on every process alike)
            kl = A.kl_penalty(old_logp, ref_logp, cfg.kl_estimator) * mask
            rewards = A.token_rewards(score, kl, kl_ctl.value, mask)
            advantages, returns = A.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = A.whiten(advantages, mask)

        # 5. PPO epochs over minibatches, each split over the processes
        policy.train()
        keys = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "value_clipfrac")
        stats = []
        for epoch in range(cfg.ppo_epochs):
            shuffle = torch.Generator().manual_seed(lm.sample_seeds(1, "ppo-minibatches", job.seed, step, epoch)[0])
            for mb in torch.randperm(cfg.rollouts_per_step, generator=shuffle).split(cfg.minibatch_size):
                n_tokens = mask[mb].sum()  # the whole minibatch's
                tokens_trained += int(attn[mb].sum())
                part = dist.block(len(mb))
                mb = mb[part.start : part.stop]  # this process's part of it
                mb_mask = mask[mb]
                logp, entropy, hidden = forward_policy(policy, ids[mb], attn[mb], shared_forward)
                mb_view = lambda x: response_view(x, starts[mb], width)  # noqa: E731
                pg_loss, clipfrac, approx_kl = A.policy_loss(mb_view(logp), old_logp[mb], advantages[mb], mb_mask,
                                                             cfg.clip_range, n_tokens)
                values = mb_view(value(ids[mb], attn[mb], hidden)).float()
                vf_loss, vf_clipfrac = A.value_loss(values, old_values[mb], returns[mb], mb_mask,
                                                    cfg.value_clip_range, n_tokens)
                # the processes' parts summed: the minibatch's values (one collective for all of them)
                parts = torch.stack([x.detach().float() for x in (pg_loss, vf_loss, clipfrac, approx_kl,
                                     A.masked_mean(mb_view(entropy), mb_mask, n_tokens), vf_clipfrac)])
                stats.append(dist.all_sum(parts))
                if not torch.isfinite(stats[-1][:2].sum()):
                    good = resume.latest_checkpoint(run_dir)
                    raise FloatingPointError(
                        f"{method} target {target_kl:g}: loss is {float(stats[-1][:2].sum())} at step {step}; "
                        f"stopping (last good checkpoint: {good[1] if good else 'none'})")
                policy_opt.zero_grad()
                value_opt.zero_grad()
                # policy_head: one network, one weighted loss; reward_model: two networks, each its own loss.
                # x world: DDP averages the processes' gradients, and each part is already a share of the mean.
                accelerator.backward(world * (pg_loss + cfg.vf_coef * vf_loss if shared_forward else pg_loss + vf_loss))
                policy_opt.step()
                value_opt.step()

        # 6. KL control on the measured sequence KL of this batch
        seq_kl = float(kl.sum(1).mean())
        coef = kl_ctl.value
        kl_ctl.update(seq_kl, cfg.rollouts_per_step)
        means = torch.stack(stats).mean(0).tolist()
        row = {"step": step, "score": float(score.mean()), "kl": seq_kl, "kl_coef": coef,
               "explained_variance": A.explained_variance(old_values, returns, mask),
               "response_length": float(lengths.float().mean()), "seconds": round(time.time() - t0, 2),
               **dict(zip(keys, means))}
        history.append(row)
        tracking.log_train(run, step, {k: v for k, v in row.items() if k != "step"})
        eta = (time.time() - t0) / step * (cfg.steps - step)
        log.info("%s target %g step %d/%d: score %.3f, KL %.2f, coef %.3f, entropy %.2f, clipfrac %.2f (ETA %.0fs)",
                 method, target_kl, step, cfg.steps, row["score"], seq_kl, coef, row["entropy"], row["clipfrac"], eta)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            weights = accelerator.get_state_dict(policy)  # every process takes part (sharded models)
            value_weights = accelerator.get_state_dict(value)
            resume.save_checkpoint(raw_policy, run_dir / f"checkpoint-{step}", {
                "value": value_weights, "policy_optimizer": policy_opt.state_dict(),
                "value_optimizer": value_opt.state_dict(), "kl_coef": kl_ctl.value, "rng": torch.get_rng_state(),
                "history": history, "tokens_generated": tokens_generated, "tokens_trained": tokens_trained,
                "seconds": time.time() - t0}, weights)
    if dist.is_main():
        (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    resume.strip_checkpoints(run_dir)
    summary = resume.mark_finished(run_dir, {
        "method": method, "run": f"{method}-kl{target_kl:g}", "param": target_kl, "param_name": "target_kl",
        "checkpoints": resume.checkpoint_list(run_dir, job.out), "steps": cfg.steps,
        "train_seconds": round(time.time() - t0, 2), "tokens_generated": tokens_generated,
        "tokens_trained": tokens_trained, "final_score": history[-1]["score"], "final_kl": history[-1]["kl"],
        "final_kl_coef": kl_ctl.value})
    tracking.end(run, {k: v for k, v in summary.items() if k != "checkpoints"})
    return summary


def main():
    job = jobs.start()
    cfg, data_cfg = job.section("ppo"), job.section("data")
    dist.check_divisible("ppo.rollouts_per_step", cfg.rollouts_per_step)
    dist.check_divisible("ppo.minibatch_size", cfg.minibatch_size)
    tokenizer = lm.load_tokenizer(job.inputs["sft"])
    # distinct prompts for every rollout where the split has enough (then they cycle)
    prompts = lm.split_prompts(data_cfg, job.seed, "train", cfg.rollouts_per_step * cfg.steps, tokenizer)

    scorers = {}
    if "ppo" in cfg.methods:
        rm = RewardModel(job.inputs["reward_model"], lm.device())
        scorers["ppo"] = lambda p, c: rm([a + b for a, b in zip(p, c)])
    if "ppo-gt" in cfg.methods:
        gt = load_scorer(job.inputs["ground_truth"])
        scorers["ppo-gt"] = lambda p, c: torch.tensor(gt([lm.decode(tokenizer, x) for x in c]), dtype=torch.float32)

    runs = []
    for method in cfg.methods:
        for target in cfg.target_kls:
            torch.manual_seed(job.seed)
            run = train_run(method, target, cfg, job, prompts, tokenizer, scorers[method],
                            job.out / f"{method}-kl{target:g}")
            log.info("%s: %d steps in %.0fs, final score %.3f, KL %.2f", run["run"], run["steps"],
                     run["train_seconds"], run["final_score"], run["final_kl"])
            runs.append(run)
    jobs.finish_runs(job, runs, ("final_kl", "final_score"))


if __name__ == "__main__":
    jobs.run(main)
