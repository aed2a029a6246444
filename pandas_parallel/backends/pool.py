"""The ``pool`` backend: loky's reusable process pool, kept warm between calls.

Used where forking is not safe (a notebook kernel's threads, a threaded
server, a native thread pool) or with ``fork=False``. loky's executor is
driven directly rather than through ``joblib.Parallel``, which terminates
every worker when one task raises: here a failure comes back as data (see
:mod:`pandas_parallel.worker`), so the workers stay warm.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from pandas_parallel.backends import Backend, Job, stop_at_exit_first
from pandas_parallel.errors import WorkerCrashedError
from pandas_parallel.executor import (
    POLL_SECONDS,
    crash_error,
    deliver,
    finished,
    late_call,
    stuck_error,
    stuck_limit,
    top_up,
)
from pandas_parallel.worker import (
    Outcome,
    Task,
    initialize_worker,
    load_outcome,
    run_chunk,
    run_chunk_pickled,
)

logger = logging.getLogger("pandas_parallel")

IDLE_WORKER_TIMEOUT = 300  # seconds; loky stops idle workers after this


class Pool(Backend):
    """The process's one warm pool, and everything known about it: its
    size, whether its workers are up, when it last ran."""

    name = "pool"
    path = ("the no-fork path (a pool of fresh interpreters)")
    started = {
        "cold": "the pool, started for it",
        "warm": "the pool, started earlier",
    }

    def __init__(self) -> None:
        self._executor: Any = None
        self._size = 0  # workers known to be up (0: none, or not known)
        self._last_used = 0.0  # time.monotonic() when it last ran or started
        self._lock = threading.RLock()

    # -- state -----------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether the pool's workers are up: it exists, and has not sat idle
        long enough for loky to stop them (they would start again)."""
        return (self._executor is not None
                and time.monotonic() - self._last_used < IDLE_WORKER_TIMEOUT)

    def warm(self, n_workers: int) -> bool:
        return self._size == n_workers and self.alive()

    def start(self, n_workers: int) -> str:
        return "warm" if self.warm(n_workers) else "cold"

    def executor(self, n_workers: int) -> Any:
        """The loky executor (created, resized or replaced on demand)."""
        from joblib.externals.loky import get_reusable_executor

        with self._lock:
            executor = get_reusable_executor(
                max_workers=n_workers, timeout=IDLE_WORKER_TIMEOUT,
                initializer=_initialize_pool_worker, initargs=(os.getpid(),))
            if executor is not self._executor:
                self._executor = executor
                # loky registers its exit handler as the pool starts: ours
                # must run before it (see backends.stop_at_exit_first).
                executor.submit(_ready)
                stop_at_exit_first()
            return self._executor

    def start_workers(self, n_workers: int) -> None:
        """Start the workers and return at once (spawning them takes about
        20 ms); they import pandas and pyarrow in the background.

        Done on the calling thread: a thread of our own could still be
        creating the pool when a short script ends, and pools created during
        interpreter shutdown never stop.
        """
        with self._lock:
            executor = self.executor(n_workers)
            for _ in range(n_workers):
                executor.submit(_ready)
            self._last_used = time.monotonic()
            self._size = n_workers

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker processes now (killed, whatever they run); the
        next call starts new ones. ``wait=False``: as the interpreter exits,
        do not wait for the pool's threads, nor for a call holding it."""
        if not self._lock.acquire(timeout=-1 if wait else 1.0):
            return
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=wait, kill_workers=True)
                self._executor = None
            self._size = 0
        finally:
            self._lock.release()

    def finished(self, n_workers: int) -> None:
        self._size = n_workers

    def broken(self) -> None:
        self._size = 0

    # -- running ---------------------------------------------------------------------
    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        """Yield outcomes as chunks finish.

        Chunks are handed out as workers free up: at most two per worker are
        in flight, the rest wait here. While a cold pool starts (its workers
        import pandas for about a second), this process runs waiting chunks
        itself, checking after each one whether the pool has finished one.
        """
        from joblib.externals.loky.process_executor import (
            BrokenProcessPool,
            TerminatedWorkerError,
        )

        lost = (TerminatedWorkerError, BrokenProcessPool)
        warm = self.warm(job.n_workers)
        executor = self.executor(job.n_workers)
        waiting = iter(tasks)  # made (and shipped) one at a time, when handed out
        in_flight: dict[concurrent.futures.Future[bytes], Task] = {}
        more = True
        try:
            while more or in_flight:
                try:
                    more = more and top_up(waiting, in_flight, 2 * job.n_workers,
                                           lambda task: executor.submit(run_chunk_pickled, task))
                    here = not warm and more
                    done = finished(in_flight, 0.0 if here else POLL_SECONDS)
                    outcomes = [load_outcome(future.result()) for future in done]
                except lost as exc:
                    raise self._crash(exc, job) from exc
                for outcome in outcomes:
                    warm = True
                    yield deliver(outcome, job.progress, job.reporter)
                if here and not warm:
                    more = yield from self._run_one_here(waiting, job)
                job.progress.refresh()
                if job.timeout is not None:
                    self._stop_stuck(job, job.timeout)
        except KeyboardInterrupt:
            logger.debug("interrupted: stopping the worker processes")
            executor.shutdown(wait=False, kill_workers=True)
            raise
        finally:
            self._last_used = time.monotonic()

    @staticmethod
    def _run_one_here(waiting: Iterator[Task], job: Job) -> Generator[Outcome, None, bool]:
        """Run the next waiting chunk in this process (the pool is starting);
        return whether any chunk still waits."""
        task = next(waiting, None)
        if task is None:
            return False
        yield deliver(run_chunk(job.here(task)), job.progress, job.reporter)
        return True

    def _stop_stuck(self, job: Job, timeout: float) -> None:
        """Stop the worker of a call its timer could not interrupt; the pool
        is replaced."""
        late = late_call(job.counters, stuck_limit(timeout))
        if late is None:
            return
        pids = job.counters.pids
        pid = int(pids[late[0]]) if pids is not None else 0
        if pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.shutdown()
        raise stuck_error(job, late, timeout)

    def _crash(self, exc: BaseException, job: Job) -> WorkerCrashedError:
        error = crash_error(exc, job.counters.running(), job.reporter.describe)
        # A broken executor's threads (its queue feeder among them) would
        # outlive it and rule out forking for the rest of the process.
        self.shutdown()
        return error


def _initialize_pool_worker(parent: int) -> None:
    """A loky worker of the pool becomes ours. loky stops a worker whose
    memory grew by 300 MB after its first task, taking it for a leak: ours
    keep the programs they decoded, large objects included (mapped from
    the store, see :mod:`pandas_parallel.programs`), by design, and bound
    them themselves."""
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = sys.maxsize  # type: ignore[attr-defined]
    initialize_worker(parent, "pool")


def _ready() -> None:
    """A no-op task: running it means a worker has started and imported us."""


POOL = Pool()
