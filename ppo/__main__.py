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
The value model is a separate network initialised from the reward model (Stiennon et al. 2020), or a scalar
head on the policy (Ziegler et al.'s lm-human-preferences, policy.py: `scalar_heads=['value']`). The parts are
pure functions in ppo/algorithm.py; the algorithm reads top to bottom in train_run, rollout and ppo_update,
each step citing the line of lm-human-preferences (train_policy.py) it follows. A checkpoint is kept every
`eval_every` steps. Under `accelerate launch` the rollouts and minibatches are split over the processes; on
CUDA the forward passes run in bf16 autocast, the losses in fp32.
"""

import json
import logging
import random
from dataclasses import dataclass

import torch

from core import job as jobs
from core import dist, lm
from core.config import ConfigError
from core.run import MethodRun, is_checkpoint
from core.train import loop_accelerator
from core.methods import METHODS
from core.reward import training_reward, value_network
from ppo import algorithm as A

log = logging.getLogger("stage")


def response_view(x: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """Left-align each row's response: [B, T-1] (position t predicts token t+1) -> [B, width]."""
    index = (starts[:, None] + torch.arange(width, device=x.device)[None]).clamp(max=x.shape[1] - 1)
    return torch.gather(x, 1, index)


class ValueModel(torch.nn.Module):
    """V(s_t) at every position: a scalar head on a transformer's hidden states.

    reward_model: a separate network, the reward model's backbone and head (Stiennon et al. 2020's choice);
    policy_head: a new head on the policy's own hidden states, one forward serving both (lm-human-preferences)."""

    def __init__(self, kind: str, reward_model_dir, policy):
        super().__init__()
        self.kind = kind
        if kind == "reward_model":  # starts as the normalised reward model (core/reward.py)
            self.backbone, self.head = value_network(reward_model_dir)
        else:  # starts at 0, the normalised rewards' mean on SFT samples
            self.backbone, self.head = None, torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.head.weight), torch.nn.init.zeros_(self.head.bias)

    def forward(self, ids, attn, policy_hidden=None):
        hidden = policy_hidden if self.kind == "policy_head" else \
            self.backbone(input_ids=ids, attention_mask=attn).last_hidden_state
        return self.head(hidden).squeeze(-1)[:, :-1]  # V at the state before each next token


def forward_policy(policy, ids, attn, want_hidden: bool, want_entropy: bool = True):
    """Per-position log-prob of the next token and the entropy there. -> ([B, T-1], [B, T-1] or None, hidden)."""
    out = policy(input_ids=ids, attention_mask=attn, output_hidden_states=want_hidden)
    logp, entropy = lm.next_token_logprobs(out.logits, ids, entropy=True) if want_entropy else \
        (lm.next_token_logprobs(out.logits, ids), None)
    return logp, entropy, out.hidden_states[-1] if want_hidden else None


def batch_tensors(prompts, completions, pad_id, dev):
    """Right-padded prompt + completion ids, attention mask, response starts and lengths."""
    ids, attn = lm.right_pad([p + c for p, c in zip(prompts, completions)], pad_id)
    starts = torch.tensor([len(p) - 1 for p in prompts])
    lengths = torch.tensor([len(c) for c in completions])
    return ids.to(dev), attn.to(dev), starts.to(dev), lengths.to(dev)


@dataclass
class Rollouts:
    """One PPO step's batch, whole on every process. B rollouts, L = prompt + response tokens, T = the longest
    response. Response position t of row b is token starts[b] + 1 + t of ids[b]."""
    ids: torch.Tensor  # [B, L] prompt + completion, right-padded
    attn: torch.Tensor  # [B, L]
    starts: torch.Tensor  # [B] the position whose logits predict the first response token
    mask: torch.Tensor  # [B, T] 1 on response tokens (up to and including EOS)
    score: torch.Tensor  # [B] the reward model's or the ground truth's score of each rollout
    logp: torch.Tensor  # [B, T] log pi_old of each response token (the policy that sampled it)
    ref_logp: torch.Tensor  # [B, T] log pi_ref of each response token
    values: torch.Tensor  # [B, T] V_old of the state before each response token
    completions: list  # B token id lists

    def view(self, x: torch.Tensor, rows) -> torch.Tensor:
        """Per-position values of these rows [b, L-1] as response positions [b, T]."""
        return response_view(x, self.starts[rows], self.mask.shape[1])


