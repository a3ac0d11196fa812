"""The RLOO stage's wiring of TRL's RLOOTrainer: pure sampling, our prompt ids, the SFT model as reference."""

import importlib
from pathlib import Path
from types import SimpleNamespace

import torch

from conftest import sampled_minus_expected_logp
from pipelines.config import TrainConfig, load

rloo = importlib.import_module("rloo.__main__")


def micro_trainer(root: Path, tmp_path: Path, texts_to_ids: dict):
    from datasets import Dataset

    from core import lm

    cfg = load("imdb-sentiment", "micro").rloo
    job = SimpleNamespace(tracking={}, section=lambda name: TrainConfig())
    args = rloo.config(cfg, 0.1, SimpleNamespace(folder=tmp_path, training_seed=0), job)
    data = Dataset.from_dict({"prompt": list(texts_to_ids), "prompt_ids": list(texts_to_ids.values())})
    return rloo.make_trainer_class()(model=lm.load_causal_lm(root / "sft"), reward_funcs=[lambda **kw: [0.0]],
                                     args=args, train_dataset=data, processing_class=lm.load_tokenizer(root / "sft"),
                                     prompt_ids=texts_to_ids)


def test_rloo_samples_purely_from_our_prompt_ids_against_the_sft_model(micro_run, tmp_path):
    """TRL's generation config is pure sampling (temperature 1, no top-k / top-p / min-p / repetition penalty),
    measured on its own samples: sum_t [log p + H] has mean 0 only under pure sampling (measured: -0.04 +- 0.10;
    the same draw with top_k 50 over this 512-token vocabulary: +6.4 +- 0.02). The prompts are our ids, not a re-tokenization of
    their text, and the reference is the SFT model."""
    from core import lm

    _, root, _ = micro_run
    tok = lm.load_tokenizer(root / "sft")
    prompts = [[5, 17, 42], [300, 8], [77, 91, 120, 33]]
    texts = {lm.decode(tok, p): p for p in prompts}
    trainer = micro_trainer(root, tmp_path, texts)
    g = trainer.generation_config
    assert (g.do_sample, g.temperature, g.top_p, g.top_k, g.min_p, g.repetition_penalty) == (True, 1.0, 1.0, 0, None,
                                                                                               1.0)
    assert trainer._tokenize_prompts(list(texts))[0] == prompts
    sft = lm.load_causal_lm(root / "sft")
    assert all(torch.equal(a, b) for a, b in zip(trainer.ref_model.state_dict().values(), sft.state_dict().values()))

    torch.manual_seed(0)
    prompt = torch.tensor([prompts[0]] * 400)
    out = sft.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=g)  # 8 new tokens (micro)
    completions = [row[len(prompts[0]):].tolist() for row in out]
    completions = [c[: c.index(tok.eos_token_id) + 1] if tok.eos_token_id in c else c for c in completions]
    mean, se = sampled_minus_expected_logp(sft, [prompts[0]] * 400, completions)
    assert abs(mean) < 3 * se, (mean, se)
