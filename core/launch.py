"""`accelerate launch` as the spine starts a stage on several processes, with one difference: when a process
fails, the launcher exits 1 without a traceback of its own (torch elastic's ChildFailedError report). The
failing process has logged its one-line error (core/job.py), and the spine says which stage failed."""

import logging
import subprocess
import sys

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def main() -> None:
    # the launcher's own log of a failure (which process, which signal to the others) repeats what the stage's
    # processes and the spine say
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = launch_command_parser().parse_args()
    try:
        launch_command(args)
    except ChildFailedError:
        sys.exit(1)
    except subprocess.CalledProcessError as e:  # accelerate's one-process launcher
        sys.exit(e.returncode or 1)


if __name__ == "__main__":
    main()
