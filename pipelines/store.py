"""The run store: runs/<benchmark>/<scale>/<stage>/, one manifest.json per finished stage.

A stage is written into a hidden temporary folder beside its final place and renamed into place only
when it has finished, after its manifest: a folder named like a stage is always a finished one. A lock
file per benchmark/scale keeps two runs from writing the same store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from .config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "transformers", "trl", "datasets", "accelerate", "tokenizers", "scikit-learn", "numpy")


def runs_dir() -> Path:
    return Path(os.environ.get("RUN_DIR") or REPO_ROOT / "runs")


def run_root(benchmark: str, scale: str, instance: int | None = None) -> Path:
    """runs/<benchmark>/<scale>/; an instance drawn from another benchmark seed (--seed N) in <scale>-seed<N>/, so two
    instances stand side by side and neither replaces the other."""
    return runs_dir() / benchmark / (scale if instance is None else f"{scale}-seed{instance}")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


MANIFEST_KEYS = ("config", "config_hash", "inputs", "identity")


def read_manifest(stage_dir: Path) -> dict | None:
    """A finished stage's manifest, or None: not there, or unreadable (bytes, a list, keys missing), which
    means the same to the run: redo the stage."""
    try:
        manifest = json.loads((stage_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not UTF-8, not JSON
        return None
    if not isinstance(manifest, dict) or any(key not in manifest for key in MANIFEST_KEYS):
        return None
    return manifest


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under a finished stage's folder (but its manifest) and its size, for the manifest."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


DIGEST_MAX_BYTES = 1 << 20  # files up to this size (results, metrics, configs; not weights) are recorded by content


def file_digests(folder: Path, sizes: dict[str, int]) -> dict[str, str]:
    """sha256 of each small file of `sizes` (file_sizes): what a reader parses (summary.json, frontier.csv,
    runs.json), so an edit that keeps a file's size is seen too."""
    return {name: _sha256(folder / name) for name, size in sizes.items() if size <= DIGEST_MAX_BYTES}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged(folder: Path, manifest: dict | None) -> str | None:
    """What no longer matches the files a finished stage recorded (deleted, truncated, rewritten), or None.
    Manifests written before files (or their digests) were recorded pass."""
    for name, size in (manifest or {}).get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, not the {size} it was written with"
    for name, digest in (manifest or {}).get("digests", {}).items():
        if _sha256(folder / name) != digest:
            return f"{folder / name} was edited after it was written (same size, other content)"
    return None


class HashCache:
    """sha256 of files, remembered by path, size and modification time (RUN_DIR/.cache/file-hashes.json):
    a large source is read once, and any edit (its size or time changes) is hashed again. source.check also
    records here which source contents and settings have passed its checks."""

    def __init__(self):
        self.path = runs_dir() / ".cache" / "file-hashes.json"
        try:
            self.entries = json.loads(self.path.read_text())
            assert isinstance(self.entries, dict)
        except (OSError, ValueError, AssertionError):
            self.entries = {}
        self.changed = False

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns]
        hit = self.entries.get(key)
        if isinstance(hit, list) and hit[:2] == stamp:
            return hit[2]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        self.entries[key], self.changed = [*stamp, h.hexdigest()], True
        return h.hexdigest()

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.entries)


def check_run_dir(root: Path) -> None:
    """Refuse a run folder that cannot be written (RUN_DIR a file, a folder without write access) before
    anything is written, rather than with a traceback at the first write."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"RUN_DIR: {existing} is a file; allowed: a folder, or a path where one can be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"RUN_DIR: {existing} is not writable; allowed: a folder you can write to")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a signal: no half-written file is left beside it
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def temp_dir_for(final: Path, resume_key: str | None = None) -> tuple[Path, bool]:
    """The hidden folder beside `final` (same file system, so the rename is atomic) that a stage writes into,
    and whether it resumes. A folder left by an interrupted run of the same job (resume_key: its config and
    inputs) is kept, so the stage resumes from its checkpoints; any other leftover is wiped."""
    tmp = final.with_name(f".{final.name}.tmp")
    key_file = tmp / ".resume_key"
    if tmp.exists():
        if resume_key and key_file.exists() and key_file.read_text() == resume_key:
            return tmp, True
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if resume_key:
        key_file.write_text(resume_key)
    return tmp, False


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place, replacing an older version of it."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def publish_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    """Running, not a zombie: a stage killed with its spine may wait a while for a reaper (in a container,
    none may come), and it holds nothing."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


class RunLock:
    """An exclusive lock on one benchmark/scale store; a lock left by a dead process is taken over.
    The lock file holds the spine's PID and those of the stages it runs (cover): the lock is live while
    either is."""

    def __init__(self, root: Path):
        self.path = root / ".lock"

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # what check_run_dir could not see (a read-only file system, as root)
            raise ConfigError(f"cannot create the run folder {self.path.parent} ({e.strerror}); allowed: a folder, or "
                              f"a path where one can be made (RUN_DIR)") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holders = [int(pid) for pid in self.path.read_text().split()]
                except (ValueError, OSError):
                    holders = []
                live = [pid for pid in holders if pid != os.getpid() and _pid_alive(pid)]
                if live:
                    raise ConfigError(f"{self.path.parent} is in use by process {live[0]} (lock {self.path})") from None
                self.path.unlink(missing_ok=True)  # stale: its holder is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise ConfigError(f"could not take the lock {self.path}")

    def cover(self, pids: list[int]) -> None:
        """Hold the lock for these children (the running stages) too, until the next call."""
        write_text_atomic(self.path, "".join(f"{pid}\n" for pid in [os.getpid(), *pids]))

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
