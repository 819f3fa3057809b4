"""Start a job's training process so that it stops when the process that runs its worker dies.

On Linux the child asks the kernel for SIGTERM when its parent goes (PR_SET_PDEATHSIG): a server
killed with SIGKILL leaves no training behind, and SIGTERM is the recipe's clean stop, so the
job's last checkpoint is on disk when the next server resumes it. Then it becomes the real command
(exec, same pid). Elsewhere it just execs; worker.reclaim_orphans waits for such a process to end.

Run as:
    python -m smolora.queue.child PARENT_PID -- -m smolora.cli.main train config.yaml
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[2:]
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before the request took hold
            sys.exit(143)
    os.execv(sys.executable, [sys.executable, *command])


if __name__ == "__main__":
    main(sys.argv[1:])
