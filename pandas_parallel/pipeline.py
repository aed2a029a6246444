"""The pipeline every call runs through.

:func:`execute` runs an :class:`~.operation.Operation` in named steps:
plan, run (here, or on the plan's backend), combine (or hand the call to
pandas), learn, record how it ran. The calls that never become an
operation end here too: :func:`hand_over` (pandas' own call), :func:`run_known`
(known too cheap for workers), :func:`run_async` (``async def``
functions). Each records how it ran for :func:`last_run`, through
:func:`_record` alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pandas_parallel import executor, planning, policies, programs, transport
from pandas_parallel.backends import Backend, Job
from pandas_parallel.combine import CannotCombine
from pandas_parallel.operation import SERIAL, Operation, PandasDecides, Piece, Run
from pandas_parallel.planning import Plan, Spent
from pandas_parallel.programs import Encoded, Program
from pandas_parallel.worker import Task, chunk_seeds

logger = logging.getLogger("pandas_parallel")

_last_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "pandas_parallel_last_run", default=None)


def last_run() -> Run | None:
    """How the last call in this thread (or asyncio task) ran: serially or
    on which backend, with how many workers and chunks. For tests and
    diagnostics: a call that was meant to run in parallel can be checked."""
    return _last_run.get()


def _record(run: Run) -> None:
    _last_run.set(run)
    logger.debug("ran on %s", run.backend, extra={"pandas_parallel_run": run})


def execute(op: Operation) -> Any:
    """Run ``op`` and return exactly what pandas' own call returns."""
    plan = None
    try:
        plan = planning.plan(op)
        _log_plan(op, plan)
        began = time.perf_counter()
        if plan.parallel:
            pieces, spent = _run_on_backend(op, plan)
            result = _combine(op, pieces, borrowed=_borrows_results(op))
        else:
            result, spent = _run_here(op, plan)
        planning.learn(plan, dataclasses.replace(spent, seconds=time.perf_counter() - began))
        _start_workers_for_next_time(op, plan)
        return result
    except PandasDecides as failure:
        logger.debug("%s: a chunk failed (%s); pandas runs the whole call for its own "
                     "answer", op.label, failure)
        return op.run_serial()
    except BaseException:
        executor.quiet_at_exit()
        raise
    finally:
        _record(plan.run if plan is not None else SERIAL)


def hand_over(label: str, why: str, call: Callable[[], Any]) -> Any:
    """``call``, pandas' own, for a call this library does not split."""
    logger.debug("%s: handed to pandas (%s)", label, why)
    try:
        return call()
    finally:
        _record(SERIAL)


def run_known(plan: Plan, label: str, call: Callable[[], Any]) -> Any:
    """``call``, pandas' own, for a call whose plan found it too cheap for
    workers before it was even bound; what it then costs is learned."""
    logger.debug("%s: serial (%s)", label, plan.why)
    began = time.perf_counter()
    try:
        result = call()
    finally:
        _record(SERIAL)
    seconds = time.perf_counter() - began
    planning.learn(plan, Spent(seconds, seconds))
    return result


def run_async(concurrency: int, call: Callable[[], Any]) -> Any:
    """``call``, which runs an ``async def`` function's coroutines
    ``concurrency`` at a time in this process."""
    try:
        return call()
    finally:
        _record(Run("async", concurrency))


def _log_plan(op: Operation, plan: Plan) -> None:
    if plan.measured:
        results = plan.results
        logger.debug("%s: %s%s; remaining %d %s: %s", op.label, plan.measured,
                     f" (results {results.encode:.1e} + {results.decode:.1e} s/unit to send "
                     "back)" if results and results.encode else "",
                     plan.units - plan.done, op.unit, plan.estimate or "")
    if not plan.parallel:
        logger.debug("%s: serial (%s)", op.label, plan.why)
        return
    assert plan.backend is not None
    sizes = [b - a for a, b in plan.ranges]
    logger.debug("%s: parallel on %d %s workers, %d chunks of %s %s (%s)", op.label,
                 plan.n_workers, plan.backend.name, len(sizes),
                 str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}",
                 op.unit, plan.why)


