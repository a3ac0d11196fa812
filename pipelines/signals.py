"""The spine's stop signals and how a stage's processes are stopped.

Ctrl-C, SIGTERM or SIGHUP to the spine become Interrupted, which stops the running stages (and everything they
started) before the spine leaves; a stage is built to survive being killed, so the next run resumes it.
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import contextmanager


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A stop signal to the spine (Ctrl-C, or SIGTERM / SIGHUP from a scheduler or a closed terminal).
    stage: the stage that was running, if one was."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stage = signum, None


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def handle_signals() -> None:
    """The spine's stop signals become Interrupted, which stops the running stage before the spine leaves."""
    for s in SIGNALS:
        signal.signal(s, _raise_interrupted)


def _stage_signals() -> None:
    """In the stage's process, before it starts. Ctrl-C reaches every process of the terminal's group: the
    stage ignores SIGINT (no traceback of its own) and the spine, which gets it too, stops the stage as for
    a signal sent to the spine alone. The spine's blocked signals (_signals_deferred) are not inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextmanager
def _signals_deferred():
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a stage and everything it started (accelerate's workers, wandb's service) and wait for it.
    SIGKILL: it prints nothing, and a stage is built to survive it (checkpoints and stage folders are
    renamed into place; the fault tests kill stages so), so the next run resumes."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in [proc, *tree]:  # the stage first, so it starts nothing new
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
