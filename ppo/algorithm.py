"""PPO's parts as pure functions (Schulman et al. 2017; the RLHF form of Ziegler et al. 2019).

Shapes: B rollouts, T response positions. `mask` [B, T] is 1 on response tokens (up to and including EOS),
0 after. Everything here is plain tensor math with hand-computed tests in tests/test_ppo.py.
"""

from __future__ import annotations

import torch


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled token's log-probs. [B, T] x2 -> [B, T].

    k1 = log pi - log ref (unbiased, can be negative); k3 = (r - 1) - log r with r = ref / pi
    (unbiased, never negative, lower variance when pi and ref are close). Schulman, "Approximating KL".
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; allowed: k1, k3")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """-kl_coef * KL at every response token, plus the sequence's score at its last response token.

    score [B], kl [B, T], mask [B, T] -> [B, T]."""
    rewards = -kl_coef * kl * mask
    last = mask.sum(1).long() - 1  # index of the final response token
    rewards[torch.arange(len(score)), last] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the response (Schulman et al. 2016). -> (advantages, returns), [B, T].

    delta_t = r_t + gamma * V_{t+1} - V_t, with V = 0 after the last response token;
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V (the value targets)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(next_adv)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, advantages + values


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (lm-human-preferences' utils.whiten). [B, T] -> [B, T]."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor, n_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of x over the masked entries / n_tokens (default: the mask's own count).

    A minibatch split over processes passes the whole minibatch's count, so the processes' parts add up to
    the minibatch mean."""
    return (x * mask).sum() / (mask.sum() if n_tokens is None else n_tokens).clamp(min=1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, n_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clipped surrogate: mean of max(-A r, -A clip(r, 1-eps, 1+eps)), r = pi / pi_old.

    -> (loss, clip fraction, approx KL(pi_old || pi) as mean((r - 1) - log r)); means as in masked_mean."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask, n_tokens)
    clipfrac = masked_mean((clipped > unclipped).float(), mask, n_tokens)
    approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask, n_tokens)
    return loss, clipfrac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, n_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old, -eps, eps).

    -> (loss, fraction of positions where the clipped term was the larger); means as in masked_mean."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_err, clipped_err), mask, n_tokens)
    return loss, masked_mean((clipped_err > unclipped_err).float(), mask, n_tokens)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked entries."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    err = returns - values
    var_err = masked_mean((err - masked_mean(err, mask)) ** 2, mask)
    return float(1 - var_err / var_r) if var_r > 0 else float("nan")


class AdaptiveKLController:
    """Ziegler et al. (2019), lm-human-preferences train_policy.py AdaptiveKLController: steer the KL
    coefficient toward a target sequence KL.

    error = clip(KL / target - 1, -0.2, 0.2); coef <- coef * (1 + error * n / horizon), n = rollouts this step.

    hold (anti-windup, our departure): the coefficient is not lowered while the measured KL is still on its first
    climb toward the target. A run starts at KL 0, so Ziegler's rule lowers the coefficient at every
    early step (error -0.2) only because the policy has not moved yet; over a run as short as this suite's, it then
    overshoots its target and the upward correction comes too late. Ziegler et al. ran thousands of steps with
    horizon 10,000, where those first steps do not matter. The hold ends for good when the KL first reaches the
    target or stalls short of it: the mean KL of the last `stall_steps` steps exceeds the mean of the `stall_steps`
    before by less than stall_growth x that mean (or x 5% of the target, whichever is larger), so a start
    coefficient above the target's level is not frozen there."""

    def __init__(self, init_coef: float, target: float, horizon: int, hold: bool = False,
                 stall_steps: int | None = 3, stall_growth: float = 0.1):
        self.value, self.target, self.horizon, self.hold = init_coef, target, horizon, hold
        self.stall_steps, self.stall_growth = stall_steps, stall_growth
        self.reached = False  # has the measured KL reached the target yet, or stalled short of it
        self.kls: list[float] = []  # the measured KL of every step so far

    def rising(self) -> bool:
        """Is the measured KL still rising (True until 2 x stall_steps steps are seen; always, stall_steps None)?"""
        k = self.stall_steps
        if k is None or len(self.kls) < 2 * k:
            return True
        last, before = sum(self.kls[-k:]) / k, sum(self.kls[-2 * k : -k]) / k
        # growth relative to the earlier window, but never to less than 5% of the target: near KL 0 the k1 estimate's
        # noise (it can be negative) would otherwise decide it
        return last - before >= self.stall_growth * max(before, 0.05 * self.target)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.kls.append(current_kl)
        self.reached |= current_kl >= self.target or not self.rising()
        if error < 0 and self.hold and not self.reached:
            return self.value
        self.value *= 1 + error * n_steps / self.horizon
        return self.value


class FixedKLController:
    reached = False  # the adaptive controller's hold state, so both save and resume alike

    def __init__(self, init_coef: float):
        self.value, self.kls = init_coef, []

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value
