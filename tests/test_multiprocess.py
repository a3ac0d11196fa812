"""Several processes per stage (accelerate launch, DDP or FSDP2 over gloo on this CPU) compute what one process does.

The tolerance, and why:
- DPO, Unlikelihood, Preferred-FT train off-policy on fixed pairs. The pairs are the same (each row's
  sample is fixed by its seed, core/lm.sample_seeds), each process's loss is its share of the batch mean,
  and DDP averages the gradients: the only difference is the order of float additions (an all-reduce
  instead of one sum), about 1e-7 relative per step. Their checkpoints sample the same tokens, so reward
  agrees to 1e-6 and KL to 1e-3 relative (float noise of ~1e-6, amplified by a few optimizer steps).
- PPO samples from the policy it is training. A float-level difference in the weights can, rarely, flip
  one sampled token (a uniform landing within ~1e-7 of a CDF boundary), and from then on the two runs are
  different random draws of the same process. So PPO points must agree within 3 combined standard errors
  (reward and KL), which a real difference in the algorithm (e.g. a mis-scaled gradient) would break.
"""

import csv
import math
import sys

import pytest

from helpers import ROOT, cli
from pipelines.config import ConfigError
from pipelines.launch import Launch
from pipelines.stages import STAGES

OFF_POLICY = {"sft", "dpo", "unlikelihood", "preferred-ft"}


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(text.splitlines()))


@pytest.fixture(scope="session")
def two_process_run(two_process_offline_wandb_run):
    """The micro run with --nproc 2 (wandb offline in it: tests/test_wandb.py reads the same run)."""
    _, root, frontier, log = two_process_offline_wandb_run
    return root, frontier, log


def assert_same_frontier(one: list[dict], two: list[dict]) -> None:
    """The same rows (methods, runs, checkpoints, prompts), within the tolerances above."""
    key = lambda r: (r["method"], r["run"], r["param"], r["step"], r["n"])  # noqa: E731
    assert [key(r) for r in one] == [key(r) for r in two]
    for a, b in zip(one, two):
        x = {k: float(a[k]) for k in ("kl", "kl_se", "reward", "reward_se")}
        y = {k: float(b[k]) for k in ("kl", "kl_se", "reward", "reward_se")}
        if a["method"] in OFF_POLICY:
            assert y["reward"] == pytest.approx(x["reward"], abs=1e-6), (a, b)
            assert y["kl"] == pytest.approx(x["kl"], rel=1e-3, abs=1e-6), (a, b)
        else:
            for m in ("reward", "kl"):
                assert abs(x[m] - y[m]) <= 3 * math.hypot(x[f"{m}_se"], y[f"{m}_se"]), (m, a, b)


def test_two_processes_give_the_one_process_frontier(micro_run, two_process_run):
    one, two = _rows(micro_run[2]), _rows(two_process_run[1])
    assert {r["method"] for r in one} == OFF_POLICY | {"ppo", "ppo-gt"}
    assert_same_frontier(one, two)


def test_fsdp_on_two_cpu_processes_gives_the_ddp_frontier(two_process_run, tmp_path):
    """configs/accelerate/fsdp.yaml on 2 CPU processes: SFT and the reward model (TRL's trainers), DPO (the pairs
    loop) and PPO (our loop) each shard their models with FSDP2 over gloo (core.dist.fsdp_on_cpu), and the frontier
    is the DDP run's within the tolerances above (measured 2026-12-07: rewards equal, KL within 4e-5 relative; with
    two processes a reduce-scatter adds the same two numbers an all-reduce does, the sharded gradient norm adds its
    squares in another order). PPO killed after a checkpoint resumes to the same weights, byte for byte."""
    import shutil

    ddp_root, ddp_frontier, _ = two_process_run
    root = tmp_path / "runs" / "imdb-sentiment" / "micro"
    shutil.copytree(ddp_root / "ground_truth", root / "ground_truth")  # no LM in it
    args = ["run", "imdb-sentiment", "--scale", "micro", "--methods", "dpo,ppo", "--device", "cpu",
            "--accelerate-config", str(ROOT / "configs" / "accelerate" / "fsdp.yaml")]
    proc = cli(*args, run_dir=tmp_path / "runs", check=True)
    for stage in ("sft", "reward_model", "dpo", "ppo"):
        assert f"[{stage} 0/2] FSDP2 on the CPU: 2 processes" in proc.stderr, stage
    fsdp = _rows((root / "frontier.csv").read_text())
    methods = {r["method"] for r in fsdp}
    assert methods >= {"sft", "dpo", "ppo"}
    assert_same_frontier([r for r in _rows(ddp_frontier) if r["method"] in methods], fsdp)
    # its sharded models and optimizers saved whole (core.run.full_state) and loaded back sharded: the same weights
    weights = {p.relative_to(root): p.read_bytes() for p in (root / "ppo").glob("*/checkpoint-*/model.safetensors")}
    shutil.rmtree(root / "ppo")
    shutil.rmtree(root / ".runs" / "ppo", ignore_errors=True)  # kept runs: trained again
    args += ["--stages", "ppo"]
    killed = cli(*args, run_dir=tmp_path / "runs", env={"PIPELINES_KILL_AFTER_CHECKPOINT": "ppo-kl2-seed1/checkpoint-2"})
    assert killed.returncode == 1, killed.stderr[-3000:]
    resumed = cli(*args, run_dir=tmp_path / "runs", check=True)
    assert "ppo-kl2-seed1: resuming after step 2" in resumed.stderr
    assert len(weights) == 4 and all((root / path).read_bytes() == data for path, data in weights.items())


