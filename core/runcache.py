"""Finished method runs kept by what they depend on: adding a seed, a sweep point or a method trains only what is new.

A method stage reruns whenever its config changes (another seed count, another beta), but each of its runs (one
sweep point, one training seed) depends on less than the whole config:
- its own settings: the stage's config with the list of runs cut to this run's value and the lists in its order
  (a beta's learning rate) to this run's entry, without `seeds` and `methods` (they choose which runs there are,
  not what one computes);
- the benchmark seed and the run's name (its method, sweep point and training seed);
- what it reads: the content of the files its seed's upstream stages made (SFT model, pairs with their metrics,
  reward model, ground truth: what their manifests list) and of the data source;
- the code that trains it: the stage's package, core/, the config schema and data splits, the libraries' versions;
- where it trains: the device type (the precision follows it) and the process count (how a batch is split).
Their hash is the run's key. A finished run is kept as <run folder>/.runs/<stage>/<run name>/<key>/, hard links
to the stage folder's files (no second copy on disk), with the sha256 of each file; a stage that asks for a run
whose key is kept restores those files instead of training (after checking them: an edited or damaged kept run is
trained again), and says which runs it reused and, for the others, what changed. Kept runs outlive the stage
folder: a seed or a beta removed from the config and added back is restored, not trained. `--force` trains every
run again; a kept run of other code is deleted when the same run is kept anew (it can never be asked for again).

A run restored is the files of the run that was trained, so the frontier is the one a fresh run gives: what a run
draws derives from its training seed alone (PPO seeds torch with it, TRL's trainers take it as their seed, our
pair loops their data order), whatever ran before it in the stage (tests/test_runcache.py).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from core.config import SECTIONS, flatten, sweep_lists

log = logging.getLogger("stage")

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE = ("core/*.py",)  # besides the stage's package: what trains a run (the config schema and data splits included)
LIBRARIES = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "numpy")


def run_settings(job, param) -> dict:
    """The stage's config as one of its runs sees it: the list of runs cut to `param` (None: the stage has no
    sweep, as Preferred-FT), each list in its order cut to this run's entry (an empty one: not set, stays)."""
    config = {k: v for k, v in job.config.items() if k not in ("seeds", "methods")}
    section = dict(config.get(job.stage, {}))
    runs, per_run = sweep_lists(job.stage) if job.stage in SECTIONS else (None, [])
    if param is not None and runs in section:
        index = section[runs].index(param)
        section[runs] = section[runs][index]
        for name in per_run:
            if section[name]:
                section[name] = section[name][index]
    config[job.stage] = section
    return config


