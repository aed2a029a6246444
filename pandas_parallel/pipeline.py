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
import pickle
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import backends, executor, planning, policies, programs, snapshot, transport
from pandas_parallel.backends import Backend, Job
from pandas_parallel.combine import CannotCombine
from pandas_parallel.errors import UnpicklableFunctionError
from pandas_parallel.options import Options
from pandas_parallel.programs import Encoded, Pickled, Program
from pandas_parallel.splitting import Units
from pandas_parallel.worker import (
    Outcome,
    Task,
    chunk_seeds,
    dumps_result,
    failing_call,
    in_worker,
    show_label,
)

logger = logging.getLogger("pandas_parallel")

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
        try:
            result = self.runner(chunk, self.func, self.args, self.kwargs)
        except Exception as exc:  # named as a worker's failure is (a timeout too)
            note = (f"pandas_parallel: {self.label} failed on {self.describe(start, stop)} "
                    "(run in this process)")
            argument = failing_call(self.func, exc, chunk)
            exc.add_note(note + (f", when the function was called with {argument}"
                                 if argument else ""))
            raise
        if isinstance(self.func, policies.Coercing):
            self.func.settle(chunk)
        return Piece(result, (start, stop), self.units)

    def run_serial(self) -> Any:
        """The plain pandas call on the whole input, from the start (what
        failed in chunks before is forgotten: this call says)."""
        if isinstance(self.func, policies.Coercing):
            self.func.restart()
        return self.serial()

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


@dataclasses.dataclass(frozen=True)
class Run:
    """How a call ran: ``backend`` is ``"serial"`` (pandas in this process)
    or the backend's name (``"forked"``, ``"forkserver"``, ``"pool"``,
    ``"threads"``, ``"dask"``, ``"ray"``, ``"joblib"``); ``start`` how its
    workers started: ``"fork"`` (forked from this process for the call),
    ``"server"`` (forked from the fork server for the call), ``"starting"``
    (the fork server started for the call, and this process ran chunks
    until it was up), ``"warm"`` (already running: kept from an earlier
    call, or a cluster's) or ``"cold"`` (the pool, started for the call)."""

    backend: str
    workers: int = 1
    chunks: int = 0
    start: str = ""


SERIAL = Run("serial")
_last_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "pandas_parallel_last_run", default=None)


def last_run() -> Run | None:
    """How the last call in this thread (or asyncio task) ran: serially or
    on which backend, with how many workers and chunks. For tests and
    diagnostics: a call that was meant to run in parallel can be checked."""
    return _last_run.get()


def ran_serially() -> None:
    """Note, without a log record, that this call runs as pandas' own (for
    calls handed to pandas before the pipeline)."""
    _last_run.set(SERIAL)


def _ran(run: Run) -> None:
    _last_run.set(run)
    logger.debug("ran on %s", run.backend, extra={"pandas_parallel_run": run})


def _serial_reason(op: Operation) -> str | None:
    if len(op.units) == 0 or len(op.units.obj) == 0:
        return "the input is empty"
    if in_worker():
        return "already inside a pandas_parallel worker (nested call)"
    if op.options.backend == "sequential":
        return "backend='sequential'"
    return None


def _few_workers_reason(op: Operation, n_workers: int) -> str | None:
    if n_workers == 1:
        return "only one worker is available (n_jobs resolves to 1)"
    if len(op.units) == 1 and op.options.serial_fallback:
        return "there is a single unit of work"
    return None


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
    _ran(SERIAL)
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
        return op.run_serial()
    except BaseException:
        executor.quiet_at_exit()
        raise


def _execute(op: Operation) -> Any:
    reason = _serial_reason(op)
    if reason is None:
        backend = backends.choose(op.options, thorough=False)
        n_workers = backend.capacity(op.options.n_jobs)
        reason = _few_workers_reason(op, n_workers)
    if reason is not None:
        logger.debug("%s: serial (%s)", op.label, reason)
        _ran(SERIAL)
        return op.serial()
    cheap_kind, n_rows = _cheap_kind(op), len(op.units.obj)
    if (op.options.serial_fallback and op.options.chunk_size is None
            and n_rows <= planning.cheap_up_to(op.func, cheap_kind)
            and not _show_progress(op.options, 0.0)):
        # As small as a call of this function that was clearly too cheap
        # for workers: pandas' own call, without sampling (the function was
        # pickled then, so it still fails alike at any size).
        return run_known_cheap(op.label, op.func, cheap_kind, n_rows, op.serial)
    backend.prepare(n_workers)
    plan = _plan(op, backend, n_workers)
    if not plan.parallel:
        _ran(SERIAL)
        return _finish_here(op, plan)
    with _chunk_failures(op):
        pieces = plan.pieces + _run_parallel(op, plan)
    return _combine_or_serial(op, pieces, borrowed=_borrows_results(op))


