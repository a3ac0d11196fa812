"""Sampling, log-probs and the exact sequence KL, checked against brute-force enumeration on toy models."""

import itertools
import math

import pytest
import torch

from core import lm
from helpers import sampled_minus_expected_logp, toy_lm


@torch.no_grad()
def brute_force_kl(policy, ref, prompt, length, vocab):
    """KL(pi || ref) over whole responses: sum over every y of pi(y) log(pi(y) / ref(y))."""
    total = 0.0
    for y in itertools.product(range(vocab), repeat=length):
        ids = torch.tensor([prompt + list(y)])
        lp = lm.token_logprobs(policy(input_ids=ids).logits[:, :-1], ids[:, 1:])[0, len(prompt) - 1 :].sum()
        lq = lm.token_logprobs(ref(input_ids=ids).logits[:, :-1], ids[:, 1:])[0, len(prompt) - 1 :].sum()
        total += math.exp(lp) * (lp - lq).item()
    return total


@pytest.mark.parametrize("prompt", [[0], [2, 1]])
def test_exact_sequence_kl_matches_brute_force(prompt):
    vocab, length = 3, 3
    policy, ref = toy_lm(0, vocab), toy_lm(1, vocab)
    ys = [list(y) for y in itertools.product(range(vocab), repeat=length)]
    prompts = [prompt] * len(ys)
    exact, mc, logp = lm.sequence_kl(policy, ref, prompts, ys, pad_id=0, batch_size=7)
    weights = torch.exp(lm.completion_logprobs(policy, prompts, ys, pad_id=0, batch_size=5))
    assert torch.allclose(logp.exp(), weights, atol=1e-6)  # its log pi is completion_logprobs' (other batches)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)  # the enumeration covers every response
    truth = brute_force_kl(policy, ref, prompt, length, vocab)
    assert truth > 0.05
    # E_y~pi[sum_t KL_t] and E_y~pi[sum_t log pi - log ref] both equal the sequence KL
    assert (weights * exact).sum().item() == pytest.approx(truth, rel=1e-4)
    assert (weights * mc).sum().item() == pytest.approx(truth, rel=1e-4)
    assert (exact >= -1e-6).all()  # the per-sample exact KL is never negative; the MC one can be
    assert (mc < 0).any()


def test_kl_of_a_model_to_itself_is_zero():
    policy = toy_lm(0)
    exact, mc, _ = lm.sequence_kl(policy, policy, [[0], [1, 2]], [[1, 2, 0], [2]], pad_id=0, batch_size=2)
    assert exact.tolist() == [0.0, 0.0] and mc.tolist() == [0.0, 0.0]


