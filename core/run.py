"""A method run's life in one place: start or resume it, check it, checkpoint it, finish it.

Every method stage trains one run per swept parameter (DPO's beta, PPO's target KL, ...) and training seed
from the SFT model, and every run goes through `MethodRun`:

    for seed in range(job.seeds):
        run = MethodRun(job, "unlikelihood", "alpha0.5", "alpha", 0.5, seed)   # run "alpha0.5-seed1"
    torch.manual_seed(run.training_seed)     # what the run draws (data order, rollouts) derives from this
    if run.summary:                          # finished by an earlier attempt: not trained again
        return run.summary
    model = load(run.latest or sft)          # a killed run resumes from its newest complete checkpoint
    state = run.start({"optimizer": opt})    # restores the optimizer, the loop state and the RNG, opens tracking
    for step in range(state.step + 1, steps + 1):
        loss = ...
        run.check_finite(loss, step)         # a NaN / inf loss stops the stage, naming the last good checkpoint
        ...
        state.step = step
        if is_checkpoint(step, steps, eval_every):
            run.save(state, model, {"optimizer": opt})
    return run.finish(state, final_loss=...)  # runs.json's entry: checkpoints, time, tokens, the method's own

A stage trained by a TRL trainer (which checkpoints and resumes itself) uses `summary`, `start` and `finish`.
The run's folder is <stage out>/<name>; its checkpoints are checkpoint-<step>/ (core/resume.py), and
run.json marks it finished. A run is never marked finished with non-finite weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core import dist, resume, tracking
from core.config import ConfigError
from core.frontier import run_label
from core.runcache import RunCache

log = logging.getLogger("stage")


@dataclass
class LoopState:
    """What a training loop carries across a checkpoint besides weights and optimizers."""
    step: int = 0  # optimiser steps (PPO: PPO steps) done
    seconds: float = 0.0  # training time so far, over every attempt
    history: list = field(default_factory=list)  # one entry per step: the loss, or a dict of statistics
    tokens_generated: int = 0
    tokens_trained: int = 0
    extra: dict = field(default_factory=dict)  # the method's own scalars (PPO: the KL coefficient)


def is_checkpoint(step: int, last: int, every: int, early=()) -> bool:
    """Whether a loop keeps a checkpoint after step `step`: every `every` steps, at the early steps (a run's first
    steps, where the policy moves fastest) and at the last."""
    return step % every == 0 or step == last or step in early


def training_seed(job_seed: int, seed: int) -> int:
    """The RNG seed of training seed `seed` (0, 1, ...): seed 0 is the benchmark's own seed, so a one-seed run
    is the run it always was; the others are drawn from it (core.lm.sample_seeds), not job_seed + k, so two
    benchmarks with seeds 0 and 1 do not share training runs."""
    from core.lm import sample_seeds

    return job_seed if seed == 0 else sample_seeds(1, "training-seed", job_seed, seed)[0] % 2**32  # numpy's range


class MethodRun:
    def __init__(self, job, method: str, sweep_name: str, param_name: str, param, seed: int,
                 accelerator=None):
        """sweep_name: the run's sweep point (beta0.1, kl3; "" when the method has no parameter); the run's name
        (its folder, its name in runs.json and frontier.csv) is <sweep_name>-seed<seed>; its wandb name
        <method>-<name>, grouped (job_type) with the other seeds of <method>-<sweep_name>. training_seed: what
        the run's own randomness derives from. accelerator: gathers sharded weights for checkpoints."""
        self.job, self.method, self.param_name, self.param, self.seed = job, method, param_name, param, seed
        self.name = f"{sweep_name}-seed{seed}" if sweep_name else f"seed{seed}"
        # a stage with two methods names its runs after them (ppo-kl3, ppo-gt-kl3): folders must not collide
        self.sweep_point = run_label(method, sweep_name) if sweep_name else method
        self.training_seed = training_seed(job.seed, seed)
        self.label = run_label(method, self.name)
        self.folder = Path(job.out) / self.name
        self.accelerator = accelerator
        self.kept, self.what = RunCache(job), None
        earlier = resume.finished_run(self.folder)  # set: finished by an earlier attempt
        dist.barrier()  # every process has looked before the main one restores: all take the same path
        if dist.is_main():
            self.what = self.kept.what(self.name, param, seed)
            if earlier:  # kept, if that attempt was stopped before it could keep it
                log.info("%s: finished by an earlier attempt", earlier["run"])
                self.kept.keep(self.what, self.folder)
            else:  # or kept from an earlier execution of the stage with the same settings, inputs and code
                self.kept.restore(self.what, self.folder)
        dist.barrier()  # every process sees the restored run
        self.summary = resume.finished_run(self.folder)
        last = resume.latest_checkpoint(self.folder)
        self.latest: Path | None = last[1] if last else None  # the weights to start from, when resuming
        self._saved_state = last[2] if last else None
        self.tracker, self._t0 = None, time.time()

    # ------------------------------------------------------------------------------------------ start
    def start(self, resumable: dict | None = None, model=None) -> LoopState:
        """Open the run's tracking; when resuming, load each of `resumable` (modules, optimizers, schedulers)
        from the newest checkpoint, and the loop state and torch's RNG. model: the one trained (loaded from the
        checkpoint's weights), whose optimizer may be among `resumable`. -> the loop state (step 0 when new)."""
        state = LoopState()
        if self._saved_state is not None:
            saved, sharded = self._saved_state, self._sharded()
            if saved.get("sharded", False) != sharded:  # the optimizers' state is kept in another layout
                written = "under FSDP" if saved.get("sharded") else "without FSDP (or by an older version)"
                raise ConfigError(f"{self.label}: its checkpoint {self.latest} was written {written} and this run is "
                                  f"{'under FSDP' if sharded else 'without FSDP'}; resume it as it was launched "
                                  f"(--accelerate-config)")
            modules = run_modules(model, resumable)
            for key, obj in (resumable or {}).items():
                load_state(obj, saved[key], modules, sharded, self.accelerator)
            torch.set_rng_state(saved["rng"])
            state = LoopState(**saved["loop"])
            log.info("%s: resuming after step %d", self.label, state.step)
        self._t0 = time.time() - state.seconds
        self.tracker = tracking.start(self.job, self.label, self.method,
                                      {**({self.param_name: self.param} if self.param_name else {}),
                                       "training_seed": self.seed}, self.sweep_point)
        return state

    def elapsed(self) -> float:
        """Training seconds over every attempt of this run."""
        return time.time() - self._t0

    def log(self, step: int, metrics: dict) -> None:
        tracking.log_train(self.tracker, step, metrics)

    # ------------------------------------------------------------------------------------------ checks
    def check_finite(self, loss: float, step: int) -> None:
        """Stop the stage when a loss is NaN or inf: the checkpoints before it stay, the run is not finished."""
        if not math.isfinite(loss):
            good = resume.latest_checkpoint(self.folder)
            raise FloatingPointError(f"{self.label}: loss is {loss} at step {step}; stopping "
                                     f"(last good checkpoint: {good[1] if good else 'none'})")

    # ------------------------------------------------------------------------------------------ save
    def save(self, state: LoopState, model, resumable: dict | None = None) -> None:
        """checkpoint-<state.step>: the model's weights (what eval reads), and what resuming needs: the state
        of each of `resumable`, the loop state and the RNG. Refused when a weight is not finite: a step can
        leave NaN weights behind a finite loss, and such a checkpoint must not be evaluated or resumed from."""
        acc, sharded = self.accelerator, self._sharded()
        state.seconds = self.elapsed()
        raw = acc.unwrap_model(model) if acc else model
        weights = acc.get_state_dict(model) if acc else None  # every process takes part (sharded models)
        check_finite_weights(weights if weights is not None else raw.state_dict(), f"{self.label} step {state.step}")
        modules = run_modules(model, resumable)
        saved = {key: state_of(obj, modules, sharded, acc) for key, obj in (resumable or {}).items()}
        saved.update(loop=dataclasses.asdict(state), rng=torch.get_rng_state(), sharded=sharded)
        resume.save_checkpoint(raw, self.folder / f"checkpoint-{state.step}", saved, weights)

    def _sharded(self) -> bool:
        """Whether the run's models are sharded (FSDP2): their optimizers' state is then saved whole, by name."""
        return bool(self.accelerator is not None and self.accelerator.is_fsdp2)

    # ------------------------------------------------------------------------------------------ finish
    def finish(self, state: LoopState | None = None, **summary) -> dict:
        """Keep only what eval needs of each checkpoint, check their weights are finite, write run.json (which
        marks the run finished) and close its tracking. -> the summary, as runs.json lists it."""
        checkpoints = resume.checkpoint_list(self.folder, self.job.out)
        if dist.is_main():  # the one that writes run.json; before stripping, so a refused run can still resume
            for c in checkpoints:
                check_finite_weights(load_weights(self.job.out / c["path"]), f"{self.label} {c['path']}")
        resume.strip_checkpoints(self.folder)
        record = {"method": self.method, "run": self.name, "param": self.param, "param_name": self.param_name,
                  "seed": self.seed,
                  "checkpoints": checkpoints, "train_seconds": round(self.elapsed(), 2)}
        if state is not None:  # our loops; a TRL stage passes its own counts
            record["steps"] = state.step
            record.update({k: getattr(state, k) for k in ("tokens_generated", "tokens_trained") if getattr(state, k)})
        record.update(summary)
        summary = resume.mark_finished(self.folder, record)
        if dist.is_main():
            self.kept.keep(self.what, self.folder)
        tracking.end(self.tracker, {k: v for k, v in summary.items() if k != "checkpoints"})
        return summary


