"""The device a run asks for (--device, DEVICE= with make, or PIPELINES_DEVICE), checked before any stage starts.

A device this machine does not have (a CUDA index past the count, a torch built without CUDA, no MPS) or a GPU
that cannot be started (busy in exclusive mode, out of memory, a driver that does not answer) is one line naming
what is available, not a traceback from inside the first stage that touches it. Asking whether a device exists
creates no CUDA context; starting one is tried in a child process (`python -m pipelines.devices <device>`), so the
spine, which runs for hours beside the stages, never holds GPU memory.
"""

from __future__ import annotations

import subprocess
import sys

from .config import ConfigError

PROBE_MIB = 64  # allocated on the device by the probe: a GPU that cannot give this much cannot run a stage
PROBE_SECONDS = 60  # a driver that hangs longer than this on start is reported as not answering


def available(torch) -> list[str]:
    """The devices this process can use, 'cpu' first."""
    out = ["cpu"]
    if torch.backends.cuda.is_built() and torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_built() and torch.backends.mps.is_available():
        out.append("mps")
    return out


def missing(device: str, torch) -> str | None:
    """Why `device` (cpu, cuda, cuda:<i>, mps) is not on this machine, or None when it is. Creates no context."""
    if device == "cpu":
        return None
    if device == "mps":
        if not torch.backends.mps.is_built():
            return f"this torch ({torch.__version__}) is built without MPS (Apple GPUs only)"
        if not torch.backends.mps.is_available():
            return "MPS is not available on this machine (it needs an Apple GPU and macOS 12.3 or later)"
        return None
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return "no CUDA device is visible (no driver, or CUDA_VISIBLE_DEVICES hides them all)"
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        return f"this machine has {count} CUDA device{'s' if count > 1 else ''}, cuda:0 to cuda:{count - 1}"
    return None


def check(device: str | None) -> str:
    """The device the stages will use: `device` itself, or when None the GPU when there is one, else 'cpu'.
    Raises ConfigError in one line when it is not on this machine or a GPU cannot be started."""
    import torch

    gpus = [d for d in available(torch) if d != "cpu"]
    chosen = device or (gpus[0] if gpus else "cpu")
    problem = missing(chosen, torch)
    if problem is None and chosen != "cpu":
        problem = _start_problem(chosen)
    if problem:
        what = f"--device {device}" if device else f"the default device ({chosen}, the first GPU)"
        raise ConfigError(f"{what}: {problem}; available here: {', '.join(available(torch))}"
                          + ("" if device else " (choose one with --device or DEVICE=)"))
    return chosen


def _start_problem(device: str) -> str | None:
    """Start the device in a child process and allocate PROBE_MIB on it; why that failed, or None."""
    try:
        done = subprocess.run([sys.executable, "-m", "pipelines.devices", device], capture_output=True, text=True,
                              timeout=PROBE_SECONDS)
    except subprocess.TimeoutExpired:
        return f"it did not answer within {PROBE_SECONDS} s (busy, or its driver hangs)"
    if done.returncode == 0:
        return None
    said = [line.strip() for line in done.stdout.splitlines() if line.strip()]  # the probe's own one line
    crashed = [line.strip() for line in done.stderr.splitlines() if line.strip()]  # else the child's last words
    return (said or crashed or [f"starting it failed (exit {done.returncode})"])[-1]


def probe(device: str, torch) -> str | None:
    """In the child: start `device` and allocate PROBE_MIB on it. Why that failed (one line), or None."""
    try:
        if device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(torch.device(device))
            if free < PROBE_MIB * 2**20:
                return (f"out of memory: {free / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB (another process "
                        f"holds it)")
        torch.empty(PROBE_MIB * 2**20, dtype=torch.uint8, device=device).fill_(1)
        if device.startswith("cuda"):
            torch.cuda.synchronize(torch.device(device))
    except (RuntimeError, AssertionError) as e:  # torch.OutOfMemoryError, AcceleratorError are RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"it cannot be started ({first})"
    return None


if __name__ == "__main__":
    import torch as _torch

    reason = probe(sys.argv[1], _torch)
    if reason:
        print(reason)
    sys.exit(1 if reason else 0)
