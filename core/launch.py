"""`accelerate launch` as the spine starts a stage on several processes, with two differences: when a process
fails, the launcher exits 1 without a traceback of its own (torch elastic's ChildFailedError report; the
failing process has logged its one-line error, core/job.py, and the spine says which stage failed), and
Ctrl-C is left to the spine (see main)."""

import logging
import os
import subprocess
import sys

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def main() -> None:
    # the launcher's own log of a failure (which process, which signal to the others) repeats what the stage's
    # processes and the spine say
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # Ctrl-C reaches the terminal's whole process group; the spine answers it by stopping the stage's process
    # tree. The launcher ignores SIGINT (the spine starts it so); torch elastic would otherwise take SIGINT
    # over and pass it to its workers (each in its own session), which die in KeyboardInterrupt tracebacks.
    os.environ["PET_SIGNALS_TO_HANDLE"] = "SIGTERM,SIGHUP,SIGQUIT"  # torchrun's --signals-to-handle
    args = launch_command_parser().parse_args()
    try:
        launch_command(args)
    except ChildFailedError:
        sys.exit(1)
    except subprocess.CalledProcessError as e:  # accelerate's one-process launcher
        sys.exit(e.returncode or 1)


if __name__ == "__main__":
    main()