# ============================================================================================== ALGO LOGIC
def rollout(policy, ref, value, prompts, seeds, score_fn, cfg, tokenizer, dev) -> Rollouts:
    """Steps 1-2: one pure sample per prompt from the current policy (lm-human-preferences, train_policy.py
    PPOTrainer.step: `policy.respond`), its score (`score_fn`), and the log-probs of the sampled tokens under
    the policy and the reference and the values (`ref_policy.analyze_responses`). With N processes each
    samples, scores and runs the forward passes for its block of rows; the results are gathered in order."""
    mine = dist.block(len(prompts))
    rows = slice(mine.start, mine.stop)
    my_completions = lm.sample_completions(policy, prompts[rows], cfg.max_new_tokens, tokenizer.eos_token_id,
                                           len(prompts), seeds[rows])
    score = dist.gather_tensor(score_fn(prompts[rows], my_completions).float().to(dev))
    completions = dist.gather(my_completions)
    ids, attn, starts, lengths = batch_tensors(prompts, completions, tokenizer.pad_token_id, dev)
    width = int(lengths.max())
    mask = (torch.arange(width, device=dev)[None] < lengths[:, None]).float()
    with torch.no_grad(), lm.autocast(dev):
        logp, _, hidden = forward_policy(policy, ids[rows], attn[rows], cfg.value_model == "policy_head",
                                         want_entropy=False)
        ref_logp, _, _ = forward_policy(ref, ids[rows], attn[rows], False, want_entropy=False)
        values = value(ids[rows], attn[rows], hidden).float()
    logp, ref_logp, values = (dist.gather_tensor(response_view(x, starts[rows], width)) * mask
                              for x in (logp, ref_logp, values))
    return Rollouts(ids, attn, starts, mask, score, logp, ref_logp, values, completions)


def ppo_update(policy, value, policy_opt, value_opt, batch: Rollouts, advantages, returns, cfg, accelerator,
               minibatch_seeds: list[int], max_grad_norm: float, check_finite) -> tuple[dict, int]:
    """Step 5: `ppo_epochs` passes over the batch in shuffled minibatches (train_policy.py PPOTrainer.train: a
    fresh permutation each epoch), each a clipped policy loss and a clipped value loss (PPOTrainer.loss;
    Schulman et al. 2017, eq. 7 and 9). Ziegler et al. train one network with pg_loss + vf_coef * vf_loss
    (value_model = policy_head); with a separate value network (value_model = reward_model, as Stiennon et
    al. 2020) each network takes its own loss. One Adam per network at a constant learning rate (Ziegler et al.
    decay it linearly to 0: a departure).
    Each minibatch is split over the processes; each divides its part of the loss by the whole minibatch's
    token count, so the averaged gradients x N are the one-process gradient. -> (mean statistics, tokens)."""
    world, shared = dist.world_size(), cfg.value_model == "policy_head"
    mask, stats, tokens_trained = batch.mask, [], 0
    policy.train()
    for epoch in range(cfg.ppo_epochs):
        shuffle = torch.Generator().manual_seed(minibatch_seeds[epoch])
        for mb in torch.randperm(len(batch.ids), generator=shuffle).split(cfg.minibatch_size):
            n_tokens = mask[mb].sum()  # the whole minibatch's
            tokens_trained += int(batch.attn[mb].sum())
            part = dist.block(len(mb))
            mb = mb[part.start : part.stop]  # this process's part of it
            logp, entropy, hidden = forward_policy(policy, batch.ids[mb], batch.attn[mb], shared)
            pg_loss, clipfrac, approx_kl = A.policy_loss(batch.view(logp, mb), batch.logp[mb], advantages[mb],
                                                         mask[mb], cfg.clip_range, n_tokens)
            values = batch.view(value(batch.ids[mb], batch.attn[mb], hidden), mb).float()
            vf_loss, vf_clipfrac = A.value_loss(values, batch.values[mb], returns[mb], mask[mb],
                                                cfg.value_clip_range, n_tokens)
            # the processes' parts summed: the minibatch's values (one collective for all of them)
            parts = dist.all_sum(torch.stack([x.detach().float() for x in (
                pg_loss, vf_loss, clipfrac, approx_kl, A.masked_mean(batch.view(entropy, mb), mask[mb], n_tokens),
                vf_clipfrac)]))
            check_finite(float(parts[:2].sum()))
            stats.append(parts)
            policy_opt.zero_grad()
            value_opt.zero_grad()
            # x world: DDP averages the processes' gradients, and each part is already a share of the mean
            accelerator.backward(world * (pg_loss + cfg.vf_coef * vf_loss if shared else pg_loss + vf_loss))
            # gradient clipping (the suite's one rule, [train] max_grad_norm; lm-human-preferences does not clip)
            accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
            accelerator.clip_grad_norm_(value.parameters(), max_grad_norm)
            policy_opt.step()
            value_opt.step()
    keys = ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "value_clipfrac")
    return dict(zip(keys, torch.stack(stats).mean(0).tolist())), tokens_trained


