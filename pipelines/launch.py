"""How a stage is started: how many processes (one, or several under `accelerate launch`), on which device.

Asked for several processes, the stages that train or sample run under `accelerate launch`; a stage that samples
with vLLM runs in one process (vLLM batches the whole prompt set itself).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError

from . import store
from . import stages as S
from .stages import Stage


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

    def check_sharding(self, device: str) -> None:
        """On the CPU, accelerate ignores a sharding config and trains with DDP (distributed type MULTI_CPU, measured
        with torch 2.13 and accelerate 1.15 here). Our stages switch it to FSDP2 on the CPU (core.dist.fsdp_on_cpu:
        torch's fully_shard trains over gloo); DeepSpeed, and FSDP version 1, would silently not shard: refused in
        one line."""
        if self.accelerate_config is None or device != "cpu":
            return
        import yaml

        settings = yaml.safe_load(Path(self.accelerate_config).read_text(encoding="utf-8"))
        kind = str(settings.get("distributed_type", ""))
        version = (settings.get("fsdp_config") or {}).get("fsdp_version", 1) if kind.upper() == "FSDP" else None
        if kind.upper() == "DEEPSPEED" or version not in (None, 2):
            what = kind if version is None else f"{kind} version {version}"
            raise ConfigError(f"--accelerate-config {self.accelerate_config}: {what} on the CPU would silently be DDP "
                              f"(accelerate shards on GPUs only); allowed on the CPU: configs/accelerate/fsdp.yaml "
                              f"(FSDP version 2), configs/accelerate/ddp.yaml or --nproc N")

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
        if stage.name not in S.SOLO:
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


ACCELERATE_CONFIGS = store.REPO_ROOT / "configs" / "accelerate"


def _free_port() -> int:
    """A free TCP port for the processes' rendezvous (two pipelines on one machine must not share one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
