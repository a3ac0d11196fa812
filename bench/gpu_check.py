"""make gpu-check: every stage on the GPU, briefly, and what it measured -> bench/gpu_check.json.

For a lent GPU machine (no hub there either): the tiny scale (or --scale smol) with short step counts, each
stage on CUDA (TRL trainers in bf16), in a throw-away run folder. Writes each stage's wall time and peak GPU
memory, sampling and training tokens/s, and the DPO step's model-FLOPs utilisation against the card's
dense bf16 peak (--peak-tflops; an H100 SXM: 989). Also runs on CPU (the numbers then say so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = {  # appended to the chosen scale: every stage, a few steps
    "sft": {"reviews": 4096}, "pairs": {"prompts": 512},
    "dpo": {"betas": [0.1], "learning_rates": [], "max_steps": 40, "eval_every": 20, "early_checkpoints": []},
    "unlikelihood": {"alphas": [0.5], "max_steps": 20, "eval_every": 20, "early_checkpoints": []},
    "preferred_ft": {"max_steps": 20, "eval_every": 20, "early_checkpoints": []},
    "ppo": {"target_kls": [6.0], "init_kl_coefs": [], "steps": 4, "eval_every": 4, "early_checkpoints": []},
    "eval": {"prompts": 256},
}


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def config_text(scale: str) -> str:
    """benchmarks.toml with a `gpucheck` scale: the chosen scale, then the short step counts over it."""
    import tomllib

    base = (ROOT / "benchmarks.toml").read_text()
    extra = ["\n[imdb-sentiment.scales.gpucheck]\ntorch_threads = 0\n"
             'methods = ["dpo", "ppo", "unlikelihood", "preferred-ft"]\n']  # the paper's, less PPO-GT
    for section, table in tomllib.loads(base)["imdb-sentiment"]["scales"][scale].items():
        if isinstance(table, dict):
            merged = {**table, **SHORT.get(section, {})}
            extra.append(f"[imdb-sentiment.scales.gpucheck.{section}]\n"
                         + "".join(f"{k} = {toml_value(v)}\n" for k, v in merged.items()))
    return base + "\n" + "\n".join(extra)


def main():
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    ap.add_argument("--scale", default="tiny", choices=("tiny", "smol"))
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the card's dense bf16 peak, for MFU")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gpucheck.toml"
        config.write_text(config_text(args.scale))
        env = {**os.environ, "RUN_DIR": tmp, "WANDB": "off", "PYTHONPATH": str(ROOT)}
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pipelines", "--config", str(config), "run", "imdb-sentiment",
                        "--scale", "gpucheck"], cwd=ROOT, env=env, check=True)
        total = time.time() - t0
        root = Path(tmp) / "imdb-sentiment" / "gpucheck"
        m = {p.name: json.loads((p / "manifest.json").read_text()) for p in root.iterdir()
             if (p / "manifest.json").exists()}
    out = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "scale": args.scale, "total_s": round(total, 1),
           "stages": {k: {"wall_s": v["wall_time_s"], "peak_gpu_mib": v["metrics"].get("peak_gpu_mib"),
                          "peak_rss_mib": v["metrics"].get("peak_rss_mib")} for k, v in m.items()}}
    pairs, dpo, ppo, sft = (m[k]["metrics"] for k in ("pairs", "dpo", "ppo", "sft"))
    samples = pairs["prompts"] * m["pairs"]["config"]["pairs"]["samples_per_prompt"]
    out["pairs_sampling_tokens_per_s"] = samples * pairs["mean_completion_tokens"] / m["pairs"]["wall_time_s"]
    out["ppo_tokens_generated_per_s"] = ppo["tokens_generated"] / ppo["train_seconds"]
    out["dpo_steps_per_s"] = SHORT["dpo"]["max_steps"] / dpo["train_seconds"]
    out["dpo_tokens_trained_per_s"] = dpo["tokens_trained"] / dpo["train_seconds"]
    # MFU: 6 x parameters x tokens per second of the policy forward + backward (the reference is precomputed)
    out["dpo_mfu"] = 6 * sft["parameters"] * out["dpo_tokens_trained_per_s"] / (args.peak_tflops * 1e12) \
        if torch.cuda.is_available() else None
    path = ROOT / "bench" / "gpu_check.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
