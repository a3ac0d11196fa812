"""The floor of P1: each stage's counted FLOPs, and the machine's measured matmul peak to set them against.

Counted, not profiled: the matmul FLOPs of the GPT-2 architecture per token (Kaplan et al. 2020, Table 1:
a forward pass is 2N + 2 n_layer n_ctx d_model FLOPs a token, N the non-embedding parameters, here with the
LM head's 2 V d_model added, the tied embedding used as the output layer); a training token costs 3 forward
passes (forward + backward), a sampled token one forward with the KV cache, a scored token one forward. The
token counts are the ones the finished stages record (manifests and runs.json), so the count follows the
run that was timed; what is not recorded (sampled completion lengths of eval) is taken at max_new_tokens.
Element-wise work, the optimiser, tokenisation and the TF-IDF ground truth are left out: they are the
overhead the floor is measured against.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from core.methods import stages as method_stages


def forward_flops_per_token(n_layer: int, d_model: int, context: float, vocab: int | None) -> float:
    """One token through the model at `context` tokens of attention; vocab None: no LM head (a scalar head,
    the reward and value models)."""
    non_embedding = 12 * n_layer * d_model * d_model  # attention 4 d^2 + MLP 8 d^2 per layer
    head = vocab * d_model if vocab else 0
    return 2 * (non_embedding + head) + 2 * n_layer * context * d_model


def stage_flops(root: Path) -> dict[str, float]:
    """Counted FLOPs of each finished stage of the run folder `root` (stages without a manifest are left out)."""
    read = lambda *p: json.loads(root.joinpath(*p).read_text())  # noqa: E731

    def of_kind(kind: str) -> list[str]:  # the finished method stages counted alike (the registry's order)
        return [name for name, ms in method_stages().items() if ms[0].kind == kind and name in m]

    m = {s.name: read(s.name, "manifest.json") for s in root.iterdir() if (s / "manifest.json").is_file()}
    if "sft" not in m:
        return {}
    sft = m["sft"]["config"]["sft"]
    L, d, V, T = sft["n_layer"], sft["n_embd"], sft["vocab_size"], sft["max_length"]
    pairs = m.get("pairs", {}).get("config", {}).get("pairs", {})
    completion = m.get("pairs", {}).get("metrics", {}).get("mean_completion_tokens", pairs.get("max_new_tokens", 0))
    prompt = sum(m["sft"]["config"]["data"][k] for k in ("prompt_min_tokens", "prompt_max_tokens")) / 2
    sequence = prompt + completion  # a prompt and its completion, as the pair stages train on them
    lm = forward_flops_per_token(L, d, sequence / 2, V)  # mean attention context over a sequence
    scalar = forward_flops_per_token(L, d, sequence / 2, None)
    out: dict[str, float] = {}
    # sft: every step a full batch of max_length-token reviews
    out["sft"] = 3 * forward_flops_per_token(L, d, T / 2, V) * m["sft"]["metrics"]["steps"] * sft["batch_size"] * T
    if "pairs" in m:  # sample k completions per prompt, then the reference log-probs of every sample
        samples = pairs["prompts"] * pairs["samples_per_prompt"]
        out["pairs"] = lm * samples * (completion + sequence)
    # policy fwd + bwd on the pairs (KTO's reference and mismatched-completion forwards are not counted)
    for stage in of_kind("pairs"):
        out[stage] = 3 * lm * m[stage]["metrics"]["tokens_trained"]
    if "reward_model" in m:  # both completions of each pair, forward + backward, scalar head
        rm = m["reward_model"]
        epochs = rm["config"]["reward_model"]["epochs"]
        out["reward_model"] = 3 * scalar * 2 * rm["metrics"]["train_pairs"] * epochs * sequence
    for stage in of_kind("ppo"):
        ppo_cfg = m[stage]["config"][stage]
        flops = 0.0
        for run in read(stage, "runs.json"):
            rollout_tokens = run["steps"] * ppo_cfg["rollouts_per_step"] * sequence
            flops += lm * run["tokens_generated"]  # sampling
            # no-grad passes per rollout token: the old policy, the reference, the value model, and for ppo
            # the reward model
            flops += rollout_tokens * (2 * lm + scalar * (2 if run["method"] == "ppo" else 1))
            # each epoch's minibatches: policy and value model forward + backward
            flops += 3 * (lm + scalar) * run["tokens_trained"]
        out[stage] = flops
    for stage in of_kind("online"):  # TRL's online trainers
        cfg = m[stage]["config"][stage]
        flops = 0.0
        epochs = cfg.get("epochs", 1)
        for run in read(stage, "runs.json"):
            tokens = run["steps"] * cfg["prompts_per_step"] * cfg.get("num_generations", 2) * sequence  # trained on
            flops += lm * run.get("tokens_generated", 0)  # sampling
            # no-grad, once a batch (steps / epochs batches): the reference's log-probs, RLOO's and GRPO's old
            # policy's, and for a reward-model method the reward model
            passes = lm * (1 if stage == "online_dpo" else 2) + (scalar if not run["method"].endswith("-gt") else 0)
            flops += tokens / epochs * passes
            flops += 3 * lm * tokens  # each optimiser step, forward + backward
        out[stage] = flops
    for stage in of_kind("best_of_n"):  # M samples per prompt, scored by the RM
        metrics = m[stage]["metrics"]
        out[stage] = lm * metrics.get("tokens_generated", 0) + \
            scalar * metrics["prompts"] * metrics["samples_per_prompt"] * sequence
    if "eval" in m:  # each point: sample, then the exact sequence KL (policy and reference forwards)
        ev = m["eval"]["config"]["eval"]
        points = m["eval"]["metrics"]["points"] - m["eval"]["metrics"].get("points_given", 0)  # not Best-of-N's
        eval_lm = forward_flops_per_token(L, d, (prompt + ev["max_new_tokens"]) / 2, V)
        prompts = ev["prompts"] + ev.get("select_prompts", 0)  # test and select
        out["eval"] = eval_lm * points * prompts * (ev["max_new_tokens"] + 2 * (prompt + ev["max_new_tokens"]))
    return out


def matmul_peak(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """FLOP/s of fp32 square matmuls in this process at `threads` torch threads (the best of a few timed
    batches, after a warm-up)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            for _ in range(4):
                a @ b
            best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(before)
