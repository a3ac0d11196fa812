"""Incremental runs (core/runcache.py): a run is kept by what it depends on, so adding a seed, a sweep point or a
method trains only what is new, and a restored run gives the frontier a fresh one does."""

import json
import logging
import os
import shutil
from types import SimpleNamespace

from helpers import cli, config_data, scale_overrides, write_config
from core import runcache
from core.runcache import RunCache, run_settings


def stage_job(tmp_path, stage="dpo", **section):
    config = {"seed": 0, "seeds": 3, "methods": ["dpo"], "train": {"max_grad_norm": 1.0},
              stage: {"batch_size": 8, "learning_rates": [], **section}}
    return SimpleNamespace(stage=stage, seed=0, config=config, inputs={}, out=tmp_path / f".{stage}.tmp",
                           per_seed=lambda name: False, source=None, forced=False)


def test_a_run_depends_on_its_own_sweep_point_only(tmp_path):
    two = stage_job(tmp_path, betas=[0.1, 1.0], learning_rates=[1e-3, 2e-3])
    three = stage_job(tmp_path, betas=[0.1, 1.0, 3.0], learning_rates=[1e-3, 2e-3, 5e-4])
    assert run_settings(two, 1.0) == run_settings(three, 1.0)  # adding a beta leaves the others' settings
    assert run_settings(two, 1.0)["dpo"] == {"batch_size": 8, "betas": 1.0, "learning_rates": 2e-3}
    assert "seeds" not in run_settings(two, 1.0) and "methods" not in run_settings(two, 1.0)
    other_rate = stage_job(tmp_path, betas=[0.1, 1.0], learning_rates=[1e-3, 9e-3])
    assert run_settings(other_rate, 0.1) == run_settings(two, 0.1)  # its own rate only
    assert run_settings(other_rate, 1.0) != run_settings(two, 1.0)
    shared = stage_job(tmp_path, betas=[0.1, 1.0], learning_rates=[1e-3, 2e-3], batch_size=16)
    assert run_settings(shared, 0.1) != run_settings(two, 0.1)  # a shared key: every run
    no_rates = stage_job(tmp_path, betas=[0.1, 1.0])
    assert run_settings(no_rates, 1.0)["dpo"]["learning_rates"] == []  # not set: stays
    ppo = stage_job(tmp_path, "ppo", target_kls=[3.0, 6.0], init_kl_coefs=[0.35, 0.12])
    assert run_settings(ppo, 6.0)["ppo"] == {"batch_size": 8, "learning_rates": [], "target_kls": 6.0,
                                             "init_kl_coefs": 0.12}
    assert run_settings(stage_job(tmp_path, "preferred_ft"), None)["preferred_ft"]["batch_size"] == 8


def finished_run(folder, text="weights"):
    (folder / "checkpoint-3").mkdir(parents=True)
    (folder / "checkpoint-3" / "model.safetensors").write_text(text)
    (folder / "run.json").write_text(json.dumps({"run": folder.name, "checkpoints": []}))