@dataclasses.dataclass
class Plan:
    """What a call does, decided before any worker starts: the units
    ``[0, start)`` already run here while sampling (their ``pieces``), and
    either the rest serially here or ``ranges`` of units on ``backend``."""

    backend: Backend
    n_workers: int
    program: Program
    pickled: Pickled | None  # the program pickled (None: not yet, or for threads)
    n_bytes: int
    parallel: bool = True
    start: int = 0
    pieces: list[Piece] = dataclasses.field(default_factory=list)
    ranges: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    per_unit: float | None = None
    expected: float | None = None  # seconds the remaining units take serially
    sampled_seconds: float = 0.0
    start_workers_after: bool = False  # only their start-up made this call serial
    fresh_workers: bool = False  # workers started for the call would be faster
    results: planning.ResultCost | None = None  # sending results back, per unit
    program_cost: planning.ProgramCost | None = None  # sending the program


def _plan(op: Operation, backend: Backend, n_workers: int) -> Plan:
    options = op.options
    program = Program(op.runner, op.func, op.args, op.kwargs, op.calls_per_unit,
                      policies.Setup.of(options.initializer, options.initargs),
                      snapshot.capture("cluster" if backend.cluster else "process"))
    priced = options.serial_fallback and options.chunk_size is None
    per_row = planning.recall(op.func, _cost_kind(op)) if priced else None
    # Pickle once, and know what sending the program costs. Fail on an
    # unpicklable function before any of its work (a sample runs it); a
    # call priced from a remembered cost runs none before deciding, and fails
    # only if it goes parallel (serially, it is pandas' own call).
    unpicklable = None
    try:
        pickled = _pickled(program, backend)
    except UnpicklableFunctionError as exc:
        if per_row is None:
            raise
        pickled, unpicklable = None, exc
    plan = Plan(backend, n_workers, program, pickled, op.units.nbytes(),
                program_cost=_program_cost(pickled, backend))
    if priced:
        _price(op, plan, per_row)
        if not plan.parallel:
            return plan
        if unpicklable is not None:
            raise unpicklable
    else:  # the input's and the program's trip to kept workers against forking anew
        plan.fresh_workers = planning.forking_is_cheaper(plan.n_bytes, n_workers,
                                                         plan.program_cost)
    # Chosen again, thoroughly: the sampled calls may have started a thread.
    plan.backend = backends.choose(options)
    if plan.fresh_workers:
        plan.backend = plan.backend.with_fresh_workers() or plan.backend
    plan.ranges = _chunks(op, plan)
    return plan


def _price(op: Operation, plan: Plan, per_row: float | None) -> None:
    """Measure (or recall) the cost per unit, and decide serial or parallel."""
    n_units = len(op.units)
    if per_row is not None:
        plan.per_unit = per_row * _work_rows(op, 0, n_units) / n_units
        measured = "cost remembered from the last call"
        clearly_serial = False
    else:
        began = time.perf_counter()
        plan.start, plan.per_unit, clearly_serial = _sample(op, plan.pieces, plan.n_workers)
        plan.sampled_seconds = time.perf_counter() - began
        measured = f"sampled {plan.start} {op.unit} in {plan.sampled_seconds:.4f}s"
    remaining = n_units - plan.start
    remaining_bytes = plan.n_bytes * remaining // n_units

    if not plan.backend.in_process:
        plan.results = _result_cost(op, plan.pieces)
    rate = plan.backend.bytes_per_second() if plan.backend.cluster else None

    def guess(start: str) -> planning.Estimate:
        assert plan.per_unit is not None
        return planning.estimate(plan.per_unit, remaining, plan.n_workers, remaining_bytes,
                                 start, plan.backend.cluster, plan.results, rate,
                                 plan.program_cost, plan.backend.seconds_to_start())

    start = plan.backend.start(plan.n_workers)
    estimate = guess(start)
    if clearly_serial:
        estimate = planning.Estimate(estimate.serial, parallel=math.inf)
    if estimate.parallel_wins and start == "fork":
        plan.backend = backends.choose(op.options)  # in full, now it matters
        start = plan.backend.start(plan.n_workers)
        estimate = guess(start)
    # Kept workers are sent the input and the program; new ones forked hold
    # them already, where forking is possible.
    if start == "warm" and plan.backend.with_fresh_workers(thorough=False) is not None:
        forked = guess("fork")
        plan.fresh_workers = forked.parallel < estimate.parallel
        if plan.fresh_workers and not clearly_serial:
            estimate = forked
    plan.expected, plan.parallel = estimate.serial, estimate.parallel_wins
    later_wins = not clearly_serial and guess("warm").parallel_wins
    if start == "starting" and later_wins and not plan.parallel:
        # Started now, in the background (another process, importing on
        # another core): the next call like this one finds it up.
        plan.backend.start_workers(plan.n_workers)
    plan.start_workers_after = (
        start == "cold" and estimate.serial >= planning.MIN_SECONDS_TO_START_POOL
        and later_wins)
    logger.debug("%s: %s (%.2e s/unit%s); remaining %d: serial %.3fs, parallel %.3fs "
                 "(workers %s)", op.label, measured, plan.per_unit,
                 f", results {plan.results.encode:.1e} + {plan.results.decode:.1e} s/unit "
                 "to send back" if plan.results and plan.results.encode else "", remaining,
                 estimate.serial, estimate.parallel, start)


