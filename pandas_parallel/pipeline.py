"""The pipeline every operation runs through: plan, split, ship, run,
gather, combine.

An :class:`Operation` is data: which pandas call runs on each chunk
(``runner``), over which units the input splits (:class:`Units`), how the
pieces combine, and the plain pandas call to hand over to when the work is
not worth parallelizing. ``accessor.py`` and ``groupby.py`` only build
operations; this module runs them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import clusters, executor, forking, planning, transport
from pandas_parallel.combine import CannotCombine
from pandas_parallel.options import Options, resolve_n_jobs
from pandas_parallel.splitting import Units
from pandas_parallel.worker import Program, Task, encode_program, in_worker, show_label

logger = logging.getLogger("pandas_parallel")

_warm_workers = 0  # size of the loky pool known to be up, 0 if unknown
_IN_PROCESS_BACKENDS = ("threading",)  # workers in this process: nothing pickled
# The public call being served, as the accessor knows it: its function and
# its shape, under which a clearly cheap call is noted (see serving()).
_served: contextvars.ContextVar[tuple[Any, Hashable] | None] = contextvars.ContextVar(
    "pandas_parallel_served", default=None)


@dataclasses.dataclass
class Piece:
    """The result for a range of units (of the split ``split``)."""

    result: Any
    units: tuple[int, int]
    split: Units

    @functools.cached_property
    def rows(self) -> np.ndarray | slice:
        """The original rows the piece covers (found on demand: for
        scattered units, such as groups, it is a pass over all rows)."""
        return self.split.rows_of(*self.units)


@dataclasses.dataclass
class Operation:
    """One parallel pandas call, described as data.

    Parameters
    ----------
    label : str
        Shown in the progress bar, logs and errors, e.g. ``"apply(axis=1)"``.
    unit : str
        What a unit of progress is: ``"rows"``, ``"columns"``, ``"groups"``.
    units : Units
        How the input splits.
    runner : callable
        Top-level function ``runner(chunk, func, args, kwargs)``: the pandas
        call on one chunk. Runs in workers, so it must be importable.
    func, args, kwargs
        The user's function and its extra arguments.
    combine : callable
        ``combine(pieces) -> result`` in the order of units.
    serial : callable
        The plain pandas call on the whole input.
    options : Options
    calls_per_unit : int
        Calls of ``func`` per unit, for the progress bar.
    failures_need_whole : bool
        A failing chunk says nothing certain about the whole (``transform``
        falls back to ``func(frame)`` and chooses its exception from the whole
        frame): on a failure, hand the call to pandas for its own answer.
    """

    label: str
    unit: str
    units: Units
    runner: Callable[..., Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    combine: Callable[[list[Piece]], Any]
    serial: Callable[[], Any]
    options: Options
    calls_per_unit: int = 1
    failures_need_whole: bool = False

    def run_here(self, start: int, stop: int) -> Piece:
        chunk = self.units.local(start, stop)
        result = self.runner(chunk, self.func, self.args, self.kwargs)
        return Piece(result, (start, stop), self.units)

    def progress_size(self, start: int, stop: int) -> int:
        """Units ``[start, stop)`` in the progress bar's unit (rows for row
        work, however rows are grouped into units; groups; columns)."""
        if self.unit == "rows":
            return self.units.rows_in(start, stop)
        return stop - start

    def describe(self, start: int, stop: int) -> str:
        """Name units ``[start, stop)`` for a person: rows with labels, etc."""
        units = self.units
        if units.columns:
            labels = units.obj.columns[start:stop]
            return f"columns {_labels(labels)}"
        rows = units.rows_of(start, stop)
        index = units.obj.index[rows]
        if self.unit == "groups":
            return f"groups {start}-{stop - 1} (rows with index {_labels(index)})"
        return f"rows {_labels(index)}"


def _labels(index: pd.Index) -> str:
    if len(index) == 0:
        return "(none)"
    if len(index) == 1:
        return f"[{show_label(index[0])}]"
    return f"[{show_label(index[0])} ... {show_label(index[-1])}] ({len(index)} labels)"


def _serial_reason(op: Operation, n_workers: int) -> str | None:
    if len(op.units) == 0 or len(op.units.obj) == 0:
        return "the input is empty"
    if in_worker():
        return "already inside a pandas_parallel worker (nested call)"
    if op.options.backend == "sequential":
        return "backend='sequential'"
    if n_workers == 1:
        return "only one worker is available (n_jobs resolves to 1)"
    if len(op.units) == 1 and op.options.serial_fallback:
        return "there is a single unit of work"
    return None


def _worker_start(options: Options, n_workers: int, planning_only: bool = False) -> str:
    """How a call gets its worker processes now: ``"fork"`` (forked from
    this process for the call), ``"warm"`` (already running, or owned by
    another backend) or ``"cold"`` (the warm pool must start).

    ``planning_only`` skips the slower part of the fork check: for a plan
    that asks again, in full, before it starts any worker.
    """
    if options.backend != "loky":
        return "warm"
    if options.fork and forking.fork_available(check_openmp=not planning_only):
        return "fork"
    return "warm" if _pool_warm(n_workers) else "cold"


def _pool_warm(n_workers: int) -> bool:
    return _warm_workers == n_workers and executor.pool_alive()


def _show_progress(options: Options, expected_seconds: float | None) -> bool:
    if options.progress == "auto":
        long = expected_seconds is None or expected_seconds > 2.0
        return long and executor.interactive()
    return bool(options.progress)


class _PandasDecides(Exception):
    """A chunk failed in an operation whose failures depend on the whole input."""


@contextlib.contextmanager
def _chunk_failures(op: Operation) -> Iterator[None]:
    """Around running chunks: for ``op.failures_need_whole``, turn a user
    failure into :class:`_PandasDecides` (worker crashes stay as they are)."""
    try:
        yield
    except Exception as exc:
        if not op.failures_need_whole or isinstance(exc, executor.WorkerCrashedError):
            raise
        raise _PandasDecides(f"{type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def serving(func: Any, kind: Hashable) -> Iterator[None]:
    """While a public call of ``func`` runs: if this call of ``func`` is
    clearly too cheap for workers, it is noted under ``kind``, the call's
    shape, where the accessor looks before doing any work of its own."""
    token = _served.set((func, kind))
    try:
        yield
    finally:
        _served.reset(token)


def run_known_cheap(label: str, func: Any, kind: Hashable, rows: int,
                    call: Callable[[], Any]) -> Any:
    """Run ``call``, pandas' own call of ``func`` over ``rows`` rows, known
    to be clearly too cheap for workers (by :func:`planning.cheap_up_to`);
    unlearn that if it turns out slow."""
    logger.debug("%s: serial (calls this small were clearly too cheap for workers)", label)
    began = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - began
    if seconds >= planning.CLEARLY_SERIAL_SECONDS:
        planning.remember_cheap(func, kind, rows, seconds)
    return result


def _cheap_kind(op: Operation) -> Hashable:
    served = _served.get()
    if served is not None and served[0] is op.func:
        return served[1]
    return _cost_kind(op)


def execute(op: Operation) -> Any:
    """Run ``op``: serially in this process, or on the pool."""
    try:
        return _execute(op)
    except _PandasDecides as failure:
        logger.debug("%s: a chunk failed (%s); pandas runs the whole call for its own "
                     "answer", op.label, failure)
        return op.serial()


def _execute(op: Operation) -> Any:
    global _warm_workers
    options = op.options
    cluster = clusters.is_cluster(options.backend)
    if cluster and len(op.units) > 0 and not in_worker():
        n_workers = clusters.capacity(str(options.backend), options.n_jobs)
    else:
        n_workers = resolve_n_jobs(options.n_jobs)
    reason = _serial_reason(op, n_workers)
    if reason is not None:
        logger.debug("%s: serial (%s)", op.label, reason)
        return op.serial()

    kind, cheap_kind, n_rows = _cost_kind(op), _cheap_kind(op), len(op.units.obj)
    if (options.serial_fallback and options.chunk_size is None
            and n_rows <= planning.cheap_up_to(op.func, cheap_kind)
            and not _show_progress(options, 0.0)):
        # As small as a call of this function that was clearly too cheap
        # for workers: pandas' own call, without sampling (the function was
        # pickled then, so it still fails alike at any size).
        return run_known_cheap(op.label, op.func, cheap_kind, n_rows, op.serial)

    program = Program(op.runner, op.func, op.args, op.kwargs, op.calls_per_unit)
    planned = options.serial_fallback and options.chunk_size is None
    per_row = planning.recall(op.func, kind) if planned else None
    # Fail on an unpicklable function before any of its work (a sample runs
    # it), and pickle it once. Planned from a remembered cost, the call runs
    # none of it before deciding: it pickles only to go parallel.
    blob = None if per_row is not None else _encoded(program, options)
    n_units = len(op.units)
    pieces: list[Piece] = []
    start = 0
    per_unit: float | None = None
    expected: float | None = None
    workers = _worker_start(options, n_workers, planning_only=True)
    n_bytes = op.units.nbytes()
    if planned:
        sampled_seconds = 0.0
        clearly_serial = False
        if per_row is not None:
            per_unit = per_row * _work_rows(op, 0, n_units) / n_units
            measured = "cost remembered from the last call"
        else:
            began = time.perf_counter()
            start, per_unit, clearly_serial = _sample(op, pieces)
            sampled_seconds = time.perf_counter() - began
            measured = f"sampled {start} {op.unit} in {sampled_seconds:.4f}s"
        remaining = n_units - start
        remaining_bytes = n_bytes * remaining // n_units
        guess = planning.estimate(per_unit, remaining, n_workers, remaining_bytes,
                                  workers, cluster)
        if clearly_serial:
            guess = planning.Estimate(guess.serial, parallel=math.inf)
        if guess.parallel_wins and workers == "fork":
            workers = _worker_start(options, n_workers)  # in full, now it matters
            guess = planning.estimate(per_unit, remaining, n_workers, remaining_bytes,
                                      workers, cluster)
        expected = guess.serial
        logger.debug("%s: %s (%.2e s/unit); remaining %d: serial %.3fs, parallel %.3fs "
                     "(workers %s)", op.label, measured, per_unit, remaining, guess.serial,
                     guess.parallel, workers)
        if not guess.parallel_wins:
            logger.debug("%s: serial (parallel would not be faster)", op.label)
            began = time.perf_counter()
            if start == 0 and not _show_progress(options, guess.serial):
                result = op.serial()  # nothing sampled: plain pandas, as is
            else:
                if start < n_units:
                    with _chunk_failures(op):
                        pieces.extend(_run_here_with_progress(op, start, guess.serial))
                result = _combine_or_serial(op, pieces)
            seconds = time.perf_counter() - began
            planning.remember(op.func, kind, seconds, _work_rows(op, start, n_units))
            planning.remember_cheap(op.func, cheap_kind, n_rows, sampled_seconds + seconds)
            if (workers == "cold"
                    and guess.serial >= planning.MIN_SECONDS_TO_START_POOL
                    and planning.estimate(per_unit, remaining, n_workers,
                                          remaining_bytes).parallel_wins):
                # Only the start-up cost stood in the way. Start the workers
                # now that this call's work is done (so it is not slowed), and
                # the next call like it finds them warm.
                logger.debug("%s: starting %d workers in the background for next time",
                             op.label, n_workers)
                executor.start_pool(n_workers)
                _warm_workers = n_workers
            return result

    if options.chunk_size is not None:
        ranges = op.units.cut(start, None, options.chunk_size)
    else:
        remaining = n_units - start
        count = planning.chunk_count(per_unit, remaining, n_workers,
                                     n_bytes * remaining // n_units, cluster)
        ranges = op.units.cut(start, count, None)
    # Asked again: the sampled calls may have started a thread.
    workers = _worker_start(options, n_workers)
    fork = workers == "fork"
    logger.debug("%s: parallel on %d %s workers, %d chunks of %s %s",
                 op.label, n_workers, "forked" if fork else options.backend, len(ranges),
                 _sizes_text([b - a for a, b in ranges]), op.unit)
    done_here = op.progress_size(0, start)
    if blob is None:
        blob = _encoded(program, options)
    with _chunk_failures(op):
        pieces.extend(_run_parallel(op, ranges, n_workers, n_bytes, expected, done_here,
                                    program if fork else blob, fork))
    if options.backend == "loky" and not fork:
        _warm_workers = n_workers
    return _combine_or_serial(op, pieces, borrowed=_borrows_results(op))


def _encoded(program: Program, options: Options) -> bytes | Program:
    """``program`` as workers get it: pickled (raising
    :class:`UnpicklableFunctionError` if it cannot be), or as it is for
    threads in this process."""
    return program if options.backend in _IN_PROCESS_BACKENDS else encode_program(program)


def _sample(op: Operation, pieces: list[Piece]) -> tuple[int, float, bool]:
    """Run the first units here in samples of growing size, timed, adding
    their pieces to ``pieces``; return the units done, the cost per unit
    of the rest, and whether the rest is clearly too little work for workers."""
    n_units = len(op.units)
    start = 0
    samples: list[tuple[int, float]] = []  # (rows, seconds) of each sample
    remaining_rows = _work_rows(op, 0, n_units)
    per_row = 0.0
    for size in planning.probe_sizes(n_units):
        began = time.perf_counter()
        with _chunk_failures(op):
            pieces.append(op.run_here(start, start + size))
        seconds = time.perf_counter() - began
        rows = _work_rows(op, start, start + size)
        samples.append((rows, seconds))
        start += size
        remaining_rows -= rows
        per_row = planning.cost_per_row(samples)
        # Stop once the rest is clearly too little work for any worker to
        # pay off (more samples would only cost time), or once one sample
        # alone is long enough that pandas' fixed cost per call (and its
        # first-call warm-up) no longer dominates.
        if per_row * remaining_rows < planning.CLEARLY_SERIAL_SECONDS:
            return start, _per_unit(per_row, remaining_rows, n_units - start), True
        if seconds >= planning.PROBE_SECONDS:
            break
    return start, _per_unit(per_row, remaining_rows, n_units - start), False


def _per_unit(per_row: float, rows: int, units: int) -> float:
    return per_row * rows / units if units > 0 else per_row


def _borrows_results(op: Operation) -> bool:
    """Whether results are read as views of their files: when the combine
    step stacks rows, which copies them anyway. Column results are set side
    by side as they are, so they are copied as they arrive."""
    return not op.units.columns


def _cost_kind(op: Operation) -> tuple[Any, ...]:
    """What a function's remembered cost depends on besides itself: the
    operation, the columns a row holds, and where it runs."""
    obj = op.units.obj
    return (op.label, op.unit, type(obj), obj.shape[1:], op.options.backend)


def _work_rows(op: Operation, start: int, stop: int) -> int:
    """The rows that units ``[start, stop)`` hold (all rows of each column,
    for column units): what a function's cost is proportional to."""
    if op.units.columns:
        return (stop - start) * len(op.units.obj)
    return op.units.rows_in(start, stop)