def test_a_kept_run_is_restored_whole_or_trained_again(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(runcache, "code_digest", lambda main_file: "code")
    caplog.set_level(logging.INFO, logger="stage")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "model.safetensors").write_text("sft")
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": 3}}))
    (tmp_path / "sft" / "cache-1.arrow").write_text("a reader's cache: not what the stage made")
    job = stage_job(tmp_path, betas=[0.1, 1.0])
    job.inputs = {"sft": tmp_path / "sft"}
    cache = RunCache(job)
    what = cache.what("beta1-seed0", 1.0, 0)
    finished_run(job.out / "beta1-seed0")
    cache.keep(what, job.out / "beta1-seed0")
    kept = tmp_path / ".runs" / "dpo" / "beta1-seed0" / cache.key(what)
    assert (kept / "checkpoint-3" / "model.safetensors").stat().st_ino == \
        (job.out / "beta1-seed0" / "checkpoint-3" / "model.safetensors").stat().st_ino  # a hard link, no copy

    fresh = tmp_path / "new" / "beta1-seed0"  # the stage run again (another seed count): the run comes back
    assert cache.restore(what, fresh)
    assert (fresh / "run.json").read_text() == (job.out / "beta1-seed0" / "run.json").read_text()
    assert "beta1-seed0: reused the run kept in" in caplog.text

    wider = stage_job(tmp_path, betas=[0.1, 1.0], batch_size=16)  # a shared setting changed: trains, says why
    wider.inputs = job.inputs
    assert not RunCache(wider).restore(RunCache(wider).what("beta1-seed0", 1.0, 0), tmp_path / "w" / "beta1-seed0")
    assert "beta1-seed0: trains (changed since the run kept last: settings dpo.batch_size)" in caplog.text
    assert not cache.restore(cache.what("beta1-seed1", 1.0, 1), tmp_path / "s" / "beta1-seed1")
    assert "beta1-seed1: trains (no run of it kept before)" in caplog.text

    os.unlink(kept / "checkpoint-3" / "model.safetensors")  # a kept file edited (not through the hard link)
    (kept / "checkpoint-3" / "model.safetensors").write_text("WEIGHTS")
    assert not cache.restore(what, tmp_path / "again" / "beta1-seed0")
    assert "beta1-seed0: trains (its kept run is damaged or edited)" in caplog.text
    assert not kept.exists()  # kept anew once trained again
    (tmp_path / "sft" / "cache-1.arrow").write_text("another cache")  # not in the manifest: the same key
    runcache.upstream_digest.cache_clear()
    assert cache.key(cache.what("beta1-seed0", 1.0, 0)) == cache.key(what)
    (tmp_path / "sft" / "model.safetensors").write_text("SFT")  # what the upstream made changed: another key
    runcache.upstream_digest.cache_clear()
    assert cache.key(cache.what("beta1-seed0", 1.0, 0)) != cache.key(what)
    assert {"data", "device", "processes", "code"} <= set(what)  # where and on what it trained count too

    finished_run(job.out / "beta0.1-seed0")
    cache.keep(cache.what("beta0.1-seed0", 0.1, 0), job.out / "beta0.1-seed0")
    job.forced = True  # --force: trained again, not restored
    assert not cache.restore(cache.what("beta0.1-seed0", 0.1, 0), tmp_path / "f" / "beta0.1-seed0")
    assert "beta0.1-seed0: trains (--force)" in caplog.text


def test_adding_a_seed_and_a_beta_trains_only_what_is_new(micro_run, tmp_path):
    """--seeds 1 with one DPO beta, then the shipped micro config (two betas, two seeds): only the new runs train,
    the log names the reused ones, and frontier.csv is a fresh run's byte for byte."""
    assert config_data()["imdb-sentiment"]["scales"]["micro"]["dpo"]["betas"] == [0.1, 1.0]
    one_beta = write_config(tmp_path / "one_beta.toml", scale_overrides("micro", dpo={"betas": [1.0]}))
    run_dir = tmp_path / "runs"
    for shared in ("sft", "ground_truth", "pairs", "reward_model"):  # up to date at any seed count: not trained again
        shutil.copytree(micro_run[1] / shared, run_dir / "imdb-sentiment" / "micro" / shared)
    first = cli("--config", str(one_beta), "run", "imdb-sentiment", "--scale", "micro", "--seeds", "1",
                run_dir=run_dir, check=True)
    assert "[reward_model] up to date, skipped" in first.stderr
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    log = proc.stderr
    for reused in ("[dpo] beta1-seed0", "[ppo] ppo-kl2-seed0", "[ppo] ppo-gt-kl2-seed0",
                   "[unlikelihood] alpha0.5-seed0", "[preferred_ft] seed0"):
        assert f"{reused}: reused the run kept in" in log, reused
    for new in ("[dpo] beta0.1-seed0", "[dpo] beta0.1-seed1", "[dpo] beta1-seed1", "[ppo] ppo-kl2-seed1",
                "[unlikelihood] alpha0.5-seed1", "[preferred_ft] seed1"):
        assert f"{new}: trains (no run of it kept before)" in log, new
    root = run_dir / "imdb-sentiment" / "micro"
    assert (root / "frontier.csv").read_text() == micro_run[2]
    # removing the seed again keeps its runs: asked for once more, they come back
    cli("run", "imdb-sentiment", "--scale", "micro", "--seeds", "1", "--stages", "dpo", run_dir=run_dir, check=True)
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--stages", "dpo", run_dir=run_dir, check=True)
    assert "[dpo] beta1-seed1: reused the run kept in" in proc.stderr and ": trains (" not in proc.stderr
