"""dpo_loss and pair_losses: by hand, and pinned to TRL's DPOTrainer loss on the same batch (what the dpo, ipo, slic and
rdpo stages would train with through TRL; they train in our loop, dpo/loop.py)."""

import importlib
import math

import pytest
import torch

from core import lm
from dpo.loss import OWN_LOOP_LOSSES, dpo_loss, pair_losses
from helpers import toy_lm, toy_tokenizer

dpo = importlib.import_module("dpo.__main__")


def test_dpo_loss_by_hand():
    beta = 0.5
    policy_chosen, policy_rejected = [-3.0, -7.0], [-5.0, -2.0]
    ref_chosen, ref_rejected = [-4.0, -6.0], [-4.0, -4.0]
    # pair 0: chosen log-ratio +1, rejected -1; pair 1: chosen -1, rejected +2
    expected = -(math.log(1 / (1 + math.exp(-beta * (1 - -1)))) + math.log(1 / (1 + math.exp(-beta * (-1 - 2))))) / 2
    loss, chosen, rejected = dpo_loss(torch.tensor(policy_chosen), torch.tensor(policy_rejected),
                                      torch.tensor(ref_chosen), torch.tensor(ref_rejected), beta)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, -0.5])
    assert rejected.tolist() == pytest.approx([-0.5, 1.0])


def test_dpo_loss_is_log_2_at_the_reference_and_pushes_the_chosen_up():
    logps = torch.tensor([-5.0, -9.0], requires_grad=True)
    loss, chosen, rejected = dpo_loss(logps, logps.detach() - 1, logps.detach(), logps.detach() - 1, 0.1)
    assert loss.item() == pytest.approx(math.log(2))  # the policy is the reference: no preference yet
    assert chosen.tolist() == [0.0, 0.0] and rejected.tolist() == [0.0, 0.0]
    loss.backward()
    assert (logps.grad < 0).all()  # gradient descent raises log pi of the chosen completions


def test_pair_losses_by_hand():
    """Two pairs: log-ratios (chosen, rejected) (1.0, -0.5) with lengths (2, 5), and (-0.2, 0.4) with (4, 1); beta 0.5.
    Margins 1.5 and -0.6."""
    chosen, rejected = torch.tensor([1.0, -0.2]), torch.tensor([-0.5, 0.4])
    n_w, n_l = torch.tensor([2, 4]), torch.tensor([5, 1])
    got = lambda kind, eps=0.0: pair_losses(kind, chosen, rejected, 0.5, n_w, n_l, eps).tolist()  # noqa: E731
    log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    assert got("sigmoid") == pytest.approx([-log_sig(0.75), -log_sig(-0.3)])
    assert got("hinge") == pytest.approx([0.25, 1.3])  # max(0, 1 - 0.5 x margin)
    # per-token margins 1/2 + 0.5/5 = 0.6 and -0.2/4 - 0.4 = -0.45, against 1 / (2 x 0.5) = 1
    assert got("ipo") == pytest.approx([0.4 ** 2, 1.45 ** 2])
    eps = 0.2  # rDPO: [-(0.8) log s(0.75) + 0.2 log s(-0.75)] / 0.6
    assert got("robust", eps) == pytest.approx([(-(1 - eps) * log_sig(0.75) + eps * log_sig(-0.75)) / (1 - 2 * eps),
                                                (-(1 - eps) * log_sig(-0.3) + eps * log_sig(0.3)) / (1 - 2 * eps)])
    assert got("robust") == pytest.approx(got("sigmoid"))
    with pytest.raises(ValueError, match="no loss 'nca_pair' of our own"):
        got("nca_pair")


def test_dpo_loss_asserts_shapes():
    b = torch.zeros(3)
    with pytest.raises(AssertionError):
        dpo_loss(b[:, None], b[:, None], b[:, None], b[:, None], 0.1)  # [B, 1]: per-token, not per-sequence
    with pytest.raises(AssertionError):
        dpo_loss(b, b, b[:2], b, 0.1)


@pytest.mark.parametrize("loss_type", OWN_LOOP_LOSSES)
def test_trl_dpo_loss_equals_ours_on_the_same_batch(loss_type, tmp_path):
    """TRL's DPOTrainer (precomputed reference log-probs) on one batch of a toy policy gives the loss pair_losses
    gives on log-probs computed apart with core.lm, for each loss type our loop trains (sigmoid also through
    dpo_loss, with its rewards). rdpo's label smoothing 0.1; ipo's length normalisation by completion length."""
    from datasets import Dataset
    from trl import DPOConfig

    vocab, beta, pad_id = 11, 0.1, 0
    policy, ref = toy_lm(0, vocab).train(), toy_lm(1, vocab)  # two models: the reference log-probs matter
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(1, vocab, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [ids(n) for n in (2, 3, 1, 4)]
    logps = lambda model, completions: lm.completion_logprobs(model, prompts, completions, pad_id, 8)  # noqa: E731
    a, b = [ids(n) for n in (3, 5, 2, 4)], [ids(n) for n in (4, 2, 5, 3)]
    # chosen: the completion the policy already prefers (as after some training), so every margin is positive
    # and a flipped sign or a missing beta moves the loss far
    a_first = (logps(policy, a) - logps(ref, a) > logps(policy, b) - logps(ref, b)).tolist()
    chosen = [x if first else y for x, y, first in zip(a, b, a_first)]
    rejected = [y if first else x for x, y, first in zip(a, b, a_first)]
    ref_chosen, ref_rejected = logps(ref, chosen), logps(ref, rejected)
    pairs = Dataset.from_dict({"prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected,
                               "ref_chosen_logps": ref_chosen.tolist(), "ref_rejected_logps": ref_rejected.tolist()})

    smoothing = 0.1 if loss_type == "robust" else 0.0
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], precompute_ref_log_probs=True,
                     label_smoothing=smoothing,
                     per_device_train_batch_size=len(prompts), max_length=None, report_to=[], use_cpu=True,
                     bf16=False, remove_unused_columns=False)
    trainer = dpo.make_trainer_class("dpo")(model=policy, args=args, train_dataset=pairs,
                                       processing_class=toy_tokenizer(vocab))
    batch = next(iter(trainer.get_train_dataloader()))  # every pair, in the loader's order
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    s_w, s_l = logps(policy, chosen), logps(policy, rejected)
    ours = pair_losses(loss_type, s_w - ref_chosen, s_l - ref_rejected, beta, torch.tensor([len(c) for c in chosen]),
                       torch.tensor([len(r) for r in rejected]), smoothing).mean()
    assert trl_loss == pytest.approx(ours.item(), rel=1e-5)
    if loss_type != "sigmoid":
        return
    loss, chosen_rewards, rejected_rewards = dpo_loss(s_w, s_l, ref_chosen, ref_rejected, beta)
    assert loss.item() == pytest.approx(ours.item(), rel=1e-6)
    assert loss.item() < math.log(2) - 0.05  # the margins are positive and not small
    assert metrics["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(rejected_rewards.mean().item(), rel=1e-5, abs=1e-6)
