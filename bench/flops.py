"""The floor of P1: each stage's counted FLOPs, and the machine's measured matmul peak to set them against.

Counted, not profiled (core/flops.py: the model, and each method run's count, which the report shows too). The
token counts are the ones the finished stages record (manifests and runs.json), so the count follows the run that
was timed; what is not recorded (sampled completion lengths of eval) is taken at max_new_tokens. The TF-IDF ground
truth is left out with the element-wise work: overhead the floor is measured against.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from core.flops import Model, forward_flops_per_token, run_flops
from core.methods import stages as method_stages


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
    model = Model.of(m)
    lm, scalar, sequence, prompt, completion = model.lm, model.scalar, model.sequence, model.prompt, model.completion
    out: dict[str, float] = {}
    copies = lambda stage: len(m[stage]["metrics"].get("per_seed") or [None])  # noqa: E731 (reseed_shared: one a seed)
    # sft: every step a full batch of max_length-token reviews
    out["sft"] = 3 * forward_flops_per_token(L, d, T / 2, V) * m["sft"]["metrics"]["steps"] * sft["batch_size"] * T \
        * copies("sft")
    if "pairs" in m:  # sample k completions per prompt, then the reference log-probs of every sample
        samples = pairs["prompts"] * pairs["samples_per_prompt"]
        out["pairs"] = lm * samples * (completion + sequence) * copies("pairs")
    for stage in of_kind("pairs"):
        out[stage] = 3 * lm * m[stage]["metrics"]["tokens_trained"]  # as run_flops, from the stage's total
    if "reward_model" in m:  # both completions of each pair, forward + backward, scalar head
        rm = m["reward_model"]
        epochs = rm["config"]["reward_model"]["epochs"]
        out["reward_model"] = 3 * scalar * 2 * rm["metrics"]["train_pairs"] * epochs * sequence * copies("reward_model")
    for stage in of_kind("ppo") + of_kind("online"):
        kind = "ppo" if stage in of_kind("ppo") else "online"
        out[stage] = sum(run_flops(kind, run, m[stage]["config"][stage], model, stage)
                         for run in read(stage, "runs.json"))
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