def full_state():
    """torch's state-dict options for a sharded (FSDP2) model or optimizer: whole, gathered on the main process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def run_modules(model, resumable: dict | None) -> list:
    """The modules of a run: the one trained and those among what it resumes (an optimizer steps one of them)."""
    return [m for m in [model, *(resumable or {}).values()] if isinstance(m, torch.nn.Module)]


def state_of(obj, modules: list, sharded: bool, acc):
    """What a checkpoint keeps of obj: a module's full weights (gathered from its shards: every process takes part),
    a sharded run's optimizer whole and by parameter name, anything else its own state_dict()."""
    if isinstance(obj, torch.nn.Module):
        return acc.get_state_dict(obj) if acc else obj.state_dict()
    if sharded and isinstance(obj, torch.optim.Optimizer):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(owner(obj, modules), obj, options=full_state())
    return obj.state_dict()


def load_state(obj, state: dict, modules: list, sharded: bool, acc) -> None:
    """Load what state_of kept back into obj (a sharded module or optimizer takes the whole and keeps its shard)."""
    if sharded and isinstance(obj, torch.nn.Module):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(obj, state, options=full_state())
    elif sharded and isinstance(obj, torch.optim.Optimizer):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(owner(obj, modules), obj, state, options=full_state())
    else:
        (acc.unwrap_model(obj) if acc and isinstance(obj, torch.nn.Module) else obj).load_state_dict(state)


def owner(optimizer, modules: list):
    """The module whose parameters the optimizer steps (FSDP2's optimizer state is named by that module's
    parameters)."""
    first = optimizer.param_groups[0]["params"][0]
    found = [m for m in modules if any(p is first for p in m.parameters())]
    if not found:
        raise ValueError("an optimizer to save or resume steps none of the run's modules")
    return found[0]


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def check_finite_weights(weights: dict, where: str) -> None:
    """FloatingPointError naming the first tensor with a NaN or inf."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(f"{where}: weight {name} is not finite; the run is not marked finished")