@functools.cache
def upstream_digest(stage_folder: Path, part: str = "") -> str:
    """sha256 over the files a finished upstream stage recorded in its manifest (under `part`: seed<k>/ when it made
    one artifact per training seed), names and contents: what it made, not what its readers added beside it
    (`datasets` writes caches next to a dataset it filters). A file recorded but gone gives a digest no kept run
    has: the run trains."""
    try:
        files = json.loads((stage_folder / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable manifest {os.urandom(8).hex()}"
    h = hashlib.sha256()
    for name in sorted(n for n in files if n.startswith(part)):
        h.update(name.encode())
        try:
            _update_file(h, stage_folder / name)
        except OSError:
            return f"missing {name} {os.urandom(8).hex()}"
    return h.hexdigest()


@functools.cache
def code_digest(main_file: str | None) -> str:
    """sha256 of the code that trains a stage's runs: its package (the folder of its __main__, when in this
    repository), core/, the config schema and the data splits, and the versions of the libraries it trains with."""
    from importlib import metadata

    package = Path(main_file).resolve().parent if main_file else None
    files = sorted(package.glob("*.py")) if package and package.is_relative_to(REPO_ROOT) else []
    files += sorted(p for pattern in CODE for p in REPO_ROOT.glob(pattern))
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(REPO_ROOT)).encode())
        h.update(path.read_bytes())
    for name in LIBRARIES:
        try:
            h.update(f"{name}=={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            pass
    return h.hexdigest()


def _update_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    _update_file(h, path)
    return h.hexdigest()


class RunCache:
    """The kept runs of one stage (<run folder>/.runs/<stage>/), for the runs of one job."""

    def __init__(self, job):
        self.job = job
        self.root = Path(job.out).parent / ".runs" / job.stage

    def what(self, name: str, param, seed: int) -> dict:
        """What run `name` depends on (the module docstring's list), as recorded beside a kept run."""
        from core import dist

        job = self.job
        inputs = {need: upstream_digest(Path(job.inputs[need]),
                                        f"seed{seed}/" if job.per_seed(need) else "") for need in sorted(job.inputs)}
        return {"run": name, "seed": job.seed, "settings": run_settings(job, param), "inputs": inputs,
                "data": getattr(job, "source", None), "code": code_digest(getattr(sys.modules.get("__main__"),
                                                                                    "__file__", None)),
                # the precision (bf16 on CUDA) and how a batch is split (KTO's singles) follow these
                "device": dist.device().type, "processes": dist.world_size()}

    @staticmethod
    def key(what: dict) -> str:
        return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]

    def restore(self, what: dict, folder: Path) -> bool:
        """Put the kept run of `what` into `folder` (hard links; copies where the file system has none) when there
        is one whose files are whole; log which, or why none. -> whether it did."""
        if getattr(self.job, "forced", False):
            log.info("%s: trains (--force)", what["run"])
            return False
        kept = self.root / what["run"] / self.key(what)
        files = _read_json(kept / ".files.json")
        try:
            if files is not None and all((kept / name).is_file() and _file_digest(kept / name) == digest
                                         for name, digest in files.items()):
                shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left
                _link_tree(kept, folder, files)  # run.json last: it marks the run finished
                log.info("%s: reused the run kept in %s (same settings, inputs and code)", what["run"], kept)
                return True
        except OSError as e:  # a kept run only saves time: one that cannot be restored is trained
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("%s: its kept run could not be restored (%s)", what["run"], e)
        if files is not None:  # trained again below, and kept anew
            shutil.rmtree(kept, ignore_errors=True)
        log.info("%s: trains (%s)", what["run"], "its kept run is damaged or edited" if files is not None
                 else self.why_not(what))
        return False

    def why_not(self, what: dict) -> str:
        """What differs from the newest kept run of the same name, or that there is none."""
        entries = sorted((p for p in (self.root / what["run"]).glob("*/.what.json")), key=lambda p: p.stat().st_mtime)
        if not entries:
            return "no run of it kept before"
        old = _read_json(entries[-1]) or {}
        changed = [f"settings {k}" for k, v in flatten(what["settings"]).items()
                   if flatten(old.get("settings", {})).get(k) != v]
        changed += [f"{k}'s files" for k, v in what["inputs"].items() if old.get("inputs", {}).get(k) != v]
        changed += [k for k in ("code", "seed", "data", "device", "processes") if old.get(k) != what[k]]
        return "changed since the run kept last: " + (", ".join(changed) or "its record")

    def keep(self, what: dict, folder: Path) -> None:
        """Keep the finished run in `folder` (run.json written): hard links and each file's sha256, renamed into
        place whole. Only the main process writes."""
        kept = self.root / what["run"] / self.key(what)
        if (kept / ".files.json").is_file():
            return
        files = {str(p.relative_to(folder)): _file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        for left in kept.parent.glob(f".{kept.name}.tmp-*"):  # what a killed attempt left: never read
            shutil.rmtree(left, ignore_errors=True)
        for other in kept.parent.glob("*/.what.json"):  # trained by other code: no run will ask for it again
            if (_read_json(other) or {}).get("code") != what["code"]:
                shutil.rmtree(other.parent, ignore_errors=True)
        tmp = kept.with_name(f".{kept.name}.tmp-{os.getpid()}")
        try:
            _link_tree(folder, tmp, files)
            (tmp / ".what.json").write_text(json.dumps(what, indent=1, sort_keys=True))
            (tmp / ".files.json").write_text(json.dumps(files, indent=1))  # last: it marks the entry whole
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(tmp, kept)
        except OSError as e:  # a kept run only saves time: a run that cannot be kept is still finished
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("%s: not kept for reuse (%s)", what["run"], e)


def _link_tree(src: Path, dst: Path, files: dict) -> None:
    """Hard links in dst to src's `files` (copies where the file system has none), run.json last."""
    for name in sorted(files, key=lambda n: n == "run.json"):
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / name, target)
        except OSError:
            shutil.copy2(src / name, target)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
