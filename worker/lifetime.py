"""Processes never outlive what started them.

lstmq-worker starts each Celery worker in a session of its own (so that a stop past the bound can
kill it with its pool), which also puts it out of reach of a supervisor's process-group kill. So
each child ties its life to its parent itself, needing nothing from a parent that died:
- a Celery worker started by lstmq-worker asks Linux for a parent-death signal (PR_SET_PDEATHSIG:
  SIGKILL when lstmq-worker dies, whatever killed it), then checks that lstmq-worker was not gone
  already;
- a pool process watches its parent (the Celery main process): when it is re-parented, its parent
  died, and it exits within PARENT_POLL_S. (A parent-death signal is tied to the thread that
  forked, which need not outlive the pool process; polling is not.)
The work they held is given back by whoever sees them die (lstmq-worker, the Celery main process)
or, if nobody does, when its lease lapses."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

log = logging.getLogger("lstmq.worker")

PARENT_ENV = "LSTMQ_PARENT_PID"   # set by lstmq-worker for the Celery workers it starts
PR_SET_PDEATHSIG = 1              # <linux/prctl.h>
PARENT_POLL_S = 1.0


def die_with_launcher() -> None:
    """In a Celery worker started by lstmq-worker ($LSTMQ_PARENT_PID): be SIGKILLed when lstmq-worker
    dies; exit at once if it died before this process asked. Elsewhere (a worker started by hand,
    not Linux) nothing changes."""
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not ask for a parent-death signal (errno %d): this worker may outlive lstmq-worker",
                    ctypes.get_errno())
    if os.getppid() != int(expected):   # lstmq-worker died between starting this process and now
        os._exit(1)


def watch_parent(poll: float = PARENT_POLL_S) -> threading.Thread:
    """In a pool process: exit (status 1) as soon as the process that forked it is gone."""
    parent = os.getppid()

    def watch() -> None:
        event = threading.Event()
        while not event.wait(poll):
            if os.getppid() != parent:
                log.error("the Celery main process (pid %d) is gone; this pool process (pid %d) exits with it",
                          parent, os.getpid())
                logging.shutdown()
                os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name="lstmq-parent-watch")
    thread.start()
    return thread