def _run_here_with_progress(op: Operation, start: int, expected: float) -> list[Piece]:
    """Run units ``[start, len)`` in this process; in pieces under a
    progress bar when one is wanted (each piece is one more pandas call, so
    only then)."""
    n_units = len(op.units)
    if not _show_progress(op.options, expected):
        return [op.run_here(start, n_units)]
    n_pieces = max(1, min(100, int(expected / 0.25)))
    ranges = op.units.cut(start, n_pieces, None)
    done_here = op.progress_size(0, start)
    progress = executor.Progress(True, done_here + op.progress_size(start, n_units),
                                 op.label, op.unit,
                                 [op.progress_size(a, b) for a, b in ranges],
                                 [0] * len(ranges), None, initial=done_here)
    pieces, ok = [], False
    try:
        for i, (a, b) in enumerate(ranges):
            pieces.append(op.run_here(a, b))
            progress.done(i)
        ok = True
    finally:
        progress.close(ok)
    return pieces


def _sizes_text(sizes: list[int]) -> str:
    return str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"


def _combine_or_serial(op: Operation, pieces: list[Piece], borrowed: bool = False) -> Any:
    """Combine ``pieces``; ``borrowed``: some may be views of result files."""
    try:
        began = time.perf_counter()
        result = op.combine(pieces)
        if borrowed:
            result = transport.detach(result)
        logger.debug("%s: combined %d pieces in %.3fs", op.label, len(pieces),
                     time.perf_counter() - began)
        return result
    except CannotCombine as exc:
        logger.warning(
            "%s: chunk results cannot be combined into exactly what pandas "
            "returns (%s); recomputing serially with pandas", op.label, exc)
        return op.serial()