def initial_kl_coef(cfg, target_kl: float) -> float:
    """The KL coefficient at step 0: this target's entry of init_kl_coefs, or init_kl_coef. Ziegler et al. start
    every run at one coefficient and let the controller find its level over thousands of steps (horizon 10,000);
    a short run can only fine-tune, so it starts each target near the coefficient that reaches it
    (docs/kl-control.md)."""
    return cfg.start_coefs()[cfg.target_kls.index(target_kl)]


def train_run(method: str, target_kl: float, seed: int, cfg, job, prompts, tokenizer, score_fn):
    """One run from the SFT model: `steps` PPO steps, each rollout -> rewards and advantages -> update ->
    KL control. A run killed part-way resumes from its latest checkpoint (weights, optimizers, KL
    coefficient, RNG state); a finished one is not trained again."""
    accelerator = loop_accelerator()
    if accelerator.distributed_type == "DEEPSPEED":  # an engine per model: the value model's steps would do nothing
        raise ConfigError("ppo under DeepSpeed: it drives one model per Accelerator and PPO trains two (policy and "
                          "value); allowed for ppo: configs/accelerate/ddp.yaml, fsdp.yaml or --nproc N")
    run = MethodRun(job, method, f"{method}-kl{target_kl:g}", "target_kl", target_kl, seed, accelerator=accelerator)
    if run.summary:
        return run.summary
    torch.manual_seed(run.training_seed)  # a fresh value head's init (value_model = policy_head)
    dev = accelerator.device
    policy = lm.load_causal_lm(run.latest or job.upstream("sft", seed), dev)  # this seed's SFT model and RM
    ref = lm.load_causal_lm(job.upstream("sft", seed), dev).requires_grad_(False)
    value = ValueModel(cfg.value_model, job.upstream("reward_model", seed), policy).to(dev)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    value_opt = torch.optim.Adam(value.parameters(), lr=cfg.value_learning_rate)
    raw_policy, raw_value = policy, value  # for sampling and no-grad passes: no gradient sync needed there
    policy, policy_opt = accelerator.prepare(policy, policy_opt)  # one model a call, as FSDP2 asks
    value, value_opt = accelerator.prepare(value, value_opt)
    init_kl_coef = initial_kl_coef(cfg, target_kl)
    kl_ctl = (A.AdaptiveKLController(init_kl_coef, target_kl, cfg.kl_horizon, cfg.kl_hold,
                                     stall_steps=3 if cfg.kl_hold_release == "stall" else None)
              if cfg.kl_control == "adaptive" else A.FixedKLController(init_kl_coef))
    resumable = {"value": value, "policy_optimizer": policy_opt, "value_optimizer": value_opt}
    state = run.start(resumable, policy)
    kl_ctl.value = state.extra.get("kl_coef", kl_ctl.value)
    kl_ctl.reached = state.extra.get("kl_reached", False)
    kl_ctl.kls = state.extra.get("kl_seen", [])
    order = list(range(len(prompts)))
    random.Random(run.training_seed).shuffle(order)
    for step in range(state.step + 1, cfg.steps + 1):
        start = (step - 1) * cfg.rollouts_per_step
        batch_prompts = [prompts[order[(start + i) % len(order)]] for i in range(cfg.rollouts_per_step)]
        seeds = lm.sample_seeds(cfg.rollouts_per_step, "ppo", run.training_seed, step)

        # 1-2. rollouts, their scores, log-probs and values
        policy.eval()
        batch = rollout(raw_policy, ref, raw_value, batch_prompts, seeds, score_fn, cfg, tokenizer, dev)
        with torch.no_grad():
            # 3. per-token reward: -beta * KL_t at every response token, the score added at the last one
            #    (train_policy.py PPOTrainer.compute_rewards: `rewards[:, -1] += scores`; here the last token of
            #    each response, as responses end at their own EOS)
            kl = A.kl_penalty(batch.logp, batch.ref_logp, cfg.kl_estimator) * batch.mask
            rewards = A.token_rewards(batch.score, kl, kl_ctl.value, batch.mask)
            # 4. GAE over the response, then advantages whitened over the batch (PPOTrainer.loss)
            advantages, returns = A.gae(rewards, batch.values, batch.mask, cfg.gamma, cfg.lam)
            advantages = A.whiten(advantages, batch.mask)

        # 5. PPO epochs over minibatches
        stats, tokens = ppo_update(policy, value, policy_opt, value_opt, batch, advantages, returns, cfg, accelerator,
                                   [lm.sample_seeds(1, "ppo-minibatches", run.training_seed, step, e)[0]
                                    for e in range(cfg.ppo_epochs)],
                                   job.section("train").max_grad_norm, lambda loss: run.check_finite(loss, step))

        # 6. KL control on this batch's sequence KL (train_policy.py: `kl_ctl.update(stats['objective/kl'],
        #    batch_size)` after the update, with the KL of the rollouts)
        seq_kl = float(kl.sum(1).mean())
        coef = kl_ctl.value
        kl_ctl.update(seq_kl, cfg.rollouts_per_step)

        # ------------------------------------------------------------------------------------ plumbing
        state.step, state.extra["kl_coef"], state.extra["kl_reached"] = step, kl_ctl.value, kl_ctl.reached
        state.extra["kl_seen"] = kl_ctl.kls
        state.tokens_generated += sum(map(len, batch.completions))
        state.tokens_trained += tokens
        row = {"step": step, "score": float(batch.score.mean()), "kl": seq_kl, "kl_coef": coef,
               "explained_variance": A.explained_variance(batch.values, returns, batch.mask),
               "response_length": float(batch.mask.sum(1).mean()), "seconds": round(run.elapsed(), 2), **stats}
        state.history.append(row)
        run.log(step, {k: v for k, v in row.items() if k != "step"})
        eta = run.elapsed() / step * (cfg.steps - step)
        log.info("%s step %d/%d: score %.3f, KL %.2f, coef %.3f, entropy %.2f, clipfrac %.2f (ETA %.0fs)",
                 run.label, step, cfg.steps, row["score"], seq_kl, coef, row["entropy"], row["clipfrac"], eta)
        if is_checkpoint(step, cfg.steps, cfg.eval_every, cfg.early_checkpoints):
            run.save(state, policy, resumable)
    if dist.is_main():
        (run.folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.history))
    return run.finish(state, final_score=state.history[-1]["score"], final_kl=state.history[-1]["kl"],
                      final_kl_coef=kl_ctl.value)


