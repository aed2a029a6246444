"""Peak memory of a process tree: PSS of the process and all of its children,
plus what it adds to ``/dev/shm`` (and what it held there already, in files
named for its pid), sampled every 20 ms. Pages of
``/dev/shm`` files that the processes map are counted once, in ``/dev/shm``
(their share of PSS, ``Pss_Shmem``, is left out of each process's).

The sampler runs in a process of its own, not in a thread of the measured
process: a thread there would change what is measured (pandas_parallel, for
one, forks its workers only in a process with a single thread).

    with PeakMemory() as memory:
        work()
    print(memory.peak)

Run as a script (``python peak_memory.py PID``), it is that sampler: it
samples PID's tree, leaving itself out, until its standard input closes,
then prints the peak in bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

INTERVAL_SECONDS = 0.02


def _pss(pid: int) -> int:
    """The process's PSS, without its share of shared-memory files (counted
    once, as what ``/dev/shm`` holds)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in ("Pss", "Pss_Shmem"):
                    fields[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def _shm_used() -> int:
    try:
        return shutil.disk_usage("/dev/shm").used
    except OSError:
        return 0


def _own_shm_bytes(pid: int) -> int:
    """What the measured process holds in ``/dev/shm`` already (files named
    for its pid, as pandas_parallel names its scratch and store): counted as
    its memory, though written before the measurement began."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir("/dev/shm"):
            if f"-{pid}-" not in entry.name:
                continue
            paths = ([os.path.join(root, f) for root, _, files in os.walk(entry.path)
                      for f in files] if entry.is_dir() else [entry.path])
            for path in paths:
                with contextlib.suppress(OSError):
                    total += os.stat(path).st_blocks * 512
    return total


class PeakMemory:
    """Context manager: the peak summed PSS of this process tree (``.peak``)."""

    def __init__(self) -> None:
        self.peak = 0
        self._sampler: subprocess.Popen[str] | None = None

    def __enter__(self) -> PeakMemory:
        self._sampler = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._sampler.stdout is not None
        if self._sampler.stdout.readline().strip() != "ready":
            raise RuntimeError("the memory sampler did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._sampler is not None
        out, _ = self._sampler.communicate(timeout=60)  # closes its stdin: stop
        self.peak = int(out.split()[-1])


def _sample_until_stdin_closes(pid: int) -> int:
    import select

    import psutil

    me = os.getpid()
    root = psutil.Process(pid)
    shm_base = _shm_used() - _own_shm_bytes(pid)

    def sample() -> int:
        pids = [pid]
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in root.children(recursive=True) if c.pid != me]
        return sum(_pss(p) for p in pids) + max(0, _shm_used() - shm_base)

    peak = sample()
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], INTERVAL_SECONDS)[0]:
        peak = max(peak, sample())
    return max(peak, sample())


if __name__ == "__main__":
    print(_sample_until_stdin_closes(int(sys.argv[1])), flush=True)
