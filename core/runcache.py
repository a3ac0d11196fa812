"""Finished method runs kept by what they depend on: adding a seed, a sweep point or a method trains only what is new.

A method stage reruns whenever its config changes (another seed count, another beta), but each of its runs (one
sweep point, one training seed) depends on less than the whole config:
- its own settings: the stage's config with the list of runs cut to this run's value and the lists in its order
  (a beta's learning rate) to this run's entry, without `seeds` and `methods` (they choose which runs there are,
  not what one computes);
- the benchmark seed and the run's name (its method, sweep point and training seed);
- what it reads: the content of its seed's upstream folders (SFT model, pairs, reward model, ground truth);
- the code that trains it: the stage's package, core/ and the config schema, and the libraries' versions.
Their hash is the run's key. A finished run is kept as <run folder>/.runs/<stage>/<run name>/<key>/, hard links
to the stage folder's files (no second copy on disk), with the sha256 of each file; a stage that asks for a run
whose key is kept restores those files instead of training (after checking them: an edited or damaged kept run is
trained again), and says which runs it reused and, for the others, what changed. Kept runs outlive the stage
folder: a seed or a beta removed from the config and added back is restored, not trained.

A run restored is the files of the run that was trained, so the frontier is the one a fresh run gives: what a run
draws derives from its training seed alone (PPO seeds torch with it, TRL's trainers take it as their seed, our
pair loops their data order), whatever ran before it in the stage (tests/test_runcache.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
from fnmatch import fnmatch
from pathlib import Path

log = logging.getLogger("stage")

REPO_ROOT = Path(__file__).resolve().parent.parent
# in an upstream folder, not what a run reads: the stage's records of itself (its timings, paths and resume key) and
# the caches `datasets` writes beside a dataset its readers filter
UPSTREAM_SKIPPED = ("manifest.json", "job.json", "metrics.json", ".resume_key", "training_args.bin")
LIBRARIES = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "numpy")


def run_settings(job, param) -> dict:
    """The stage's config as one of its runs sees it: the list of runs cut to `param` (None: the stage has no
    sweep, as Preferred-FT), each list in its order cut to this run's entry (an empty one: not set, stays)."""
    from pipelines.config import SECTIONS

    config = {k: v for k, v in job.config.items() if k not in ("seeds", "methods")}
    section = dict(config.get(job.stage, {}))
    sweep = {f.name: f.metadata.get("sweep") for f in dataclasses.fields(SECTIONS[job.stage])} \
        if job.stage in SECTIONS else {}
    runs = [name for name, kind in sweep.items() if kind == "runs"]
    if param is not None and runs and runs[0] in section:
        index = section[runs[0]].index(param)
        for name, kind in sweep.items():
            if kind == "runs" or (kind == "per run" and section[name]):
                section[name] = section[name][index]
    config[job.stage] = section
    return config


@functools.cache
def _folder_digest(folder: Path) -> str:
    """sha256 over the files an upstream stage made in `folder` (names and contents), not its own records."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if (path.name in UPSTREAM_SKIPPED and path.parent == folder) or fnmatch(path.name, "cache-*.arrow"):
            continue
        h.update(str(path.relative_to(folder)).encode())
        _update_file(h, path)
    return h.hexdigest()


@functools.cache
def code_digest(main_file: str) -> str:
    """sha256 of the code that trains a stage's runs: its package (the folder of its __main__), core/, the config
    schema, and the versions of the libraries it trains with."""
    from importlib import metadata

    files = sorted(Path(main_file).resolve().parent.glob("*.py")) + sorted((REPO_ROOT / "core").glob("*.py"))
    h = hashlib.sha256()
    for path in [*files, REPO_ROOT / "pipelines" / "config.py"]:
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


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


class RunCache:
    """The kept runs of one stage (<run folder>/.runs/<stage>/), for the runs of one job."""

    def __init__(self, job):
        self.job = job
        self.root = Path(job.out).parent / ".runs" / job.stage

    def what(self, name: str, param, seed: int) -> dict:
        """What run `name` depends on (the module docstring's list), as recorded beside a kept run."""
        job = self.job
        inputs = {need: _folder_digest(job.upstream(need, seed)) for need in sorted(job.inputs)}
        main = getattr(sys.modules.get("__main__"), "__file__", None) or str(REPO_ROOT / "core" / "run.py")
        return {"run": name, "seed": job.seed, "settings": run_settings(job, param), "inputs": inputs,
                "code": code_digest(main)}

    @staticmethod
    def key(what: dict) -> str:
        return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]

    def restore(self, what: dict, folder: Path) -> bool:
        """Put the kept run of `what` into `folder` (hard links; copies where the file system has none) when there
        is one whose files are whole; log which, or why none. -> whether it did."""
        kept = self.root / what["run"] / self.key(what)
        files = _read_json(kept / ".files.json")
        if files is not None and all((kept / name).is_file() and _file_digest(kept / name) == digest
                                     for name, digest in files.items()):
            shutil.rmtree(folder, ignore_errors=True)  # what an interrupted attempt left
            _link_tree(kept, folder, files)
            log.info("%s: reused the run kept in %s (same settings, inputs and code)", what["run"], kept)
            return True
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
        changed = [f"settings {k}" for k, v in _flatten(what["settings"]).items()
                   if _flatten(old.get("settings", {})).get(k) != v]
        changed += [f"{k}'s files" for k, v in what["inputs"].items() if old.get("inputs", {}).get(k) != v]
        changed += [k for k in ("code", "seed") if old.get(k) != what[k]]
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
    for name in files:
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
