"""P4: our PPO against TRL 1.12's `trl.experimental.ppo.PPOTrainer`, on the same models and settings.

TRL removed its PPO trainer in 1.13, so TRL 1.12 lives in a bench-only layer (.bench-envs/trl-1.12, installed
with `pip install --target`, put first on PYTHONPATH for its run only); it is never a project dependency.

Same for both: the SFT model of a finished tiny run (policy and reference), its reward model (normalised,
mean-pooled: adapted below so TRL's last-token `get_reward` reads the same score), the value model initialised
from the reward model, the tiny PPO settings (64 rollouts per step, minibatches of 32, 2 epochs, lr 3e-4,
48 new tokens, pure sampling, k1 KL, clip 0.2 / 0.2, gamma 1, lambda 0.95, whitened advantages), and a FIXED
KL coefficient (TRL 1.12 has no adaptive controller; ours runs with kl_control = "fixed"). Differences that
remain: TRL trains policy and value with one AdamW (weight decay 0) on pg + vf_coef * vf, ours with two Adams
(the same update under Adam's scale invariance, up to epsilon); TRL samples with `generate`, ours with its
KV-cache loop; prompt order.

Each run is a subprocess (`python -m bench.ppo_vs_trl ours|trl ...`) that writes the final policy and its
training time; the parent then evaluates both policies as the eval stage does (one pure sample per held-out
prompt, ground-truth reward, exact sequence KL to the SFT model).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_LAYER = ROOT / ".bench-envs" / "trl-1.12"


def ensure_trl_layer() -> Path:
    """TRL 1.12 alone (no dependencies: the project's transformers / accelerate serve it) in its own folder."""
    if not (TRL_LAYER / "trl" / "experimental" / "ppo").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_LAYER),
                        "trl==1.12.0"], check=True)
    return TRL_LAYER


def tiny_ppo_config(beta: float, steps: int):
    """The tiny config (its seed fixes the data splits and prompts for every training seed) and P4's PPO."""
    from dataclasses import replace

    from pipelines.config import load

    cfg = load("imdb-sentiment", "tiny")
    return cfg, replace(cfg.ppo, target_kls=[1.0], kl_control="fixed", init_kl_coef=beta,
                        init_kl_coefs=[], steps=steps, eval_every=steps, early_checkpoints=[])  # no per-target starts: beta is the coefficient


def train_prompts(cfg, n: int, tokenizer):
    from core import lm

    return lm.split_prompts(cfg.data, cfg.seed, "train", n, tokenizer)


def upstream(run: Path, stage: str) -> Path:
    """A stage's model in the run: its folder, or seed 0's where each training seed made its own (the tiny default's
    whole-pipeline seeds: sft/seed0, reward_model/seed0)."""
    return run / stage / "seed0" if (run / stage / "seed0").is_dir() else run / stage


def run_ours(run: Path, out: Path, beta: float, steps: int, seed: int) -> dict:
    """Our PPO (ppo/__main__.train_run) with a fixed KL coefficient."""
    import torch

    from core import lm
    from core.job import Job
    from core.reward import RewardModel
    from ppo.__main__ import train_run

    torch.set_num_threads(1)
    cfg, ppo = tiny_ppo_config(beta, steps)
    sft, reward_model = upstream(run, "sft"), upstream(run, "reward_model")
    tokenizer = lm.load_tokenizer(sft)
    prompts = train_prompts(cfg, ppo.rollouts_per_step * steps, tokenizer)
    rm = RewardModel(reward_model)
    job = Job(stage="ppo", benchmark="imdb-sentiment", scale="tiny", seed=seed, torch_threads=1,
              config={"train": cfg.section("train")}, inputs={"sft": sft, "reward_model": reward_model},
              out=out / "ours")
    torch.manual_seed(seed)  # the training seed: prompt order and sampling; the data split stays the tiny one's
    summary = train_run("ppo", 1.0, 0, ppo, job, prompts, tokenizer,  # training seed 0: job.seed itself
                        lambda p, c: rm([a + b for a, b in zip(p, c)]))
    return {"train_seconds": summary["train_seconds"], "policy": str(out / "ours" / summary["checkpoints"][-1]["path"])}