def _run_here(op: Operation, plan: Plan) -> tuple[Any, Spent]:
    """The units the sample left, run here and combined with the sampled
    pieces; with none sampled (and no progress bar), pandas' own call."""
    began = time.perf_counter()
    if plan.done == 0 and not executor.show_progress(op.options.progress, plan.expected):
        result = op.serial()
    else:
        pieces = list(plan.pieces)
        if plan.done < plan.units:
            with op.failures():
                pieces += _run_here_with_progress(op, plan)
        result = _combine(op, pieces)
    seconds = time.perf_counter() - began
    return result, Spent(seconds, seconds)


def _run_here_with_progress(op: Operation, plan: Plan) -> list[Piece]:
    """Run units ``[plan.done, len)`` in this process; in pieces under a
    progress bar when one is wanted (each piece is one more pandas call, so
    only then)."""
    n_units, start, expected = plan.units, plan.done, plan.expected or 0.0
    if not executor.show_progress(op.options.progress, expected):
        return [op.run_here(start, n_units)]
    # About one piece a quarter second; ten when the length is not known.
    count = int(expected / 0.25) if plan.expected is not None else 10
    ranges = op.units.cut(start, max(1, min(100, count)), None)
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


def _start_workers_for_next_time(op: Operation, plan: Plan) -> None:
    if plan.start_workers_after and plan.backend is not None:
        # Only the start-up cost stood in the way. Start the workers now that
        # this call's work is done (so it is not slowed), and the next call
        # like it finds them warm.
        logger.debug("%s: starting %d workers in the background for next time",
                     op.label, plan.n_workers)
        plan.backend.start_workers(plan.n_workers)


def _combine(op: Operation, pieces: list[Piece], borrowed: bool = False) -> Any:
    """Combine ``pieces``; ``borrowed``: some may be views of result files.
    Pieces that cannot combine into exactly pandas' result: pandas' call."""
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


def _borrows_results(op: Operation) -> bool:
    """Whether results are read as views of their files: when the combine
    step stacks rows, which copies them anyway. Column results are set side
    by side as they are, so they are copied as they arrive."""
    return not op.units.columns


@dataclasses.dataclass
class _Tally:
    """What the chunks of a call cost, as their results come back."""

    compute: float = 0.0
    transfer: float = 0.0
    result_bytes: int = 0
    result_units: int = 0
    sized: bool = True

    def add_result(self, size: int | None, units: int) -> None:
        self.sized = self.sized and size is not None
        self.result_bytes += size or 0
        self.result_units += units

    def spent(self) -> Spent:
        per_unit = (self.result_bytes / self.result_units
                    if self.sized and self.result_units else None)
        return Spent(0.0, self.compute, self.transfer, per_unit)


def _run_on_backend(op: Operation, plan: Plan) -> tuple[list[Piece], Spent]:
    """Run the plan's ranges on its backend: the pieces in order of units
    (the sampled ones first), and what they cost."""
    backend, ranges = plan.backend, plan.ranges
    assert backend is not None
    transport.sweep_stale_scratch()
    scratch = (transport.scratch_directory(plan.n_bytes) if backend.shares_files
               else contextlib.nullcontext(None))
    sent = _sent_program(plan)
    tally = _Tally()
    with scratch as directory, _published(sent, backend):
        job = _job(op, plan, directory)
        tasks, handed_out = _tasks(op, plan, job, directory, sent, tally)
        results: dict[int, Any] = {}
        row_errors: dict[int, list[tuple[Any, BaseException]]] = {}
        ok = False
        try:
            with op.failures():
                for outcome in backend.run(tasks, job):
                    assert outcome.payload is not None
                    began = time.perf_counter()
                    results[outcome.chunk], size = transport.receive(
                        outcome.payload, handed_out.pop(outcome.chunk), _borrows_results(op))
                    tally.transfer += time.perf_counter() - began + outcome.load_seconds
                    tally.compute += outcome.seconds
                    row_errors[outcome.chunk] = outcome.row_errors
                    a, b = ranges[outcome.chunk]
                    tally.add_result(size, b - a)
            ok = True
            if isinstance(op.func, policies.Coercing):
                for i in range(len(ranges)):
                    op.func.failures.extend(row_errors[i])
            backend.finished(plan.n_workers)
        except (KeyboardInterrupt, executor.WorkerCrashedError):
            backend.broken()
            raise
        finally:
            if not ok:
                job.counters.end()  # workers still running write no more files
            job.progress.close(ok)
    pieces = [Piece(results[i], (a, b), op.units) for i, (a, b) in enumerate(ranges)]
    return list(plan.pieces) + pieces, tally.spent()


