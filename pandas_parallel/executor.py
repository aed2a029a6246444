"""Gather: run tasks on a pool, collect outcomes as they finish.

The local default is loky's reusable executor, driven directly: it stays
warm between calls, hands chunks out as workers free up, and - unlike
``joblib.Parallel``, which terminates every worker when one task raises -
survives a failing user function, because failures come back as data
(see :mod:`pandas_parallel.worker`). Any other joblib backend (threading,
dask, ray, ...) runs through ``joblib.Parallel(return_as="generator_unordered")``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import joblib
import numpy as np

from pandas_parallel.errors import RemoteTraceback, WorkerCrashedError
from pandas_parallel.worker import Outcome, Task, initialize_worker, run_chunk

logger = logging.getLogger("pandas_parallel")

_POLL_SECONDS = 0.25
_IDLE_WORKER_TIMEOUT = 300


_executor: Any = None


def loky_executor(n_workers: int) -> Any:
    """The warm process pool (created, resized or replaced on demand)."""
    global _executor
    from joblib.externals.loky import get_reusable_executor

    _executor = get_reusable_executor(
        max_workers=n_workers,
        timeout=_IDLE_WORKER_TIMEOUT,
        initializer=initialize_worker,
    )
    return _executor


def _ready() -> None:
    """A no-op task: running it means a worker has started and imported us."""


def start_pool(n_workers: int) -> None:
    """Start the workers without waiting for them (they import pandas and
    pyarrow in the background)."""
    executor = loky_executor(n_workers)
    for _ in range(n_workers):
        executor.submit(_ready)


def shutdown_pool() -> None:
    """Stop the worker processes now; the next parallel call starts new ones."""
    global _executor
    if _executor is not None:
        _executor.shutdown(wait=True, kill_workers=True)
        _executor = None


class Progress:
    """One bar per call, advanced by completed work (not by dispatch).

    Between chunk completions it also counts calls made inside running
    chunks (through shared counters), so it moves on long chunks.
    """

    def __init__(self, show: bool, total: int, desc: str, unit: str,
                 sizes: Sequence[int], calls_per_chunk: Sequence[int],
                 counters: np.ndarray | None, initial: int = 0) -> None:
        self.bar = None
        self.sizes = sizes
        self.calls = calls_per_chunk
        self.counters = counters
        self.finished = np.zeros(len(sizes), dtype=bool)
        self.initial = initial
        self.shown = 0
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True, mininterval=0.2)

    def done(self, chunk: int) -> None:
        self.finished[chunk] = True
        self.refresh()

    def refresh(self) -> None:
        if self.bar is None:
            return
        position = float(sum(s for s, f in zip(self.sizes, self.finished) if f))
        if self.counters is not None:
            for i in map(int, np.flatnonzero(~self.finished)):
                if self.calls[i]:
                    fraction = min(1.0, self.counters[i] / self.calls[i])
                    position += fraction * self.sizes[i]
        step = int(position) - int(self.shown)
        if step > 0:
            self.bar.update(step)
            self.shown = int(position)

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            if ok:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def _raise_failure(outcome: Outcome, describe: Callable[[int], str], label: str) -> None:
    failure = outcome.failure
    assert failure is not None
    exc = failure.exception
    note = f"pandas_parallel: {label} failed on {describe(outcome.chunk)}"
    if failure.argument:
        note += f", when the function was called with {failure.argument}"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    exc.__cause__ = RemoteTraceback(failure.traceback)
    raise exc


def _crash_error(exc: BaseException, running: list[int],
                 describe: Callable[[int], str]) -> WorkerCrashedError:
    chunks = "; ".join(describe(i) for i in running) or "an unknown chunk"
    text = str(exc)
    hint = ("Retry with a smaller chunk_size or fewer n_jobs if memory is short "
            "(a worker killed by SIGKILL was most likely out of memory).")
    return WorkerCrashedError(
        f"a worker process died while running {chunks}. {hint}\nDetails: {text}"
    )


def run_local(tasks: Sequence[Task], n_workers: int, progress: Progress,
              describe: Callable[[int], str], label: str,
              states: np.ndarray | None, pool_warm: bool) -> Iterator[Outcome]:
    """Run ``tasks`` on the warm loky pool, yielding outcomes as they finish.

    While a cold pool starts (workers importing pandas take about half a
    second), this process runs not-yet-started chunks itself, smallest
    first, so start-up time is not lost. The first failure cancels the
    chunks not yet started and is raised at once; a worker death raises
    :class:`WorkerCrashedError`; Ctrl-C kills the workers so nothing keeps
    running.
    """
    from joblib.externals.loky.process_executor import (
        BrokenProcessPool,
        TerminatedWorkerError,
    )

    executor = loky_executor(n_workers)
    futures: dict[concurrent.futures.Future[Outcome], Task] = {}
    finished = False
    try:
        for task in tasks:
            futures[executor.submit(run_chunk, task)] = task
        pending = set(futures)
        stealable = list(futures)  # longest first: steal from the end
        while pending:
            if not pool_warm:
                stolen = _steal(stealable, pending)
                if stolen is not None:
                    outcome = run_chunk(dataclasses.replace(futures[stolen], result_dir=None))
                    if outcome.failure is not None:
                        _raise_failure(outcome, describe, label)
                    progress.done(outcome.chunk)
                    yield outcome
                    continue
            done, pending = concurrent.futures.wait(
                pending, timeout=_POLL_SECONDS,
                return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                pool_warm = True
                try:
                    outcome = future.result()
                except (TerminatedWorkerError, BrokenProcessPool) as exc:
                    running = _running_chunks(states, futures, future)
                    raise _crash_error(exc, running, describe) from exc
                if outcome.failure is not None:
                    _raise_failure(outcome, describe, label)
                progress.done(outcome.chunk)
                yield outcome
            progress.refresh()
        finished = True
    except KeyboardInterrupt:
        logger.debug("interrupted: stopping the worker processes")
        executor.shutdown(wait=False, kill_workers=True)
        raise
    finally:
        if not finished:
            for future in futures:
                future.cancel()


def _steal(stealable: list[Any], pending: set[Any]) -> Any:
    """Take back the smallest chunk no worker has started, if any."""
    while stealable:
        future = stealable.pop()
        if future in pending and future.cancel():
            pending.discard(future)
            return future
    return None


def _running_chunks(states: np.ndarray | None, futures: dict[Any, Task],
                    failed: Any) -> list[int]:
    if states is not None:
        running = [int(i) for i in np.flatnonzero(states == 1)]
        if running:
            return running
    return [futures[failed].chunk]


def run_joblib(tasks: Sequence[Task], n_workers: int, backend: str,
               progress: Progress, describe: Callable[[int], str],
               label: str) -> Iterator[Outcome]:
    """Run ``tasks`` through ``joblib.Parallel`` on any registered backend."""
    parallel = joblib.Parallel(n_jobs=n_workers, backend=backend,
                               return_as="generator_unordered", batch_size=1)
    generator = parallel(joblib.delayed(run_chunk)(task) for task in tasks)
    try:
        for outcome in generator:
            if outcome.failure is not None:
                _raise_failure(outcome, describe, label)
            progress.done(outcome.chunk)
            progress.refresh()
            yield outcome
    finally:
        with contextlib.suppress(Exception):
            generator.close()


def run_inline(tasks: Sequence[Task], progress: Progress,
               describe: Callable[[int], str], label: str) -> Iterator[Outcome]:
    """Run ``tasks`` one after another in this process (backend="sequential")."""
    for task in tasks:
        outcome = run_chunk(task)
        if outcome.failure is not None:
            _raise_failure(outcome, describe, label)
        progress.done(outcome.chunk)
        yield outcome


def interactive() -> bool:
    """Whether a person is likely watching (a terminal or a Jupyter kernel)."""
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


__all__ = [
    "Progress",
    "WorkerCrashedError",
    "interactive",
    "run_inline",
    "run_joblib",
    "run_local",
    "shutdown_pool",
]
