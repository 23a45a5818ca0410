"""Worker processes that die with their parent, and training subprocesses run with a log.

A pool worker forked by a process that is then killed (``kill -9``, the OOM killer) is
re-parented and would otherwise run on, writing files nobody waits for. :func:`die_with_parent`
(a ``ProcessPoolExecutor`` / ``multiprocessing.Pool`` ``initializer``) prevents that:

* on Linux it asks the kernel for ``SIGKILL`` when the parent exits (``prctl(PR_SET_PDEATHSIG)``);
* everywhere it starts a daemon thread that ends the worker (``os._exit``) as soon as its parent
  process changes (the parent died and the worker was re-parented), checked every
  ``poll_s`` seconds.

:func:`run_logged` runs a training or evaluation program as a subprocess with a log file and
returns its seconds and peak memory (the experiments of both front-ends use it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, Optional, Sequence

PR_SET_PDEATHSIG = 1
# Exit status of a worker that ended itself because its parent was gone.
ORPHAN_EXIT_STATUS = 70


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Linux: have the kernel send ``signum`` to this process when its parent exits.
    Returns False where this is not available (other systems, no libc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    event = threading.Event()
    while not event.wait(poll_s):
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT_STATUS)


def die_with_parent(expected_parent: Optional[int] = None, poll_s: float = 0.2) -> None:
    """Pool ``initializer``: end this worker when the process that started it exits.

    ``expected_parent``: the pid of the process that forks the workers (pass ``os.getpid()``
    in ``initargs`` with the "fork" start method); a worker whose parent is already another
    process by the time it starts ends at once."""
    set_parent_death_signal()
    parent = os.getppid()
    # The parent may have died before the death signal was armed: check once now.
    if expected_parent is not None and parent != expected_parent:
        os._exit(ORPHAN_EXIT_STATUS)
        return  # reached only where os._exit is replaced (tests)
    threading.Thread(
        target=_watch_parent, args=(parent, poll_s), name="die-with-parent", daemon=True
    ).start()


def watch_parent(poll_s: float = 0.5) -> None:
    """End this process (``os._exit``) within ``poll_s`` seconds of its parent's exit: a daemon
    thread checks the parent pid. Unlike :func:`set_parent_death_signal` it does not depend on
    which thread of the parent started this process (torchrun's agent)."""
    parent = os.getppid()
    if parent == 1:  # already re-parented to init: the launcher is gone
        os._exit(ORPHAN_EXIT_STATUS)
    threading.Thread(
        target=_watch_parent, args=(parent, poll_s), name="die-with-parent", daemon=True
    ).start()


def die_with_torchrun(poll_s: float = 0.5) -> bool:
    """In a rank started by ``torchrun`` (its agent sets ``TORCHELASTIC_RUN_ID``): end when the
    agent dies (``kill -9`` included), instead of training on as an orphan. Returns whether this
    is such a rank."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    watch_parent(poll_s)
    return True


def run_dying_with_parent(main_func, *args):
    """``main_func(*args)`` in a worker process that ends with its launcher (for
    ``functools.partial(run_dying_with_parent, main_func)`` as a spawned process's target)."""
    die_with_parent()
    return main_func(*args)


def pool_initargs() -> tuple:
    """``initargs`` for :func:`die_with_parent` in a pool of the default start method."""
    import multiprocessing

    return (os.getpid(),) if multiprocessing.get_start_method() == "fork" else ()


def run_logged(
    command: Sequence[str],
    log_path: str,
    threads: int = 1,
    cwd: Optional[str] = None,
    check: bool = True,
) -> Dict[str, float]:
    """Run ``command`` (a training or evaluation subprocess) with ``threads`` OpenMP / MKL
    threads and unbuffered output, its stdout and stderr going to ``log_path``.

    Returns ``{"seconds": wall time, "peak_rss_mib": the process's peak resident memory,
    "returncode": its exit status}``. With ``check`` (the default) a failed command raises
    ``RuntimeError`` naming the command, its exit status and the log, with the log's tail.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    start = time.time()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - start
    if check and process.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(
            f"{' '.join(map(str, command[:5]))} ... failed ({process.returncode}); "
            f"{log_path}:\n{tail}"
        )
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "returncode": process.returncode,
    }
