"""Stop signals: Ctrl-C to the terminal's process group, SIGTERM / SIGHUP / SIGKILL to the spine alone.

The spine answers with one line (what was interrupted, and that the same command resumes), stops and waits
for the stage it runs, and its lock covers that stage. Marked `faults` (make test-faults)."""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers import ROOT, cli

pytestmark = pytest.mark.faults


def start_in_a_stage(run_dir, log_path):
    """The micro run, started in its own process group (as a terminal starts a command), once its sft stage
    has been running for a second (past its start-up, into its imports)."""
    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "run", "imdb-sentiment", "--scale", "micro"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"),
                            start_new_session=True)
    deadline = time.time() + 120
    while not sft_process(proc) and time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()
        time.sleep(0.05)
    child = sft_process(proc)
    time.sleep(1.5)
    return proc, child


def sft_process(proc) -> psutil.Process | None:
    """The spine's child that runs sft (ground_truth starts beside it)."""
    for child in psutil.Process(proc.pid).children():
        try:
            if "sft" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            pass
    return None


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig,to_group", [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False),
                                          (signal.SIGHUP, False)])
def test_a_stop_signal_is_one_line_and_stops_the_stage(tmp_path, sig, to_group):
    proc, child = start_in_a_stage(tmp_path / "runs", tmp_path / "log")
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    assert proc.wait(timeout=60) == 128 + sig
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    # ground_truth runs beside sft (it trains no language model): it may still be running
    assert re.fullmatch(f"interrupted by {signal.Signals(sig).name} during (stage sft|stages sft, ground_truth); "
                        f"finished stages are kept: run the same command again to resume",
                        log.strip().splitlines()[-1]), log
    assert gone(child)  # stopped and waited for: no stage outlives the spine
    assert not (tmp_path / "runs" / "imdb-sentiment" / "micro" / ".lock").exists()


def test_the_lock_covers_a_stage_that_outlives_its_spine(tmp_path):
    """SIGKILL to the spine alone cannot be passed on: the orphaned stage keeps the run folder locked."""
    proc, child = start_in_a_stage(tmp_path / "runs", tmp_path / "log")
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        second = cli("run", "imdb-sentiment", "--scale", "micro", "--stages", "sft", run_dir=tmp_path / "runs")
        assert second.returncode == 2 and f"in use by process {child.pid}" in second.stderr, second.stderr
    finally:
        child.kill()
        child.wait()
