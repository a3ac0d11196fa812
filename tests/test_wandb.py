"""wandb, offline and off: a micro run's offline files read back show the groups, job types, names, metrics
and tables the dashboards are built from; WANDB=off writes nothing."""

import pytest

from wandb_records import summarize


@pytest.fixture(scope="module")
def offline_runs(two_process_offline_wandb_run):
    """The wandb files of a micro run with wandb on and no login (offline), its training stages as two processes
    (the session's run that tests/test_multiprocess.py compares with the one-process run): what the main process
    logs is what one process logs."""
    run_dir, _, _, log = two_process_offline_wandb_run
    assert "wandb: offline, project rlhf-vs-dpo, group imdb-sentiment-micro-" in log
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    return [summarize(f) for f in folders]


def test_every_stage_logs_into_one_group_with_the_expected_names(offline_runs):
    assert len({r["group"] for r in offline_runs}) == 1 and offline_runs[0]["group"].startswith("imdb-sentiment-micro-")
    assert {r["project"] for r in offline_runs} == {"rlhf-vs-dpo"}
    names = {(r["job_type"], r["name"]) for r in offline_runs}
    # a training run's job_type is its sweep point: the group's view puts its training seeds together
    trained = {(point, f"{point}-seed{seed}" if point != "preferred-ft" else f"preferred-ft-seed{seed}")
               for point in ("dpo-beta0.1", "dpo-beta1", "unlikelihood-alpha0.5", "preferred-ft", "ppo-kl2",
                             "ppo-gt-kl2") for seed in (0, 1)}
    assert names == trained | {
        ("sft", "sft"), ("ground_truth", "ground_truth"), ("pairs", "pairs"), ("reward_model", "reward_model"),
        ("eval", "eval"), ("report", "summary")}
    for r in offline_runs:
        assert "micro" in r["tags"] and {"benchmark", "scale", "stage"} <= r["config_keys"]
    dpo = next(r for r in offline_runs if r["name"] == "dpo-beta0.1-seed1")
    assert {"method", "beta", "training_seed", "dpo", "seeds"} <= dpo["config_keys"]  # the config, the run's own


def test_training_runs_share_one_step_axis_and_naming(offline_runs):
    by_name = {r["name"]: r["history_keys"] for r in offline_runs}
    assert {"train/global_step", "train/loss"} <= by_name["dpo-beta0.1-seed0"]  # TRL's own callback
    assert {"train/global_step", "train/loss"} <= by_name["sft"]
    assert {"train/global_step", "train/loss", "train/learning_rate"} <= by_name["unlikelihood-alpha0.5-seed1"]
    assert {"train/global_step", "train/score", "train/kl", "train/kl_coef"} <= by_name["ppo-gt-kl2-seed0"]


def test_eval_logs_every_point_the_frontier_table_figures_and_samples(offline_runs):
    ev = next(r for r in offline_runs if r["job_type"] == "eval")
    keys = ev["history_keys"]
    for run in ("sft", "dpo-beta0.1-seed0", "unlikelihood-alpha0.5-seed1", "preferred-ft-seed0", "ppo-kl2-seed1",
                "ppo-gt-kl2-seed0"):
        assert {f"eval/{run}/reward", f"eval/{run}/kl", f"eval/{run}/length"} <= keys, run
    for table in ("frontier", "frontier_scatter_table", "frontier_png", "frontier_panels_png", "samples/sft",
                  "samples/dpo/beta0.1-seed0/step6", "samples/ppo-gt/ppo-gt-kl2-seed1/step4"):
        assert f"{table}/_type" in keys, table
    assert "_wandb/visualize/frontier_scatter" in ev["config_keys"]  # the scatter plot's chart spec
    summary = next(r for r in offline_runs if r["job_type"] == "report")["history_keys"]
    for table in ("verdict", "per_method", "compute", "frontier_bands_png", "report"):
        assert any(k.startswith(table) for k in summary), table


def test_wandb_off_writes_no_wandb_files(micro_run):
    run_dir, _, _ = micro_run  # run with WANDB=off (conftest), its WANDB_DIR = run_dir
    assert not (run_dir / "wandb").exists()
