"""`accelerate launch` as the spine starts a stage on several processes, with two differences: when a process
fails, the launcher exits 1 without a traceback or a report of its own (the failing process has logged its
one-line error, core/job.py, and the spine says which stage failed), and signals are left to the spine."""

import logging
import os
import subprocess
import sys

# torch elastic's loggers take their level from LOGLEVEL when first created: its own account of a failure
# (which process, which signal it sent the others) repeats what the stage's processes and the spine say.
os.environ["LOGLEVEL"] = "CRITICAL"
# Ctrl-C reaches the terminal's whole process group, and the spine answers it (and SIGTERM / SIGHUP) by
# stopping the stage's process tree. The launcher ignores SIGINT (the spine starts it so); torch elastic
# would take it over and pass it on to its workers (each in its own session), which would then die in
# KeyboardInterrupt tracebacks.
os.environ["PET_SIGNALS_TO_HANDLE"] = "SIGTERM,SIGHUP,SIGQUIT"  # torchrun's --signals-to-handle

from accelerate.commands.launch import launch_command, launch_command_parser  # noqa: E402
from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402


def main() -> None:
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its loggers without LOGLEVEL's
    args = launch_command_parser().parse_args()
    try:
        launch_command(args)
    except ChildFailedError:
        sys.exit(1)
    except SignalException as e:  # SIGTERM / SIGHUP: the workers are stopped; the spine tells the story
        sys.exit(128 + int(e.sigval))
    except subprocess.CalledProcessError as e:  # accelerate's one-process launcher
        sys.exit(e.returncode or 1)


if __name__ == "__main__":
    main()
