"""The reference-free relatives (SimPO, CPO: trl.experimental's CPOTrainer; ORPO: its ORPOTrainer) pinned to their
losses computed by hand from log-probs of core.lm on the same batch, which also pins that they see exactly the
sampled ids (a shifted label window moves every log-prob); KTO's singles from the pairs."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from core import lm
from core.config import CPOConfig, SimPOConfig
from helpers import toy_lm, toy_tokenizer

dpo = importlib.import_module("dpo.__main__")


def toy_pairs(vocab: int):
    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(2, vocab, (n,), generator=gen).tolist()  # noqa: E731 (0 pad, 1 EOS)
    prompts = [ids(n) for n in (2, 3, 1, 4)]
    chosen, rejected = [ids(n) for n in (3, 5, 2, 4)], [ids(n) for n in (4, 2, 5, 3)]
    return prompts, chosen, rejected


@pytest.mark.parametrize("stage", ["simpo", "cpo", "orpo"])
def test_reference_free_losses_by_hand_on_the_trainers_batch(stage, tmp_path):
    from datasets import Dataset

    vocab, beta = 11, 2.0 if stage == "simpo" else 0.5
    policy = toy_lm(0, vocab).train()
    prompts, chosen, rejected = toy_pairs(vocab)
    pairs = Dataset.from_dict({"prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected})
    cfg = (SimPOConfig if stage == "simpo" else CPOConfig)(betas=[beta], learning_rate=1e-3, batch_size=4,
                                                          eval_every=1)
    args = dpo.trl_config(stage, cfg, beta, output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[],
                          use_cpu=True, bf16=False, remove_unused_columns=False)
    trainer = dpo.make_trainer_class(stage)(model=policy, args=args, train_dataset=pairs,
                                            processing_class=toy_tokenizer(vocab))
    batch = next(iter(trainer.get_train_dataloader()))
    order = [prompts.index(p[m.bool()].tolist()) for p, m in zip(batch["prompt_input_ids"],
                                                                 batch["prompt_attention_mask"])]
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
        p = [prompts[i] for i in order]
        w, l = [chosen[i] for i in order], [rejected[i] for i in order]
        s_w, s_l = lm.completion_logprobs(policy, p, w, 0, 8), lm.completion_logprobs(policy, p, l, 0, 8)
    mean_w = s_w / torch.tensor([len(c) for c in w])
    mean_l = s_l / torch.tensor([len(c) for c in l])
    nll_w = -s_w.sum() / sum(map(len, w))  # the mean over the batch's chosen tokens
    if stage == "simpo":
        expected = -F.logsigmoid(beta * (mean_w - mean_l) - cfg.gamma).mean()
    elif stage == "cpo":
        expected = -F.logsigmoid(beta * (s_w - s_l)).mean() + cfg.cpo_alpha * nll_w
    else:  # TRL's ORPO takes the NLL over prompt and completion (after the first token), not the completion alone
        with torch.no_grad():
            full = lm.completion_logprobs(policy, [q[:1] for q in p], [q[1:] + c for q, c in zip(p, w)], 0, 8)
        nll_w = -full.sum() / sum(len(q) - 1 + len(c) for q, c in zip(p, w))
        log_odds = lambda m: m - torch.log(-torch.expm1(m))  # noqa: E731 (log p - log(1 - p), p = exp(m))
        expected = nll_w - beta * F.logsigmoid(log_odds(mean_w) - log_odds(mean_l)).mean()
    assert trl_loss == pytest.approx(expected.item(), rel=1e-4)


def test_kto_singles_are_each_prompts_best_and_worst_sample_each_with_another_prompt_of_its_batch():
    """Per prompt one desirable single (its best sample by the ground truth) and one undesirable (its worst), not
    every pair split: a prompt of 3 scored samples has 3 pairs, and its middle sample is in one as chosen, in
    another as rejected."""
    from datasets import Dataset

    samples = {2: [(10, 0.9), (11, 0.5), (12, 0.1)], 3: [(13, 0.2), (14, 0.8)], 4: [(15, 0.6), (16, 0.3)]}
    rows = [(p, a, b) for p, s in samples.items() for i, a in enumerate(s) for b in s[i + 1:]]
    rows = [(p, a, b) if a[1] > b[1] else (p, b, a) for p, a, b in rows]  # chosen first, as the pairs stage writes
    pairs = Dataset.from_dict({"prompt_index": [p - 2 for p, _, _ in rows], "prompt_ids": [[p] for p, _, _ in rows],
                               "chosen_ids": [[a[0]] for _, a, _ in rows],
                               "rejected_ids": [[b[0]] for _, _, b in rows],
                               "score_chosen": [a[1] for _, a, _ in rows], "score_rejected": [b[1] for _, _, b in rows]})
    assert len(pairs) == 5
    singles = dpo.kto_singles(pairs, batch_size=4, seed=0)
    got = list(zip(singles["prompt_ids"], singles["completion_ids"], singles["label"]))
    want = [([2], [10], True), ([2], [12], False), ([3], [14], True), ([3], [13], False), ([4], [15], True),
            ([4], [16], False)]
    assert sorted(got) == sorted(want) and got != want  # shuffled
    c, kl = singles["completion_ids"], singles["KL_completion_ids"]
    assert kl == [c[3], c[0], c[1], c[2], c[5], c[4]]  # within each batch of 4, completion i - 1 for prompt i
    assert dpo.kto_singles(pairs, 4, seed=0)["completion_ids"] == c  # seeded
    assert math.isclose(sum(singles["label"]) / len(singles), 0.5)
