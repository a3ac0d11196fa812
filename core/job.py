"""A stage's side of the job protocol: read job.json, pin threads and seeds, write metrics.json."""

from __future__ import annotations

import json
import os
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.config import SECTIONS, ConfigError

log = logging.getLogger("stage")


@dataclass
class Job:
    stage: str
    benchmark: str
    scale: str
    seed: int
    torch_threads: int
    config: dict
    inputs: dict[str, Path]
    out: Path
    tracking: dict = field(default_factory=dict)  # wandb mode, project and group (core/tracking.py)
    source: str | None = None  # the data source's content (a file source's sha256), for a stage that reads the data
    forced: bool = False  # started with --force: method runs are trained, not restored (core/runcache.py)

    @property
    def seeds(self) -> int:
        """Training seeds (a method stage trains every run once per seed; other stages see 1)."""
        return self.config.get("seeds", 1)

    def upstream(self, stage: str, seed: int = 0) -> Path:
        """The folder of an upstream stage's artifact for training seed `seed`: <stage>/seed<k>/ when that stage
        makes one per seed (reseed_shared), else <stage>/ (shared by every seed)."""
        return self.inputs[stage] / f"seed{seed}" if self.per_seed(stage) else self.inputs[stage]

    def own_seeds(self) -> list[int | None]:
        """The training seeds this (shared) stage makes an artifact for: every seed when it is re-seeded, else
        [None]: one artifact, in out/ itself."""
        return list(range(self.seeds)) if self.per_seed(self.stage) else [None]

    def per_seed(self, stage: str) -> bool:
        """Whether `stage` makes one artifact per training seed (reseed_shared), not one shared by all."""
        return stage in self.config.get("per_seed_stages", [])

    def section(self, name: str):
        """A config section as its typed dataclass."""
        return SECTIONS[name](**self.config[name])


class BadArtifact(ValueError):
    """An upstream stage's file that is not what that stage writes (edited or damaged): one line, exit 1."""


_started: Job | None = None  # this process's job (start), for run's disk-full message


def start(argv: list[str] | None = None) -> Job:
    global _started
    argv = sys.argv[1:] if argv is None else argv
    raw = json.loads(Path(argv[0]).read_text())
    job = _started = Job(**{**raw, "inputs": {k: Path(v) for k, v in raw["inputs"].items()},
                            "out": Path(raw["out"])})
    from core import dist

    # with several processes the main one tells the story; the others speak up only for warnings and errors
    level = os.environ.get("PIPELINES_LOG_LEVEL", "INFO") if dist.is_main() else "WARNING"
    tag = job.stage if dist.world_size() == 1 else f"{job.stage} {dist.rank()}/{dist.world_size()}"
    logging.basicConfig(level=level, format="%(asctime)s [" + tag + "] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    import numpy as np
    import torch

    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
    return job


def peak_memory() -> dict:
    """This process's peak resident memory, and the GPU's peak allocation when there is one, in MiB."""
    import resource

    import torch

    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # KiB on Linux
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def finish(job: Job, metrics: dict, run=None) -> None:
    """Write the stage's metrics (with its peak memory); also as the summary of its wandb run, if it has one.
    Only the main process writes (the others' peak memory is not recorded)."""
    from core import dist, tracking

    if not dist.is_main():
        return
    metrics = {**metrics, **peak_memory()}
    (job.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tracking.end(run, metrics)


def each_own_seed(job: Job, make) -> dict | None:
    """A shared stage's artifacts: make(training_seed_index, folder) -> its metrics (None on all but the main
    process), once per own_seeds(). Re-seeded, each seed's folder gets its metrics.json and a finished seed is not
    made again when the stage resumes. -> the stage's metrics: seed 0's, with every seed's under per_seed."""
    from core import dist

    done = []
    for seed in job.own_seeds():
        folder = job.out if seed is None else job.out / f"seed{seed}"
        if seed is not None and (folder / "metrics.json").exists():  # made by an earlier attempt
            done.append(json.loads((folder / "metrics.json").read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        metrics = make(seed or 0, folder)
        if seed is not None and dist.is_main():
            tmp = folder / ".metrics.json.tmp"
            tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            tmp.replace(folder / "metrics.json")  # last: it marks the seed's artifact whole
        done.append(metrics)
    if not dist.is_main():
        return None
    return done[0] if len(done) == 1 else {**done[0], "per_seed": done}


def finish_runs(job: Job, runs: list[dict], per_run: tuple[str, ...], **extra) -> None:
    """A sweep stage's end: runs.json (what eval and report read) and its metrics summed over the runs (each run's
    `per_run` keys, and the stage's own `extra`)."""
    from core import dist

    if not dist.is_main():
        return
    (job.out / "runs.json").write_text(json.dumps(runs, indent=2))
    metrics = {"runs": len(runs), "checkpoints": sum(len(r["checkpoints"]) for r in runs),
               "train_seconds": sum(r["train_seconds"] for r in runs)}
    for key in ("tokens_generated", "tokens_trained"):
        if any(key in r for r in runs):
            metrics[key] = sum(r.get(key, 0) for r in runs)
    finish(job, {**metrics, **{f"{r['run']}_{key}": r[key] for r in runs for key in per_run}, **extra})


LOW_DISK_MIB = 64  # an error while the output's disk has less than this free is taken for a full disk


def disk_full(error: BaseException, folder: Path) -> str | None:
    """'no space left ...' (one line) when `error` comes from a full disk: ENOSPC in its chain, or any error while
    the disk of `folder` is nearly full (torch.save says only "unexpected pos 576 vs 534"); else None."""
    import errno
    import shutil

    chain, e = [], error
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    said = any(getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x) for x in chain)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        free = None
    if not said and (free is None or free >= LOW_DISK_MIB * 2**20):
        return None
    left = "" if free is None else f", {free / 2**20:.1f} MiB free"
    first = (str(error).splitlines() or [""])[0][:200]
    return f"no space left on the disk of {folder}{left} ({type(error).__name__}: {first})"


def run(main) -> None:
    """Run a stage's main(): an expected failure (bad input, a NaN loss) is one log line and exit 1.
    With several processes, all wait for each other at the end (dist.close)."""
    from torch.distributed import DistError

    from core import dist

    try:
        main()
        dist.close()
    except (ConfigError, FloatingPointError, FileNotFoundError, BadArtifact) as e:
        logging.getLogger("stage").error("%s: %s", type(e).__name__, e)
        raise SystemExit(1) from None
    except Exception as e:
        peer_left = isinstance(e, DistError) or (isinstance(e, RuntimeError) and "Connection closed by peer" in str(e))
        if peer_left and dist.world_size() > 1:  # its own error is logged: no second traceback
            logging.getLogger("stage").error("stopped: another process of this stage failed")
            sys.stderr.flush()
            os._exit(1)  # not SystemExit: tearing down the broken process group would abort with C++ noise
        full = disk_full(e, _started.out if _started else Path.cwd())
        if not full:
            raise
        logging.getLogger("stage").error("%s: free some and run the same command again (the stage resumes from its "
                                         "last whole checkpoint; a half-written one is not used)", full)
        raise SystemExit(1) from None