def test_the_training_stages_ran_as_two_processes(two_process_run):
    import json

    from pipelines import config as C
    from pipelines.stages import stages

    root, _, log = two_process_run
    for stage in stages(C.load("imdb-sentiment", "micro")).values():  # the default methods' stages
        manifest = json.loads((root / stage.name / "manifest.json").read_text())
        assert manifest["processes"] == (2 if stage.multiprocess else 1), stage.name
    assert "-m core.launch" in log and "--num_processes 2" in log


def test_launch_commands():
    sft, report = STAGES["sft"], STAGES["report"]
    assert Launch().command(sft) == [sys.executable, "-m", "sft"]
    cmd = Launch(processes=4).command(sft)
    assert cmd[1:3] == ["-m", "core.launch"] and cmd[-2:] == ["-m", "sft"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd
    config = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    cmd = Launch(accelerate_config=config).command(STAGES["unlikelihood"])
    assert cmd[cmd.index("--config_file") + 1] == str(config) and cmd[-2:] == ["-m", "dpo.relatives"]
    assert "--num_processes" not in cmd  # the config file's count
    assert Launch(processes=4).command(report) == [sys.executable, "-m", "report"]  # one process: no training


def test_stages_alone_in_the_graph_take_every_worker_and_the_others_one():
    """sft, pairs and eval cannot run beside another training stage: they get the workers as processes (as
    many as split their batches); the method stages get one each and run side by side."""
    from pipelines import config as C
    from pipelines.stages import SOLO, stage_config

    assert SOLO == {"sft", "pairs", "eval"}
    cfg = C.load("imdb-sentiment", "micro")
    counts = lambda launch: {s.name: launch.processes_for(s, stage_config(cfg, s)) for s in STAGES.values()}  # noqa
    assert counts(Launch(workers=2)) == {**{name: 1 for name in STAGES}, "sft": 2, "pairs": 2, "eval": 2}
    assert counts(Launch(workers=3))["sft"] == 2  # sft.batch_size = 16: the most processes that split it
    assert counts(Launch(workers=3))["pairs"] == 3  # no batch to split
    assert set(counts(Launch(workers=1)).values()) == {1}
    fixed = counts(Launch(processes=2, workers=8))
    assert fixed["dpo"] == fixed["sft"] == 2 and fixed["report"] == 1
    assert Launch(workers=2).command(STAGES["dpo"], stage_config(cfg, STAGES["dpo"]))[1:] == ["-m", "dpo"]
    cmd = Launch(workers=2).command(STAGES["sft"], stage_config(cfg, STAGES["sft"]))
    assert cmd[cmd.index("--num_processes") + 1] == "2"


def test_workers_default_to_the_cores_over_the_torch_threads(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert Launch(device="cpu").resolved(torch_threads=1).workers == 8
    assert Launch(device="cpu").resolved(torch_threads=4).workers == 2
    assert Launch(device="cpu").resolved(torch_threads=0).workers == 1  # torch's own threads use every core
    assert Launch(device="cuda").resolved(torch_threads=1).workers == 1
    assert Launch(device="cpu", workers=3).resolved(torch_threads=1).workers == 3


@pytest.mark.parametrize("args, message", [
    (dict(processes=0), "need at least 1 process"),
    (dict(workers=0), "--workers 0: need at least 1"),
    (dict(device="gpu"), "allowed cpu, cuda, cuda:<index>, mps"),
    (dict(accelerate_config="configs/accelerate/nope.yaml"), "shipped: ddp.yaml, fsdp.yaml, zero2.yaml, zero3.yaml"),
])
def test_bad_launch_settings_are_refused(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Launch(**args)


def test_bad_nproc_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--nproc", "0", run_dir=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --nproc 0: need at least 1 process"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero2", "DEEPSPEED"),
                                        ("zero3", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == kind and config.mixed_precision == "no"


def test_a_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch):
    from core import dist

    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="dpo.batch_size = 8 does not split over 3 processes"):
        dist.per_process("dpo.batch_size", 8)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist.per_process("dpo.batch_size", 8) == 4


def test_blocks_cover_the_items_in_order():
    from core import dist

    for n in (0, 1, 5, 16):
        for size in (1, 2, 3):
            blocks = [dist.block(n, r, size) for r in range(size)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.parametrize("args,message", [
    (["--nproc", "3"], "--nproc 3: sft.batch_size = 16 does not split over 3 processes"),
    (["--nproc", "3", "--stages", "ppo"], "--nproc 3: ppo.rollouts_per_step = 16 does not split over 3 processes"),
    (["--nproc", "3", "--methods", "grpo", "--stages", "grpo"],
     "--nproc 3: grpo.prompts_per_step = 4 does not split over 3 processes"),
    (["--accelerate-config", "BAD"], "not a YAML mapping of accelerate settings"),
    (["--accelerate-config", "THREE"], "--nproc 3: sft.batch_size = 16 does not split over 3 processes"),
    (["--accelerate-config", "ZERO"], "num_processes = 0; allowed: an integer >= 1"),
])
def test_launch_that_a_stage_would_refuse_is_refused_before_anything_runs(tmp_path, args, message):
    """Every stage's batches are checked against the process count up front (not in the stage, after the
    stages before it have run), and an accelerate config must be YAML."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_processes: [2\n  : : tabs\t:")
    (tmp_path / "three.yaml").write_text("distributed_type: MULTI_CPU\nnum_processes: 3\n")
    (tmp_path / "zero.yaml").write_text("num_processes: 0\n")
    files = {"BAD": bad, "THREE": tmp_path / "three.yaml", "ZERO": tmp_path / "zero.yaml"}
    args = [str(files.get(a, a)) for a in args]
    proc = cli("run", "imdb-sentiment", "--scale", "micro", *args, run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["fsdp1.yaml", "zero3.yaml"])
def test_a_sharding_config_the_cpu_cannot_shard_is_refused_not_silently_ddp(name, tmp_path):
    """accelerate on the CPU turns a sharding config into DDP (MULTI_CPU); our stages switch FSDP version 2 back
    (the test above), DeepSpeed and FSDP version 1 are refused in one line, before any stage runs."""
    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text().replace("fsdp_version: 2",
                                                                                         "fsdp_version: 1"))
    config = fsdp1 if name == "fsdp1.yaml" else ROOT / "configs" / "accelerate" / name
    proc = cli("run", "imdb-sentiment", "--scale", "micro", "--device", "cpu", "--accelerate-config", str(config),
               run_dir=tmp_path / "runs")
    assert proc.returncode == 2 and "would silently be DDP" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


LOCKSTEP = """
import os, sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
from core import dist, lm
from core.train import loop_accelerator
from helpers import toy_lm

acc = loop_accelerator()
assert acc.is_fsdp2, acc.distributed_type
model = toy_lm(0, vocab=3)
model, _ = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0))  # FSDP2 takes a model with its optimizer
prompts, seeds = [[0, 1], [0, 1]], [7, 7]  # two identical rows
first = lm.sample_completions(model, prompts, 6, 99, 2, seeds)  # 99: never sampled, no row stops
eos = first[0][0] if dist.rank() == 0 else 99  # process 0's rows stop at their first token, process 1's never
out = lm.sample_completions(model, prompts, 6, eos, 2, seeds)
dist.barrier()
assert out == ([[eos], [eos]] if dist.rank() == 0 else first), out
sys.stdout.write(f"rank {{dist.rank()}} ok {{out}}\\n")  # one write: the two processes share the pipe
sys.stdout.flush()
dist.close()  # as a stage ends (core.job): leaving while a peer still reads makes it abort
"""


def test_sampling_from_a_sharded_model_keeps_the_processes_in_step(tmp_path):
    """FSDP2's forward gathers each block's weights from every process, so a process whose rows all stopped must not
    leave the token loop before the others (core.lm.sample_completions: lockstep): here process 0's rows stop at
    their first token and process 1's run all 6; without the lockstep process 0 reaches the barrier while process 1
    waits in a forward's all-gather, and gloo aborts (or hangs)."""
    import os
    import subprocess

    script = tmp_path / "lockstep.py"
    script.write_text(LOCKSTEP.format(root=str(ROOT), tests=str(ROOT / "tests")))
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "PIPELINES_DEVICE": "cpu",
           "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=120)  # a hang: fails here
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" ok ") == 2, proc.stdout