def main():
    job = jobs.start()
    cfg, data_cfg = job.section("ppo"), job.section("data")
    dist.check_divisible("ppo.rollouts_per_step", cfg.rollouts_per_step)
    dist.check_divisible("ppo.minibatch_size", cfg.minibatch_size)
    tokenizer = lm.load_tokenizer(job.upstream("sft"))  # one tokenizer for every seed's SFT model
    # distinct prompts for every rollout where the split has enough (then they cycle)
    prompts = lm.split_prompts(data_cfg, job.seed, "train", cfg.rollouts_per_step * cfg.steps, tokenizer)

    methods = job.config["methods"]  # of ppo and ppo-gt, those this run puts on the frontier
    runs, scorers_of = [], {}  # one set of scorers per reward model and pairs folder (one unless reseed_shared)
    for seed in range(job.seeds):
        upstream = (job.upstream("reward_model", seed), job.upstream("pairs", seed))
        if upstream not in scorers_of:
            # ppo: the learned reward model; ppo-gt: the ground truth; on one scale (core.reward.training_reward)
            scorers_of[upstream] = {m: training_reward(METHODS[m].learns_from, job, tokenizer, seed, lm.device())
                                    for m in methods}
        scorers = scorers_of[upstream]
        for method in methods:
            for target in cfg.target_kls:
                run = train_run(method, target, seed, cfg, job, prompts, tokenizer, scorers[method])
                log.info("%s: %d steps in %.0fs, final score %.3f, KL %.2f", run["run"], run["steps"],
                         run["train_seconds"], run["final_score"], run["final_kl"])
                runs.append(run)
    jobs.finish_runs(job, runs, ("final_kl", "final_score"))


if __name__ == "__main__":
    jobs.run(main)
