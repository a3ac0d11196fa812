"""The stage graph and how a stage is run.

Each stage is a folder with a `python -m <stage> <job.json>` command. The spine never imports a stage:
it writes the stage's job (its config sections, the folders of its inputs, where to write), runs the
command in a child process, and on success writes the manifest and renames the folder into place.
A stage is skipped when its manifest records the same config hash and the same input identities.
Asked for several processes (Launch), the stages that train or sample run under `accelerate launch`;
the process count is not part of the config hash: N processes compute what one does (core/dist.py).
A stage that samples with vLLM runs in one process, and its config names the sampler ("auto" resolved):
vLLM's draws are other draws of the same distribution, so a cached HF sample is not reused for it.
"""

from __future__ import annotations

import dataclasses
import filecmp
import importlib.util
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import store
from core.methods import METHODS
from core.tracking import job_tracking

from .config import PAIR_SECTIONS, SECTIONS, BenchmarkConfig, ConfigError, flatten, stable_hash

log = logging.getLogger("pipelines")


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # config sections the stage reads (its config hash covers exactly these)
    needs: tuple[str, ...] = ()  # upstream stages whose folders it reads
    publish: tuple[str, ...] = ()  # files copied to runs/<benchmark>/<scale>/ when it finishes
    what: str = ""
    module: str = ""  # the command is `python -m <module>` (default: the stage's name)
    multiprocess: bool = True  # runs under `accelerate launch` when several processes are asked for
    split: tuple[str, ...] = ()  # config keys (section.key) whose batches are split evenly over the processes
    seeded: bool = False  # a method stage: trains every run once per training seed (its config holds `seeds`)
    revision: int = 0  # raised when a fix changes what the stage computes: its finished folders are then stale


ONLINE = ("rloo", "grpo", "online_dpo")  # the online methods' stages (python -m online)

# In topological order, and in the order ready stages start: the reward model and PPO, the longest chain, and the online
# methods before DPO and its relatives, so that the slowest stages do not start last.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("sft", ("data", "sft", "train"), what="fine-tune a causal LM on IMDb reviews",
              split=("sft.batch_size",)),
        Stage("ground_truth", ("data", "ground_truth"), what="the sentiment scorer, reward = P(positive)",
              multiprocess=False),
        Stage("pairs", ("data", "pairs", "ground_truth"), needs=("sft", "ground_truth"),
              what="4 SFT samples per prompt, all pairs labelled by the ground truth"),
        Stage("reward_model", ("reward_model", "train"), needs=("sft", "pairs"),
              what="Bradley-Terry reward model on the pairs, normalised on SFT samples",
              split=("reward_model.batch_size",)),
        Stage("ppo", ("data", "ppo", "ground_truth", "train"), needs=("sft", "ground_truth", "pairs", "reward_model"),
              what="PPO on the learned reward (ppo) and on the ground truth (ppo-gt)",
              split=("ppo.rollouts_per_step", "ppo.minibatch_size"), seeded=True),
        # revision 1: left-padded rows scored at their own positions (lm.positions_from_mask)
        *(Stage(name, ("data", name, "ground_truth", "train"), needs=("sft", "ground_truth", "pairs", "reward_model"),
                what=f"{what} (TRL) on the learned reward and on the ground truth, one run per beta", module="online",
                split=(f"{name}.prompts_per_step",), seeded=True, revision=1)
          for name, what in (("rloo", "RLOO"), ("grpo", "GRPO"), ("online_dpo", "Online DPO"))),
        Stage("dpo", ("dpo", "train"), needs=("sft", "pairs"), what="DPO, one run per beta",
              split=("dpo.batch_size",), seeded=True),
        Stage("unlikelihood", ("unlikelihood", "train"), needs=("sft", "pairs"), module="dpo.relatives",
              what="Unlikelihood on the pairs, one run per alpha", split=("unlikelihood.batch_size",), seeded=True),
        Stage("preferred_ft", ("preferred_ft", "train"), needs=("sft", "pairs"), module="dpo.relatives",
              what="Preferred-FT: fine-tuning on the chosen completions", split=("preferred_ft.batch_size",),
              seeded=True),
        *(Stage(name, (name, "train"), needs=("sft", "pairs"), module="dpo", what=f"{METHODS[name].label} on the "
                f"pairs (TRL), one run per beta", split=(f"{name}.batch_size",), seeded=True)
          for name in PAIR_SECTIONS),
        Stage("best_of_n", ("data", "eval", "best_of_n", "ground_truth"), needs=("sft", "ground_truth", "reward_model"),
              what="Best-of-N from the SFT model, by the reward model and by the ground truth (nothing trained)",
              seeded=True),
        Stage("eval", ("data", "eval", "ground_truth"),
              needs=("sft", "ground_truth", "reward_model", "dpo", "unlikelihood", "preferred_ft", "ppo",
                     *PAIR_SECTIONS, *ONLINE, "best_of_n"),
              publish=("frontier.csv", "frontier.png", "frontier.pdf", "frontier_panels.png", "frontier_panels.pdf"),
              what="sample every checkpoint, score, exact KL to the SFT model, frontier"),
        # revision 1: summary.json carries each interval's variance and degrees of freedom (imdb-scaling reads them);
        # 2: it names its format (core.verdict.SUMMARY_FORMAT)
        Stage("report", tuple(SECTIONS), needs=("sft", "ground_truth", "pairs", "reward_model", "dpo", "unlikelihood",
                                            "preferred_ft", "ppo", *PAIR_SECTIONS, *ONLINE, "best_of_n", "eval"),
              publish=("report.md", "report.html", "frontier_bands.png", "frontier_bands.pdf", "overoptimisation.png",
                       "overoptimisation.pdf"),
              what="the verdict over seeds, tables, figures and samples of the whole run",
              multiprocess=False, revision=2),
    )
}


