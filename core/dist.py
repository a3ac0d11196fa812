"""Several processes per stage: who this process is, its share of the work, and gathering results in order.

The spine starts a stage under `accelerate launch` when asked for more than one process (NPROC, or an
ACCELERATE_CONFIG); the launcher sets RANK / WORLD_SIZE / LOCAL_RANK. With one process (no launcher) every
helper here is the identity and nothing distributed is imported.

Work is split into contiguous blocks in rank order, so gathering the blocks restores the original order.
Only the main process writes the stage's files and talks to wandb; the others compute and leave.
"""

from __future__ import annotations

import os
import sys


def _die_with_the_launcher() -> None:
    """A process started by `accelerate launch` is killed when its launcher dies. torch elastic starts each in
    a session of its own, so a `kill -9` of the run's process group reaches the launcher but not them, and
    they would wait for their dead peers, holding their memory, for good (Linux; elsewhere nothing)."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before this process asked
        os._exit(1)


_die_with_the_launcher()  # at import: every stage imports this module among its first

import torch  # noqa: E402

from core.config import ConfigError  # noqa: E402


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: PIPELINES_DEVICE when set (cpu, cuda, cuda:1, mps), else its own GPU, else CPU."""
    if os.environ.get("PIPELINES_DEVICE"):
        return torch.device(os.environ["PIPELINES_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def on_cpu() -> bool:
    return device().type == "cpu"


def _group():
    """The process group (gloo on CPU, nccl on GPUs), set up by accelerate on first use."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu())


def fsdp_on_cpu() -> bool:
    """Switch accelerate to FSDP where the launcher asked for it (an FSDP config: ACCELERATE_USE_FSDP) on the CPU.

    accelerate shards on GPUs only: on the CPU it sets up DDP (MULTI_CPU) whatever the config says. torch's FSDP2
    (`fully_shard`) trains over gloo on the CPU too, so the state is set as accelerate sets it on a GPU (state.py: the
    distributed type in both shared states, and the plugin read from the launcher's FSDP_* variables). The
    Accelerators made after this prepare models with FSDP2 and gather full state dicts for saving; a TRL trainer's,
    made with its arguments (which reset accelerate's state), is switched after it is made (core.train.run_trainer).
    -> whether the state is FSDP on the CPU (one process, a GPU, or DDP: False, untouched)."""
    if world_size() == 1 or not on_cpu() or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":  # the spine refuses it up front (pipelines/launch.py)
        raise ConfigError(f"FSDP version {os.environ.get('FSDP_VERSION', '1')} on the CPU would silently be DDP; "
                          f"allowed on the CPU: FSDP version 2 (configs/accelerate/fsdp.yaml)")
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator(cpu=True, mixed_precision="no").state  # fp32 on the CPU (core.train.bf16)
    if state.distributed_type != DistributedType.FSDP:
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
        state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if is_main():
            import logging

            logging.getLogger("stage").info("FSDP2 on the CPU: %d processes over gloo, each holding a shard of every "
                                            "model it trains", world_size())
    return True


def barrier() -> None:
    """Every process waits here for the others (one process: nothing)."""
    if world_size() > 1:
        _group()
        torch.distributed.barrier()


def block(n: int, r: int | None = None, size: int | None = None) -> range:
    """The indices [0, n) that process r (default: this one) handles: contiguous, sizes differing by at most 1."""
    r, size = rank() if r is None else r, world_size() if size is None else size
    per, extra = divmod(n, size)
    start = r * per + min(r, extra)
    return range(start, start + per + (r < extra))


def shard(items: list) -> list:
    """This process's contiguous block of items."""
    span = block(len(items))
    return items[span.start : span.stop]


def gather(items: list) -> list:
    """Every process's block (of Python objects), concatenated in rank order, on every process."""
    if world_size() == 1:
        return list(items)
    from accelerate.utils import gather_object

    _group()
    return gather_object(list(items))


def gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Equal-shaped tensors of every process, concatenated along dim 0 in rank order, on every process."""
    if world_size() == 1:
        return x
    from accelerate.utils import gather

    _group()
    return gather(x.contiguous())


def close() -> None:
    """At a stage's end, on every process: wait for all, then leave the group. A process that exits while a
    peer is still reading its last message (gloo sends asynchronously) makes that peer abort."""
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_divisible(what: str, value: int) -> None:
    """A global batch split over the processes must split evenly, or the processes would train on different
    amounts and one process's result would differ from many processes'."""
    if value % world_size():
        raise ConfigError(f"{what} = {value} does not split over {world_size()} processes; "
                          f"use a multiple of {world_size()} or another NPROC")


def per_process(what: str, batch_size: int) -> int:
    """Each process's share of a global batch (a trainer's per-device batch size)."""
    check_divisible(what, batch_size)
    return batch_size // world_size()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of x over the processes, on every process."""
    if world_size() == 1:
        return x
    from accelerate.utils import reduce

    _group()
    return reduce(x.contiguous(), reduction="sum")