def _run_parallel(op: Operation, ranges: list[tuple[int, int]], n_workers: int,
                  n_bytes: int, expected: float | None, done_here: int,
                  blob: bytes | Program, fork: bool = False) -> list[Piece]:
    global _warm_workers
    options = op.options
    backend = options.backend or "loky"
    threads = backend in _IN_PROCESS_BACKENDS and not fork
    # Processes on this machine: they share files in the scratch directory.
    local_processes = fork or backend in ("loky", "multiprocessing")
    call_id = uuid.uuid4().hex

    def describe(chunk: int) -> str:
        a, b = ranges[chunk]
        return f"chunk {chunk + 1} of {len(ranges)}: " + op.describe(a, b)

    sizes = [op.progress_size(a, b) for a, b in ranges]
    calls = [size * op.calls_per_unit for size in sizes]
    began = time.perf_counter()
    transport.sweep_stale_scratch()
    with transport.scratch_directory(n_bytes if local_processes else 0) as directory:
        if threads:
            def payload(i: int) -> transport.Payload:
                return transport.Inline(op.units.local(*ranges[i]))
        elif fork:  # each worker cuts its chunk from its copy of the input
            def payload(i: int) -> transport.Payload:
                return transport.Deferred(functools.partial(op.units.local, *ranges[i]))
        elif not local_processes:  # other machines: everything in-band
            def payload(i: int) -> transport.Payload:
                return transport.in_band(op.units.local(*ranges[i]), options.transport)
        else:
            payload = op.units.ship(ranges, directory, options.transport).payload
        handed_out: dict[int, transport.Payload] = {}

        def hand_out(i: int) -> transport.Payload:
            handed_out[i] = payload(i)
            return handed_out[i]

        directory_for_results = directory if local_processes else None
        shipped = time.perf_counter()
        counters: Any = None
        counter_array = None
        show = _show_progress(options, expected)
        if threads:
            counter_array = counters = np.zeros(3 * len(ranges) + 1, dtype=np.int64)
        elif local_processes and directory is not None:
            path = os.path.join(directory, "progress.bin")
            counter_array = np.memmap(path, dtype=np.int64, mode="w+",
                                      shape=(3 * len(ranges) + 1,))
            counters = path
        # Longest first, so the biggest chunk does not start last. Each chunk
        # is shipped when it is handed out. Counting calls costs a Python call
        # per row: only for a visible bar.
        order = sorted(range(len(ranges)), key=lambda i: -calls[i])
        watch = options.timeout is not None and backend == "threading"
        tasks = (Task(call_id, i, hand_out(i), blob, sizes[i], directory_for_results,
                      options.transport, counters, count_calls=show, watch_calls=watch,
                      in_band=not local_processes and not threads)
                 for i in order)
        progress = executor.Progress(
            show, done_here + sum(sizes), op.label, op.unit,
            sizes, calls, counter_array[: len(ranges)] if counter_array is not None else None,
            initial=done_here)
        states = (counter_array[len(ranges):2 * len(ranges)]
                  if counter_array is not None else None)
        results: dict[int, Any] = {}
        ok = False
        try:
            reporter = executor.Reporter(op.label, describe, op.func)
            if fork:
                outcomes = forking.run_forked(list(tasks), n_workers, progress, reporter)
            elif backend == "loky":
                outcomes = executor.run_local(tasks, n_workers, progress, reporter,
                                              states, pool_warm=_pool_warm(n_workers))
            elif backend == "threading":
                call_starts = (counter_array[2 * len(ranges):3 * len(ranges)]
                               if watch and counter_array is not None else None)
                outcomes = executor.run_threads(tasks, n_workers, progress, reporter,
                                                call_starts, options.timeout,
                                                counter_array[:len(ranges)]
                                                if counter_array is not None else None)
            elif backend == "dask":
                outcomes = executor.run_dask(tasks, progress, reporter)
            else:
                outcomes = executor.run_joblib(tasks, n_workers, backend, progress,
                                               reporter)
            worker_seconds = 0.0
            for outcome in outcomes:
                assert outcome.payload is not None
                results[outcome.chunk] = transport.fetch_result(
                    outcome.payload, borrow=_borrows_results(op))
                transport.release_input(handed_out.pop(outcome.chunk))
                worker_seconds += outcome.seconds
            ok = True
            logger.debug("%s: prepared in %.3fs; chunks ran %.3fs in total; all "
                         "results back after %.3fs", op.label, shipped - began,
                         worker_seconds, time.perf_counter() - shipped)
            if options.chunk_size is None:  # tiny chunks would overstate the cost
                planning.remember(op.func, _cost_kind(op), worker_seconds,
                                  _work_rows(op, ranges[0][0], ranges[-1][1]))
        except (KeyboardInterrupt, executor.WorkerCrashedError):
            _warm_workers = 0  # the pool was stopped or replaced
            raise
        finally:
            if counter_array is not None and not ok:
                counter_array[-1] = 1  # workers still running write no more files
            progress.close(ok)
            del counter_array, states
    return [Piece(results[i], (a, b), op.units)
            for i, (a, b) in enumerate(ranges)]