def _sent_program(plan: Plan) -> Program | Encoded:
    """The program as the plan's workers get it: itself (they share or
    copied this process's memory), published to the store (they are on
    this machine), or pickled whole (a cluster)."""
    backend = plan.backend
    assert backend is not None and plan.program is not None
    if not backend.pickles_program:
        return plan.program
    assert plan.pickled is not None
    if backend.shares_files:
        return programs.STORE.publish(plan.pickled)
    return programs.in_band(plan.pickled)


@contextlib.contextmanager
def _published(sent: Program | Encoded, backend: Backend) -> Iterator[None]:
    """While the call runs: the store keeps the program's files."""
    try:
        yield
    finally:
        if isinstance(sent, Encoded) and backend.shares_files:
            programs.STORE.release(sent)


def _job(op: Operation, plan: Plan, directory: str | None) -> Job:
    ranges, backend = plan.ranges, plan.backend
    assert backend is not None and plan.program is not None

    def describe(chunk: int) -> str:
        a, b = ranges[chunk]
        return f"chunk {chunk + 1} of {len(ranges)}: " + op.describe(a, b)

    sizes = [op.progress_size(a, b) for a, b in ranges]
    counters = backend.counters(len(ranges), directory)
    done_here = op.progress_size(0, plan.done)
    progress = executor.Progress(
        executor.show_progress(op.options.progress, plan.expected), done_here + sum(sizes),
        op.label, op.unit, sizes, [size * op.calls_per_unit for size in sizes],
        counters.calls, initial=done_here)
    timeout = None if backend.cluster else op.options.timeout
    return Job(plan.n_workers, progress, executor.Reporter(op.label, describe, op.func),
               counters, plan.program, timeout, coerce=isinstance(op.func, policies.Coercing))


def _tasks(op: Operation, plan: Plan, job: Job, directory: str | None,
           program: Program | Encoded, tally: _Tally
           ) -> tuple[Iterator[Task], dict[int, transport.Payload]]:
    """The call's tasks, longest first (so the biggest chunk does not start
    last), each shipped when handed out; and the payloads handed out so far.
    Counting calls costs a Python call per row: only for a visible bar."""
    backend, ranges, options = plan.backend, plan.ranges, op.options
    assert backend is not None
    payload = backend.payloads(op.units, ranges, directory, options.transport)
    seeds = [None] * len(ranges) if backend.in_process else chunk_seeds(len(ranges))
    calls = [op.progress_size(a, b) * op.calls_per_unit for a, b in ranges]
    handed_out: dict[int, transport.Payload] = {}
    call_id = uuid.uuid4().hex

    def task(i: int) -> Task:
        began = time.perf_counter()
        handed_out[i] = payload(i)
        tally.transfer += time.perf_counter() - began
        return Task(call_id, i, handed_out[i], program, op.progress_size(*ranges[i]),
                    directory, options.transport, job.counters.source,
                    count_calls=job.progress.bar is not None,
                    watch_calls=job.timeout is not None,
                    in_band=not backend.shares_files and not backend.in_process,
                    seed=seeds[i], place=backend.place)

    order = sorted(range(len(ranges)), key=lambda i: -calls[i])
    return (task(i) for i in order), handed_out
