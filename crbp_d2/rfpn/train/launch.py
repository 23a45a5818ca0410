"""Multi-process Detectron2 training on CUDA (NCCL) or on CPU (gloo).

Detectron2 v0.6's :func:`detectron2.engine.launch` initialises every worker with NCCL and asserts
CUDA, and its ``create_ddp_model`` gives DistributedDataParallel a CUDA device id, which DDP
refuses for a CPU model. This module adds what a CPU run needs without changing Detectron2:

- :func:`launch`: Detectron2's ``launch`` when ``device`` is CUDA; otherwise it spawns the workers
  itself (``torch.multiprocessing``), initialises the process group with gloo and sets up
  Detectron2's per-machine process group (``comm._LOCAL_PROCESS_GROUP``, or
  ``comm.create_local_process_group`` in newer Detectron2) as Detectron2's own worker does.
- :func:`create_ddp_model` / :func:`ddp_on_any_device`: Detectron2's ``create_ddp_model`` with
  ``device_ids=None`` for a CPU model; :class:`crbp_d2.rfpn.train.trainer.Trainer` builds its
  model under :func:`ddp_on_any_device`, so a CPU run started by any launcher (also
  ``torchrun``) works.

On CPU, ``--num-gpus N`` of ``tools/train_net.py`` is the number of worker processes. Without
``OMP_NUM_THREADS`` each worker gets ``cores // N`` intra-op threads (not all cores each).

The workers of a multi-process run end with their launcher (``kill -9`` included:
:func:`crbp_d2.utils.procs.die_with_parent`), and a rendezvous port already in use on this
machine (another run, an orphan) is one :class:`DistUrlError` line before anything starts.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Optional, Sequence
from urllib.parse import urlparse

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch

from ...utils.procs import die_with_parent, run_dying_with_parent

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistUrlError",
    "check_dist_port",
    "create_ddp_model",
    "ddp_on_any_device",
    "is_cuda_device",
    "launch",
]

DEFAULT_TIMEOUT = timedelta(minutes=30)
_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model
logger = logging.getLogger(__name__)


class DistUrlError(ValueError):
    """The rendezvous address cannot be used (message: one line naming it)."""


def check_dist_port(dist_url: Optional[str], machine_rank: int = 0) -> None:
    """On the machine that hosts the rendezvous (``machine_rank`` 0), a ``tcp://HOST:PORT`` whose
    port is already taken is a :class:`DistUrlError` (instead of an ``EADDRINUSE`` traceback in
    every worker)."""
    if machine_rank != 0 or not dist_url or not dist_url.startswith("tcp://"):
        return
    port = urlparse(dist_url).port
    if port is None:
        raise DistUrlError(f"--dist-url {dist_url}: no port (tcp://HOST:PORT)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as error:
            raise DistUrlError(
                f"--dist-url {dist_url}: port {port} is in use on this machine (another run, or "
                f"one still stopping; {error.strerror}): pass --dist-url auto (a free port) or "
                "another port"
            ) from None


def is_cuda_device(device) -> bool:
    """True for ``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``."""
    return torch.device(device).type == "cuda"


def launch(
    main_func: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    device: str = "cuda",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each machine.

    Args:
        device: ``MODEL.DEVICE``. CUDA: Detectron2's ``launch`` (NCCL, one GPU per process).
            Anything else: the same process layout with gloo and no GPU.
        dist_url: ``tcp://HOST:PORT`` (or ``file://...``) of the rendezvous, or ``"auto"`` (a
            free local port; one machine only).
        Other arguments: as Detectron2's ``launch``.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size > 1 and is_cuda_device(device):
        check_dist_port(dist_url, machine_rank)
        # every worker ends when this launcher does (kill -9 included)
        main_func = functools.partial(run_dying_with_parent, main_func)
    if is_cuda_device(device):
        d2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise DistUrlError(
                "dist_url 'auto' (or none) works on one machine only: pass --dist-url"
            )
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    check_dist_port(dist_url, machine_rank)
    mp.spawn(
        _cpu_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    """One CPU worker: gloo process group, Detectron2's local group, a share of the cores; it ends
    when the launcher does (``kill -9`` included), not training on as an orphan."""
    die_with_parent()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // num_per_machine))
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    _setup_local_process_group(world_size, num_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
        # Both processes reach here before gloo is torn down: a process that destroys its group
        # and exits while the other still finishes (rank 0 evaluates and logs longer) was seen to
        # abort at exit ("terminate called without an active exception", SIGABRT) in CI.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _setup_local_process_group(world_size: int, num_per_machine: int, machine_rank: int) -> None:
    """Detectron2's per-machine process group (``comm.get_local_rank`` / ``get_local_size``)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after v0.6
        comm.create_local_process_group(num_per_machine)
        return
    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("Detectron2's local process group is already set up in this process")
    for i in range(world_size // num_per_machine):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def create_ddp_model(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model`` (DDP when there are > 1 processes), with no device ids
    for a model whose parameters are on the CPU (DDP accepts device ids for CUDA modules only)."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        first = next(model.parameters(), None)
        if first is not None and first.device.type == "cpu":
            kwargs["device_ids"] = None
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


@contextmanager
def ddp_on_any_device() -> Iterator[None]:
    """Within the block, Detectron2's ``DefaultTrainer`` wraps its model with
    :func:`create_ddp_model` (v0.6 calls ``detectron2.engine.defaults.create_ddp_model``)."""
    saved = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = saved
