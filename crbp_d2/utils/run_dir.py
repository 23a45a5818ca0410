"""One run per output folder, for both trainers (no Detectron2 import).

- :func:`prepare_output_dir`: before anything is built, ``OUTPUT_DIR`` must be a folder (or not
  exist yet) that can be written; a folder holding a run (finished or partial) is continued only
  with ``resume`` or started again only with ``overwrite`` (which removes the old run's files), and
  ``resume`` where there is nothing to resume is refused (a typo in the folder?) unless
  ``fresh_ok``.
- :class:`RunDirLock`: an exclusive lock on the folder for the whole run (``OUTPUT_DIR/.run.lock``
  holding the holder's pid, host and start time; ``fcntl.flock``, so the kernel releases it when
  the holder dies, ``kill -9`` included). A second run into the folder is refused in one line
  naming the holder; a lock file left by a dead process is taken over with a warning.

Each trainer names its run files (:data:`PATHFINDER_RUN_FILES`, :data:`DETECTRON2_RUN_FILES`:
glob patterns relative to the folder).
"""

from __future__ import annotations

import fnmatch
import os
import socket
import sys
import time
from typing import List, Optional, Sequence

__all__ = [
    "DETECTRON2_RUN_FILES",
    "LOCK_NAME",
    "PATHFINDER_RUN_FILES",
    "RunDirBusyError",
    "RunDirLock",
    "is_main_launcher",
    "check_output_dir",
    "prepare_output_dir",
    "run_files",
]

LOCK_NAME = ".run.lock"
PATHFINDER_RUN_FILES = ("last.pth", "best.pth", "train_log.csv", "eval_log.csv", "metrics.json")
# What makes a Detectron2 folder hold a run (checkpoints, the pointer to the last one, metrics).
DETECTRON2_RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json")
# Removed with them by ``overwrite`` (the old run's TensorBoard events).
DETECTRON2_OVERWRITTEN = DETECTRON2_RUN_FILES + ("events.out.tfevents.*",)


class RunDirBusyError(RuntimeError):
    """Another live process holds the folder's lock (message: one line naming it)."""


def run_files(output_dir: str, patterns: Sequence[str]) -> List[str]:
    """The names in ``output_dir`` that match ``patterns`` (sorted; [] for a missing folder)."""
    try:
        names = os.listdir(output_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def prepare_output_dir(
    output_dir: str,
    resume: bool = False,
    overwrite: bool = False,
    patterns: Sequence[str] = PATHFINDER_RUN_FILES,
    removed: Optional[Sequence[str]] = None,
    resume_flag: str = "--resume",
    overwrite_flag: str = "--overwrite",
    fresh_ok: bool = True,
    fresh_flag: str = "",
) -> None:
    """Check ``output_dir`` before anything is built (see the module docstring).

    Raises ``NotADirectoryError`` / ``PermissionError`` / ``FileExistsError`` /
    ``FileNotFoundError`` with one line naming the folder and the flag that does what. With
    ``overwrite``, the files matching ``removed`` (default ``patterns``) are deleted."""
    check_output_dir(output_dir)
    found = run_files(output_dir, patterns)
    if found and not resume:
        if not overwrite:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise FileExistsError(
                f"OUTPUT_DIR {output_dir!r} holds a run ({shown}): continue it with "
                f"{resume_flag}, or start again with {overwrite_flag} (its files are replaced)"
            )
        for name in run_files(output_dir, removed or patterns):
            os.remove(os.path.join(output_dir, name))
    if resume and not found and not fresh_ok:
        raise FileNotFoundError(
            f"{resume_flag}: OUTPUT_DIR {output_dir!r} holds no run to continue (a typo in the "
            f"folder?); {fresh_flag} starts a new run there instead"
        )


def check_output_dir(output_dir: str) -> None:
    """``output_dir`` is a folder, or can be created as one, and can be written (nothing is created
    here); else ``NotADirectoryError`` / ``PermissionError`` (one line naming it)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"OUTPUT_DIR {output_dir!r} is a file, not a folder")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):  # the nearest existing folder
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(
            f"OUTPUT_DIR {output_dir!r} cannot be created: {existing} is a file"
        )
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"OUTPUT_DIR {output_dir!r} cannot be written ({existing})")


def is_main_launcher() -> bool:
    """True in the process that should hold the folder's lock: not a ``torchrun`` rank other than
    0 (``RANK``), and not a Detectron2 / gloo worker (those run inside the launcher's lock)."""
    return os.environ.get("RANK", "0") == "0"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirLock:
    """Exclusive lock on ``output_dir`` (a context manager; :meth:`acquire` / :meth:`release`).

    The lock file ``output_dir/.run.lock`` holds ``pid host start-time``. Acquiring fails with
    :class:`RunDirBusyError` while another process holds it; a file left behind by a process that
    is gone (killed) is taken over with a warning. Where ``fcntl`` is missing (Windows), the file
    alone is the lock (a holder on this host that is not running counts as gone)."""

    def __init__(self, output_dir: str, prog: str = "") -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.prog = prog
        self._fd: Optional[int] = None
        self._created: List[str] = []  # folders made for the lock, removed again if left empty

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ""

    def acquire(self) -> "RunDirLock":
        missing = os.path.abspath(self.output_dir)
        while not os.path.exists(missing):
            self._created.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(self.output_dir, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover (not Linux / macOS)
            fcntl = None
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    holder = self._holder() or "unknown process"
                    raise RunDirBusyError(
                        f"OUTPUT_DIR {self.output_dir!r} is in use by another run ({holder}): "
                        "wait for it to end, or use another OUTPUT_DIR"
                    ) from None
                try:  # the file may have been removed by its last holder meanwhile: retry
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            old = os.read(fd, 4096).decode(errors="replace").strip()
            if old:
                parts = old.split()
                pid = int(parts[0].split("=")[-1]) if parts and parts[0][-1:].isdigit() else -1
                host = parts[1].split("=")[-1] if len(parts) > 1 else ""
                if fcntl is None and host == socket.gethostname() and pid > 0 and _pid_alive(pid):
                    os.close(fd)
                    raise RunDirBusyError(
                        f"OUTPUT_DIR {self.output_dir!r} is in use by another run ({old}): "
                        "wait for it to end, or use another OUTPUT_DIR"
                    )
                print(
                    f"{self.prog or 'run'}: warning: OUTPUT_DIR {self.output_dir!r}: taking over "
                    f"the lock of a run that is no longer running ({old})",
                    file=sys.stderr,
                )
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
            os.write(fd, f"pid={os.getpid()} host={socket.gethostname()} since={stamp}\n".encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunDirBusyError(f"OUTPUT_DIR {self.output_dir!r}: could not take its lock")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still holding it: a waiting process retries
        except OSError:
            pass
        os.close(self._fd)  # releases the flock
        self._fd = None
        for folder in self._created:  # a run that wrote nothing leaves no empty folders behind
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