def reward_model_for_trl(folder: Path):
    """Our reward model shaped for TRL's get_reward, which reads model.score(hidden)[last token]: the score
    there is the running mean of the head over the attended tokens, shifted and scaled as reward.json says,
    i.e. exactly core.reward.RewardModel's mean-pooled, normalised reward."""
    import torch
    from transformers import AutoModelForSequenceClassification

    meta = json.loads((folder / "reward.json").read_text())
    assert meta["pooling"] == "mean", "the tiny reward model is mean-pooled"
    net = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.mask = net.base_model, None

        def forward(self, attention_mask=None, **kwargs):
            self.mask = attention_mask
            return self.net(attention_mask=attention_mask, **kwargs)

    class Score(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.head, self.backbone = net.score, backbone

        def forward(self, hidden):
            mask = self.backbone.mask[..., None].to(hidden.dtype)
            running = (self.head(hidden) * mask).cumsum(1) / mask.cumsum(1).clamp(min=1)
            return (running - meta["shift"]) / meta["scale"]

    class MeanPooledReward(torch.nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.score = Score(self.backbone)

    return MeanPooledReward()


def run_trl(run: Path, out: Path, beta: float, steps: int, seed: int) -> dict:
    """TRL 1.12's PPOTrainer on the same models and settings (run with the TRL 1.12 layer on PYTHONPATH)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == "1.12.0", trl.__version__
    torch.set_num_threads(1)
    cfg, ppo = tiny_ppo_config(beta, steps)
    sft, reward_model = upstream(run, "sft"), upstream(run, "reward_model")
    tokenizer = AutoTokenizer.from_pretrained(sft)
    tokenizer.padding_side = "left"  # TRL generates from left-padded queries
    prompts = train_prompts(cfg, ppo.rollouts_per_step * steps, tokenizer)
    args = PPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=ppo.rollouts_per_step, gradient_accumulation_steps=1,
        num_mini_batches=ppo.rollouts_per_step // ppo.minibatch_size, num_ppo_epochs=ppo.ppo_epochs,
        total_episodes=ppo.rollouts_per_step * steps, learning_rate=ppo.learning_rate, lr_scheduler_type="constant",
        response_length=ppo.max_new_tokens, temperature=1.0, stop_token="eos", kl_coef=beta,
        kl_estimator=ppo.kl_estimator, cliprange=ppo.clip_range, cliprange_value=ppo.value_clip_range,
        vf_coef=ppo.vf_coef, gamma=ppo.gamma, lam=ppo.lam, whiten_rewards=False,
        local_rollout_forward_batch_size=ppo.rollouts_per_step, num_sample_generations=0, seed=seed,
        bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(sft), ref_model=AutoModelForCausalLM.from_pretrained(sft),
        reward_model=reward_model_for_trl(reward_model),
        value_model=AutoModelForSequenceClassification.from_pretrained(reward_model),
        train_dataset=Dataset.from_dict({"input_ids": prompts}),
    )
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    trainer.policy_model.save_pretrained(out / "trl-policy")
    return {"train_seconds": round(seconds, 2), "policy": str(out / "trl-policy")}


def evaluate(run: Path, policy_dir: str, prompts_n: int) -> dict:
    """One pure sample per held-out prompt: ground-truth reward and exact sequence KL to the SFT model."""
    import torch

    from core import lm
    from core.scorer import GroundTruth
    from pipelines.config import load

    cfg = load("imdb-sentiment", "tiny")
    sft = upstream(run, "sft")
    tokenizer = lm.load_tokenizer(sft)
    ref, policy = lm.load_causal_lm(sft, torch.device("cpu")), lm.load_causal_lm(policy_dir, torch.device("cpu"))
    prompts = lm.split_prompts(cfg.data, cfg.seed, "eval", prompts_n, tokenizer)
    completions = lm.sample_completions(policy, prompts, cfg.eval.max_new_tokens, tokenizer.eos_token_id,
                                        cfg.eval.batch_size, lm.sample_seeds(len(prompts), "eval", cfg.seed))
    rewards = GroundTruth(run / "ground_truth", cfg.ground_truth.reads, tokenizer)(prompts, completions)
    kl, *_ = lm.sequence_kl(policy, ref, prompts, completions, tokenizer.pad_token_id, cfg.eval.batch_size)
    return {"gt_reward": float(rewards.mean()), "gt_reward_se": float(rewards.std(ddof=1) / len(rewards) ** 0.5),
            "kl": float(kl.double().mean()), "kl_se": float(kl.double().std() / len(kl) ** 0.5)}


def p4(run: Path, betas=(0.05, 0.15), steps: int = 24, eval_prompts: int = 256, seeds=(0, 1, 2)) -> dict:
    """Both implementations at each fixed KL coefficient and training seed: episodes/s and (KL, ground-truth
    reward); the reward gap at equal KL per seed (the mean of that seed's gaps), and its mean over seeds with a
    95% t-interval (seeds are the unit: a seed whose KLs do not overlap gives no gap and is counted out)."""
    import tempfile

    layer = ensure_trl_layer()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB": "off", "TOKENIZERS_PARALLELISM": "false",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    pythonpath = {"ours": str(ROOT), "trl": os.pathsep.join([str(layer), str(ROOT)])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, beta in itertools.product(seeds, betas):
            row = {"kl_coef": beta, "seed": seed, "steps": steps, "episodes": 64 * steps}
            for impl in ("ours", "trl"):
                out = Path(tmp) / f"{impl}-{beta:g}-seed{seed}"
                out.mkdir()
                subprocess.run([sys.executable, "-m", "bench.ppo_vs_trl", impl, str(run), str(out), str(beta),
                                str(steps), str(seed)], check=True, cwd=ROOT,
                               env={**env, "PYTHONPATH": pythonpath[impl]})
                result = json.loads((out / "result.json").read_text())
                row[impl] = {"train_seconds": result["train_seconds"],
                             "episodes_per_s": round(row["episodes"] / result["train_seconds"], 3),
                             **evaluate(run, result["policy"], eval_prompts)}
            row["speed_ratio"] = row["ours"]["episodes_per_s"] / row["trl"]["episodes_per_s"]
            rows.append(row)
    gaps, per_seed = [], []
    for seed in seeds:
        seed_gaps = reward_gaps([r["ours"] for r in rows if r["seed"] == seed], [r["trl"] for r in rows if r["seed"] == seed])
        gaps += [{**g, "seed": seed} for g in seed_gaps]
        if seed_gaps:
            per_seed.append(statistics.mean(g["gap"] for g in seed_gaps))
    return {"runs": rows, "source_run": str(run), "trl": "1.12.0", "seeds": list(seeds),
            "speed_ratio": statistics.median(r["speed_ratio"] for r in rows),
            "reward_gap_at_equal_kl": gaps, "mean_reward_gap": mean_with_interval(per_seed)}


def mean_with_interval(values: list[float]) -> dict:
    """The mean over seeds and its 95% t-interval (scipy.stats.ttest_1samp), n = the seeds that gave a value."""
    import numpy as np
    from scipy.stats import ttest_1samp

    if len(values) < 2:
        return {"mean": values[0] if values else None, "low": None, "high": None, "n": len(values)}
    ci = ttest_1samp(np.asarray(values), 0.0).confidence_interval(0.95)
    return {"mean": float(np.mean(values)), "low": float(ci.low), "high": float(ci.high), "n": len(values)}


def reward_gaps(ours: list[dict], trl: list[dict]) -> list[dict]:
    """At each of our points whose KL lies within TRL's points' KL range: our ground-truth reward minus TRL's
    interpolated linearly between its two neighbouring points, with the standard error of that difference."""
    pts = sorted(trl, key=lambda p: p["kl"])
    gaps = []
    for o in ours:
        for a, b in zip(pts, pts[1:]):
            if a["kl"] <= o["kl"] <= b["kl"]:
                w = (o["kl"] - a["kl"]) / (b["kl"] - a["kl"])
                interpolated = (1 - w) * a["gt_reward"] + w * b["gt_reward"]
                se = math.sqrt(o["gt_reward_se"] ** 2 + ((1 - w) * a["gt_reward_se"]) ** 2 + (w * b["gt_reward_se"]) ** 2)
                gaps.append({"kl": o["kl"], "ours": o["gt_reward"], "trl_interpolated": interpolated,
                             "gap": o["gt_reward"] - interpolated, "gap_se": se})
                break
    return gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=("ours", "trl"))
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("beta", type=float)
    ap.add_argument("steps", type=int)
    ap.add_argument("seed", type=int)
    a = ap.parse_args()
    result = (run_ours if a.impl == "ours" else run_trl)(a.run, a.out, a.beta, a.steps, a.seed)
    (a.out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
