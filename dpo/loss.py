"""The DPO loss as a pure function of per-sequence log-probs (Rafailov et al. 2023, Eq. 7).

The stage trains with TRL's DPOTrainer (loss_type "sigmoid"); tests/test_dpo_loss.py pins TRL's loss to this
one on the same batch, so a loop that calls dpo_loss (bench's plain DPO loop) computes what the stage trains.
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
    # logsigmoid rather than log(sigmoid(.)): finite for any margin
    loss = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