def _result_cost(op: Operation, pieces: list[Piece]) -> planning.ResultCost | None:
    """What sending a unit's result back from a worker costs, measured on
    the sampled results (or remembered): its bytes, and for results holding
    Python objects, which pickle one by one, the time to encode and decode
    them (numbers travel as buffers)."""
    kind = _cost_kind(op)
    units = sum(b - a for p in pieces for a, b in [p.units])
    if not units:
        return planning.recall_results(op.func, kind)
    results = [p.result for p in pieces]
    sizes = [_nbytes(result) for result in results]
    encode = decode = 0.0
    if any(map(_holds_objects, results)):
        for result in results:
            began = time.perf_counter()
            blob = dumps_result(Outcome(0, transport.ship_result(result, None, "", "pickle")))
            encoded = time.perf_counter()
            pickle.loads(blob)
            encode, decode = encode + encoded - began, decode + time.perf_counter() - encoded
    size = None if None in sizes else sum(s for s in sizes if s is not None) / units
    cost = planning.ResultCost(encode / units, decode / units, size)
    if encode:  # the bytes alone are remembered from a call's full results
        planning.remember_results(op.func, kind, cost)
    return cost


def _remember_result_bytes(op: Operation, results: dict[int, Any],
                           ranges: list[tuple[int, int]]) -> None:
    """Note the bytes per unit of a call's results (from its first few
    chunks), for the next call's estimate of what sending them back costs
    (a call planned from a remembered cost samples none)."""
    first = sorted(results)[:4]
    sizes = [_nbytes(results[i]) for i in first]
    units = sum(ranges[i][1] - ranges[i][0] for i in first)
    if units and None not in sizes:
        kind = _cost_kind(op)
        known = planning.recall_results(op.func, kind) or planning.ResultCost(0.0, 0.0)
        total = sum(size for size in sizes if size is not None)
        planning.remember_results(op.func, kind, dataclasses.replace(known, bytes=total / units))


def _nbytes(result: Any) -> int | None:
    """A result's bytes of column data, if it is an array or frame."""
    result = getattr(result, "value", result)  # a Tagged result
    if isinstance(result, pd.Series | np.ndarray):
        return int(result.nbytes)
    if isinstance(result, pd.DataFrame):
        return int(sum(column.nbytes for _, column in result.items()))
    return None


def _holds_objects(result: Any) -> bool:
    result = getattr(result, "value", result)  # a Tagged result
    if isinstance(result, pd.Series):
        return pd.api.types.is_object_dtype(result.dtype)
    if isinstance(result, pd.DataFrame):
        return any(map(pd.api.types.is_object_dtype, result.dtypes))
    return not isinstance(result, np.ndarray)


def _chunks(op: Operation, plan: Plan) -> list[tuple[int, int]]:
    if op.options.chunk_size is not None:
        return op.units.cut(plan.start, None, op.options.chunk_size)
    remaining = len(op.units) - plan.start
    count = planning.chunk_count(plan.per_unit, remaining, plan.n_workers,
                                 plan.n_bytes * remaining // len(op.units),
                                 plan.backend.cluster,
                                 plan.backend.start(plan.n_workers) == "starting")
    return op.units.cut(plan.start, count, None)


