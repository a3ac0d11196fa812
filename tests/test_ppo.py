"""PPO's pure functions against hand-computed examples."""

import math

import pytest
import torch

from ppo import algorithm as A


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_by_hand():
    adv, ret = A.gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert ret[0].tolist() == pytest.approx([0.725, 0.85, 1.0])


def test_gae_stops_at_the_end_of_the_response():
    adv, _ = A.gae(t([0, 1, 5]), t([0.5, 0.6, 9.0]), t([1, 1, 0]), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == pytest.approx([0.3, 0.4, 0.0])  # the padded step's reward and value are ignored


def test_token_rewards_put_the_score_on_the_last_response_token():
    r = A.token_rewards(t(2.0, 3.0), t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]), kl_coef=0.5, mask=t([1, 1, 1], [1, 1, 0]))
    assert r.flatten().tolist() == pytest.approx([-0.05, -0.1, 1.85, -0.2, 2.75, 0.0])


def test_policy_loss_by_hand():
    adv, mask = t([1.0, -1.0]), t([1, 1])
    loss, clipfrac, _ = A.policy_loss(t([math.log(1.5), math.log(0.5)]), t([0.0, 0.0]), adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-0.2) and clipfrac.item() == 1.0  # both ratios clipped
    loss, clipfrac, approx_kl = A.policy_loss(t([math.log(1.1), math.log(0.9)]), t([0.0, 0.0]), adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-0.1) and clipfrac.item() == 0.0
    want = ((0.1 - math.log(1.1)) + (-0.1 - math.log(0.9))) / 2
    assert approx_kl.item() == pytest.approx(want)


def test_value_loss_by_hand():
    loss, frac = A.value_loss(t([1.0]), t([0.0]), t([0.5]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(0.125) and frac.item() == 0.0
    loss, frac = A.value_loss(t([0.3]), t([0.0]), t([1.0]), t([1]), clip=0.2)
    assert loss.item() == pytest.approx(0.32) and frac.item() == 1.0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_on_a_known_distribution(estimator):
    pi, ref = t(0.7, 0.3), t(0.4, 0.6)
    exact = (pi * (pi / ref).log()).sum().item()
    per_outcome = A.kl_penalty(pi.log(), ref.log(), estimator)
    assert (pi * per_outcome).sum().item() == pytest.approx(exact)
    if estimator == "k3":
        assert (per_outcome >= 0).all()
    else:
        assert (per_outcome < 0).any()


def test_whiten():
    x = A.whiten(t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0]))[0]
    assert x[:4].mean().item() == pytest.approx(0, abs=1e-12)
    assert x[:4].var().item() == pytest.approx(1, rel=1e-6) and x[4] == 0


def test_explained_variance():
    mask = t([1, 1, 1, 1])
    assert A.explained_variance(t([1, 2, 3, 4]), t([1, 2, 3, 4]), mask) == pytest.approx(1.0)
    assert A.explained_variance(t([2.5, 2.5, 2.5, 2.5]), t([1, 2, 3, 4]), mask) == pytest.approx(0.0)


def test_adaptive_kl_controller_update_rule():
    c = A.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert c.update(9.0, 512) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10_000))  # error clipped at +0.2
    c = A.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert c.update(5.4, 512) == pytest.approx(0.1 * (1 - 0.1 * 512 / 10_000))
    assert A.FixedKLController(0.2).update(100.0, 512) == 0.2


def test_each_target_starts_at_its_own_coefficient_when_given():
    from types import SimpleNamespace

    from ppo.__main__ import initial_kl_coef

    cfg = SimpleNamespace(target_kls=[3.0, 6.0, 9.0], init_kl_coef=0.1, init_kl_coefs=[0.3, 0.12, 0.075])
    assert [initial_kl_coef(cfg, t) for t in (3.0, 6.0, 9.0)] == [0.3, 0.12, 0.075]
    cfg.init_kl_coefs = []
    assert [initial_kl_coef(cfg, t) for t in (3.0, 9.0)] == [0.1, 0.1]


def test_one_update_moves_a_toy_policy_toward_reward():
    """A 3-armed bandit: arm 2 pays 1. One clipped-surrogate step raises its probability."""
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)
    actions = torch.distributions.Categorical(logits=logits).sample((256,))
    old_logp = torch.log_softmax(logits, -1)[actions].detach()[:, None]
    mask = torch.ones(256, 1)
    rewards = A.token_rewards((actions == 2).float(), torch.zeros(256, 1), 0.0, mask)
    adv, _ = A.gae(rewards, torch.zeros(256, 1), mask, 1.0, 0.95)
    adv = A.whiten(adv, mask)
    loss, _, _ = A.policy_loss(torch.log_softmax(logits, -1)[actions][:, None], old_logp, adv, mask, clip=0.2)
    loss.backward()
    with torch.no_grad():
        new = torch.softmax(logits - 0.5 * logits.grad, -1)
    assert new[2] > 0.4 > 1 / 3


def test_losses_of_a_minibatch_split_over_processes_add_up_to_the_whole():
    """Each process divides by the whole minibatch's token count: the parts sum to the one-process loss,
    so averaged DDP gradients x the process count equal the one-process gradient."""
    g = torch.Generator().manual_seed(0)
    logp, old, adv, vals, old_vals, ret = (torch.randn(6, 5, generator=g) for _ in range(6))
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    whole_pg = A.policy_loss(logp, old, adv, mask, clip=0.2)
    whole_vf = A.value_loss(vals, old_vals, ret, mask, clip=0.2)
    n = mask.sum()
    parts = [(A.policy_loss(logp[s], old[s], adv[s], mask[s], 0.2, n), A.value_loss(vals[s], old_vals[s], ret[s],
                                                                                      mask[s], 0.2, n))
             for s in (slice(0, 2), slice(2, 6))]
    for i in range(3):
        assert sum(p[0][i] for p in parts).item() == pytest.approx(whole_pg[i].item(), rel=1e-5)
    for i in range(2):
        assert sum(p[1][i] for p in parts).item() == pytest.approx(whole_vf[i].item(), rel=1e-5)
