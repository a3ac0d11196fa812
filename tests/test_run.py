"""core/run.py: a run's life (start, resume, save, finish) and its refusal of non-finite losses and weights."""

import json
from types import SimpleNamespace

import pytest
import torch

from core.run import LoopState, MethodRun, is_checkpoint
from helpers import toy_lm


def job(tmp_path):
    return SimpleNamespace(out=tmp_path / "stage", tracking={}, stage="unlikelihood", seed=0, inputs={}, config={})


def train_steps(model, opt, n):
    for _ in range(n):
        opt.zero_grad()
        model(input_ids=torch.randint(0, 11, (2, 5))).logits.pow(2).mean().backward()
        opt.step()


def test_a_saved_run_resumes_with_its_optimizer_loop_state_and_rng(tmp_path):
    model = toy_lm(0, vocab=11)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = MethodRun(job(tmp_path), "unlikelihood", "alpha0.5", "alpha", 0.5, 0)
    assert run.summary is None and run.latest is None
    state = run.start({"optimizer": opt})
    assert state == LoopState()
    train_steps(model, opt, 2)
    state.step, state.tokens_trained, state.history, state.extra["kl_coef"] = 2, 40, [1.0, 0.5], 0.07
    run.save(state, model, {"optimizer": opt})
    rng_after_save = torch.rand(3)

    again = MethodRun(job(tmp_path), "unlikelihood", "alpha0.5", "alpha", 0.5, 0)
    assert again.latest == tmp_path / "stage" / "alpha0.5-seed0" / "checkpoint-2"
    opt2 = torch.optim.AdamW(toy_lm(1, vocab=11).parameters(), lr=1e-2)
    resumed = again.start({"optimizer": opt2})
    assert (resumed.step, resumed.tokens_trained, resumed.history, resumed.extra) == (2, 40, [1.0, 0.5],
                                                                                      {"kl_coef": 0.07})
    assert torch.equal(torch.rand(3), rng_after_save)  # the RNG continues where the saved run left it
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])

    summary = again.finish(resumed, final_loss=0.5)
    assert summary["checkpoints"] == [{"step": 2, "path": "alpha0.5-seed0/checkpoint-2"}]
    assert summary["steps"] == 2 and summary["tokens_trained"] == 40 and "tokens_generated" not in summary
    assert json.loads((tmp_path / "stage" / "alpha0.5-seed0" / "run.json").read_text()) == summary
    assert sorted(p.name for p in (tmp_path / "stage" / "alpha0.5-seed0" / "checkpoint-2").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors"]  # the optimizer state is gone
    assert MethodRun(job(tmp_path), "unlikelihood", "alpha0.5", "alpha", 0.5, 0).summary == summary


def test_a_non_finite_loss_stops_naming_the_last_good_checkpoint(tmp_path):
    run = MethodRun(job(tmp_path), "dpo", "beta0.1", "beta", 0.1, 0)
    run.check_finite(0.3, 1)
    with pytest.raises(FloatingPointError, match="dpo-beta0.1-seed0: loss is nan at step 7.*last good checkpoint: none"):
        run.check_finite(float("nan"), 7)


def test_non_finite_weights_are_never_saved_nor_marked_finished(tmp_path):
    model = toy_lm(0, vocab=11)
    run = MethodRun(job(tmp_path), "ppo", "ppo-kl3", "target_kl", 3.0, 1)
    assert (run.name, run.label, run.sweep_point) == ("ppo-kl3-seed1", "ppo-kl3-seed1", "ppo-kl3")
    state = run.start()
    state.step = 1
    run.save(state, model)  # a good checkpoint
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")  # a step that left a NaN behind a finite loss
    state.step = 2
    with pytest.raises(FloatingPointError, match="ppo-kl3-seed1 step 2: weight .* is not finite"):
        run.save(state, model)
    assert not (tmp_path / "stage" / "ppo-kl3-seed1" / "checkpoint-2").exists()

    # a checkpoint written by someone else (a TRL trainer) with a NaN in it: finish refuses, run.json is not written
    model.save_pretrained(tmp_path / "stage" / "ppo-kl3-seed1" / "checkpoint-3")
    with pytest.raises(FloatingPointError, match="checkpoint-3: weight .* is not finite"):
        run.finish(state)
    assert not (tmp_path / "stage" / "ppo-kl3-seed1" / "run.json").exists()
    assert (tmp_path / "stage" / "ppo-kl3-seed1" / "checkpoint-1" / "training_state.pt").exists()  # still resumable from the good one


def test_a_checkpoint_resumed_under_another_sharding_is_one_line_not_a_load_error(tmp_path):
    """Under FSDP the optimizers' state is saved whole and by parameter name (core.run.full_state), without it as torch
    keeps it: a run killed under one launch and resumed under the other is refused in one line naming both."""
    from core.config import ConfigError

    model = toy_lm(0, vocab=11)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = MethodRun(job(tmp_path), "dpo", "beta0.1", "beta", 0.1, 0)
    state = run.start({"optimizer": opt}, model)
    state.step = 1
    run.save(state, model, {"optimizer": opt})
    again = MethodRun(job(tmp_path), "dpo", "beta0.1", "beta", 0.1, 0)
    again.accelerator = SimpleNamespace(is_fsdp2=True)  # the same run, launched under fsdp.yaml this time
    with pytest.raises(ConfigError, match=r"dpo-beta0.1-seed0: its checkpoint .*checkpoint-1 was written without FSDP "
                                          r"\(or by an older version\) and this run is under FSDP; resume it as it was "
                                          r"launched"):
        again.start({"optimizer": opt}, model)


def test_a_trl_run_saves_its_early_steps_and_its_last_once(tmp_path):
    """save_at asks the trainer to save and evaluate at a pair method's early checkpoints; save_last_checkpoint saves
    the last step only where neither the schedule nor the trainer did (transformers 5 saves a step-based run's last
    step itself: saving and evaluating it again gave a second held-out entry for that step)."""
    from transformers import TrainerControl

    from core.train import save_at, save_last_checkpoint

    callback, control = save_at([2, 5]), TrainerControl()
    for step, wanted in ((1, False), (2, True), (5, True)):
        control.should_save = control.should_evaluate = False
        callback.on_step_end(None, SimpleNamespace(global_step=step), control)
        assert control.should_save == control.should_evaluate == wanted, step

    saved = []
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=7), save_model=saved.append)
    assert not save_last_checkpoint(SimpleNamespace(state=SimpleNamespace(global_step=6)), tmp_path, 3)  # on schedule
    (tmp_path / "checkpoint-7").mkdir()
    assert not save_last_checkpoint(trainer, tmp_path, 3) and saved == []  # the trainer saved it
    (tmp_path / "checkpoint-7").rmdir()
    assert save_last_checkpoint(trainer, tmp_path, 3) and saved == [str(tmp_path / "checkpoint-7")]


def test_our_loops_keep_every_eval_every_step_the_early_steps_and_the_last():
    """dpo/loop.py and ppo/__main__.py keep checkpoints by this rule (TRL's trainers: save_steps and save_at)."""
    kept = [s for s in range(1, 26) if is_checkpoint(s, 25, every=10, early=[3, 7])]
    assert kept == [3, 7, 10, 20, 25]
    assert [s for s in range(1, 21) if is_checkpoint(s, 20, every=10)] == [10, 20]  # the last is on the schedule
