"""The spine: runs a benchmark's stages (pipelines/stages.py) in order, each in a child process, skipping the
finished ones.

It writes a stage's job (its config sections, the folders of its inputs, where to write), starts its command
(pipelines/launch.py), and on success writes the manifest and renames the folder into place. A stage is skipped when
its manifest records the same config hash and the same input identities, and its files are whole. Stages whose
inputs are ready run side by side within the workers. A signal stops them all (pipelines/signals.py).
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import BenchmarkConfig, ConfigError, flatten, stable_hash
from core.methods import METHODS
from core.tracking import job_tracking

from . import stages as S
from . import store
from .launch import Launch
from .signals import SIGNALS, Interrupted, _signals_deferred, _stage_signals, _stop
from .stages import Stage, stage_config, stages

log = logging.getLogger("pipelines")


class StageFailed(RuntimeError):
    pass


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
    return {name: (shared or {}).get(name, root / name) for name in S.STAGES}


def check(cfg: BenchmarkConfig, only: list[str] | None, launch: Launch = Launch(),
          folders: dict[str, Path] | None = None) -> None:
    """Refuse a stage selection that cannot run, before anything is written. folders: the stages' folders of the
    run (stage_folders; default: under store.run_root)."""
    selected = stages(cfg)
    for name in only or []:
        if name not in S.STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(S.STAGES)}")
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
        if cfg.section(name)["sampler"] == "vllm" and not S.vllm_installed():
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
    source_id: a file source's content (source.check), an input of the stages that read the data.
    root, tracking, shared: a ladder's rung (pipelines/ladder.py): its folder, the ladder's wandb group, and
    stages whose folder is the ladder's (the ground truth every rung shares)."""
    launch = launch.resolved(cfg.torch_threads)
    root = root or store.run_root(cfg.benchmark, cfg.scale)
    folders = stage_folders(root, shared)
    check(cfg, only, launch, folders)
    tracking = tracking or job_tracking(cfg.benchmark, root.name)  # one wandb group for this run (<scale>[-seed<N>])
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
