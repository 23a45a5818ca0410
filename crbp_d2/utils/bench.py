"""Measuring helpers for benchmarks: memory of this process, bytes saved for backward (each
storage once), and
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


SAVED_COUNTER = "distinct_storage"  # what a record's ``saved_bytes`` counts (see below)


class SavedStorageBytes:
    """Bytes of memory that autograd saves for backward inside :meth:`counting`, each storage
    counted once.

    Every tensor autograd saves is a view of a storage: it covers the bytes
    ``[offset, offset + extent)`` of it (``extent`` spans its strides, so a slice or a transposed
    tensor covers what it can reach). ``total`` is the sum, over the storages saved from, of the
    union of those byte ranges: a tensor saved by three operations, or two overlapping views of
    one buffer, count once. A storage freed and another allocated at the same address (e.g. in a
    ``create_graph`` backward) count as two. It is not a peak: it counts every storage saved in
    the window, whether or not all were alive at once; compare it with the allocator's peak.

    ``references`` is the sum of ``numel * element_size`` over every saved reference (what this
    project's counter reported before: a tensor saved three times counts three times).
    """

    def __init__(self) -> None:
        self.references = 0
        self._ranges: Dict[int, List[List[int]]] = {}  # storage id -> merged byte ranges
        self._alive: Dict[int, Any] = {}  # storage id -> weak reference to that storage
        self._retired = 0  # bytes of storages freed (and their address reused) meanwhile

    @property
    def total(self) -> int:
        """Bytes of distinct storage saved so far."""
        return self._retired + sum(end - start for r in self._ranges.values() for start, end in r)

    def add(self, tensor) -> None:
        """Count one saved ``tensor``."""
        size = tensor.element_size()
        self.references += tensor.numel() * size
        if tensor.numel() == 0:
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested, ...)
            self._retired += tensor.numel() * size
            return
        from torch.multiprocessing.reductions import StorageWeakRef

        key = storage._cdata
        if key in self._alive and self._alive[key].expired():  # a new storage at that address
            self._retired += sum(end - start for start, end in self._ranges.pop(key))
            del self._alive[key]
        if key not in self._alive:
            self._alive[key] = StorageWeakRef(storage)
            self._ranges[key] = []
        reach = 1 + sum((n - 1) * abs(st) for n, st in zip(tensor.shape, tensor.stride()))
        start = tensor.storage_offset() * size
        self._ranges[key] = _merged(self._ranges[key] + [[start, start + reach * size]])

    def _pack(self, tensor):
        self.add(tensor)
        return tensor

    @contextmanager
    def counting(self) -> Iterator["SavedStorageBytes"]:
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def _merged(ranges: List[List[int]]) -> List[List[int]]:
    """Overlapping or touching [start, end) ranges merged, sorted."""
    out: List[List[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


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
