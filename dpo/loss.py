"""The DPO loss (Rafailov et al. 2023, Eq. 7) and the relatives DPOTrainer knows, as pure functions of
per-sequence log-probs.

The stages dpo, ipo, slic and rdpo train with these in our own loop (dpo/loop.py); tests/test_dpo_loss.py pins
each to TRL 1.16's DPOTrainer on the same batch, so the loop trains what TRL's trainer would.
"""

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of a batch of B preference pairs, and each completion's implicit reward.

    Args:
        policy_chosen_logps:   log pi(y_w | x), summed over the chosen completion's tokens.     Shape: [B]
        policy_rejected_logps: log pi(y_l | x), summed over the rejected completion's tokens.   Shape: [B]
        ref_chosen_logps:      log ref(y_w | x), the same sum under the reference model.        Shape: [B]
        ref_rejected_logps:    log ref(y_l | x).                                                 Shape: [B]
        beta: the strength of the implicit KL penalty toward the reference (the paper's beta), > 0.

    Returns:
        loss:             -mean over pairs of log sigmoid(chosen_reward - rejected_reward).     Shape: []
        chosen_rewards:   beta * (log pi(y_w | x) - log ref(y_w | x)), detached (a metric).     Shape: [B]
        rejected_rewards: beta * (log pi(y_l | x) - log ref(y_l | x)), detached.                Shape: [B]
    """
    assert policy_chosen_logps.dim() == 1, f"log-probs are per sequence, [B]; got {tuple(policy_chosen_logps.shape)}"
    for logps in (policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
        assert logps.shape == policy_chosen_logps.shape, f"{tuple(logps.shape)} != {tuple(policy_chosen_logps.shape)}"
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    loss = pair_losses("sigmoid", chosen_logratios, rejected_logratios, beta).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def pair_losses(loss_type: str, chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
                chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None,
                label_smoothing: float = 0.0
                ) -> torch.Tensor:
    """Each pair's loss for the DPOTrainer loss types we train in our own loop (dpo/loop.py). With the margin
    h = (s_w - r_w) - (s_l - r_l) of sequence log-probs:

        sigmoid  -log sigmoid(beta h)                                           DPO (Eq. 7)
        hinge    max(0, 1 - beta h)                                             SLiC-HF
        ipo      (h' - 1 / (2 beta))^2, h' = each log-ratio over its completion's length   IPO (Eq. 17, tau = beta)
        robust   [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)  rDPO, eps = label_smoothing

    tests/test_dpo_loss.py pins each to TRL 1.16's DPOTrainer on the same batch.

    Args:
        chosen_logratios:   log pi(y_w | x) - log ref(y_w | x), sums over the completion's tokens.   Shape: [B]
        rejected_logratios: log pi(y_l | x) - log ref(y_l | x).                                      Shape: [B]
        chosen_tokens, rejected_tokens: each completion's token count (ipo's lengths).              Shape: [B]
    Returns: the per-pair loss.                                                                      Shape: [B]
    """
    assert chosen_logratios.dim() == 1 and chosen_logratios.shape == rejected_logratios.shape, \
        f"log-ratios are per pair, [B]; got {tuple(chosen_logratios.shape)}, {tuple(rejected_logratios.shape)}"
    margin = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":  # logsigmoid rather than log(sigmoid(.)): finite for any margin
        return -F.logsigmoid(beta * margin)
    if loss_type == "hinge":
        return torch.relu(1 - beta * margin)
    if loss_type == "ipo":
        per_token = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        return (per_token - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        eps = label_smoothing
        return (-(1 - eps) * F.logsigmoid(beta * margin) + eps * F.logsigmoid(-beta * margin)) / (1 - 2 * eps)
    raise ValueError(f"no loss {loss_type!r} of our own: one of {', '.join(OWN_LOOP_LOSSES)}")


OWN_LOOP_LOSSES = ("sigmoid", "hinge", "ipo", "robust")  # DPOTrainer's other loss types go through DPOTrainer
