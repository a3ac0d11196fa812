"""The micro scale through every stage, as a user runs it: real outputs, skipping, and reruns on change."""

import csv
import json
import math
import time
from pathlib import Path

import pytest

from helpers import cli, config_data, record_in_manifest, scale_overrides, write_config

STAGES = ["sft", "ground_truth", "pairs", "dpo", "unlikelihood", "preferred_ft", "reward_model", "ppo", "eval", "report"]


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_stage_finished_with_a_manifest(micro_run):
    _, root, _ = micro_run
    for stage in STAGES:
        m = json.loads((root / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["seed"] == 0 and m["wall_time_s"] > 0
        assert set(m) >= {"config", "config_hash", "inputs", "identity", "metrics", "versions"}
        assert m["versions"]["torch"].startswith("2.")
    assert json.loads((root / "dpo" / "manifest.json").read_text())["inputs"].keys() == {"sft", "pairs"}
    assert not list(root.glob(".*tmp*"))  # no half-written folder left


FREE = {"ground_truth", "report"}  # they train no language model and take no worker (pipelines/graph.py)


def spans(root: Path) -> dict:
    """{stage: (start, end, processes)} of every finished stage taking workers, from its manifest (seconds since the
    epoch; the end to the second)."""
    from datetime import datetime

    out = {}
    for path in root.glob("*/manifest.json"):
        m = json.loads(path.read_text())
        end = datetime.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        if m["stage"] not in FREE:
            out[m["stage"]] = (end - m["wall_time_s"], end, m["processes"])
    return out


def running_at(ran: dict, stage: str) -> list[str]:
    """The other stages running when `stage` started (a second's slack either side)."""
    start = ran[stage][0]
    return [t for t, (a, b, _) in ran.items() if t != stage and a < start - 1 and start < b - 1]


def test_one_worker_runs_one_stage_at_a_time_as_one_process(micro_run):
    """The test session's runs have one worker (conftest): every stage alone, as one process; the side by side
    case is test_every_method_another_seed_and_reseed_shared's."""
    _, root, _ = micro_run
    ran = spans(root)
    assert set(ran) == set(STAGES) - FREE and all(p == 1 for _, _, p in ran.values())
    assert not any(running_at(ran, s) for s in ran), ran


def assert_side_by_side_within_two_workers(root: Path) -> None:
    """Two workers: stages whose inputs are ready run side by side, one process each, never more than two at once;
    sft, pairs and eval, which no stage needing them can run beside, run alone as two processes (their work split)."""
    ran = spans(root)
    solo = {"sft", "pairs", "eval"}
    assert {s: p for s, (_, _, p) in ran.items()} == {s: 2 if s in solo else 1 for s in ran}
    beside = {s: running_at(ran, s) for s in ran}
    assert any(beside.values()) and all(len(b) <= 1 for b in beside.values()), beside
    assert not any(b and (s in solo or set(b) & solo) for s, b in beside.items()), beside


def test_frontier_has_every_checkpoint_of_every_seed_on_both_splits(micro_run):
    """micro trains 2 seeds: every run twice, every checkpoint a point on the test and on the select prompts."""
    _, root, _ = micro_run
    table = rows(root / "frontier.csv")
    assert list(table[0]) == ["method", "run", "param", "seed", "step", "split", "kl", "kl_se", "kl_mc", "reward",
                              "reward_se", "proxy_reward", "length", "n"]
    sft = [r for r in table if r["method"] == "sft"]
    assert sorted(r["split"] for r in sft) == ["select", "test"] and all(float(r["kl"]) == 0.0 for r in sft)
    assert all(0 < float(r["reward"]) < 1 for r in sft)
    points = {(r["method"], r["run"], r["seed"], int(r["step"])) for r in table if r["method"] != "sft"}
    for split in ("test", "select"):
        assert {(r["method"], r["run"], r["seed"], int(r["step"])) for r in table
                if r["method"] != "sft" and r["split"] == split} == points
    expected = set()
    for seed in ("0", "1"):
        for method, run in (("dpo", "beta0.1"), ("dpo", "beta1"), ("unlikelihood", "alpha0.5"),
                            ("preferred-ft", ""), ("ppo", "ppo-kl2"), ("ppo-gt", "ppo-gt-kl2")):
            name = f"{run}-seed{seed}" if run else f"seed{seed}"
            steps = (2, 4) if method.startswith("ppo") else (3, 6)
            expected |= {(method, name, seed, step) for step in steps}
    assert points == expected
    for r in table:
        assert int(r["n"]) == (16 if r["split"] == "test" else 8) and float(r["kl"]) >= 0 and float(r["reward_se"]) > 0
        assert 1 <= float(r["length"]) <= 8  # micro samples at most 8 tokens
    assert (root / "frontier.png").stat().st_size > 10_000 and (root / "frontier.pdf").exists()
    assert (root / "frontier_panels.png").stat().st_size > 10_000 and (root / "frontier_panels.pdf").exists()
    per_prompt = json.loads((root / "eval" / "per_prompt.json").read_text())
    assert per_prompt["splits"] == {"test": [0, 16], "select": [16, 24]}
    assert len(per_prompt["points"]) == len(points) + 1 and all(
        len(v["reward"]) == 24 for v in per_prompt["points"].values())


def test_report_opens_on_the_verdict_and_has_every_table(micro_run):
    _, root, _ = micro_run
    md = (root / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Verdict", "## Per method"]
    for heading in ("## Reward vs KL", "## Training checks", "## Reward model and ground truth", "## Compute",
                    "## Samples", "## Protocol"):
        assert any(h.startswith(heading) for h in headings), heading
    # one sentence and one table row per comparison and measure, each with its interval and word
    verdict = md[md.index("## Verdict"):md.index("## Per method")]
    pairs = ("DPO vs PPO", "DPO vs PPO-GT", "PPO vs PPO-GT", "DPO vs Unlikelihood", "DPO vs Preferred-FT")
    measures = ("KL <= 0.02", "KL <= 0.05", "KL <= 0.1", "front area, KL 0-0.1")  # micro's budgets
    table = [line for line in verdict.splitlines() if line.startswith("| ") and " vs " in line]
    assert [tuple(c.strip() for c in line.split("|")[1:3]) for line in table] == \
        [(p, m) for p in pairs for m in measures]
    summary = json.loads((root / "report" / "summary.json").read_text())
    for line in table:
        name, measure, estimate, interval, seeds, word = [c.strip() for c in line.split("|")[1:7]]
        low, high = (float(x) for x in interval.strip("[]").split(","))
        assert low <= float(estimate) <= high and seeds == "2"
        a, b = (m.lower() for m in name.split(" vs "))
        why = summary["comparisons"][f"{a} - {b}"][measure]["not_covered"]
        if why:  # a side's checkpoints do not cover the budget: no word, the reason
            assert word == f"not compared: {why}" and why.split(" ")[0] in name
        else:
            assert word == "not resolved" if low <= 0 <= high else word.endswith(" ahead")
    said = [line for line in verdict.splitlines() if line.startswith("- ")]  # one sentence per comparison
    assert [line[2:line.index(" (")] for line in said] == list(pairs)
    assert "the SFT model, the pairs and the reward model are one draw, held fixed" in verdict  # what they cover
    assert all(line.count("at KL <= ") == 3 and "on the front area (KL 0-0.1)" in line for line in said)
    assert "](frontier_bands.png)" in md and (root / "frontier_bands.png").stat().st_size > 10_000
    for label in ("| SFT |", "| DPO | 2 | 4 |", "| PPO | 2 | 2 |", "| PPO-GT |", "| Unlikelihood | 2 | 2 |",
                  "| Preferred-FT | 2 | 2 |"):
        assert label in md, label
    rm = json.loads((root / "reward_model" / "manifest.json").read_text())["metrics"]
    assert f"| reward model: held-out pair accuracy | {rm['heldout_pair_accuracy']:.3f} |" in md
    assert "| `dpo.betas` | [0.05, 0.1, 1.0, 5.0] | [0.1, 1.0] | differs |" in md
    assert "| `seeds` | 1 | 2 | differs |" in md
    assert "](frontier.png)" in md and (root / "report" / "frontier.png").exists()
    html = (root / "report.html").read_text()
    assert "](overoptimisation.png)" in md and (root / "overoptimisation.png").stat().st_size > 10_000
    assert html.count("data:image/png;base64,") == 4 and html.count("<table>") == sum(line.startswith("| --- |") for line in md.splitlines()) == 8
    # every PPO run against its target, every DPO run's held-out loss, the unlikelihood term's size
    for run in ("| ppo-kl2-seed0 | final KL ", "| ppo-gt-kl2-seed1 | final KL ",
                "| dpo-beta0.1-seed0 | held-out DPO loss by checkpoint ", "| unlikelihood-alpha0.5-seed1 | unlikelihood term "):
        assert run in md, run
    # each method's budget a run: completions sampled (PPO: 4 steps x 16 rollouts), pairs seen (DPO: 6 steps x 8)
    compute = md[md.index("## Compute"):].split("\n\n")[1]  # its first table
    budget = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[6:9]] for line in compute.splitlines()[2:]}
    assert budget["PPO"][:2] == ["64", "-"] and budget["DPO"][:2] == ["0 (the pairs')", "48"]
    assert all(float(b[2]) > 0 for b in budget.values() if b[2] != "-")


def test_pairs_are_oriented_and_prompts_have_2_to_8_tokens(micro_run):
    from datasets import load_from_disk

    _, root, _ = micro_run
    pairs = load_from_disk(str(root / "pairs" / "dataset"))
    assert len(pairs) > 0
    assert all(c > r for c, r in zip(pairs["score_chosen"], pairs["score_rejected"]))
    assert all(2 <= len(p) <= 8 for p in pairs["prompt_ids"])
    assert set(pairs.column_names) >= {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    gt = json.loads((root / "ground_truth" / "manifest.json").read_text())["metrics"]
    assert gt["heldout_accuracy"] > 0.7  # 2000 training reviews at micro scale


def test_a_second_run_trains_nothing(micro_run):
    run_dir, root, _ = micro_run
    before = {s: json.loads((root / s / "manifest.json").read_text())["identity"] for s in STAGES}
    start = time.time()
    proc = cli("run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert time.time() - start < 30
    assert proc.stderr.count("up to date, skipped") == len(STAGES)
    assert before == {s: json.loads((root / s / "manifest.json").read_text())["identity"] for s in STAGES}


def test_changing_dpo_reruns_dpo_eval_and_report_only(micro_copy, tmp_path):
    run_dir, root = micro_copy  # a private copy: the shared micro run keeps the shipped config for other tests
    before = {s: json.loads((root / s / "manifest.json").read_text())["identity"] for s in STAGES}
    old = [r for r in rows(root / "frontier.csv") if r["method"] != "dpo"]
    path = write_config(tmp_path / "bench.toml", scale_overrides("micro", dpo={"betas": [0.1, 1.0, 5.0]}))
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    assert "[dpo] DPO (dpo) from the pairs, one run per beta and seed (micro scale) - runs because config changed: " \
           "dpo.betas\n" in proc.stderr
    after = {s: json.loads((root / s / "manifest.json").read_text())["identity"] for s in STAGES}
    assert [s for s in STAGES if before[s] != after[s]] == ["dpo", "eval", "report"]
    new = rows(root / "frontier.csv")
    assert {r["run"] for r in new if r["method"] == "dpo"} == {f"beta{b}-seed{s}" for b in ("0.1", "1", "5") for s in (0, 1)}
    # eval evaluated beta 5's checkpoints only: every other point is the last evaluation's (DPO's betas 0.1 and 1
    # were retrained to the same weights: same seed and data), and the points of the other methods are unchanged
    assert [r for r in new if r["method"] != "dpo"] == old
    metrics = json.loads((root / "eval" / "manifest.json").read_text())["metrics"]
    assert metrics["points"] == len(new) // 2  # checkpoints (and SFT), each a test and a select row
    assert metrics["points_reused"] == len([r for r in new if not r["run"].startswith("beta5") and r["split"] == "test"])


def test_a_changed_eval_config_evaluates_every_point_again(micro_copy, tmp_path):
    run_dir, root = micro_copy
    table = config_data()["imdb-sentiment"]["scales"]["micro"]["eval"]
    assert {k: table[k] for k in ("prompts", "select_prompts", "max_new_tokens")} == {
        "prompts": 16, "select_prompts": 8, "max_new_tokens": 8}
    path = write_config(tmp_path / "bench.toml", scale_overrides("micro", eval={"max_new_tokens": 6}))
    cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", run_dir=run_dir, check=True)
    metrics = json.loads((root / "eval" / "manifest.json").read_text())["metrics"]
    assert metrics["points_reused"] == 0 and metrics["points"] == len(rows(root / "frontier.csv")) // 2


def test_reward_model_is_normalised_and_reports_its_diagnostics(micro_run):
    _, root, _ = micro_run
    m = json.loads((root / "reward_model" / "manifest.json").read_text())["metrics"]
    assert abs(m["normalized_train_mean"]) < 1e-4 and m["scale"] > 0  # std-normalised (normalize_scale)
    assert 0 <= m["heldout_pair_accuracy"] <= 1 and -1 <= m["spearman_with_ground_truth"] <= 1
    assert json.loads((root / "reward_model" / "reward.json").read_text()) == {
        "shift": m["shift"], "scale": m["scale"], "pooling": "mean"}
    pairs = json.loads((root / "pairs" / "manifest.json").read_text())["metrics"]
    assert m["heldout_pairs"] == pairs["heldout_pairs"] > 0  # the pairs stage's held-out prompts


def test_dpo_reports_its_held_out_loss_at_every_checkpoint_and_trains_on_training_prompts_only(micro_run):
    from datasets import load_from_disk

    _, root, _ = micro_run
    for run in json.loads((root / "dpo" / "runs.json").read_text()):
        assert [h["step"] for h in run["heldout"]] == [c["step"] for c in run["checkpoints"]]
        assert all(h["loss"] > 0 and 0 <= h["reward_accuracy"] <= 1 for h in run["heldout"])
        assert abs(run["step0_margin"]) < 1e-4  # at step 0 the trainer's log-probs are the pairs' reference ones
    for run in json.loads((root / "unlikelihood" / "runs.json").read_text()):  # log p(y_l) by checkpoint
        assert [h["step"] for h in run["heldout_logps"]] == [c["step"] for c in run["checkpoints"]]
        assert all(h["rejected_logp"] < 0 and h["chosen_logp"] < 0 for h in run["heldout_logps"])
    data = load_from_disk(str(root / "pairs" / "dataset"))
    held = {tuple(p) for p, h in zip(data["prompt_ids"], data["heldout"]) if h}
    assert held and held.isdisjoint(tuple(p) for p, h in zip(data["prompt_ids"], data["heldout"]) if not h)


@pytest.mark.parametrize("value_model", ["reward_model", "policy_head"])
def test_ppo_gt_raises_ground_truth_reward(micro_run, tmp_path, value_model):
    """PPO on the ground truth, long enough to learn (40 steps of 32 rollouts, seconds at micro scale)."""
    import shutil

    _, root, _ = micro_run
    store = tmp_path / "runs"
    shutil.copytree(root, store / "imdb-sentiment" / "micro")
    ppo = {"target_kls": [10.0], "rollouts_per_step": 32, "minibatch_size": 16, "ppo_epochs": 2, "steps": 40,
           "learning_rate": 3e-3, "value_learning_rate": 3e-3, "init_kl_coef": 0.01, "max_new_tokens": 8,
           "eval_every": 40, "value_model": value_model}
    assert ppo.keys() >= config_data()["imdb-sentiment"]["scales"]["micro"]["ppo"].keys()  # every micro key replaced
    path = write_config(tmp_path / "bench.toml", scale_overrides("micro", methods=["ppo-gt"], ppo=ppo))
    cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", "--stages", "ppo", "--seeds", "1",
        run_dir=store, check=True)
    log = [json.loads(line) for line in (store / "imdb-sentiment/micro/ppo/ppo-gt-kl10-seed0/log.jsonl").open()]
    first, last = [r["score"] for r in log[:3]], [r["score"] for r in log[-5:]]
    assert sum(last) / 5 > sum(first) / 3 + 0.1, (first, last)
    assert log[-1]["kl"] > log[0]["kl"]


def micro_with(tmp_path, keys: dict, *args: str) -> Path:
    """A fresh micro run whose scale has more top-level keys ({"seed": 1, "reseed_shared": True}), run with the
    command line's `args` too. -> its folder."""
    path = write_config(tmp_path / "micro_with.toml", scale_overrides("micro", **keys))
    cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", *args, run_dir=tmp_path / "runs",
        check=True)
    return tmp_path / "runs" / "imdb-sentiment" / "micro"


@pytest.mark.parametrize("stage", ["dpo", "preferred_ft"])
def test_a_non_finite_loss_stops_the_stage_naming_the_step(micro_run, tmp_path, stage):
    """R5: TRL's trainer (dpo) and our loop (preferred_ft) stop on a NaN/inf loss; nothing is marked finished."""
    import shutil

    _, root, _ = micro_run
    store = tmp_path / "runs"
    shutil.copytree(root, store / "imdb-sentiment" / "micro")
    shutil.rmtree(store / "imdb-sentiment" / "micro" / stage)
    path = write_config(tmp_path / "bench.toml", scale_overrides("micro", **{stage: {"learning_rate": 1e30}}))
    proc = cli("--config", str(path), "run", "imdb-sentiment", "--scale", "micro", "--stages", stage, run_dir=store)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr.splitlines()[-1]
    assert f"stage {stage} failed" in proc.stderr and " at step " in proc.stderr
    assert not (store / "imdb-sentiment" / "micro" / stage).exists()  # not marked finished


def test_eval_refuses_a_checkpoint_with_non_finite_weights(micro_copy):
    """A checkpoint with a NaN weight (a step can leave one behind a finite loss) never becomes a frontier
    point: eval stops with one line naming the run and step, and frontier.csv keeps the last good one."""
    from safetensors.torch import load_file, save_file

    store, root = micro_copy
    before = (root / "frontier.csv").read_text()
    weights_file = root / "dpo" / "beta0.1-seed0" / "checkpoint-6" / "model.safetensors"
    weights = load_file(str(weights_file))
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name][0] = float("nan")  # as if the stage had written it: its manifest records it
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    record_in_manifest(root / "dpo", "beta0.1-seed0/checkpoint-6/model.safetensors")
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--stages", "eval", "--force", run_dir=store)
    assert proc.returncode == 1
    assert "dpo beta0.1-seed0 step 6: KL or reward is not finite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (root / "frontier.csv").read_text() == before


