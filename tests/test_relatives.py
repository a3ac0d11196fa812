"""Unlikelihood (the paper's and the token-level form) and Preferred-FT: the losses by hand, and the data order."""

import math

import pytest
import torch

from dpo.loop import data_order
from dpo.relatives import data_seed, preferred_ft_loss, unlikelihood_loss, unlikelihood_term, unlikelihood_token_loss

CHOSEN = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])  # log p of each target token
CHOSEN_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # -9: prompt or padding, must not count
REJECTED = torch.log(torch.tensor([[0.5, 0.75], [0.9, 0.2]]))
REJECTED_MASK = torch.tensor([[1.0, 1.0], [0.0, 0.0]])


def test_preferred_ft_loss_is_the_token_mean_nll_of_the_chosen():
    assert preferred_ft_loss(CHOSEN, CHOSEN_MASK).item() == pytest.approx((1 + 2 + 3) / 3)


def test_the_papers_unlikelihood_by_hand():
    """-mean log p(y_w) + alpha x mean log p(y_l), token means (DPO paper App. C.3)."""
    rejected_mean_logp = (math.log(0.5) + math.log(0.75)) / 2  # the counted rejected tokens
    for alpha in (0.0, 0.05, 1.0):
        got = unlikelihood_loss(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, alpha).item()
        assert got == pytest.approx(2.0 + alpha * rejected_mean_logp, rel=1e-6)


def test_the_papers_unlikelihood_lowers_log_p_rejected_without_bound():
    rejected = REJECTED.clone().requires_grad_(True)
    unlikelihood_loss(CHOSEN, CHOSEN_MASK, rejected, REJECTED_MASK, 0.5).backward()
    assert (rejected.grad[0] == 0.5 / 2).all() and (rejected.grad[1] == 0).all()  # constant push: no floor
    far = torch.full((1, 2), -1e4)  # the loss keeps falling as log p(y_l) does
    assert unlikelihood_loss(CHOSEN[:1], CHOSEN_MASK[:1], far, torch.ones(1, 2), 1.0).item() == \
        pytest.approx(1.5 - 1e4)


def test_the_token_level_unlikelihood_by_hand():
    # rejected tokens counted: p = 0.5 and 0.75 -> log(1 - p) = log 0.5, log 0.25; their mean is -1.0397
    unlikely = (math.log(0.5) + math.log(0.25)) / 2
    for alpha in (0.0, 0.05, 1.0):
        got = unlikelihood_token_loss(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, alpha).item()
        assert got == pytest.approx(2.0 - alpha * unlikely, rel=1e-6)


def test_the_unlikelihood_term_is_what_the_token_form_adds_to_preferred_ft():
    term = unlikelihood_term(REJECTED, REJECTED_MASK).item()
    assert term == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    gap = unlikelihood_token_loss(CHOSEN, CHOSEN_MASK, REJECTED, REJECTED_MASK, 0.3) - \
        preferred_ft_loss(CHOSEN, CHOSEN_MASK)
    assert gap.item() == pytest.approx(0.3 * term)


def test_the_token_form_pushes_rejected_tokens_down_and_stays_finite_when_p_is_1():
    rejected = REJECTED.clone().requires_grad_(True)
    unlikelihood_token_loss(CHOSEN, CHOSEN_MASK, rejected, REJECTED_MASK, 0.5).backward()
    assert (rejected.grad[0] > 0).all() and (rejected.grad[1] == 0).all()  # descent lowers log p(rejected)
    certain = torch.zeros(1, 2)  # p = 1
    loss = unlikelihood_token_loss(CHOSEN[:1], CHOSEN_MASK[:1], certain, torch.ones(1, 2), 1.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1.5 - math.log(1e-6), rel=1e-4)


def test_the_registry_names_each_form_its_loss():
    from dpo.relatives import LOSSES

    assert LOSSES == {"unlikelihood": unlikelihood_loss, "unlikelihood-token": unlikelihood_token_loss}


def test_every_run_has_its_own_data_order():
    """Each alpha and each training seed its own order; Preferred-FT's is its training seed's."""
    from core.run import training_seed

    seeds = [training_seed(0, k) for k in range(3)]
    assert seeds[0] == 0 and len(set(seeds)) == 3 and all(0 <= s < 2**32 for s in seeds)
    orders = [data_seed("unlikelihood", a, s) for a in (0.05, 0.1, 0.5, 1.0) for s in seeds] + \
             [data_seed("preferred-ft", None, s) for s in seeds]
    assert len(set(orders)) == 15 and orders[-3:] == seeds


def test_data_order_covers_every_pair_once_per_epoch_and_follows_the_seed():
    order = data_order(10, steps=5, batch_size=4, seed=0)  # 20 draws = two shuffles of 10
    flat = [i for batch in order for i in batch]
    assert [len(b) for b in order] == [4] * 5
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert order == data_order(10, 5, 4, seed=0) and order != data_order(10, 5, 4, seed=1)