def test_per_token_kl_by_hand():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    got = lm.kl_of_logprobs(p.log()[None, None], q.log()[None, None])
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_padding_does_not_change_logprobs():
    model = toy_lm(3)
    prompts, comps = [[0, 1], [2]], [[1, 1, 2, 0, 1], [0]]
    together = lm.completion_logprobs(model, prompts, comps, pad_id=0, batch_size=2)
    alone = torch.cat([lm.completion_logprobs(model, [p], [c], pad_id=0, batch_size=1) for p, c in zip(prompts, comps)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_sampling_follows_the_model_distribution():
    """First sampled token frequencies match softmax(logits) (pure sampling: no top-k / top-p / temperature)."""
    model = toy_lm(4)
    n = 3000
    comps = lm.sample_completions(model, [[1]] * n, max_new_tokens=1, eos_id=99, batch_size=1000,
                                  seeds=lm.sample_seeds(n, "test", 0))
    probs = torch.softmax(model(input_ids=torch.tensor([[1]])).logits[0, -1], -1)
    freq = torch.bincount(torch.tensor([c[0] for c in comps]), minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=4 * math.sqrt(0.25 / n))


class Tempered(torch.nn.Module):
    """A model's next-token distribution at another temperature: what a sampler with temperature != 1 draws."""

    def __init__(self, model, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits = out.logits / self.temperature
        return out


def test_every_sampled_token_has_its_expected_log_probability():
    """Whole completions, padded batches, EOS: the sampler draws from the model (the mean above is 0), and the
    check sees a sampler at temperature 0.8 or 1.25."""
    model = toy_lm(9, vocab=8)
    n = 2000
    prompts = [[i % 8, (3 * i) % 8][: 1 + i % 2] for i in range(n)]
    seeds = lm.sample_seeds(n, "test", 3)
    comps = lm.sample_completions(model, prompts, max_new_tokens=6, eos_id=7, batch_size=256, seeds=seeds)
    mean, se = sampled_minus_expected_logp(model, prompts, comps)
    assert abs(mean) < 4 * se, (mean, se)
    for temperature, sign in ((0.8, 1), (1.25, -1)):
        tempered = lm.sample_completions(Tempered(model, temperature), prompts, 6, 7, 256, seeds)
        mean, se = sampled_minus_expected_logp(model, prompts, tempered)
        assert sign * mean > 6 * se, (temperature, mean, se)


def test_completions_stop_after_eos_and_keep_prompt_order():
    model = toy_lm(5)
    prompts = [[0], [1, 2], [2], [0, 0, 1]]
    comps = lm.sample_completions(model, prompts, max_new_tokens=6, eos_id=2, batch_size=2,
                                  seeds=lm.sample_seeds(4, "test", 0))
    assert len(comps) == 4
    for c in comps:
        assert 1 <= len(c) <= 6
        assert 2 not in c[:-1]  # nothing after the first EOS
        assert c[-1] == 2 or len(c) == 6


def test_sampling_is_seeded():
    model = toy_lm(6)
    prompts = [[0], [1]] * 5
    runs = [lm.sample_completions(model, prompts, max_new_tokens=5, eos_id=99, batch_size=4,
                                  seeds=lm.sample_seeds(10, "test", key)) for key in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # another key, other draws


def test_a_rows_sample_does_not_depend_on_batching_or_sharding():
    """What makes N processes sample what one does: row i's draw depends on seeds[i] only."""
    model = toy_lm(7)
    prompts = [[i % 3, (i * 7) % 3][: 1 + i % 2] + [1] * (i % 4) for i in range(12)]  # 1 to 5 tokens: padded
    seeds = lm.sample_seeds(12, "test", 1)
    whole = lm.sample_completions(model, prompts, max_new_tokens=6, eos_id=99, batch_size=12, seeds=seeds)
    one_by_one = lm.sample_completions(model, prompts, max_new_tokens=6, eos_id=99, batch_size=1, seeds=seeds)
    halves = [c for lo, hi in ((0, 5), (5, 12)) for c in lm.sample_completions(
        model, prompts[lo:hi], max_new_tokens=6, eos_id=99, batch_size=4, seeds=seeds[lo:hi])]
    assert whole == one_by_one == halves
    assert len({tuple(c) for c in whole}) > 3  # and they are not all the same draw


def test_left_padding_does_not_change_next_token_probabilities():
    """A padded batch row sees exactly what the prompt alone sees: pads masked, positions from its first token."""
    model = toy_lm(8)
    short, long = [2, 1], [0, 1, 1, 2]
    ids, attn = lm.left_pad([short, long], pad_id=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp(min=0)).logits[:, -1]
    alone = model(input_ids=torch.tensor([short])).logits[0, -1]
    assert ids[0].tolist() == [0, 0, 2, 1] and attn[0].tolist() == [0, 0, 1, 1]
    assert torch.allclose(logits[0], alone, atol=1e-5)


def test_prompts_have_2_to_8_tokens():
    class WordTokenizer:  # one token per word: enough to check the cut
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text.split())))}

    prompts = lm.make_prompts(["w " * 50] * 500, WordTokenizer(), 2, 8, seed=0)
    lengths = {len(p) for p in prompts}
    assert lengths == set(range(2, 9))


def test_reference_logprobs_are_fp32_whatever_the_training_precision():
    """The pairs stage's reference log-probs (what DPO's loss subtracts) stay fp32 inside a bf16 autocast; in the
    training precision they move with it (CPU bf16 autocast here, as CUDA's in a stage)."""
    model = toy_lm(0, vocab=50)
    prompts, comps = [[3, 4], [5]], [[6, 7, 8], [9, 10]]
    fp32 = lm.completion_logprobs(model, prompts, comps, pad_id=0, batch_size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = lm.completion_logprobs(model, prompts, comps, pad_id=0, batch_size=2)
        training = lm.completion_logprobs(model, prompts, comps, pad_id=0, batch_size=2, training_precision=True)
    assert torch.equal(reference, fp32)
    assert not torch.equal(training, fp32) and torch.allclose(training, fp32, atol=0.2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_token_logprobs_and_their_gradient_are_log_softmax_and_gather(dtype):
    """The fused log-prob (hand-written backward: onehot - softmax) against autograd through log_softmax, gather and
    the [:, :-1] shift it replaces, on random logits and an arbitrary upstream gradient: the values exactly, the
    gradient to float rounding; the entropy is the next-token distribution's, checked by its definition."""
    torch.manual_seed(0)
    logits = (torch.randn(3, 9, 40) * 4).to(dtype).requires_grad_()
    ids, upstream = torch.randint(0, 40, (3, 9)), torch.randn(3, 8)
    fused, entropy = lm.next_token_logprobs(logits, ids, entropy=True)
    (fused * upstream).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    plain = torch.gather(logp, 2, ids[:, 1:, None]).squeeze(-1)
    (plain * upstream).sum().backward()
    assert fused.dtype == torch.float32 and torch.equal(fused, plain) and grad.dtype == dtype
    assert torch.allclose(grad.float(), logits.grad.float(), atol=1e-6 if dtype == torch.float32 else 1e-2)
    by_hand = -(logp.exp() * logp).sum(-1)
    assert not entropy.requires_grad and torch.allclose(entropy, by_hand.detach())
    assert torch.equal(lm.next_token_logprobs(logits, ids), fused)