def _finish_here(op: Operation, plan: Plan) -> Any:
    """Run the units the sample left serially here, and remember the cost."""
    logger.debug("%s: serial (parallel would not be faster)", op.label)
    n_units = len(op.units)
    expected = plan.expected or 0.0
    began = time.perf_counter()
    if plan.start == 0 and not _show_progress(op.options, expected):
        result = op.serial()  # nothing sampled: plain pandas, as is
    else:
        pieces = plan.pieces
        if plan.start < n_units:
            with _chunk_failures(op):
                pieces = pieces + _run_here_with_progress(op, plan.start, expected)
        result = _combine_or_serial(op, pieces)
    seconds = time.perf_counter() - began
    planning.remember(op.func, _cost_kind(op), seconds, _work_rows(op, plan.start, n_units))
    planning.remember_cheap(op.func, _cheap_kind(op), len(op.units.obj),
                            plan.sampled_seconds + seconds)
    if plan.start_workers_after:
        # Only the start-up cost stood in the way. Start the workers now that
        # this call's work is done (so it is not slowed), and the next call
        # like it finds them warm.
        logger.debug("%s: starting %d workers in the background for next time",
                     op.label, plan.n_workers)
        plan.backend.start_workers(plan.n_workers)
    return result


def _pickled(program: Program, backend: Backend) -> Pickled | None:
    """``program`` pickled for worker processes (raising
    :class:`UnpicklableFunctionError` if it cannot be), its large buffers
    apart for workers on this machine; ``None`` for threads of this process."""
    if backend.in_process:
        return None
    return programs.pickled(program, backend.shares_files or not backend.pickles_program)


def _program_cost(pickled: Pickled | None, backend: Backend) -> planning.ProgramCost | None:
    if pickled is None:
        return None
    if not backend.shares_files and backend.pickles_program:  # a cluster: all of it inside
        return planning.ProgramCost(pickled.nbytes)
    return planning.ProgramCost(len(pickled.blob), pickled.buffer_bytes,
                                programs.STORE.unstored_bytes(pickled))


def _sent_program(plan: Plan) -> Program | Encoded:
    """The program as the plan's workers get it: itself (they share or
    copied this process's memory), published to the store (they are on
    this machine), or pickled whole (a cluster)."""
    backend = plan.backend
    if not backend.pickles_program:
        return plan.program
    assert plan.pickled is not None
    if backend.shares_files:
        return programs.STORE.publish(plan.pickled)
    return programs.in_band(plan.pickled)


def _sample(op: Operation, pieces: list[Piece], n_workers: int) -> tuple[int, float, bool]:
    """Run the first units here in samples of growing size, timed, adding
    their pieces to ``pieces``; return the units done, the cost per unit
    of the rest, and whether the rest is clearly too little work for workers."""
    n_units = len(op.units)
    start = 0
    samples: list[tuple[int, float]] = []  # (rows, seconds) of each sample
    remaining_rows = _work_rows(op, 0, n_units)
    per_row = 0.0
    kind = _fixed_cost_kind(op)
    fixed = planning.fixed_cost(kind)
    for size in planning.probe_sizes(n_units, n_workers):
        began = time.perf_counter()
        with _chunk_failures(op):
            pieces.append(op.run_here(start, start + size))
        seconds = time.perf_counter() - began
        rows = _work_rows(op, start, start + size)
        samples.append((rows, seconds))
        start += size
        remaining_rows -= rows
        per_row = planning.cost_per_row(samples, fixed)
        planning.learn_fixed_cost(kind, samples)
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


def _fixed_cost_kind(op: Operation) -> tuple[Any, ...]:
    """What pandas' fixed cost per call depends on: the operation and the
    columns a row holds (not the function)."""
    return ("fixed", op.label, op.unit, type(op.units.obj), op.units.obj.shape[1:])


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
        return op.run_serial()


