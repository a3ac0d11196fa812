"""make bench's measurements run on the current code (at a toy size: what they measure is not checked here,
that they still call the stages' functions the way those now work)."""

import json

import pytest

from core.flops import forward_flops_per_token


def test_p5_evaluates_one_checkpoint_and_times_raw_generate():
    import bench.__main__ as B

    tok, make_model, _, pairs = B.fixture(n_reviews=300, n_pairs=16)
    p5 = B.p5_evaluation(make_model, tok, [p["prompt_ids"] for p in pairs], 4, repeats=1)
    assert p5["prompts"] == 16 and p5["eval_one_checkpoint_s"] > 0 and p5["raw_generate_s"] > 0


def test_p2_and_p3_time_the_stages_training_steps():
    """P2 and P3 train through the stages' own code (dpo's batch loss in the pairs loop, sft's plain head): 2 steps of
    4 at a toy size, every ratio a positive number."""
    import bench.__main__ as B

    tok, make_model, reviews, pairs = B.fixture(n_reviews=300, n_pairs=16)
    ds = B.dpo_columns(pairs, make_model().eval(), tok.pad_token_id)
    dpo = B.p2_dpo(ds, pairs, make_model, tok, steps=2, batch=4, repeats=1)
    sft = B.p2_sft(reviews, make_model, tok, steps=2, batch=4, repeats=1)
    p3 = B.p3_beta_sweep(dpo, pairs, make_model, tok.pad_token_id, steps=2, batch=4, repeats=1)
    for ratio in (dpo["ours_vs_trl"], dpo["ours_vs_plain"], sft["ours_vs_trl"], sft["ours_vs_plain"], p3["ratio"]):
        assert 0 < ratio < float("inf")


def test_p1_reads_a_run_and_counts_its_flops(micro_run, monkeypatch):
    """P1 over the micro run (as if it were the tiny one): stage times, processes, FLOPs, and the config check
    names what differs from the shipped tiny config."""
    import bench.__main__ as B
    from bench import flops
    from pipelines import store

    _, root, _ = micro_run
    monkeypatch.setattr(store, "run_root", lambda benchmark, scale: root)
    monkeypatch.setattr(flops, "matmul_peak", lambda threads: 1e10 * threads)
    p1 = B.p1_pipeline(skip_micro=True, micro_dir="")
    assert p1["tiny_complete"] and p1["tiny_processes"]["sft"] == 1  # the test session's one worker (conftest)
    assert "sft: sft.n_layer" in p1["tiny_not_shipped"]  # micro is not the shipped tiny config
    counted = flops.stage_flops(root)
    assert set(counted) == {"sft", "pairs", "reward_model", "ppo", "dpo", "unlikelihood", "preferred_ft", "eval"}
    assert all(v > 0 for v in counted.values())
    sft = json.loads((root / "sft" / "manifest.json").read_text())
    c = sft["config"]["sft"]
    per_token = forward_flops_per_token(c["n_layer"], c["n_embd"], c["max_length"] / 2, c["vocab_size"])
    assert counted["sft"] == 3 * per_token * sft["metrics"]["steps"] * c["batch_size"] * c["max_length"]
    assert "NOT the shipped config" in "\n".join(B.p1_lines(p1))
    floor_row = next(line for line in B.p1_lines(p1) if "elapsed / floor" in line)
    assert floor_row.endswith("| <= 2x | no |")  # not the shipped config: never met
    # each stage against its floor, flagged above 3x: at a 1e10 peak, micro's stages are far from theirs
    table = B.p1_floor_table(p1)
    sft_row = next(line for line in table if line.startswith("| sft |"))
    wall, n = p1["tiny_stages_s"]["sft"], p1["tiny_processes"]["sft"]
    ratio = wall / (counted["sft"] / (n * 1e10))
    assert sft_row.endswith(f"| {ratio:.1f}x{' (above 3x)' if ratio > 3 else ''} |")


def test_forward_flops_by_hand():

    # 2 layers, d 128, vocab 4096, 32 tokens of context: 2 * (12 * 2 * 128^2 + 4096 * 128) + 2 * 2 * 32 * 128
    assert forward_flops_per_token(2, 128, 32, 4096) == 2 * (393216 + 524288) + 16384
    assert forward_flops_per_token(2, 128, 32, None) == 2 * 393216 + 16384


def test_p4_runs_our_ppo_through_the_stage(micro_run, tmp_path):
    """P4's 'ours' side calls the ppo stage's train_run as the stage does: one fixed-coefficient step from the
    micro run's SFT model and reward model leaves a checkpoint (TRL 1.12's side needs its own environment,
    .bench-envs: not built here)."""
    from pathlib import Path

    from bench import ppo_vs_trl

    _, root, _ = micro_run
    out = ppo_vs_trl.run_ours(root, tmp_path, 0.05, 1, 0)
    assert out["train_seconds"] > 0 and (Path(out["policy"]) / "model.safetensors").exists()


def test_a_runs_counted_flops_and_completions_by_hand():
    """core/flops.py per run: a pairs run is 3 forwards a trained token; PPO samples steps x rollouts completions and
    counts sampling, its no-grad passes per rollout token and its training; an online run generates once every
    `epochs` steps."""
    from core.flops import Model, completions_generated, run_flops

    model = Model({"n_layer": 2, "n_embd": 128, "vocab_size": 4096}, prompt=5.0, completion=45.0)
    assert model.lm == forward_flops_per_token(2, 128, 25.0, 4096)
    assert run_flops("pairs", {"tokens_trained": 1000}, {}, model, "dpo") == 3 * model.lm * 1000
    ppo = {"method": "ppo", "steps": 2, "tokens_generated": 300, "tokens_trained": 700}
    cfg = {"rollouts_per_step": 4}
    assert run_flops("ppo", ppo, cfg, model, "ppo") == pytest.approx(
        model.lm * 300 + 2 * 4 * 50 * (2 * model.lm + 2 * model.scalar) + 3 * (model.lm + model.scalar) * 700)
    assert completions_generated("ppo", ppo, cfg) == 8
    assert completions_generated("online", {"steps": 24}, {"prompts_per_step": 16, "num_generations": 4,
                                                          "epochs": 2}) == 24 * 16 * 4 // 2
    assert completions_generated("online", {"steps": 72}, {"prompts_per_step": 32}) == 4608  # Online DPO at tiny