def test_every_method_another_seed_and_reseed_shared(micro_run, tmp_path):
    """--methods all with two workers: every method of core/methods.py in frontier.csv for both seeds and in the
    report, PPO and the pair methods with an early checkpoint, stages side by side. seed = 1
    reaches the results (the same seed from scratch reproduces frontier.csv byte for byte: the last check of
    test_faults' kill test). reseed_shared: every training seed has its own SFT model, pairs and reward model
    (seed 0's trains with the benchmark's seed, as the shared one does: core.run.training_seed), each seed's
    checkpoints are measured against their own SFT model, and the verdict rests on both seeds."""
    from safetensors.torch import load_file

    from core.methods import METHODS, label

    _, _, first = micro_run
    root = micro_with(tmp_path, {"seed": 1, "reseed_shared": True, "ppo": {"eval_every": 4, "early_checkpoints": [1]},
                                 "dpo": {"early_checkpoints": [1]}}, "--methods", "all", "--workers", "2")
    assert (root / "frontier.csv").read_text() != first
    assert_side_by_side_within_two_workers(root)
    weights = [load_file(str(root / "sft" / f"seed{k}" / "model.safetensors")) for k in (0, 1)]
    assert not all(weights[0][name].equal(weights[1][name]) for name in weights[0])
    for stage, marker in (("pairs", "dataset"), ("reward_model", "reward.json")):
        for k in (0, 1):
            assert (root / stage / f"seed{k}" / marker).exists() and (root / stage / f"seed{k}" / "metrics.json").exists()
    means = [json.loads((root / "pairs" / f"seed{k}" / "metrics.json").read_text())["sft_reward_mean"] for k in (0, 1)]
    assert means[0] != means[1]  # another model's samples
    table = rows(root / "frontier.csv")
    sft = {(r["run"], r["seed"], r["split"]) for r in table if r["method"] == "sft"}
    assert sft == {(f"seed{k}", str(k), split) for k in (0, 1) for split in ("test", "select")}
    assert all(float(r["kl"]) == 0.0 for r in table if r["method"] == "sft")  # each against itself
    # PPO's checkpoints: every eval_every steps, and its early ones (tiny's step 2, below KL 2)
    assert {r["step"] for r in table if r["method"] == "ppo" and r["split"] == "test"} == {"1", "4"}
    # the pair methods' early ones, in our loop (dpo, ipo) and through a TRL trainer's callback (kto, simpo), which
    # inherit [dpo]'s: every 3 steps of 6, and step 1
    for method in ("dpo", "ipo", "kto", "simpo"):
        assert {r["step"] for r in table if r["method"] == method and r["split"] == "test"} == {"1", "3", "6"}, method
    md = (root / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Per method") and "(2 seeds)" in md
    # the SFT row: both seeds' SFT models, their mean with an interval (not seed 0's alone)
    sft_cells = next(line for line in md.splitlines() if line.startswith("| SFT |")).split(" | ")
    assert sft_cells[1:4] == ["2", "2", "2"] and "each seed's own SFT model" in sft_cells[4]
    sft_test = [float(r["reward"]) for r in table if r["method"] == "sft" and r["split"] == "test"]
    assert sft_cells[4].startswith(f"{sum(sft_test) / 2:.3f} [")
    assert "| SFT (seed0's) |" in md  # the samples table's SFT: one of the seeds' models, said which
    assert "each of which redraws its own SFT model, pairs and reward model" in md  # what the intervals cover
    config = json.loads((root / "ppo" / "manifest.json").read_text())["config"]
    assert config["per_seed_stages"] == ["sft", "pairs", "reward_model"] and config["seeds"] == 2
    points = {(r["method"], r["seed"]) for r in table if r["split"] == "test"}
    assert points >= {(m, str(k)) for m in METHODS for k in (0, 1)}
    bon_test = [r for r in table if r["method"] == "best-of-n-gt" and r["split"] == "test"]
    assert sorted(int(r["param"]) for r in bon_test if r["seed"] == "0") == [1, 4, 16]  # micro's ns: a point per N
    bon = {int(r["param"]): r for r in bon_test if r["seed"] == "1"}
    assert float(bon[1]["kl"]) == 0 and abs(float(bon[16]["kl"]) - (math.log(16) - 15 / 16)) < 1e-5
    assert float(bon[16]["reward"]) > float(bon[1]["reward"])  # choosing by the ground truth raises it
    per_method = md[md.index("## Per method"):]
    assert all(f"| {label(m)} |" in per_method for m in METHODS)
    rm = [m["heldout_pair_accuracy"] for m in
          json.loads((root / "reward_model" / "manifest.json").read_text())["metrics"]["per_seed"]]
    assert f"| reward model: held-out pair accuracy (seed 0 / 1 / ...: each trained its own) | {rm[0]:.3f} / " \
           f"{rm[1]:.3f} |" in md
    for k in (0, 1):  # each DPO run's implicit-reward accuracy beside its own seed's reward model
        row = next(line for line in md.splitlines() if line.startswith(f"| dpo-beta0.1-seed{k} | held-out"))
        assert f"(the reward model's on these pairs: {rm[k]:.2f})" in row
    from bench.flops import stage_flops  # each seed's SFT model, pairs and reward model counted: twice one seed's

    counted, sft = stage_flops(root), json.loads((root / "sft" / "manifest.json").read_text())
    assert len(sft["metrics"]["per_seed"]) == 2
    one = stage_flops(root)["sft"] / 2
    c = sft["config"]["sft"]
    from core.flops import forward_flops_per_token

    assert one == pytest.approx(3 * forward_flops_per_token(c["n_layer"], c["n_embd"], c["max_length"] / 2,
                                                            c["vocab_size"]) * sft["metrics"]["steps"] *
                                c["batch_size"] * c["max_length"])
    assert counted["online_dpo"] > 0 and counted["best_of_n"] > 0
