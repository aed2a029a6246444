"""The ``forked`` backend: workers forked from this process, kept for later calls.

Where it is safe (:func:`available`), a call with no kept workers forks its
own: they start in milliseconds with everything imported, and cut their
chunks from their copy of this process's memory, so nothing is shipped to
them (:class:`Forked`). After the call they are kept (:data:`CREW`) while
they pin little memory (a forked worker holds on to every page this process
had when it forked), and later calls hand them pickled tasks with the input
shipped like the warm pool's (:class:`Kept`): no fork, no copy-on-write
faults, no start-up, which is what lets 64 workers scale. The crew's
protocol and loop are :mod:`.crew`'s; workers die with this process
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, Pipe
from typing import NoReturn

from pandas_parallel.backends import Backend, Job, cut_in_worker
from pandas_parallel.backends.crew import Crew, Starter, Worker, serve, serve_forked
from pandas_parallel.splitting import Units
from pandas_parallel.transport import Payload
from pandas_parallel.worker import Outcome, Task

logger = logging.getLogger("pandas_parallel")

# Workers forked from a process holding more than this are not kept: they
# pin every page it had (its frames included) for as long as they live.
KEEP_RSS_BYTES = 2 * 2**30


class Forked(Backend):
    """Workers forked from this process for the call: they hold its memory,
    so the program and the input are not shipped; results travel back."""

    name = "forked"
    path = ("the fork path (workers forked from this process)")
    started = {
        "fork": "forked for it",
        "warm": "forked earlier and kept",
    }
    pickles_program = False

    def start(self, n_workers: int) -> str:
        return "fork"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return cut_in_worker(units, ranges)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return CREW.run(tasks, job, fresh=True)


class Kept(Forked):
    """Workers forked by an earlier call and kept: the program is pickled to
    them once per call and the input shipped, as to the warm pool."""

    pickles_program = True

    def start(self, n_workers: int) -> str:
        return "warm"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return Backend.payloads(self, units, ranges, directory, transport)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return CREW.run(tasks, job, fresh=False)

    def with_fresh_workers(self) -> Backend | None:
        return Forked() if available() else None


def available(thorough: bool = True) -> bool:
    """Whether worker processes may be forked from this one now.

    On Linux, with no other Python thread running (a fork copies only the
    calling thread: a lock another thread held would stay locked in the
    child), and, checked when ``thorough``, no native thread pool that does
    not survive a fork: an OpenMP runtime (GNU OpenMP's pool hangs in a
    child that uses it after the parent did) or a thread that named itself
    (polars' and tokio's pools do; a child of a process running them can
    deadlock). The thorough part reads ``/proc`` (under a millisecond).
    """
    return (sys.platform == "linux" and threading.active_count() == 1
            and not (thorough and (_openmp_loaded() or _native_threads())))


_OPENMP_LIBRARY = re.compile(r"/lib(?:gomp|iomp5|omp)\b[^/\n]*\.so")


class _OpenMP:
    """Whether an OpenMP runtime is mapped into this process (read from
    ``/proc/self/maps``: about a millisecond; once seen, it stays)."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self) -> bool:
        if not self.seen:
            try:
                with open("/proc/self/maps") as maps:
                    self.seen = _OPENMP_LIBRARY.search(maps.read()) is not None
            except OSError:
                self.seen = True  # cannot tell: do not fork
        return self.seen


_openmp_loaded = _OpenMP()


# Threads named otherwise than the process are some library's own pool.
# These few are known to survive a fork: jemalloc's background thread
# (pyarrow) re-initializes in the child.
_FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})


def _native_threads() -> list[str]:
    """Names of this process's threads that some library started and named
    (OpenBLAS's workers, like Python's own threads, carry the process's
    name)."""
    try:
        tasks = os.listdir("/proc/self/task")
        names = []
        for tid in tasks:
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as comm:
                names.append(comm.read().strip())
    except OSError:
        return ["(unknown: /proc cannot be read)"]
    own = names[tasks.index(str(os.getpid()))] if str(os.getpid()) in tasks else ""
    found = sorted({n for n in names if n != own and n not in _FORK_SAFE_THREADS})
    if found:
        logger.debug("fork: not forking while native threads run: %s", ", ".join(found))
    return found


def _resident_bytes() -> int:
    """This process's resident memory (one small read of ``/proc``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return KEEP_RSS_BYTES + 1  # cannot tell: do not keep


class CallerForks(Starter):
    """Workers forked from this process."""

    def can_start(self) -> bool:
        return available()

    def start(self, call_id: str, made: dict[int, Task]) -> Worker:
        # A child would write what this process has buffered a second time.
        sys.stdout.flush()
        sys.stderr.flush()
        task_reader, task_writer = Pipe(duplex=False)
        result_reader, result_writer = Pipe(duplex=False)
        resident = _resident_bytes()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            _child(parent, made, task_writer, result_reader, task_reader, result_writer)
        task_reader.close()
        result_writer.close()
        return Worker(pid, task_writer, result_reader, call_id, frozenset(made), resident)

    def keeps(self, current: Worker) -> bool:
        if current.resident > KEEP_RSS_BYTES:
            logger.debug("fork: not keeping a worker forked from a process holding over "
                         "%d MB", KEEP_RSS_BYTES >> 20)
            return False
        return True

    def holds_unpicklable(self) -> bool:
        return available()

    def describe(self) -> str:
        return "forked workers"


def _child(parent: int, made: dict[int, Task], *pipes: Connection) -> NoReturn:
    """A forked worker: serve, and never return to the caller's code."""
    task_writer, result_reader, task_reader, result_writer = pipes
    task_writer.close()
    result_reader.close()
    serve_forked(parent, lambda: serve(made, task_reader, result_writer, kind="forked"))


CREW = Crew(CallerForks())
os.register_at_fork(after_in_child=lambda: CREW.forget_in_child())
atexit.register(lambda: CREW.retire())
