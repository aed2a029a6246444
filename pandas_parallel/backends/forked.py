"""The ``forked`` backend: workers forked from this process for one call.

Where it is safe (:func:`available`), each call forks its own workers:
they start in milliseconds with everything imported, and cut their chunks
from their copy of this process's memory, so nothing is shipped to them.
The pool is a few pipes, with no threads of its own, so the process stays
single-threaded and the next call can fork again:

- each worker reads chunk numbers from its task pipe and answers each one
  with a pickled :class:`~pandas_parallel.worker.Outcome` on its result pipe
  (pickled by :func:`~pandas_parallel.worker.run_chunk_pickled`, so a result
  that cannot travel is a clear failure, not a dead worker);
- chunks are handed out one at a time, as workers free up;
- a worker that dies closes its result pipe, and this process knows exactly
  which chunk it held;
- a failure, Ctrl-C or the end of the call stops the workers and reaps them.
  Workers also die with this process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, Pipe, wait

from pandas_parallel import worker
from pandas_parallel.backends import Backend, Job, cut_in_worker
from pandas_parallel.executor import (
    POLL_SECONDS,
    Reporter,
    crash_error,
    deliver,
    late_call,
    stuck_error,
    stuck_limit,
)
from pandas_parallel.splitting import Units
from pandas_parallel.transport import Payload
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_pickled

logger = logging.getLogger("pandas_parallel")

_PR_SET_PDEATHSIG = 1


class Forked(Backend):
    """Processes forked from this one for the call: they hold its memory,
    so the program and the input are not shipped; results travel back."""

    name = "forked"
    pickles_program = False
    records_warnings = True

    def start(self, n_workers: int) -> str:
        return "fork"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return cut_in_worker(units, ranges)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return run_forked(list(tasks), job)


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
_openmp_seen = False


def _openmp_loaded() -> bool:
    """Whether an OpenMP runtime is mapped into this process (read from
    ``/proc/self/maps``: about a millisecond; once seen, it stays)."""
    global _openmp_seen
    if not _openmp_seen:
        try:
            with open("/proc/self/maps") as maps:
                _openmp_seen = _OPENMP_LIBRARY.search(maps.read()) is not None
        except OSError:
            _openmp_seen = True  # cannot tell: do not fork
    return _openmp_seen


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


class _Worker:
    """One forked process and the two pipes that connect it to this one."""

    def __init__(self, pid: int, tasks: Connection, results: Connection) -> None:
        self.pid = pid
        self.tasks = tasks  # chunk numbers to the worker
        self.results = results  # outcomes from the worker
        self.chunk: int | None = None  # the chunk it is running

    def hand(self, chunk: int | None) -> None:
        """Give the worker its next chunk, or tell it to exit (``None``)."""
        self.chunk = chunk
        with contextlib.suppress(OSError):  # it may have died: its result pipe says so
            self.tasks.send(-1 if chunk is None else chunk)

    def close(self) -> None:
        self.tasks.close()
        self.results.close()

    def exit_status(self) -> str:
        """How the (dead) worker ended, for a person."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "it ended in an unknown way"
        self.pid = 0
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            return f"it was killed by signal {signal.Signals(number).name}"
        return f"it exited with status {os.WEXITSTATUS(status)}"


def _fork(tasks: list[Task], siblings: list[_Worker]) -> _Worker:
    task_reader, task_writer = Pipe(duplex=False)
    result_reader, result_writer = Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        code = 1
        try:
            task_writer.close()
            result_reader.close()
            for sibling in siblings:
                sibling.close()
            _serve(tasks, task_reader, result_writer)
            code = 0
        except BaseException:  # nothing may escape a forked child
            with contextlib.suppress(BaseException):
                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    task_reader.close()
    result_writer.close()
    return _Worker(pid, task_writer, result_reader)


def _serve(tasks: list[Task], inbox: Connection, outbox: Connection) -> None:
    """The worker's loop: run the chunks it is handed until told to stop."""
    # Ctrl-C reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        return
    worker.initialize_worker()
    # Leave inherited objects out of garbage collections: a full collection
    # would walk (and so copy) all of them, tens of milliseconds.
    gc.freeze()
    while True:
        try:
            chunk = inbox.recv()
        except EOFError:
            return
        if chunk < 0:
            return
        outbox.send_bytes(run_chunk_pickled(tasks[chunk]))


def run_forked(tasks: list[Task], job: Job) -> Iterator[Outcome]:
    """Run ``tasks`` on processes forked from this one for this call only,
    yielding outcomes as they finish.

    Chunks are handed out in the order given, one at a time as workers free
    up. A failure or Ctrl-C kills the workers; a worker's death raises
    :class:`~pandas_parallel.errors.WorkerCrashedError` naming its chunk.
    """
    waiting = deque(range(len(tasks)))
    workers: list[_Worker] = []
    # A child would write what this process has buffered a second time.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for _ in range(min(job.n_workers, len(tasks))):
            workers.append(_fork(tasks, workers))
            workers[-1].hand(waiting.popleft())
        busy = {w.results: w for w in workers}
        while busy:
            for ready in wait(list(busy), timeout=POLL_SECONDS):
                assert isinstance(ready, Connection)
                current = busy[ready]
                try:
                    outcome = load_outcome(ready.recv_bytes())
                except (EOFError, OSError):  # it died, maybe in mid-message
                    raise _crashed(current, job.reporter) from None
                if waiting:
                    current.hand(waiting.popleft())
                else:
                    current.hand(None)
                    del busy[ready]
                yield deliver(outcome, job.progress, job.reporter)
            job.progress.refresh()
            if job.timeout is not None:
                late = late_call(job.counters, stuck_limit(job.timeout))
                if late is not None and not job.coerce:  # stopped by _stop below
                    raise stuck_error(job, late, job.timeout)
                if late is not None:
                    _replace_stuck(late, tasks, workers, busy, job)
    finally:
        _stop(workers)


def _replace_stuck(late: tuple[int, int], tasks: list[Task], workers: list[_Worker],
                   busy: dict[Connection, _Worker], job: Job) -> None:
    """Stop the worker stuck in call ``late`` and fork another to run its
    chunk again, that call skipped as missing (``errors="coerce"``)."""
    chunk, number = late
    stuck = next(w for w in busy.values() if w.chunk == chunk)
    logger.debug("chunk %d: call %d is stuck past the timeout; replacing its worker",
                 chunk, number)
    with contextlib.suppress(ProcessLookupError):
        os.kill(stuck.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(stuck.pid, 0)
    stuck.pid = 0
    stuck.close()
    del busy[stuck.results]
    task = tasks[chunk]
    tasks[chunk] = dataclasses.replace(task, skip_calls=(*task.skip_calls, number - 1))
    job.counters.set_call_start(chunk, 0)
    job.counters.set_calls(chunk, 0)
    replacement = _fork(tasks, [w for w in workers if w.pid])
    workers.append(replacement)
    replacement.hand(chunk)
    busy[replacement.results] = replacement


def _crashed(dead: _Worker, reporter: Reporter) -> BaseException:
    how = dead.exit_status()
    chunk = [dead.chunk] if dead.chunk is not None else []
    return crash_error(RuntimeError(f"the worker process died: {how}"), chunk,
                       reporter.describe)


def _stop(workers: list[_Worker]) -> None:
    """Kill the workers still running (after a failure or Ctrl-C) and reap
    all of them; those told to exit are gone or about to be."""
    for current in workers:
        if current.pid and current.chunk is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(current.pid, signal.SIGKILL)
        current.close()
    for current in workers:
        if current.pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(current.pid, 0)
