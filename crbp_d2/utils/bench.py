"""Measuring helpers for benchmarks: memory of this process, bytes saved for backward, and
running one configuration in a fresh process (a CPU peak RSS is a per-process maximum)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

RECORD_PREFIX = "RECORD "


def rss_bytes() -> int:
    """Resident memory of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The largest resident memory this process has had (``ru_maxrss``; KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SavedBytes:
    """Counts the bytes autograd saves for backward inside :meth:`counting` (``.total``)."""

    def __init__(self) -> None:
        self.total = 0

    def _pack(self, tensor):
        self.total += tensor.numel() * tensor.element_size()
        return tensor

    @contextmanager
    def counting(self) -> Iterator["SavedBytes"]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def print_record(record: Dict[str, Any]) -> None:
    """Print ``record`` as the one line :func:`run_isolated` reads back."""
    print(RECORD_PREFIX + json.dumps(record), flush=True)


def run_isolated(
    module: str, args: Sequence[str], cwd: Optional[str] = None, env: Optional[dict] = None
) -> Dict[str, Any]:
    """Run ``python -m module *args`` in a fresh process and return the record it printed with
    :func:`print_record` (the last one). Raises ``RuntimeError`` with its stderr if it fails."""
    command: List[str] = [sys.executable, "-m", module, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RECORD_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RECORD_PREFIX) :])


def run_isolated_calls(
    function: Callable[[Any], Dict[str, Any]], jobs: Sequence[Any], preload: Sequence[str] = ()
) -> Iterator[Dict[str, Any]]:
    """``function(job)`` for each of ``jobs``, in order, each in a fresh process of its own, like
    :func:`run_isolated` but forked from one server process that imported the modules
    ``preload`` once (multiprocessing's "forkserver"), not started from scratch each time (which
    costs ~1.5 s of imports per job). ``function`` must be importable (module level) and return
    a picklable record."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .procs import die_with_parent

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))  # (ignored once the server runs)
    for job in jobs:
        with ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=die_with_parent
        ) as pool:
            yield pool.submit(function, job).result()