METHOD_STAGES = frozenset(m.stage for m in METHODS.values())


def stages(cfg: BenchmarkConfig) -> dict[str, Stage]:
    """The stages of this run: every stage but the method stages of methods it does not put on the frontier,
    which eval and report then do not wait for."""
    chosen = {METHODS[m].stage for m in cfg.methods}
    keep = [s for s in STAGES.values() if s.name not in METHOD_STAGES or s.name in chosen]
    names = {s.name for s in keep}
    return {s.name: dataclasses.replace(s, needs=tuple(n for n in s.needs if n in names)) for s in keep}


# Shared by every training seed unless reseed_shared: then each makes one artifact per seed (<stage>/seed<k>/)
RESEEDED = ("sft", "pairs", "reward_model")


@dataclass(frozen=True)
class Launch:
    """How stages are started.
    processes: per stage that trains or samples (`accelerate launch`, DDP unless an accelerate config file
      says otherwise: configs/accelerate/*.yaml). None (the default): as many as `workers` for a stage that
      runs alone in the graph (sft, pairs, eval: every other such stage is before or after it), one for the
      others, which then run side by side.
    workers: processes the run may keep busy at once; None: on a CPU, its cores over the scale's torch
      threads (2 on a 2-core machine at 1 thread); with a GPU, 1.
    device: PIPELINES_DEVICE for the stages (cpu, cuda, cuda:1, mps); None picks the GPU when there is one."""
    processes: int | None = None
    accelerate_config: Path | None = None
    device: str | None = None
    workers: int | None = None

    def __post_init__(self):
        if self.processes is not None and self.processes < 1:
            raise ConfigError(f"--nproc {self.processes}: need at least 1 process")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: need at least 1")
        if self.device is not None and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device {self.device!r}: allowed cpu, cuda, cuda:<index>, mps")
        if self.accelerate_config is not None:
            shipped = ", ".join(sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")))
            if not Path(self.accelerate_config).is_file():
                raise ConfigError(f"--accelerate-config {self.accelerate_config}: no such file (shipped: {shipped})")
            import yaml

            try:
                settings = yaml.safe_load(Path(self.accelerate_config).read_text(encoding="utf-8"))
            except (yaml.YAMLError, ValueError):
                settings = None
            if not isinstance(settings, dict):
                raise ConfigError(f"--accelerate-config {self.accelerate_config}: not a YAML mapping of accelerate "
                                  f"settings (shipped: {shipped})")
            n = settings.get("num_processes", 1)
            if type(n) is not int or n < 1:
                raise ConfigError(f"--accelerate-config {self.accelerate_config}: num_processes = {n!r}; allowed: "
                                  f"an integer >= 1")

    @property
    def fixed(self) -> bool:
        """Whether the user set the processes per stage (--nproc, or an accelerate config file)."""
        return self.processes is not None or self.accelerate_config is not None

    @property
    def count(self) -> int:
        """Processes per launched stage when fixed: --nproc, else the accelerate config file's num_processes."""
        if self.processes is not None and (self.processes > 1 or self.accelerate_config is None):
            return self.processes
        if self.accelerate_config is None:
            return 1
        import yaml

        return yaml.safe_load(Path(self.accelerate_config).read_text(encoding="utf-8")).get("num_processes", 1)

    def resolved(self, torch_threads: int) -> "Launch":
        """This launch with `workers` filled in for this machine."""
        if self.workers is not None:
            return self
        gpu = self.device.startswith(("cuda", "mps")) if self.device else _has_gpu()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = 1 if gpu or not torch_threads else max(1, cores // torch_threads)
        return dataclasses.replace(self, workers=workers)

    def processes_for(self, stage: Stage, config: dict | None = None) -> int:
        """How many processes the stage runs as: 1 for a stage that trains nothing or samples with vLLM
        (which batches the whole prompt set itself); the fixed count; else, for a stage alone in the graph,
        the most processes up to `workers` that split its batches evenly, and 1 for the others."""
        if not _launchable(stage, config):
            return 1
        if self.fixed:
            return self.count
        if stage.name not in SOLO:
            return 1
        sizes = [config[key.split(".")[0]][key.split(".")[1]] for key in stage.split] if config else []
        return max(n for n in range(1, (self.workers or 1) + 1) if all(size % n == 0 for size in sizes))

    def launches(self, stage: Stage, config: dict | None = None) -> bool:
        """Whether the stage runs under `accelerate launch`: several processes, or an accelerate config file,
        for a stage that trains or samples with our code."""
        return self.processes_for(stage, config) > 1 or (self.accelerate_config is not None
                                                         and _launchable(stage, config))

    def command(self, stage: Stage, config: dict | None = None) -> list[str]:
        module = ["-m", stage.module or stage.name]
        if not self.launches(stage, config):
            return [sys.executable, *module]
        cmd = [sys.executable, "-m", "core.launch", "--main_process_port", str(_free_port())]  # accelerate launch
        # no config: plain DDP (on a machine without GPUs accelerate runs it on the CPU, over gloo); precision is
        # each stage's own (TRL's bf16 on CUDA, our loops' autocast): accelerate's default "no", said outright
        cmd += ["--config_file", str(self.accelerate_config)] if self.accelerate_config else \
            ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
        if self.processes is not None or self.accelerate_config is None:  # else the config file's count
            cmd += ["--num_processes", str(self.processes_for(stage, config))]
        return cmd + module


def _launchable(stage: Stage, config: dict | None) -> bool:
    """Whether the stage can run on several processes: it trains or samples with our code (not vLLM, which
    batches the whole prompt set in one process)."""
    samples_with_vllm = any(isinstance(section, dict) and section.get("sampler") == "vllm"  # best_of_n: eval's
                            for section in (config or {}).values())
    return stage.multiprocess and not samples_with_vllm


def _has_gpu() -> bool:
    import torch  # only here: the spine starts fast without it

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def _descendants(name: str) -> set[str]:
    below = {s.name for s in STAGES.values() if name in s.needs}
    return below.union(*(_descendants(n) for n in below)) if below else set()


def _solo() -> frozenset[str]:
    """Multiprocess stages that can never run beside another multiprocess stage: each other one is upstream
    or downstream of it."""
    multi = [s.name for s in STAGES.values() if s.multiprocess]
    related = {n: _descendants(n) | {m for m in multi if n in _descendants(m)} for n in multi}
    return frozenset(n for n in multi if all(m == n or m in related[n] for m in multi))


SOLO = _solo()


ACCELERATE_CONFIGS = store.REPO_ROOT / "configs" / "accelerate"


def _free_port() -> int:
    """A free TCP port for the processes' rendezvous (two pipelines on one machine must not share one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def stage_config(cfg: BenchmarkConfig, stage: Stage, protocol: dict | None = None) -> dict:
    config = {"seed": cfg.seed}
    # the stages that read artifacts made one per training seed (<stage>/seed<k>/): only when re-seeded, so the
    # default configs (and their hashes) do not mention it
    reseeded = cfg.reseed_shared and (stage.seeded or stage.name in RESEEDED + ("eval", "report"))
    if stage.seeded or stage.name == "report" or reseeded:  # the methods train once per seed; the report's table
        config["seeds"] = cfg.seeds
    if reseeded:
        config["per_seed_stages"] = list(RESEEDED)
    hosted = [m for m, method in METHODS.items() if method.stage == stage.name]
    if len(hosted) > 1:  # a stage of several methods (ppo and ppo-gt) trains the chosen ones
        config["methods"] = [m for m in hosted if m in cfg.methods]  # in the registry's order: one hash for one set
    if stage.revision:
        config["revision"] = stage.revision
    config.update({name: cfg.section(name) for name in stage.sections})
    for section in config.values():  # pairs.sampler / eval.sampler: "auto" -> the sampler that will run
        if isinstance(section, dict) and section.get("sampler") == "auto":
            section["sampler"] = "vllm" if vllm_installed() else "hf"
    if stage.name == "report":  # its protocol table sets this scale beside the paper's settings
        config["protocol"] = protocol or {}
    return config


def _why_stale(manifest: dict | None, config: dict, inputs: dict) -> str | None:
    """None when the finished stage matches; otherwise a short reason it must run."""
    if manifest is None:
        return "not run yet"
    if manifest.get("config_hash") != stable_hash(config):
        old, new = flatten(manifest.get("config", {})), flatten(config)
        changed = [key for key in new if old.get(key) != new[key]] + [key for key in old if key not in new]
        return "config changed: " + (", ".join(changed) or "(format)")
    if manifest.get("inputs") != inputs:
        return "inputs changed: " + ", ".join(k for k in inputs if manifest.get("inputs", {}).get(k) != inputs[k])
    return None


def _why_to_run(final: Path, manifest: dict | None, config: dict, inputs: dict) -> str | None:
    """None when the stage's folder is finished, matches and is whole; otherwise why it must run."""
    if manifest is None and final.exists():
        return f"{final / 'manifest.json'} is missing or unreadable"
    return _why_stale(manifest, config, inputs) or (store.damaged(final, manifest) if manifest else None)


def _child_env(cfg: BenchmarkConfig, launch: Launch) -> dict:
    env = dict(os.environ)
    if launch.device:
        env["PIPELINES_DEVICE"] = launch.device
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(store.REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PIPELINES_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().getEffectiveLevel())  # -q / -v
    if cfg.torch_threads:
        # Pinned threads: on a small shared CPU, oversubscription costs far more than it gains.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(cfg.torch_threads)
    return env


def stage_folders(root: Path, shared: dict[str, Path] | None = None) -> dict[str, Path]:
    """Each stage's folder: root/<stage>, or the ladder's own for a stage its rungs share."""
    return {name: (shared or {}).get(name, root / name) for name in STAGES}


def check(cfg: BenchmarkConfig, only: list[str] | None, launch: Launch = Launch(),
          folders: dict[str, Path] | None = None) -> None:
    """Refuse a stage selection that cannot run, before anything is written. folders: the stages' folders of the
    run (stage_folders; default: under store.run_root)."""
    selected = stages(cfg)
    for name in only or []:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if name not in selected:
            raise ConfigError(f"stage {name} trains none of this run's methods ({', '.join(cfg.methods)}); "
                              f"add {' or '.join(m for m, x in METHODS.items() if x.stage == name)} to methods")
    for stage in (selected[name] for name in only or selected):
        config = stage_config(cfg, stage)
        n = launch.processes_for(stage, config)
        for key in stage.split:  # the stage would refuse it itself (core.dist), but only after the ones before it
            section, field = key.split(".")
            if config[section][field] % n:
                raise ConfigError(f"--nproc {n}: {key} = {config[section][field]} does not split over {n} "
                                  f"processes; allowed: a process count that divides it")
    for name in ("pairs", "eval"):
        if cfg.section(name)["sampler"] == "vllm" and not vllm_installed():
            raise ConfigError(f"{name}.sampler = 'vllm' but vLLM is not installed in {sys.prefix}: run with "
                              f"`make ... VLLM=1` (.venv-vllm), or set sampler = 'hf' / 'auto'")
    folders = folders or stage_folders(store.run_root(cfg.benchmark, cfg.scale))
    for name in only or []:
        missing = [n for n in selected[name].needs if n not in only and store.read_manifest(folders[n]) is None]
        if missing:
            raise ConfigError(f"stage {name} needs {', '.join(missing)}, not finished: run it first")
        for need in (n for n in selected[name].needs if n not in only):
            problem = store.damaged(folders[need], store.read_manifest(folders[need]))
            if problem:
                raise ConfigError(f"stage {name} needs {need}, whose files are damaged ({problem}): run it "
                                  f"again too (--stages {need},{name})")


def run(cfg: BenchmarkConfig, only: list[str] | None = None, force: bool = False,
        protocol: dict | None = None, launch: Launch = Launch(workers=1), source_id: str | None = None,
        root: Path | None = None, tracking: dict | None = None, shared: dict[str, Path] | None = None) -> Path:
    """Run the benchmark's stages, skipping the finished ones; stages whose inputs are ready run side by side
    while `launch.workers` allows (a stage's processes each take one worker; ground_truth and report, which
    train no language model, take none). Returns the run folder.
    protocol: the benchmark's table before scale overrides (config.protocol), for the report.
    source_id: a file source's content (data.check), an input of the stages that read the data.
    root, tracking, shared: a ladder's rung (pipelines/ladder.py): its folder, the ladder's wandb group, and
    stages whose folder is the ladder's (the ground truth every rung shares)."""
    launch = launch.resolved(cfg.torch_threads)
    root = root or store.run_root(cfg.benchmark, cfg.scale)
    folders = stage_folders(root, shared)
    check(cfg, only, launch, folders)
    tracking = tracking or job_tracking(cfg.benchmark, cfg.scale)  # one wandb group for this whole run
    if tracking["mode"] != "disabled":
        log.info("wandb: %s, project %s, group %s%s", tracking["mode"], tracking["project"], tracking["group"],
                 " (no API key: `make wandb-sync` uploads later; WANDB=off turns it off)"
                 if tracking["mode"] == "offline" else "")
    with store.RunLock(root) as lock:
        identities: dict[str, str] = {}  # of the stages this run may read: finished now or before
        settled: set[str] = set()  # stages decided: run, skipped, or not selected
        waiting = list(stages(cfg).values())  # in priority order (STAGES lists the longest chain's stages first)
        running: dict[str, _Running] = {}
        try:
            while waiting or running:
                busy = sum(r.processes for r in running.values() if r.stage.multiprocess)
                for stage in [s for s in waiting if all(n in settled for n in s.needs)]:
                    final = folders[stage.name]
                    config = stage_config(cfg, stage, protocol)
                    inputs = {need: identities.get(need) for need in stage.needs}
                    if source_id and "data" in stage.sections:
                        inputs["data"] = source_id
                    manifest = store.read_manifest(final)
                    why = _why_to_run(final, manifest, config, inputs)
                    # a ladder's shared stages are forced only when named (once, not by every rung)
                    forced = force and (stage.name not in (shared or {}) or only is not None)
                    if (only is None or stage.name in only) and (forced or why):
                        n = launch.processes_for(stage, config) if stage.multiprocess else 0
                        if running and busy + n > launch.workers:
                            continue  # its turn comes when a running stage finishes
                        _start_stage(cfg, stage, config, inputs, final, folders, "--force" if forced else why,
                                     tracking, launch, running, lock)
                        busy += n
                    else:
                        if only is None or stage.name in only:
                            log.info("[%s] up to date, skipped (%s)", stage.name, final)
                            _publish(stage, final, root)  # a deleted or edited top-level copy comes back
                        elif why and manifest is not None:
                            log.warning("[%s] not selected but stale (%s); later stages use it as it is",
                                        stage.name, why)
                        if manifest is not None:
                            identities[stage.name] = manifest["identity"]
                        settled.add(stage.name)
                    waiting.remove(stage)
                    break  # a stage started or settled: look again from the top
                else:
                    done = next((r for r in running.values() if r.proc.poll() is not None), None)
                    if done is None and not running:
                        raise RuntimeError(f"stages {[s.name for s in waiting]} wait for stages that never run")
                    if done is None:
                        time.sleep(0.2)
                        continue
                    del running[done.stage.name]
                    lock.cover([r.proc.pid for r in running.values()])
                    if done.proc.returncode:  # the stages beside it are stopped below, as for a signal
                        for other in running.values():
                            log.error("[%s] stopped: stage %s failed; it resumes on the next run",
                                      other.stage.name, done.stage.name)
                    identities[done.stage.name] = _finish_stage(cfg, done, root)  # StageFailed if it failed
                    settled.add(done.stage.name)
        except BaseException as e:  # a signal, a failed stage, or a bug here: no stage outlives the spine
            if isinstance(e, Interrupted):
                for s in SIGNALS:  # the spine is leaving: a second Ctrl-C must not cut the stopping short
                    signal.signal(s, signal.SIG_IGN)
                e.stage = ", ".join(running) or None
            for r in running.values():
                _stop(r.proc)
            raise
    return root


def run_one(cfg: BenchmarkConfig, stage: Stage, config: dict, inputs: dict, folders: dict[str, Path], root: Path,
            force: bool, tracking: dict, lock: store.RunLock) -> str:
    """One stage outside a benchmark's graph (a ladder's scaling stage, in root/<stage>, whose lock the caller
    holds): run unless finished with this config and these inputs (identities). folders: the folders of its
    needs. -> its identity."""
    final = root / stage.name
    manifest = store.read_manifest(final)
    why = _why_to_run(final, manifest, config, inputs)
    if not (force or why):
        log.info("[%s] up to date, skipped (%s)", stage.name, final)
        _publish(stage, final, root)
        return manifest["identity"]
    running: dict[str, _Running] = {}
    _start_stage(cfg, stage, config, inputs, final, folders, "--force" if force else why, tracking,
                 Launch(workers=1), running, lock)
    try:
        running[stage.name].proc.wait()
    except BaseException as e:
        if isinstance(e, Interrupted):
            e.stage = stage.name
        _stop(running[stage.name].proc)
        raise
    return _finish_stage(cfg, running[stage.name], root)


@dataclass
class _Running:
    stage: Stage
    proc: subprocess.Popen
    config: dict
    inputs: dict
    tmp: Path
    final: Path
    processes: int
    start: float


def _start_stage(cfg, stage: Stage, config: dict, inputs: dict, final: Path, folders: dict[str, Path], why: str,
                 tracking: dict, launch: Launch, running: dict[str, _Running], lock: store.RunLock) -> None:
    """Start the stage's process and add it to `running`, which the lock covers. folders: every stage's."""
    log.info("[%s] %s (%s scale) - runs because %s", stage.name, stage.what, cfg.scale, why)
    log.info("[%s] inputs: %s; writes %s", stage.name,
             ", ".join(str(folders[n]) for n in stage.needs) or "the data source", final)
    # --force starts over; otherwise a run of the same job killed part-way resumes from its checkpoints
    tmp, resumed = store.temp_dir_for(final, None if why == "--force" else stable_hash([config, inputs]))
    if resumed:
        log.info("[%s] resuming the interrupted run in %s", stage.name, tmp)
    job = {
        "stage": stage.name, "benchmark": cfg.benchmark, "scale": cfg.scale, "seed": cfg.seed,
        "torch_threads": cfg.torch_threads, "config": config, "out": str(tmp),
        "inputs": {n: str(folders[n]) for n in stage.needs}, "tracking": tracking,
        "source": inputs.get("data"), "forced": why == "--force",  # what a kept run depends on (core/runcache.py)
    }
    (tmp / "job.json").write_text(json.dumps(job, indent=2))
    command = launch.command(stage, config) + [str(tmp / "job.json")]
    if launch.launches(stage, config):
        log.info("[%s] %s", stage.name, " ".join(command[1:]))
    elif launch.fixed and launch.count > 1 and stage.multiprocess:
        log.info("[%s] one process: it samples with vLLM, which batches the whole prompt set itself", stage.name)
    with _signals_deferred():  # a signal now would leave a started stage unknown to the spine
        proc = subprocess.Popen(command, env=_child_env(cfg, launch), cwd=store.REPO_ROOT,
                                preexec_fn=_stage_signals)
        running[stage.name] = _Running(stage, proc, config, inputs, tmp, final, launch.processes_for(stage, config),
                                       time.time())
        lock.cover([r.proc.pid for r in running.values()])  # a stage outliving a SIGKILLed spine holds the folder


def _finish_stage(cfg, r: _Running, root: Path) -> str:
    """A stage's process has ended: on success write its manifest and move its folder into place."""
    stage, tmp = r.stage, r.tmp
    wall = time.time() - r.start
    if r.proc.returncode != 0:
        raise StageFailed(f"stage {stage.name} failed (exit {r.proc.returncode}) after {wall:.0f}s; "
                          f"its unfinished output is in {tmp}")
    metrics = json.loads((tmp / "metrics.json").read_text())
    files = store.file_sizes(tmp)  # checked before the stage is skipped (store.damaged)
    manifest = {
        "stage": stage.name, "benchmark": cfg.benchmark, "scale": cfg.scale, "seed": cfg.seed,
        "config": r.config, "config_hash": stable_hash(r.config), "inputs": r.inputs,
        # A fresh nonce per execution: a rerun (even --force with the same config) invalidates downstream.
        "identity": stable_hash([stable_hash(r.config), r.inputs, secrets.token_hex(8)]),
        "metrics": metrics, "wall_time_s": round(wall, 2), "processes": r.processes,
        "files": files, "digests": store.file_digests(tmp, files),
        "versions": store.library_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with _signals_deferred():  # the manifest, the rename and the published files land together
        store.write_json_atomic(tmp / "manifest.json", manifest)
        store.commit_dir(tmp, r.final)
        _publish(stage, r.final, root)
    log.info("[%s] done in %.0fs: %s", stage.name, wall, _headline(metrics))
    return manifest["identity"]


def _publish(stage: Stage, final: Path, root: Path) -> None:
    """Copy the stage's published files (frontier.csv, report.md, ...) to the run folder where they differ."""
    for name in stage.publish:
        if not (root / name).is_file() or not filecmp.cmp(final / name, root / name, shallow=False):
            store.publish_file(final / name, root / name)


def _headline(metrics: dict) -> str:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))][:4]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items) or "ok"


class StageFailed(RuntimeError):
    pass


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal to the spine (Ctrl-C, or SIGTERM / SIGHUP from a scheduler or a closed terminal).
    stage: the stage that was running, if one was."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stage = signum, None


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def handle_signals() -> None:
    """The spine's stop signals become Interrupted, which stops the running stage before the spine leaves."""
    for s in SIGNALS:
        signal.signal(s, _raise_interrupted)


def _stage_signals() -> None:
    """In the stage's process, before it starts. Ctrl-C reaches every process of the terminal's group: the
    stage ignores SIGINT (no traceback of its own) and the spine, which gets it too, stops the stage as for
    a signal sent to the spine alone. The spine's blocked signals (_signals_deferred) are not inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def _signals_deferred():
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a stage and everything it started (accelerate's workers, wandb's service) and wait for it.
    SIGKILL: it prints nothing, and a stage is built to survive it (checkpoints and stage folders are
    renamed into place; the fault tests kill stages so), so the next run resumes."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in [proc, *tree]:  # the stage first, so it starts nothing new
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
