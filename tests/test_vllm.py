"""vLLM sampling (pairs.sampler / eval.sampler = "vllm"): the contract of the HF sampler, the same distribution,
and a micro run sampling with it. Needs the optional extra: `make test-vllm` (a .venv-vllm with vLLM);
skipped where vLLM is not installed. The spine's side (resolving "auto", one process) is in test_config.py.

vLLM's CPU attention has no kernel for 16-wide heads: the models here (and the micro scale's) have 32-wide ones.
"""

import json
import math

import pytest
import torch

pytest.importorskip("vllm")

from core import lm, vllm_sampling  # noqa: E402
from helpers import cli, sampled_minus_expected_logp, scale_overrides, write_config  # noqa: E402

EOS, VOCAB = 2, 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2, eos_token_id=EOS,
                        bos_token_id=EOS, pad_token_id=1)
    path = tmp_path_factory.mktemp("vllm") / "gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_completions_follow_the_hf_samplers_contract(model_dir):
    hf = lm.load_causal_lm(model_dir, CPU)
    prompts = [[i % 5, 3, 4][: 1 + i % 3] + [7] * (i % 4) for i in range(24)]  # 1 to 6 tokens
    seeds = lm.sample_seeds(len(prompts), "test", 0)
    comps, logps = vllm_sampling.sample_completions(model_dir, prompts, 6, EOS, seeds, CPU)
    assert len(comps) == len(prompts)
    for c in comps:
        assert 1 <= len(c) <= 6 and EOS not in c[:-1]  # cut after the first EOS, which is kept
        assert c[-1] == EOS or len(c) == 6
    assert any(c[-1] == EOS for c in comps) and any(len(c) == 6 and EOS not in c for c in comps)
    # seeded per row: the same seeds give the same draws, whatever else is in the batch
    again, _ = vllm_sampling.sample_completions(model_dir, prompts[5:9], 6, EOS, seeds[5:9], CPU)
    assert again == comps[5:9]
    assert len({tuple(c) for c in comps}) > 12
    # in prompt order, and the log-probs are those of the HF model (fp32 on both sides)
    hf_logps = lm.completion_logprobs(hf, prompts, comps, pad_id=1, batch_size=8)
    assert torch.allclose(torch.tensor(logps), hf_logps, atol=1e-4)
    assert vllm_sampling.logprob_gap(logps, hf_logps.tolist(), comps) < 1e-5


def test_vllm_draws_from_the_models_distribution(model_dir):
    """Pure sampling, none of the generation_config's defaults: the first token's frequencies match softmax(logits),
    and over whole completions every sampled token has the log-probability it should on average (both samplers;
    a top-k sampler fails the same check)."""
    hf = lm.load_causal_lm(model_dir, CPU)
    n, prompt = 3000, [0, 3]
    first, _ = vllm_sampling.sample_completions(model_dir, [prompt] * n, 1, EOS, lm.sample_seeds(n, "first", 0), CPU)
    freq = torch.bincount(torch.tensor([c[0] for c in first]), minlength=VOCAB).float() / n
    probs = torch.softmax(hf(input_ids=torch.tensor([prompt])).logits[0, -1], -1)
    assert torch.allclose(freq, probs, atol=4 * math.sqrt(0.25 / n))

    m = 2000
    ours = lm.sample_completions(hf, [prompt] * m, 8, EOS, 500, lm.sample_seeds(m, "ours", 0))
    theirs, _ = vllm_sampling.sample_completions(model_dir, [prompt] * m, 8, EOS, lm.sample_seeds(m, "vllm", 0), CPU)
    for comps in (ours, theirs):
        mean, se = sampled_minus_expected_logp(hf, [prompt] * m, comps)
        assert abs(mean) < 4 * se, (mean, se)

    from vllm import LLM, SamplingParams  # the check has teeth: vLLM with top-k 4 fails it
    llm = LLM(model=str(model_dir), skip_tokenizer_init=True, generation_config="vllm", dtype="float32",
              enforce_eager=True, max_model_len=16)
    try:
        out = llm.generate([{"prompt_token_ids": prompt}] * m,
                           SamplingParams(top_k=4, max_tokens=8, stop_token_ids=[EOS], seed=0, detokenize=False),
                           use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    mean, se = sampled_minus_expected_logp(hf, [prompt] * m, [list(o.outputs[0].token_ids) for o in out])
    assert mean > 10 * se


def test_a_model_vllm_cannot_run_is_a_one_line_error(tmp_path):
    """16-wide heads have no vLLM CPU attention kernel: a ConfigError naming the fix."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipelines.config import ConfigError

    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "narrow")
    with pytest.raises(ConfigError, match="set pairs.sampler / eval.sampler = 'hf'") as e:
        vllm_sampling.sample_completions(tmp_path / "narrow", [[0, 1]], 4, EOS, [0], CPU)
    assert "\n" not in str(e.value)


def _micro_vllm_config(tmp_path):
    """The micro scale with both samplers set to vLLM ("auto" would pick it here too: the test says it)."""
    return write_config(tmp_path / "benchmarks.toml",
                        scale_overrides("micro", pairs={"sampler": "vllm"}, eval={"sampler": "vllm"}))


def test_a_micro_run_samples_with_vllm_in_one_process(tmp_path):
    config = _micro_vllm_config(tmp_path)
    run_dir = tmp_path / "runs"
    proc = cli("--config", str(config), "run", "imdb-sentiment", "--scale", "micro", "--nproc", "2",
               run_dir=run_dir, check=True)
    root = run_dir / "imdb-sentiment" / "micro"
    manifests = {s: json.loads((root / s / "manifest.json").read_text()) for s in ("sft", "pairs", "eval")}
    assert manifests["sft"]["processes"] == 2  # training still runs in two processes ...
    for stage in ("pairs", "eval"):  # ... the sampling stages in one, with vLLM, as their config says
        m = manifests[stage]
        assert m["processes"] == 1 and m["config"][stage]["sampler"] == "vllm" and m["metrics"]["sampler"] == "vllm"
        assert m["metrics"]["sampler_logp_gap"] < 1e-4  # vLLM's model is the HF checkpoint, to fp32 precision
    assert "one process: it samples with vLLM" in proc.stderr
    rows = (root / "frontier.csv").read_text().splitlines()
    assert len(rows) > 5 and {r.split(",")[0] for r in rows[1:]} >= {"sft", "dpo", "ppo", "ppo-gt"}
    assert "eval: sampler | vllm (its log-probs" in (root / "report.md").read_text()


def test_bench_p6_times_both_samplers_on_the_tiny_model():
    """make bench VLLM=1's P6 at a toy size (8 prompts, 4 tokens): both samplers run on the bench's tiny model
    and make every token they are asked for (make bench broke unnoticed before its paths had tests)."""
    import bench.__main__ as B

    tok, make_model, _, pairs = B.fixture(n_reviews=300, n_pairs=8)
    p6 = B.p6_vllm(make_model, tok, [p["prompt_ids"] for p in pairs], 4, repeats=1)
    assert p6["prompts"] == 8 and p6["ours_s"] > 0 and p6["vllm_s"] > 0
    assert 8 <= p6["ours_tokens"] <= 32 and 8 <= p6["vllm_tokens"] <= 32  # 1 to 4 tokens each (EOS may end one)
