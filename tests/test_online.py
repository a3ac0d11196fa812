"""The online stages' wiring of TRL's trainers (RLOO, GRPO, Online DPO): pure sampling, our prompt ids, the SFT
model as reference, and the KL each logs read as a sequence's."""

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import sampled_minus_expected_logp
from core.config import TrainConfig
from pipelines.config import load

online = importlib.import_module("online.__main__")
STAGES = ("rloo", "grpo", "online_dpo")


def micro_trainer(stage: str, root: Path, tmp_path: Path, texts_to_ids: dict):
    from datasets import Dataset

    from core import lm

    cfg = getattr(load("imdb-sentiment", "micro"), stage)
    job = SimpleNamespace(tracking={}, section=lambda name: TrainConfig())
    args = online.config(stage, cfg, 0.1, SimpleNamespace(folder=tmp_path, training_seed=0), job)
    data = Dataset.from_dict({"prompt": list(texts_to_ids)})
    return online.make_trainer_class(stage)(model=lm.load_causal_lm(root / "sft"), reward_funcs=[lambda **kw: [0.0]],
                                            args=args, train_dataset=data,
                                            processing_class=lm.load_tokenizer(root / "sft"), prompt_ids=texts_to_ids)


@pytest.mark.parametrize("stage", STAGES)
def test_online_trainers_sample_purely_from_our_prompt_ids_against_the_sft_model(stage, micro_run, tmp_path):
    """Each trainer's generation is pure sampling (temperature 1, no top-k / top-p / min-p / repetition penalty),
    measured on its own samples: sum_t [log p + H] has mean 0 only under pure sampling (RLOO's draw measured
    -0.04 +- 0.10; the same draw with top_k 50 over this 512-token vocabulary: +6.4 +- 0.02). The prompts are our
    ids, not a re-tokenization of their text, and the reference is the SFT model."""
    from core import lm

    _, root, _ = micro_run
    tok = lm.load_tokenizer(root / "sft")
    prompts = [[5, 17, 42], [300, 8], [77, 91, 120, 33]]
    texts = {lm.decode(tok, p): p for p in prompts}
    trainer = micro_trainer(stage, root, tmp_path, texts)
    g = trainer.generation_config
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (True, 1.0, 1.0, 0, 1.0)
    assert getattr(g, "min_p", None) is None
    sft = lm.load_causal_lm(root / "sft")
    assert all(torch.equal(a, b) for a, b in zip(trainer.ref_model.state_dict().values(), sft.state_dict().values()))
    # TRL scores left-padded rows without positions: policy and reference count them from the row's first token
    row, padded = torch.tensor([[5, 17, 42, 300]]), torch.tensor([[0, 0, 5, 17, 42, 300]])
    for model in (trainer.model, trainer.ref_model):
        with torch.no_grad():
            assert torch.allclose(model(input_ids=row).logits[0], model(input_ids=padded, attention_mask=(
                padded != 0).long()).logits[0, 2:], atol=1e-4)

    torch.manual_seed(0)
    if stage == "online_dpo":  # its own sampling code, from our ids: 2 completions per prompt
        text = lm.decode(tok, prompts[0])
        prompt_ids, _, completion_ids, completion_mask, _ = trainer._generate(sft, [text] * 200)
        assert prompt_ids.shape[0] == 400 and (prompt_ids == torch.tensor(prompts[0])).all()
        completions = [row[: int(m.sum())].tolist() for row, m in zip(completion_ids, completion_mask)]
        assert trainer.stats["completions/mean_length"] == [pytest.approx(sum(map(len, completions)) / 400)]
    else:
        assert trainer._tokenize_prompts(list(texts))[0] == prompts
        prompt = torch.tensor([prompts[0]] * 400)
        out = sft.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=g)  # 8 new tokens
        completions = [row[len(prompts[0]):].tolist() for row in out]
        completions = [c[: c.index(tok.eos_token_id) + 1] if tok.eos_token_id in c else c for c in completions]
    mean, se = sampled_minus_expected_logp(sft, [prompts[0]] * 400, completions)
    assert abs(mean) < 3 * se, (mean, se)


def test_summary_reads_each_trainers_kl_as_a_sequence_sum():
    """RLOO and GRPO log the KL as a per-token mean (times the mean length is the sequence's), Online DPO as the
    sequence sum; the cost is the generated tokens of every logged step."""
    rloo_log = [{"loss": 0.1}, {"kl": 0.1, "reward": 0.2, "completions/mean_length": 40.0},
                {"kl": 0.2, "reward": 0.5, "completions/mean_length": 30.0}, {"kl": 0.2}]  # epochs 2: no sampling
    assert online.summary("grpo", rloo_log, 64) == {"tokens_generated": 70 * 64, "final_kl": pytest.approx(6.0),
                                                    "final_reward": 0.5}
    dpo_log = [{"objective/kl": 3.0, "objective/scores": 0.4, "completions/mean_length": 20.0}]
    assert online.summary("online_dpo", dpo_log, 64) == {"tokens_generated": 20 * 64, "final_kl": 3.0,
                                                         "final_reward": 0.4}
    assert online.summary("rloo", [{"loss": 1.0}], 64)["final_kl"] is None
