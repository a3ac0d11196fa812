"""Counted FLOPs: the matmul FLOPs of the GPT-2 architecture per token (Kaplan et al. 2020, Table 1: a forward pass
is 2N + 2 n_layer n_ctx d_model FLOPs a token, N the non-embedding parameters, here with the LM head's 2 V d_model
added, the tied embedding used as the output layer); a training token costs 3 forward passes (forward + backward), a
sampled token one forward with the KV cache, a scored token one forward. Token counts are the ones the finished
runs record (runs.json), so a count follows the run. Element-wise work, the optimiser and tokenisation are left out.
The report's per-method budget and bench's floor (bench/flops.py) both count through here.
"""

from __future__ import annotations


def forward_flops_per_token(n_layer: int, d_model: int, context: float, vocab: int | None) -> float:
    """One token through the model at `context` tokens of attention; vocab None: no LM head (a scalar head,
    the reward and value models)."""
    non_embedding = 12 * n_layer * d_model * d_model  # attention 4 d^2 + MLP 8 d^2 per layer
    head = vocab * d_model if vocab else 0
    return 2 * (non_embedding + head) + 2 * n_layer * context * d_model


class Model:
    """The per-token costs of a run's models: sft, the SFT section's config; prompt and completion, their mean token
    counts (a sequence, as the method stages train on them, is the two)."""

    def __init__(self, sft: dict, prompt: float, completion: float):
        L, d, V = sft["n_layer"], sft["n_embd"], sft["vocab_size"]
        self.prompt, self.completion = prompt, completion
        self.sequence = sequence = prompt + completion
        self.lm = forward_flops_per_token(L, d, sequence / 2, V)  # mean attention context over a sequence
        self.scalar = forward_flops_per_token(L, d, sequence / 2, None)

    @classmethod
    def of(cls, manifests: dict) -> "Model":
        """From a run's stage manifests ({stage: manifest}; sft's needed): the SFT model's shape, and a prompt (2-8
        tokens: their mean) with the pairs' mean completion (max_new_tokens when the pairs are not there)."""
        pairs = manifests.get("pairs", {})
        completion = pairs.get("metrics", {}).get("mean_completion_tokens",
                                                  pairs.get("config", {}).get("pairs", {}).get("max_new_tokens", 0))
        data = manifests["sft"]["config"]["data"]
        prompt = (data["prompt_min_tokens"] + data["prompt_max_tokens"]) / 2
        return cls(manifests["sft"]["config"]["sft"], prompt, completion)


def completions_generated(kind: str, run: dict, cfg: dict) -> int:
    """Completions a PPO or online method run sampled (cfg: its section): PPO's rollouts, an online method's
    generations. (A pairs method samples none: the pairs stage's samples are shared by every run.)"""
    if kind == "ppo":
        return run["steps"] * cfg["rollouts_per_step"]
    if kind == "online":  # one batch of generations every `epochs` optimiser steps
        return run["steps"] * cfg["prompts_per_step"] * cfg.get("num_generations", 2) // cfg.get("epochs", 1)
    raise ValueError(f"no completions count for kind {kind!r}")


def run_flops(kind: str, run: dict, cfg: dict, model: Model, stage: str) -> float:
    """Counted FLOPs of one method run (runs.json's entry) of a stage of that kind (core.methods.KINDS)."""
    lm, scalar, sequence = model.lm, model.scalar, model.sequence
    if kind == "pairs":  # policy fwd + bwd on the pairs (KTO's reference and mismatched forwards not counted)
        return 3 * lm * run.get("tokens_trained", 0)
    if kind == "ppo":
        rollout_tokens = run["steps"] * cfg["rollouts_per_step"] * sequence
        # sampling; then per rollout token the no-grad passes: old policy, reference, value model, and for ppo the
        # reward model; then each epoch's minibatches, policy and value model forward + backward
        return (lm * run["tokens_generated"] + rollout_tokens * (2 * lm + scalar * (2 if run["method"] == "ppo" else 1))
                + 3 * (lm + scalar) * run["tokens_trained"])
    if kind == "online":  # TRL's online trainers
        epochs = cfg.get("epochs", 1)
        tokens = run["steps"] * cfg["prompts_per_step"] * cfg.get("num_generations", 2) * sequence  # trained on
        # no-grad, once a batch (steps / epochs batches): the reference's log-probs, RLOO's and GRPO's old policy's,
        # and for a reward-model method the reward model
        passes = lm * (1 if stage == "online_dpo" else 2) + (scalar if not run["method"].endswith("-gt") else 0)
        return lm * run.get("tokens_generated", 0) + tokens / epochs * passes + 3 * lm * tokens
    raise ValueError(f"no per-run count for kind {kind!r}")