def _run_parallel(op: Operation, plan: Plan) -> list[Piece]:
    """Run the plan's ranges on its backend; the pieces in order of units."""
    backend, ranges = plan.backend, plan.ranges
    logger.debug("%s: parallel on %d %s workers, %d chunks of %s %s", op.label,
                 plan.n_workers, backend.name, len(ranges),
                 _sizes_text([b - a for a, b in ranges]), op.unit)
    _ran(Run(backend.name, plan.n_workers, len(ranges), backend.start(plan.n_workers)))
    began = time.perf_counter()
    transport.sweep_stale_scratch()
    scratch = (transport.scratch_directory(plan.n_bytes) if backend.shares_files
               else contextlib.nullcontext(None))
    sent = _sent_program(plan)
    with scratch as directory, _published(sent, backend):
        job = _job(op, plan, directory)
        tasks, handed_out = _tasks(op, plan, job, directory, sent)
        results: dict[int, Any] = {}
        row_errors: dict[int, list[tuple[Any, BaseException]]] = {}
        ok = False
        try:
            worker_seconds = 0.0
            for outcome in backend.run(tasks, job):
                assert outcome.payload is not None
                results[outcome.chunk] = transport.fetch_result(
                    outcome.payload, borrow=_borrows_results(op))
                transport.release_input(handed_out.pop(outcome.chunk))
                worker_seconds += outcome.seconds
                row_errors[outcome.chunk] = outcome.row_errors
            ok = True
            if isinstance(op.func, policies.Coercing):
                for i in range(len(ranges)):
                    op.func.failures.extend(row_errors[i])
            backend.finished(plan.n_workers)
            logger.debug("%s: chunks ran %.3fs in total; all results back after %.3fs",
                         op.label, worker_seconds, time.perf_counter() - began)
            if op.options.chunk_size is None:  # tiny chunks would overstate the cost
                planning.remember(op.func, _cost_kind(op), worker_seconds,
                                  _work_rows(op, ranges[0][0], ranges[-1][1]))
            _remember_result_bytes(op, results, ranges)
        except (KeyboardInterrupt, executor.WorkerCrashedError):
            backend.broken()
            raise
        finally:
            if not ok:
                job.counters.end()  # workers still running write no more files
            job.progress.close(ok)
    return [Piece(results[i], (a, b), op.units) for i, (a, b) in enumerate(ranges)]


@contextlib.contextmanager
def _published(sent: Program | Encoded, backend: Backend) -> Iterator[None]:
    """While the call runs: the store keeps the program's files."""
    try:
        yield
    finally:
        if isinstance(sent, Encoded) and backend.shares_files:
            programs.STORE.release(sent)


def _job(op: Operation, plan: Plan, directory: str | None) -> Job:
    ranges = plan.ranges

    def describe(chunk: int) -> str:
        a, b = ranges[chunk]
        return f"chunk {chunk + 1} of {len(ranges)}: " + op.describe(a, b)

    sizes = [op.progress_size(a, b) for a, b in ranges]
    counters = plan.backend.counters(len(ranges), directory)
    done_here = op.progress_size(0, plan.start)
    progress = executor.Progress(
        _show_progress(op.options, plan.expected), done_here + sum(sizes), op.label,
        op.unit, sizes, [size * op.calls_per_unit for size in sizes], counters.calls,
        initial=done_here)
    timeout = None if plan.backend.cluster else op.options.timeout
    return Job(plan.n_workers, progress, executor.Reporter(op.label, describe, op.func),
               counters, plan.program, timeout, coerce=isinstance(op.func, policies.Coercing))


def _tasks(op: Operation, plan: Plan, job: Job, directory: str | None,
           program: Program | Encoded) -> tuple[Iterator[Task], dict[int, transport.Payload]]:
    """The call's tasks, longest first (so the biggest chunk does not start
    last), each shipped when handed out; and the payloads handed out so far.
    Counting calls costs a Python call per row: only for a visible bar."""
    backend, ranges, options = plan.backend, plan.ranges, op.options
    payload = backend.payloads(op.units, ranges, directory, options.transport)
    seeds = [None] * len(ranges) if backend.in_process else chunk_seeds(len(ranges))
    calls = [op.progress_size(a, b) * op.calls_per_unit for a, b in ranges]
    handed_out: dict[int, transport.Payload] = {}
    call_id = uuid.uuid4().hex

    def task(i: int) -> Task:
        handed_out[i] = payload(i)
        return Task(call_id, i, handed_out[i], program, op.progress_size(*ranges[i]),
                    directory, options.transport, job.counters.source,
                    count_calls=job.progress.bar is not None,
                    watch_calls=job.timeout is not None,
                    in_band=not backend.shares_files and not backend.in_process,
                    seed=seeds[i], place=backend.place)

    order = sorted(range(len(ranges)), key=lambda i: -calls[i])
    return (task(i) for i in order), handed_out
