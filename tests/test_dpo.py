"""The DPO stage's pieces: the plain LM head matches TRL's fused one; TRL trains on exactly the sampled ids."""

import copy
import importlib

import pytest
import torch

from core.lm_head import plain_lm_head
from helpers import toy_lm

dpo = importlib.import_module("dpo.__main__")


def test_plain_lm_head_matches_trls_fused_head_and_its_gradients():
    from trl.trainer.utils import add_fused_lm_head

    fused, plain = toy_lm(0, vocab=11), None
    plain = copy.deepcopy(fused)
    add_fused_lm_head(fused, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    plain_lm_head(plain)
    ids = torch.randint(0, 11, (3, 7))
    labels = ids.masked_fill(torch.arange(7) < 3, -100)  # prompt positions masked, as TRL does
    a = fused(input_ids=ids, labels=labels, fused_lm_head=True)
    b = plain(input_ids=ids, labels=labels, fused_lm_head=True)
    for field in ("log_probs", "entropy", "mean_logits"):
        assert torch.allclose(getattr(a, field), getattr(b, field), atol=1e-5), field
    assert torch.equal(a.is_top1.bool(), b.is_top1.bool())
    assert (b.log_probs[:, :2] == 0).all()  # masked positions are zero
    a.log_probs.sum().backward()
    b.log_probs.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    # without fused_lm_head the model is untouched (generation uses this path)
    assert torch.allclose(plain(input_ids=ids).logits, fused(input_ids=ids).logits, atol=1e-6)


def test_trainer_sees_exactly_the_sampled_ids(micro_run):
    """No re-tokenization of prompt + completion text (which can merge tokens across the join) and no EOS added."""
    from datasets import load_from_disk
    from trl import DPOConfig

    from core import lm

    _, root, _ = micro_run
    pairs = load_from_disk(str(root / "pairs" / "dataset")).select_columns(dpo.COLUMNS)
    model, tok = lm.load_causal_lm(root / "sft"), lm.load_tokenizer(root / "sft")
    args = DPOConfig(output_dir="/tmp/unused", precompute_ref_log_probs=True, per_device_train_batch_size=4,
                     max_length=None, report_to=[], use_cpu=True, bf16=False, remove_unused_columns=False)
    trainer = dpo.make_trainer_class("dpo")(model=model, args=args, train_dataset=pairs, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    chosen = {tuple(r["prompt_ids"] + r["chosen_ids"]): r for r in pairs}
    n = batch["input_ids"].shape[0] // 2
    for row, mask, comp, ref in zip(batch["input_ids"][:n], batch["attention_mask"][:n], batch["completion_mask"][:n],
                                    batch["ref_chosen_logps"]):
        seq = tuple(row[mask.bool()].tolist())
        assert seq in chosen
        r = chosen[seq]
        assert comp.sum().item() == len(r["chosen_ids"])
        assert ref.item() == pytest.approx(r["ref_chosen_logps"])


def test_each_beta_trains_at_its_own_learning_rate_when_given():
    from types import SimpleNamespace

    from dpo.__main__ import learning_rate

    cfg = SimpleNamespace(betas=[0.1, 5.0], learning_rate=1e-4, learning_rates=[2e-4, 2e-5])
    assert [learning_rate(cfg, b) for b in (0.1, 5.0)] == [2e-4, 2e-5]
    cfg.learning_rates = []
    assert [learning_rate(cfg, b) for b in (0.1, 5.0)] == [1e-4, 1e-4]
