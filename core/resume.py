"""Resuming a killed stage from its latest complete checkpoint, and skipping the runs it had finished.

A stage writes into a hidden folder that survives a kill when the rerun is the same job (pipelines/store.py).
Inside it, a run's folder holds checkpoint-<step>/ folders and, once the run is over, run.json. Our own loops
(Unlikelihood / Preferred-FT, PPO) write a checkpoint under a temporary name and rename it, so a folder named
checkpoint-<step> is always complete; transformers writes trainer_state.json last, which marks its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import torch

from core import dist

STATE = "training_state.pt"
KEEP = ("model.safetensors", "config.json", "generation_config.json")  # what eval needs of a checkpoint


def _checkpoints(folder: Path, marker: str) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and (path / marker).exists():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_trainer_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint transformers finished writing, for Trainer.train(resume_from_checkpoint=...)."""
    found = _checkpoints(folder, "trainer_state.json")
    if not found:
        return None
    logging.getLogger("stage").info("resuming from %s", found[-1][1].name)
    return str(found[-1][1])


def save_checkpoint(model, path: Path, state: dict, weights: dict | None = None) -> None:
    """Weights (safetensors) and our loop's state (optimizer, schedule, RNG, ...), renamed into place whole.
    weights: the full state dict when the model is sharded over processes (accelerator.get_state_dict).
    Only the main process writes (as do strip_checkpoints and mark_finished)."""
    if not dist.is_main():
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
    torch.save(state, tmp / STATE)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    # fault injection for the resume tests: die right here, as a pre-empted job would
    fault = os.environ.get("PIPELINES_KILL_AFTER_CHECKPOINT")  # e.g. "alpha0.5/checkpoint-3"
    if fault and path.as_posix().endswith(fault):
        os.kill(os.getpid(), signal.SIGKILL)


def latest_checkpoint(folder: Path) -> tuple[int, Path, dict] | None:
    """(step, path, state) of the newest complete checkpoint our loops wrote; None when there is none."""
    found = _checkpoints(folder, STATE)
    if not found:
        return None
    step, path = found[-1]
    return step, path, torch.load(path / STATE, weights_only=True)  # tensors and plain values only


def checkpoint_list(folder: Path, relative_to: Path) -> list[dict]:
    """Every checkpoint-<step> folder of a run, by step, as runs.json lists them for eval."""
    found = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    return [{"step": step, "path": str(path.relative_to(relative_to))} for step, path in found]


def strip_checkpoints(folder: Path) -> None:
    """Keep only the weights and configs of each checkpoint: optimizer and RNG state are for resuming."""
    if not dist.is_main():
        return
    for path in folder.glob("checkpoint-*"):
        if not path.is_dir() or path.name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            continue
        for extra in path.iterdir():
            if extra.name not in KEEP:
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()


def finished_run(folder: Path) -> dict | None:
    """The run's summary when an earlier attempt of this stage finished it."""
    try:
        return json.loads((folder / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def mark_finished(folder: Path, run: dict) -> dict:
    """Write run.json (the run's summary, which also marks it finished) and return the summary."""
    if not dist.is_main():
        return run
    tmp = folder / ".run.json.tmp"
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, folder / "run.json")
    return run
