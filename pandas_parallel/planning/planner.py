"""The planner: how one call runs, decided once, and what it learns after.

:func:`plan` decides, before any worker starts, whether the call runs here
or in parallel, on which backend, in which chunks. The cost is measured,
not guessed: the first few units (rows, columns, groups) run in this
process, timed, and their results are kept as the first piece of the
answer (the function never runs twice on a row). A function called again
in the same shape of call skips the sample: the memory holds what its last
calls really cost. From the cost per unit and what starting workers and
moving data cost (:mod:`.costs`), the planner picks serial or parallel and
sizes chunks so each takes a useful fraction of a second, several per
worker.

:func:`learn` is told what the call then cost, and is the only writer of
the memory (:mod:`.memory`): a call priced wrong corrects the next.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pandas_parallel import backends, policies, programs, progress, snapshot, transport
from pandas_parallel.backends import Backend
from pandas_parallel.errors import UnpicklableFunctionError
from pandas_parallel.executor import show_progress
from pandas_parallel.operation import SERIAL, Operation, Piece, Run
from pandas_parallel.planning import costs
from pandas_parallel.planning.costs import Estimate, ProgramCost, ResultCost, Transfer, Work
from pandas_parallel.planning.memory import MEMORY, NOTHING, Known
from pandas_parallel.programs import Pickled, Program
from pandas_parallel.worker import Outcome, dumps_result, in_worker

logger = logging.getLogger("pandas_parallel")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call runs, decided before any worker starts.

    Units ``[0, done)`` ran here while sampling (their results are
    ``pieces``); the rest runs here (``parallel`` false) or as ``ranges`` of
    units on ``backend``. ``why`` says why, for the log; ``estimate`` is the
    price that decided, each term named.
    """

    why: str
    func: Any
    key: Hashable | None  # what the memory knows the call by, with func
    family: Hashable  # what pandas' fixed cost per call depends on
    rows: int  # of the input
    units: int
    work_rows: int  # the rows units [done, units) hold
    parallel: bool = False
    backend: Backend | None = None
    start: str = ""  # how its workers start (one of costs.STARTS)
    n_workers: int = 1
    program: Program | None = None
    pickled: Pickled | None = None  # None: not pickled (threads), or could not be
    n_bytes: int = 0  # of the input
    done: int = 0
    pieces: tuple[Piece, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    per_unit: float | None = None
    measured: str = ""  # how per_unit was known, for the log
    estimate: Estimate | None = None
    results: ResultCost | None = None  # sending a unit's result back
    inputs: ResultCost | None = None  # sending a unit of input (objects) to a worker
    samples: tuple[tuple[int, float], ...] = ()  # (rows, seconds) of each sample
    sampled_seconds: float = 0.0
    cpu_share: float | None = None  # of the sampled time spent computing
    priced: bool = False  # the planner chose (no chunk size; serial fallback on)
    paused: bool = False  # serial because a call like it lost in parallel
    start_workers_after: bool = False  # only their start made this call serial

    @property
    def run(self) -> Run:
        """How the call runs, as :func:`~pandas_parallel.last_run` says."""
        if not self.parallel or self.backend is None:
            return SERIAL
        return Run(self.backend.name, self.n_workers, len(self.ranges), self.start)

    @property
    def expected(self) -> float | None:
        """Seconds the units left would take here, if priced."""
        return self.estimate.serial if self.estimate is not None else None


@dataclasses.dataclass(frozen=True)
class Spent:
    """What running a plan cost: ``seconds`` from the plan to the result;
    ``compute``, seconds in the pandas calls themselves (the workers' own
    report, summed over chunks); ``transfer``, seconds moving chunks and
    results, both ends, summed; ``result_bytes`` per unit, when known."""

    seconds: float
    compute: float
    transfer: float = 0.0
    result_bytes: float | None = None


def plan_known(func: Any, key: Hashable, rows: int) -> Plan | None:
    """The plan of a call known to be clearly too cheap for workers (a
    call of ``func`` in shape ``key`` over as many rows or more was), made
    before the call is even bound; ``None`` when nothing says so."""
    if not 0 < rows <= MEMORY.cheap_up_to(func, key) or progress.running_bar() is not None:
        return None  # (under a run's bar, the call runs in pieces that move it)
    # No work rows: what the call then costs says whether it was cheap,
    # not a cost per row (its units, rows or columns, are not known here).
    return Plan("calls this small were clearly too cheap for workers", func, key, None,
                rows, rows, 0)


def plan(op: Operation) -> Plan:
    """Decide how ``op`` runs (running its first units here, to measure)."""
    base = Plan("", op.func, op.memory_key, op.family, op.rows, len(op.units),
                op.work_rows(0, len(op.units)))
    n_workers = 1
    why = _why_serial(op)
    if why is None:
        n_workers = backends.capacity(op.options)
        why = _why_serial_on(op, n_workers)
    if why is not None:
        return dataclasses.replace(base, why=why)
    priced = op.options.serial_fallback and op.options.chunk_size is None
    known = MEMORY.known(op.func, op.memory_key) if priced else NOTHING
    if priced and op.rows <= known.cheap_up_to and not show_progress(op.options.progress, 0):
        return dataclasses.replace(base, why="calls this small were clearly too cheap for "
                                   "workers")
    backends.prepare(op.options, n_workers)
    traits = backends.traits(op.options)
    program = Program(op.runner, op.func, op.args, op.kwargs, op.calls_per_unit,
                      policies.Setup.of(op.options.initializer, op.options.initargs),
                      snapshot.capture("cluster" if traits.cluster else "process"))
    # Pickled once, before any of the function's work, so an unpicklable
    # function fails before its work (a sample runs it). A call priced from
    # memory runs none before deciding, and fails only if it goes parallel
    # (serially, it is pandas' own call).
    unpicklable = None
    try:
        pickled = None if traits.in_process else programs.pickled(program, traits.apart)
    except UnpicklableFunctionError as exc:
        if known.per_row is None:
            raise
        pickled, unpicklable = None, exc
    planned = dataclasses.replace(base, n_workers=n_workers, program=program,
                                  pickled=pickled, n_bytes=op.units.nbytes(), priced=priced)
    if not priced:
        return _parallel(op, _fresh_if_cheaper(planned, backends.choose(op.options)))
    planned = _measure(op, planned, known)
    if planned.estimate is costs.NEVER:
        return planned
    planned = _price(op, planned, known)
    if op.rows <= known.paused_up_to:  # each call in a pause counts towards its end
        planned = dataclasses.replace(planned, paused=True)
        if planned.parallel:
            return dataclasses.replace(planned, parallel=False, why="paused: a call like it "
                                       "took longer in parallel than pandas would have")
    if planned.parallel and unpicklable is not None:
        raise unpicklable
    return _parallel(op, planned) if planned.parallel else planned


def _why_serial(op: Operation) -> str | None:
    """Why ``op`` runs serially whatever it costs, if it does."""
    if len(op.units) == 0 or op.rows == 0:
        return "the input is empty"
    if in_worker():
        return "already inside a pandas_parallel worker (nested call)"
    if backends.traits(op.options).sequential:
        return f"backend={op.options.backend!r}"
    return None


def _why_serial_on(op: Operation, n_workers: int) -> str | None:
    if n_workers == 1:
        return "only one worker is available (n_jobs resolves to 1)"
    if len(op.units) == 1 and op.options.serial_fallback:
        return "there is a single unit of work"
    return None


def _measure(op: Operation, plan: Plan, known: Known) -> Plan:
    """The cost per unit: remembered, or sampled on the first units."""
    if known.per_row is not None:
        per_unit = known.per_row * plan.work_rows / plan.units
        return dataclasses.replace(plan, per_unit=per_unit, results=known.results,
                                   inputs=known.inputs, cpu_share=known.cpu_share,
                                   measured="cost remembered from the last calls")
    began, cpu_began = time.perf_counter(), time.thread_time()
    pieces: list[Piece] = []
    samples: list[tuple[int, float]] = []
    fixed = MEMORY.fixed_cost(op.family)
    done, per_row, rows_left = 0, 0.0, plan.work_rows
    clearly_serial = False
    for size in costs.probe_sizes(plan.units, plan.n_workers):
        started = time.perf_counter()
        with op.failures():
            pieces.append(op.run_here(done, done + size))
        seconds = time.perf_counter() - started
        rows = op.work_rows(done, done + size)
        samples.append((rows, seconds))
        done, rows_left = done + size, rows_left - rows
        per_row = costs.cost_per_row(samples, fixed)
        # Stop once the rest is clearly too little work for any worker to
        # pay off (more samples would only cost time), or once one sample
        # alone is long enough that pandas' fixed cost per call (and its
        # first-call warm-up) no longer dominates.
        clearly_serial = per_row * rows_left < costs.CLEARLY_SERIAL_SECONDS
        if clearly_serial or seconds >= costs.PROBE_SECONDS:
            break
    sampled = time.perf_counter() - began
    units_left = plan.units - done
    plan = dataclasses.replace(
        plan, done=done, pieces=tuple(pieces), samples=tuple(samples), sampled_seconds=sampled,
        work_rows=rows_left, per_unit=per_row * rows_left / units_left if units_left else 0.0,
        cpu_share=min(1.0, (time.thread_time() - cpu_began) / sampled) if sampled else None,
        measured=f"sampled {done} {op.unit} in {sampled:.4f}s")
    if clearly_serial or not units_left:
        return dataclasses.replace(plan, estimate=costs.NEVER,
                                   why="parallel would not be faster: the rest is clearly "
                                   "too little work for workers")
    return dataclasses.replace(plan, results=_result_cost(plan.pieces, known),
                               inputs=_input_cost(op, done, known))


def _price(op: Operation, plan: Plan, known: Known) -> Plan:
    """Choose the backend and price the call on it: parallel or not."""
    backend = backends.choose(op.options)
    n = plan.n_workers
    start = backend.start(n)
    estimate = _estimate(op, plan, backend, start, known)
    if start == "warm":
        # Kept workers are sent the input and the program; new ones forked
        # hold them already, where forking is possible.
        fresh = backend.with_fresh_workers()
        if fresh is not None:
            forked = _estimate(op, plan, fresh, fresh.start(n), known)
            if forked.parallel < estimate.parallel:
                backend, estimate = fresh, forked
    plan = dataclasses.replace(plan, backend=backend, start=backend.start(n),
                               estimate=estimate, parallel=estimate.parallel_wins)
    if plan.parallel:
        return dataclasses.replace(plan, why="parallel is faster")
    later_wins = _estimate(op, plan, backend, "warm", known).parallel_wins
    if start == "starting" and later_wins:
        # Started now, in the background (another process, importing on
        # another core): the next call like this one finds it up.
        backend.start_workers(n)
    return dataclasses.replace(
        plan, why="parallel would not be faster",
        start_workers_after=(start == "cold" and later_wins
                             and estimate.serial >= costs.MIN_SECONDS_TO_START_POOL))


def _estimate(op: Operation, plan: Plan, backend: Backend, start: str, known: Known
              ) -> Estimate:
    assert plan.per_unit is not None
    units_left = plan.units - plan.done
    obj = op.units.obj
    work = Work(plan.per_unit, units_left, plan.n_workers, plan.n_bytes * units_left
                // plan.units, 1 if isinstance(obj, pd.Series) else obj.shape[1],
                op.units.columns, plan.cpu_share if backend.in_process else None,
                plan.inputs)
    place = "cluster" if backend.cluster else "local"
    transfer = Transfer(backend.bytes_per_second() or (
        costs.CLUSTER_BYTES_PER_SECOND if backend.cluster else costs.TRANSFER_BYTES_PER_SECOND),
        MEMORY.transfer_factor(place))
    estimate = costs.estimate(work, start, backend.cluster, plan.results, transfer,
                              _program_cost(plan.pickled, backend), backend.seconds_to_start())
    if known.overrun != 1.0:
        estimate = estimate.with_term("overrun", (known.overrun - 1) * estimate.parallel)
    return estimate


def _fresh_if_cheaper(plan: Plan, backend: Backend) -> Plan:
    """For a call whose chunks the options fix: kept workers, or new ones
    forked where sending them the input and the program costs more."""
    if costs.forking_is_cheaper(plan.n_bytes, plan.n_workers,
                                _program_cost(plan.pickled, backend)):
        backend = backend.with_fresh_workers() or backend
    return dataclasses.replace(plan, backend=backend, start=backend.start(plan.n_workers),
                               parallel=True, why="the options fix the chunks")


def _parallel(op: Operation, plan: Plan) -> Plan:
    """``plan`` with the units left cut into chunks."""
    assert plan.backend is not None
    if op.options.chunk_size is not None:
        ranges = op.units.cut(plan.done, None, op.options.chunk_size)
    else:
        units_left = plan.units - plan.done
        count = costs.chunk_count(plan.per_unit, units_left, plan.n_workers,
                                  plan.n_bytes * units_left // plan.units,
                                  plan.backend.cluster, plan.start == "starting")
        ranges = op.units.cut(plan.done, count, None)
    return dataclasses.replace(plan, ranges=tuple(ranges))


def _program_cost(pickled: Pickled | None, backend: Backend) -> ProgramCost | None:
    if pickled is None or backend.in_process:
        return None
    if not backend.shares_files and backend.pickles_program:  # a cluster: all of it inside
        return ProgramCost(pickled.nbytes)
    return ProgramCost(len(pickled.blob), pickled.buffer_bytes,
                       programs.STORE.unstored_bytes(pickled))


def _result_cost(pieces: tuple[Piece, ...], known: Known) -> ResultCost | None:
    """What sending a unit's result back from a worker costs, measured on
    the sampled results: its bytes, and for results holding Python objects,
    which pickle one by one, the time to encode and decode them (numbers
    travel as buffers)."""
    units = sum(b - a for p in pieces for a, b in [p.units])
    if not units:
        return known.results
    results = [p.result for p in pieces]
    sizes = [transport.data_bytes(result) for result in results]
    encode = decode = 0.0
    if any(map(_holds_objects, results)):
        for result in results:
            began = time.perf_counter()
            blob = dumps_result(Outcome(0, transport.ship_result(result, None, "", "pickle")))
            encoded = time.perf_counter()
            pickle.loads(blob)
            encode, decode = encode + encoded - began, decode + time.perf_counter() - encoded
    size = None if None in sizes else sum(s for s in sizes if s is not None) / units
    return ResultCost(encode / units, decode / units, size)


def _input_cost(op: Operation, done: int, known: Known) -> ResultCost | None:
    """What sending a unit of input to a worker costs, for input holding
    Python objects (strings on pandas 2.2, lists, ...), measured on the
    sampled units as the transport would send them: converted to Arrow here
    and back to objects there, or pickled. Numbers travel as buffers, priced
    by their bytes."""
    if not done:
        return known.inputs
    if backends.traits(op.options).in_process:
        return None  # threads read the input where it is
    local = op.units.local(0, done)
    chunk = getattr(local, "value", local)  # a Tagged chunk carries the frame
    if not isinstance(chunk, pd.DataFrame | pd.Series) or not _holds_objects(chunk):
        return None
    frame = chunk.to_frame() if isinstance(chunk, pd.Series) else chunk
    began = time.perf_counter()
    try:
        if not transport.use_arrow(chunk, "auto"):
            raise pa.ArrowInvalid("pickled")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        encoded = time.perf_counter()
        table.to_pandas()
    except (pa.ArrowException, TypeError, ValueError):
        began = time.perf_counter()
        blob = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
        encoded = time.perf_counter()
        pickle.loads(blob)
    return ResultCost((encoded - began) / done, (time.perf_counter() - encoded) / done)


def _holds_objects(result: Any) -> bool:
    result = getattr(result, "value", result)  # a Tagged result
    if isinstance(result, pd.Series):
        return pd.api.types.is_object_dtype(result.dtype)
    if isinstance(result, pd.DataFrame):
        return any(map(pd.api.types.is_object_dtype, result.dtypes))
    return not isinstance(result, np.ndarray)


def learn(plan: Plan, spent: Spent) -> None:
    """Note what a call planned as ``plan`` cost (``spent``), for the calls
    after it: the only writer of the memory."""
    if plan.work_rows == 0 and spent.seconds < costs.CLEARLY_SERIAL_SECONDS:
        return  # known too cheap for workers, and it was: nothing new (and no lock taken)
    fixed = costs.fixed_cost(plan.samples)
    if fixed is not None:
        MEMORY.note_fixed_cost(plan.family, fixed)
    if plan.parallel and plan.estimate is not None:
        _learn_transfer(plan, spent)
    compute = spent.compute
    if plan.parallel:  # each chunk paid pandas' fixed cost per call
        compute = max(compute / 2, compute - len(plan.ranges) * MEMORY.fixed_cost(plan.family))
    whole = plan.sampled_seconds + compute  # what the call's work takes serially
    measured = (compute >= costs.MIN_SECONDS_TO_REMEMBER and plan.work_rows > 0
                and (plan.priced or not plan.parallel))

    def note(record: Any) -> None:
        if measured:
            record.note_per_row(compute / plan.work_rows, plan.cpu_share)
        if plan.results is not None or spent.result_bytes is not None:
            record.note_results(plan.results, spent.result_bytes)
        record.note_inputs(plan.inputs)
        record.note_cheap(plan.rows, whole < costs.CLEARLY_SERIAL_SECONDS)
        if plan.parallel and plan.priced and plan.estimate is not None:
            # Slower than pandas: than the work itself, as the workers timed it
            # (the estimate's serial time came from a sample, which may be off).
            lost = spent.seconds > compute
            record.note_parallel(plan.rows, spent.seconds / max(_repriced(plan, compute), 1e-6),
                                 lost)
        elif plan.paused:
            record.note_paused_call()

    MEMORY.change(plan.func, plan.key, note)


def _repriced(plan: Plan, compute: float) -> float:
    """The plan's parallel price had its compute been priced right: what a
    call runs over beyond it is the overrun (moving data, starts, a busy
    machine), not a sample that misjudged the cost per row, which the memory
    corrects on its own."""
    assert plan.estimate is not None
    estimate = plan.estimate
    return (estimate.parallel - estimate.term("overrun") - estimate.term("compute")
            + compute / max(plan.n_workers, 1))


def _learn_transfer(plan: Plan, spent: Spent) -> None:
    """How moving this call's data compared with the model (what the model
    says for this much, at a factor of 1), when there was enough to time."""
    assert plan.estimate is not None and plan.backend is not None
    modelled = plan.estimate.term("input") + plan.estimate.term("results")
    place = "cluster" if plan.backend.cluster else "local"
    factor = MEMORY.transfer_factor(place)
    if spent.transfer and modelled / factor >= 0.002:
        MEMORY.note_transfer(place, spent.transfer / (modelled / factor))
