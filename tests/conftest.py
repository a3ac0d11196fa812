"""pytest's fixtures and hooks. What test modules share besides fixtures (paths, the command line, toy models,
config files as data) is in helpers.py: `from helpers import cli`, never `from conftest import ...`."""

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tests run on 2 shared cores
# One stage at a time, each one process, on any machine: the runs the tests compare must be split the same way (the
# process count moves results at float level), and with two pytest workers on two cores a second stage process per
# run only adds imports and contention (make test: 942 s against 1031 s with two, 2026-12-08). Two workers and
# several processes: test_every_method_another_seed_and_reseed_shared (--workers 2), tests/test_multiprocess.py.
os.environ["PIPELINES_WORKERS"] = "1"
os.environ.setdefault("WANDB", "off")  # test_wandb.py turns it on (offline) where it checks the logging

from helpers import cli  # noqa: E402  (after the environment: the runs it starts inherit it)


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


@pytest.fixture
def micro_copy(micro_run, tmp_path):
    """A private copy of the finished micro run (RUN_DIR, its micro folder) for a test that damages it."""
    import shutil

    run_dir = tmp_path / "runs"
    shutil.copytree(micro_run[1], run_dir / "imdb-sentiment" / "micro", symlinks=True)
    return run_dir, run_dir / "imdb-sentiment" / "micro"


# Tests that run stages (a micro run or part of one, as a user does): make test runs them, make test-fast leaves them
# out. A test is one when it uses a run's fixture, sits in a module of such tests, or says so (@pytest.mark.slow).
RUN_FIXTURES = {"micro_run", "micro_copy", "two_process_offline_wandb_run"}
RUN_MODULES = {"test_e2e", "test_runcache", "test_scaling", "test_faults", "test_signals", "test_multiprocess",
               "test_dpo", "test_fidelity", "test_wandb"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RUN_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in RUN_MODULES:
            item.add_marker(pytest.mark.slow)
