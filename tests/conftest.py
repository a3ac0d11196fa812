import contextlib
import fcntl
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE_TOML = (ROOT / "benchmarks.toml").read_text()
SHARED_IMDB = ROOT.parent / "shared" / "data" / "imdb"

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests run on 2 shared cores
# Two stages side by side, and sft / pairs / eval as two processes, on any machine: the runs the tests compare
# must be split the same way (the process count moves results at float level).
os.environ["PIPELINES_WORKERS"] = "2"
os.environ.setdefault("WANDB", "off")  # test_wandb.py turns it on (offline) where it checks the logging

import torch  # noqa: E402  (after OMP_NUM_THREADS)


def cli(*args, run_dir: Path, check=False, env: dict | None = None):
    """python -m pipelines ... as a user runs it, with the store under run_dir (and wandb files in it)."""
    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHONPATH": str(ROOT), "WANDB_DIR": str(run_dir), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None: unset
    proc = subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def record_in_manifest(folder: Path, name: str) -> None:
    """Record a stage folder's rewritten file in its manifest (size and sha256), as the stage would have written it:
    a test's stand-in for a stage that made this file (otherwise the run sees an edit and reruns the stage)."""
    import hashlib
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = (folder / name).stat().st_size
    if name in manifest.get("digests", {}) or manifest["files"][name] <= (1 << 20):
        manifest.setdefault("digests", {})[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


@contextlib.contextmanager
def once_per_session(tmp_path_factory, name: str):
    """A folder that one pytest session builds once, whichever of its pytest-xdist workers asks first (the others
    wait on a file lock, then read it). -> (the folder, whether the caller builds it; if so, it must fill it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()  # xdist: the session's
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = not done.exists()
        if build:
            shutil.rmtree(folder, ignore_errors=True)  # a failed build before this one
            folder.mkdir()
        yield folder, build
        if build:
            done.touch()


def session_run(tmp_path_factory, name: str, *args: str, env=lambda run_dir: {}) -> tuple[Path, Path, str, str]:
    """`python -m pipelines run imdb-sentiment --scale micro *args` once per test session, env(RUN_DIR) added to
    its environment. -> (RUN_DIR, the run's folder, its frontier.csv before any test changes the store, the
    spine's log)."""
    with once_per_session(tmp_path_factory, name) as (run_dir, build):
        if build:
            proc = cli("run", "imdb-sentiment", "--scale", "micro", *args, run_dir=run_dir, check=True,
                       env=env(run_dir))
            (run_dir.parent / f"{name}.log").write_text(proc.stderr)
    root = run_dir / "imdb-sentiment" / "micro"
    return run_dir, root, (root / "frontier.csv").read_text(), (run_dir.parent / f"{name}.log").read_text()


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """One full micro-scale run (every stage, about a minute), shared by the end-to-end tests (and by both
    pytest-xdist workers of `make test`)."""
    return session_run(tmp_path_factory, "micro_run")[:3]


@pytest.fixture(scope="session")
def two_process_offline_wandb_run(tmp_path_factory):
    """The micro run again with two processes per training stage (--nproc 2) and wandb offline (no login): what
    tests/test_multiprocess.py compares with micro_run and tests/test_wandb.py reads back, one run for both."""
    return session_run(tmp_path_factory, "two_process_offline_wandb_run", "--nproc", "2",
                       env=lambda run_dir: {"WANDB": None, "WANDB_MODE": None, "WANDB_API_KEY": None,
                                            "HOME": str(run_dir)})  # no login: offline


@torch.no_grad()
def sampled_minus_expected_logp(model, prompts, comps) -> tuple[float, float]:
    """Mean and standard error over completions of sum_t [log p(x_t | x_<t) + H(p(. | x_<t))].

    Under pure sampling from the model each term has mean 0 whatever its context (the sampled token's expected
    log-probability is minus the entropy), so the mean is 0 within noise; a sharper sampler (top-k, top-p,
    temperature < 1) pushes it up, a flatter one down. Far tighter than comparing the draws of two samplers."""
    from core import lm

    ids, attn, resp = lm.completion_batch(prompts, comps, 0, torch.device("cpu"))
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].double(), -1)
    terms = torch.gather(logp, 2, ids[:, 1:, None]).squeeze(-1) - (logp.exp() * logp).sum(-1)
    per_completion = (terms * resp).sum(1)
    return per_completion.mean().item(), (per_completion.std() / math.sqrt(len(comps))).item()


@pytest.fixture
def micro_copy(micro_run, tmp_path):
    """A private copy of the finished micro run (RUN_DIR, its micro folder) for a test that damages it."""
    import shutil

    run_dir = tmp_path / "runs"
    shutil.copytree(micro_run[1], run_dir / "imdb-sentiment" / "micro", symlinks=True)
    return run_dir, run_dir / "imdb-sentiment" / "micro"
