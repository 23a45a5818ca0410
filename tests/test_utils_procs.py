"""Pool workers die with their parent, also where the kernel's parent-death signal is missing
(the watching thread alone)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from crbp_d2.utils import procs

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from crbp_d2.utils import procs

    if sys.argv[1] == "watch-only":
        procs.set_parent_death_signal = lambda signum=None: False  # no prctl: the thread alone

    def work(_):
        time.sleep(60)

    pool = ProcessPoolExecutor(2, initializer=procs.die_with_parent, initargs=(os.getpid(),))
    futures = [pool.submit(work, k) for k in range(2)]
    time.sleep(1.0)
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["prctl", "watch-only"])
def test_workers_end_when_their_parent_is_killed(mode):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    workers = [int(pid) for pid in result.stdout.split()]
    assert len(workers) == 2
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    alive = [pid for pid in workers if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"{mode}: workers {alive} outlived their killed parent"


def test_a_worker_whose_parent_is_already_gone_ends_at_once(monkeypatch):
    ended = []
    monkeypatch.setattr(procs.os, "_exit", lambda status: ended.append(status))
    monkeypatch.setattr(procs, "set_parent_death_signal", lambda signum=None: True)
    procs.die_with_parent(expected_parent=os.getppid() + 1_000_000)
    assert ended == [procs.ORPHAN_EXIT_STATUS]
