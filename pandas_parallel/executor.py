"""Gather: run tasks on a pool, collect outcomes as they finish.

Where forking is safe, a call's workers are forked for it (see
:mod:`pandas_parallel.forking`). Otherwise the local default is loky's
reusable executor, driven directly: it stays warm between calls, hands
chunks out as workers free up, and - unlike
``joblib.Parallel``, which terminates every worker when one task raises -
survives a failing user function, because failures come back as data
(see :mod:`pandas_parallel.worker`). Any other joblib backend (threading,
dask, ray, ...) runs through ``joblib.Parallel(return_as="generator_unordered")``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import linecache
import logging
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import joblib
import numpy as np

from pandas_parallel import clusters
from pandas_parallel.errors import RemoteTraceback, WorkerCrashedError
from pandas_parallel.worker import Outcome, Task, initialize_worker, run_chunk

logger = logging.getLogger("pandas_parallel")

POLL_SECONDS = 0.25
_IDLE_WORKER_TIMEOUT = 300


_executor: Any = None
_executor_lock = threading.RLock()
_last_used = 0.0  # time.monotonic() when the pool last ran or was started


def pool_alive() -> bool:
    """Whether the pool's workers are still up: it exists, and has not sat
    idle for so long that its workers stopped (they will start again)."""
    return _executor is not None and time.monotonic() - _last_used < _IDLE_WORKER_TIMEOUT


def loky_executor(n_workers: int) -> Any:
    """The warm process pool (created, resized or replaced on demand)."""
    global _executor
    from joblib.externals.loky import get_reusable_executor

    with _executor_lock:
        _executor = get_reusable_executor(
            max_workers=n_workers,
            timeout=_IDLE_WORKER_TIMEOUT,
            initializer=initialize_worker,
        )
        return _executor


def _ready() -> None:
    """A no-op task: running it means a worker has started and imported us."""


def start_pool(n_workers: int) -> None:
    """Start the workers and return at once (about 20 ms: spawning them);
    they import pandas and pyarrow on their own, in the background.

    Done on the calling thread: a thread of our own could still be creating
    the pool when a short script ends, and pools created during interpreter
    shutdown never stop.
    """
    global _last_used
    with _start_lock:
        executor = loky_executor(n_workers)
        for _ in range(n_workers):
            executor.submit(_ready)
        _last_used = time.monotonic()


_start_lock = threading.Lock()


def shutdown_pool() -> None:
    """Stop the worker processes now; the next parallel call starts new ones."""
    global _executor
    with _start_lock, _executor_lock:
        if _executor is not None:
            _executor.shutdown(wait=True, kill_workers=True)
            _executor = None


def progress_bar(**kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar that starts no monitor thread.

    tqdm's monitor thread outlives the bar, and a process with another thread
    must not fork (see :func:`fork_available`): every later call would lose
    its forked workers. Our bars are refreshed by the calls themselves.
    """
    from tqdm.auto import tqdm

    quiet = type("ProgressBar", (tqdm,), {"monitor_interval": 0})
    return quiet(**kwargs)


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
        self.shown = 0
        if show:
            self.bar = progress_bar(total=total, initial=initial, desc=desc, unit=unit,
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


class Reporter:
    """Turns a chunk's failure into the exception the user sees.

    Parameters
    ----------
    label : str
        The operation, e.g. ``"groupby.apply"``.
    describe : callable
        ``describe(chunk) -> str`` naming a chunk's rows, groups or columns.
    func : callable
        The user's function, whose source file restores the lines that
        cloudpickle hides as ``<dynamic-code>`` in worker tracebacks.
    """

    def __init__(self, label: str, describe: Callable[[int], str],
                 func: Callable[..., Any]) -> None:
        self.label = label
        self.describe = describe
        self.func = func

    def raise_failure(self, outcome: Outcome) -> None:
        failure = outcome.failure
        assert failure is not None
        exc = failure.exception
        note = f"pandas_parallel: {self.label} failed on {self.describe(outcome.chunk)}"
        if failure.argument:
            note += f", when the function was called with {failure.argument}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        exc.__cause__ = RemoteTraceback(self.restore_source(failure.traceback))
        raise exc

    def restore_source(self, text: str) -> str:
        """Put file names and source lines back into a worker traceback."""
        files = _code_files(self.func)
        fallback = next(iter(files.values()), None)

        def restore(match: re.Match[str]) -> str:
            line, name = int(match.group(1)), match.group(2)
            filename = files.get(name, fallback)
            if filename is None:
                return match.group(0)
            source = linecache.getline(filename, line).strip()
            restored = f'File "{filename}", line {line}, in {name}'
            return restored + (f"\n    {source}" if source else "")

        return re.sub(r'File "<dynamic-code>", line (\d+), in (\S+)', restore, text)


def _code_files(func: Any) -> dict[str, str]:
    """Function name -> source file for ``func`` and the code it contains."""
    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    found: dict[str, str] = {}
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        found.setdefault(current.co_name, current.co_filename)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return found


def crash_error(exc: BaseException, running: list[int],
                 describe: Callable[[int], str]) -> WorkerCrashedError:
    chunks = "; ".join(describe(i) for i in running) or "an unknown chunk"
    text = str(exc)
    hint = ("Retry with a smaller chunk_size or fewer n_jobs if memory is short "
            "(a worker killed by SIGKILL was most likely out of memory).")
    return WorkerCrashedError(
        f"a worker process died while running {chunks}. {hint}\nDetails: {text}"
    )


def run_local(tasks: Iterable[Task], n_workers: int, progress: Progress,
              reporter: Reporter, states: np.ndarray | None,
              pool_warm: bool) -> Iterator[Outcome]:
    """Run ``tasks`` on the warm loky pool, yielding outcomes as they finish.

    Chunks are handed out as workers free up: at most two per worker are
    submitted at a time, the rest wait here. While a cold pool starts
    (workers importing pandas take about half a second), this process runs
    waiting chunks itself. The first failure is raised at
    once and nothing more is submitted; a worker death raises
    :class:`WorkerCrashedError`; Ctrl-C kills the workers.
    """
    global _last_used
    from joblib.externals.loky.process_executor import (
        BrokenProcessPool,
        TerminatedWorkerError,
    )

    executor = loky_executor(n_workers)
    waiting = iter(tasks)  # made (and shipped) one at a time, when handed out
    in_flight: dict[concurrent.futures.Future[Outcome], Task] = {}
    limit = 2 * n_workers
    more = True
    try:
        while more or in_flight:
            more = more and _top_up(waiting, in_flight, limit, executor.submit)
            # Until the pool has finished a chunk, its workers may still be
            # starting: run a waiting chunk here instead of waiting for them,
            # and only as long as that lasts (checked after every chunk).
            here = not pool_warm and more
            for future in _finished(in_flight, 0.0 if here else POLL_SECONDS):
                pool_warm = True
                try:
                    outcome = future.result()
                except (TerminatedWorkerError, BrokenProcessPool) as exc:
                    running = _running_chunks(states)
                    raise crash_error(exc, running, reporter.describe) from exc
                yield deliver(outcome, progress, reporter)
            if here and not pool_warm:
                task = next(waiting, None)
                if task is None:
                    more = False
                    continue
                yield deliver(run_chunk(dataclasses.replace(task, result_dir=None)),
                              progress, reporter)
            progress.refresh()
    except KeyboardInterrupt:
        logger.debug("interrupted: stopping the worker processes")
        executor.shutdown(wait=False, kill_workers=True)
        raise
    finally:
        _last_used = time.monotonic()


def _top_up(waiting: Iterator[Task], in_flight: dict[Any, Task], limit: int,
            submit: Callable[..., Any]) -> bool:
    """Submit waiting tasks until ``limit`` are in flight; False once none
    are left to submit."""
    while len(in_flight) < limit:
        task = next(waiting, None)
        if task is None:
            return False
        in_flight[submit(run_chunk, task)] = task
    return True


def _finished(in_flight: dict[Any, Task], timeout: float = POLL_SECONDS) -> list[Any]:
    """Wait up to ``timeout`` for tasks in flight; remove and return those done."""
    if not in_flight:
        return []
    done, _ = concurrent.futures.wait(in_flight, timeout=timeout,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    for future in done:
        in_flight.pop(future)
    return list(done)


def _running_chunks(states: np.ndarray | None) -> list[int]:
    """Chunks a worker had started and not finished (from shared state)."""
    if states is None:
        return []
    return [int(i) for i in np.flatnonzero(states == 1)]


def run_threads(tasks: Iterable[Task], n_workers: int, progress: Progress,
                reporter: Reporter, call_starts: np.ndarray | None,
                timeout: float | None, calls: np.ndarray | None) -> Iterator[Outcome]:
    """Run ``tasks`` on threads of this process: nothing is serialized, so
    unpicklable functions and arguments (connections, sessions) work.

    ``n_workers`` may exceed the CPU count (I/O-bound work). With a
    ``timeout``, a call running longer raises ``TimeoutError`` naming its
    row; the thread stuck in it cannot be stopped and is left to finish.
    """
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=n_workers, thread_name_prefix="pandas_parallel")
    waiting = iter(tasks)
    in_flight: dict[concurrent.futures.Future[Outcome], Task] = {}
    finished = False
    try:
        more = True
        while more or in_flight:
            more = more and _top_up(waiting, in_flight, 2 * n_workers, pool.submit)
            for future in _finished(in_flight):
                outcome = future.result()
                if outcome.failure is not None:
                    reporter.raise_failure(outcome)
                progress.done(outcome.chunk)
                yield outcome
            if timeout is not None and call_starts is not None:
                _check_timeouts(call_starts, calls, timeout, reporter)
            progress.refresh()
        finished = True
    finally:
        # Chunks not started are cancelled; running ones cannot be stopped.
        pool.shutdown(wait=finished, cancel_futures=True)


def _check_timeouts(call_starts: np.ndarray, calls: np.ndarray | None, timeout: float,
                    reporter: Reporter) -> None:
    now = int(time.monotonic() * 1e6)
    late = np.flatnonzero((call_starts > 0) & (now - call_starts > timeout * 1e6))
    if len(late):
        chunk = int(late[0])
        number = int(calls[chunk]) if calls is not None else 0
        raise TimeoutError(
            f"{reporter.label}: a call did not return within timeout={timeout} s "
            f"(call {number} of {reporter.describe(chunk)}). Its thread cannot be "
            "stopped and finishes on its own; give the function's own I/O a timeout, "
            "or use an async def function, whose calls are cancelled.")


@contextlib.contextmanager
def _worker_losses(label: str, backend: str) -> Iterator[None]:
    """Turn a cluster's "worker died" exception into :class:`WorkerCrashedError`."""
    try:
        yield
    except Exception as exc:
        if not clusters.lost_worker(exc):
            raise
        raise WorkerCrashedError(
            f"{label}: a {backend} worker died while running a chunk "
            f"({type(exc).__name__}: {exc}). The function may have crashed the "
            "process or used too much memory; smaller chunks (chunk_size=) use "
            "less memory per task.") from exc


def deliver(outcome: Outcome, progress: Progress, reporter: Reporter) -> Outcome:
    if outcome.failure is not None:
        reporter.raise_failure(outcome)
    progress.done(outcome.chunk)
    progress.refresh()
    return outcome


def run_joblib(tasks: Iterable[Task], n_workers: int, backend: str,
               progress: Progress, reporter: Reporter) -> Iterator[Outcome]:
    """Run ``tasks`` through ``joblib.Parallel`` on any registered backend."""
    # A backend made by parallel_config, not Parallel(backend=...): the
    # latter passes nesting_level to constructors that do not expect it.
    with joblib.parallel_config(backend=backend):
        active = joblib.parallel.get_active_backend()[0]
        # Ray's backend returns all results at once, as a list.
        streams = getattr(active, "supports_return_generator", False)
        parallel = joblib.Parallel(
            n_jobs=n_workers, batch_size=1,
            return_as="generator_unordered" if streams else "list")
    with _worker_losses(reporter.label, backend):
        outcomes = iter(parallel(joblib.delayed(run_chunk)(task) for task in tasks))
    try:
        while True:
            with _worker_losses(reporter.label, backend):
                outcome = next(outcomes, None)
            if outcome is None:
                return
            yield deliver(outcome, progress, reporter)
    finally:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            # joblib warns that results of chunks still running go unused.
            warnings.simplefilter("ignore")
            getattr(outcomes, "close", lambda: None)()


def run_dask(tasks: Iterable[Task], progress: Progress, reporter: Reporter
             ) -> Iterator[Outcome]:
    """Run ``tasks`` on the workers of the active ``dask.distributed`` Client.

    Submitted with the Client's public API rather than joblib's dask
    backend: joblib 1.6 never completes a task whose worker died (its dask
    backend drops the completion callback on errors), so the call would
    wait forever instead of failing.
    """
    from distributed import as_completed, get_client

    client = get_client()
    with warnings.catch_warnings():
        # Chunks travel inside their tasks by design (no shared storage).
        warnings.filterwarnings("ignore", message="Sending large graph")
        futures = [client.submit(run_chunk, task, pure=False,
                                 key=f"pandas_parallel-{task.call_id}-{task.chunk}")
                   for task in tasks]
    try:
        for future in as_completed(futures):
            with _worker_losses(reporter.label, "dask"):
                outcome = future.result()
            yield deliver(outcome, progress, reporter)
    finally:
        client.cancel([future for future in futures if not future.done()])


def interactive() -> bool:
    """Whether a person is likely watching (a terminal or a Jupyter kernel)."""
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


__all__ = [
    "Progress",
    "WorkerCrashedError",
    "interactive",
    "run_joblib",
    "run_local",
    "shutdown_pool",
]
