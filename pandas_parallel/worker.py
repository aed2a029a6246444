"""Run: what a worker does with one chunk.

Everything here executes inside a worker (a loky process, a thread, or a
remote dask/ray worker). The user's function arrives serialized once per
call and is decoded once per worker; each chunk then runs the pandas
operation itself. A failure in the user's function is caught and returned
as data, so the pool survives it and stays warm for the next call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import pickle
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd

from pandas_parallel import policies, programs, relay, snapshot
from pandas_parallel.errors import InitializerError, UnpicklableResultError
from pandas_parallel.programs import Encoded, Program
from pandas_parallel.transport import (
    Inline,
    Payload,
    Tagged,
    in_band,
    load_input,
    ship_result,
)


class _Here:
    """Whether code here runs as a worker: ``process``, set once in a worker
    process of this library's; ``thread.active``, while a thread runs a
    worker's task (a caller's worker threads, a cluster's)."""

    def __init__(self) -> None:
        self.process = False
        self.thread = threading.local()


HERE = _Here()
_PROGRESS_EVERY = 16  # calls between writes to the shared progress counter


def in_worker() -> bool:
    """True inside a pandas_parallel worker: nested calls then run serially."""
    return HERE.process or getattr(HERE.thread, "active", False)


def initialize_worker(parent: int | None = None, kind: str = "worker") -> None:
    """Mark the process as a worker (of ``kind``, named so in the log
    records it sends back); with ``parent``, end it within a second of that
    process's death (SIGKILL included).

    Importing this module has already imported pandas and pyarrow, so the
    first chunk does not pay for them.
    """
    HERE.process = True
    policies.forget_setups()
    snapshot.forget()
    relay.name_worker(kind)
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True,
                         name="pandas_parallel-parent-watch").start()


_PARENT_POLL_SECONDS = 0.5


def _exit_with(parent: int) -> None:
    """A pool worker's watch: once its parent is gone (the worker is
    re-parented), exit. A pool's workers are started by whichever thread
    submits first, so the parent-death signal (which follows the thread,
    not the process) cannot be used."""
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


@dataclasses.dataclass
class Task:
    """One chunk of one call, as sent to a worker."""

    call_id: str
    chunk: int
    payload: Payload
    program: Program | Encoded
    units: int
    result_dir: str | None = None
    transport: str = "auto"
    counters: str | np.ndarray | None = None  # progress: file path or array
    count_calls: bool = False  # publish calls made within the chunk
    watch_calls: bool = False  # also publish each call's start time (timeout)
    in_band: bool = False  # the result travels back inside the reply (clusters)
    seed: ChunkSeed | None = None  # the chunk's random streams (processes)
    #: Where the chunk runs, which says what of the caller's state the worker
    #: applies and what it sends back (see :data:`PLACES`).
    place: str = "process"
    # errors="coerce": calls (numbered from 0) that got stuck past the timeout
    # in an earlier try of this chunk, now skipped as missing.
    skip_calls: tuple[int, ...] = ()


@dataclasses.dataclass
class Failure:
    """A user-function exception, carried back to the parent."""

    exception: BaseException
    traceback: str
    argument: str  # what the function was called with when it raised


@dataclasses.dataclass
class Outcome:
    chunk: int
    payload: Payload | None = None
    failure: Failure | None = None
    seconds: float = 0.0  # in the pandas call itself (not loading or shipping)
    load_seconds: float = 0.0  # reading the chunk (what the planner learns transfer from)
    # Warnings pandas or the function issued in a worker (process or thread),
    # each distinct one once, and log records, for the caller to issue again.
    warnings: list[relay.Warned] = dataclasses.field(default_factory=list)
    logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # errors="coerce": (label, exception) of each call that raised, in order.
    row_errors: list[tuple[Any, BaseException]] = dataclasses.field(default_factory=list)
    retries: int = 0  # retries made (the retries option)


class Counters:
    """Per-call state shared by this process and the workers, one int64
    array: ``[0:n]`` calls done per chunk, ``[n:2n]`` chunk state (1
    running, 2 finished), ``[2n:3n]`` when the chunk's current call started
    (monotonic microseconds, 0 between calls; kept only when a timeout is
    watched), ``[3n:4n]`` the process running the chunk, ``[4n]`` 1 once
    the call is over (failed or interrupted: write no more files). A
    memory-mapped file for processes on this machine, a plain array for
    threads, nothing for clusters."""

    RUNNING, FINISHED = 1, 2
    BLOCKS = 4

    def __init__(self, array: np.ndarray | None, source: str | np.ndarray | None) -> None:
        self.array = array
        self.source = source  # what a task carries to reach the same memory
        self.n = (len(array) - 1) // self.BLOCKS if array is not None else 0

    @classmethod
    def create(cls, n_chunks: int, where: str | bool | None) -> Counters:
        """New counters: in a file of directory ``where``, in this process
        (``True``), or none (``False`` or ``None``)."""
        size = cls.BLOCKS * n_chunks + 1
        if where is True:
            array = np.zeros(size, dtype=np.int64)
            return cls(array, array)
        if not where:
            return cls(None, None)
        path = os.path.join(where, "progress.bin")
        return cls(np.memmap(path, dtype=np.int64, mode="w+", shape=(size,)), path)

    @classmethod
    def open(cls, source: str | np.ndarray | None) -> Counters:
        """In a worker: the counters a task names."""
        if source is None or isinstance(source, np.ndarray):
            return cls(source, source)
        try:
            return cls(np.memmap(source, dtype=np.int64, mode="r+"), source)
        except OSError:  # the call already ended (e.g. cancelled)
            return cls(None, None)

    @property
    def calls(self) -> np.ndarray | None:
        return self.array[:self.n] if self.array is not None else None

    @property
    def call_starts(self) -> np.ndarray | None:
        return self.array[2 * self.n:3 * self.n] if self.array is not None else None

    @property
    def pids(self) -> np.ndarray | None:
        return self.array[3 * self.n:4 * self.n] if self.array is not None else None

    def set_calls(self, chunk: int, calls: int) -> None:
        if self.array is not None:
            self.array[chunk] = calls

    def set_state(self, chunk: int, state: int) -> None:
        if self.array is not None:
            self.array[self.n + chunk] = state
            if state == self.RUNNING:
                self.array[3 * self.n + chunk] = os.getpid()

    def set_call_start(self, chunk: int, microseconds: int) -> None:
        if self.array is not None:
            self.array[2 * self.n + chunk] = microseconds

    def running(self) -> list[int]:
        """Chunks a worker has started and not finished."""
        if self.array is None:
            return []
        return [int(i) for i in np.flatnonzero(self.array[self.n:2 * self.n] == self.RUNNING)]

    def end(self) -> None:
        """Mark the call over: workers still running write no more files."""
        if self.array is not None:
            self.array[-1] = 1

    @property
    def call_over(self) -> bool:
        return self.array is not None and bool(self.array[-1])


def show_label(label: Any) -> str:
    """``repr`` of a label as a person wrote it (``20``, not ``np.int64(20)``)."""
    if isinstance(label, np.generic):
        label = label.item()
    elif isinstance(label, tuple):
        inner = ", ".join(show_label(part) for part in label)
        return f"({inner},)" if len(label) == 1 else f"({inner})"
    return repr(label)


def _describe_argument(value: Any, chunk: Any) -> str:
    """Say, for a person, what the function was called with."""
    if isinstance(value, (pd.Series, pd.DataFrame)):
        name = getattr(value, "name", None)
        kind = type(value).__name__
        what = f"the {kind} labelled {show_label(name)}" if name is not None else f"a {kind}"
        index = value.index
        frame = getattr(chunk, "value", chunk)  # a Tagged chunk carries the frame
        is_row = isinstance(frame, pd.DataFrame) and index.equals(frame.columns)
        if len(index) == 0 or is_row or isinstance(value, pd.DataFrame):
            return what
        if len(index) == 1:
            return f"{what} with index [{show_label(index[0])}]"
        return (f"{what} with index [{show_label(index[0])} ... {show_label(index[-1])}] "
                f"({len(index)} labels)")
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    label = _label_of_value(chunk, value)
    where = f" (at index label {show_label(label)})" if label is not None else ""
    return f"value {text}{where}"


def _label_of_value(chunk: Any, value: Any) -> Any:
    """The index label of the first element equal to ``value`` in a Series."""
    if not isinstance(chunk, pd.Series):
        return None
    try:
        matches = chunk.isna() if pd.isna(value) else (chunk == value)
        position = int(np.argmax(np.asarray(matches, dtype=bool)))
        return chunk.index[position] if bool(matches.iloc[position]) else None
    except Exception:  # comparisons of arbitrary objects may fail
        return None


def failing_call(func: Callable[..., Any], exc: BaseException, chunk: Any) -> str:
    """What the user's function was called with when it raised ``exc`` on
    ``chunk``, for a person ("" when the traceback does not tell)."""
    found, argument = _failing_argument(func, exc.__traceback__)
    return _describe_argument(argument, chunk) if found else ""


def _failing_argument(func: Callable[..., Any], tb: Any) -> tuple[bool, Any]:
    """The first argument of the user's function in the frame that raised.

    Read from the traceback after the fact, so successful calls pay nothing.
    """
    target = policies.unwrap(func)
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    found: tuple[bool, Any] = (False, None)
    while tb is not None and code is not None:
        frame = tb.tb_frame
        if frame.f_code is code and code.co_argcount:
            first = code.co_varnames[0]
            if first == "self" and code.co_argcount > 1:
                first = code.co_varnames[1]
            if first in frame.f_locals:
                found = (True, frame.f_locals[first])
                break
        tb = tb.tb_next
    return found


def _fresh(func: Any) -> Any:
    """A policy wrapper of its own for one chunk (its failures and retries
    are the chunk's)."""
    if isinstance(func, (policies.Coercing, policies.Retrying)):
        return func.fresh()
    return func


def _retries(func: Any) -> int:
    inner = func.func if isinstance(func, policies.Coercing) else func
    return inner.retried if isinstance(inner, policies.Retrying) else 0


def _counting(func: Callable[..., Any], counters: Counters, slot: int
              ) -> Callable[..., Any]:
    """Wrap ``func`` to publish its call count (only while a bar is shown)."""
    calls = 0

    @functools.wraps(func)
    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % _PROGRESS_EVERY == 0:
            counters.set_calls(slot, calls)
        return func(*args, **kwargs)

    return counted


def _watching(func: Callable[..., Any], counters: Counters, slot: int
              ) -> Callable[..., Any]:
    """Wrap ``func`` to publish every call's start time and count (for a
    per-call timeout, watched by the parent)."""
    calls = 0

    @functools.wraps(func)
    def watched(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        counters.set_calls(slot, calls)
        counters.set_call_start(slot, int(time.monotonic() * 1e6))
        try:
            return func(*args, **kwargs)
        finally:
            counters.set_call_start(slot, 0)

    return watched


# What the user's function may raise that travels back as its failure:
# pandas would raise SystemExit or KeyboardInterrupt from the function too.
_FUNCTION_FAILURES = (Exception, SystemExit, KeyboardInterrupt)


@contextlib.contextmanager
def working() -> Iterator[None]:
    """While this thread runs a worker's task: a call made inside (the
    user's function calling ``.parallel``) runs serially."""
    outer = getattr(HERE.thread, "active", False)
    HERE.thread.active = True
    try:
        yield
    finally:
        HERE.thread.active = outer


def run_chunk(task: Task) -> Outcome:
    """Run the call's program on one chunk."""
    with working():
        return _run_chunk(task)


#: Where a chunk runs, which says what of the caller's state its worker
#: applies (see :mod:`.snapshot`) and what goes back (see :mod:`.relay`):
#: ``"process"``, a worker process of ours (all of it; warnings and log
#: records go back); ``"cluster"``, a cluster's worker process (the state as
#: it can hold there; warnings and log records of the chunk's thread go
#: back); ``"thread"``, a thread of the caller's process (the per-thread
#: part; warnings go back, log records reach the caller's handlers
#: themselves); ``"caller"``, the calling thread itself (nothing to do).
PLACES = ("process", "cluster", "thread", "caller")


def _run_chunk(task: Task) -> Outcome:
    counters = Counters.open(task.counters)
    counters.set_state(task.chunk, Counters.RUNNING)
    try:
        program = programs.decode(task.program)
        if program.snapshot is not None and task.place != "caller":
            snapshot.apply(program.snapshot, task.place)
        if program.setup is not None:
            failed = _set_up(program, task)
            if failed is not None:
                return failed
        loading = time.perf_counter()
        data = load_input(task.payload)
        loaded = time.perf_counter() - loading
        policy = _fresh(program.func)
        func = _instrumented(policy, task, counters, program.calls_per_unit)
        if task.seed is not None:
            _seed_globals(task.seed)
        logs = (program.snapshot.logs if program.snapshot is not None
                and task.place in ("process", "cluster") else None)
        with relay.relaying(task.place != "caller", logs) as relayed:
            started = time.perf_counter()
            try:
                result = program.runner(data, func, program.args, program.kwargs)
                failure = None
            except _FUNCTION_FAILURES as exc:
                failure = Failure(exc, traceback.format_exc(),
                                  failing_call(program.func, exc, data))
            seconds = time.perf_counter() - started
        if failure is not None:
            outcome = Outcome(task.chunk, failure=failure, seconds=seconds)
        else:
            row_errors = policy.settle(data) if isinstance(policy, policies.Coercing) else []
            outcome = Outcome(task.chunk, _shipped(result, task, counters), seconds=seconds,
                              load_seconds=loaded, row_errors=row_errors,
                              retries=_retries(policy))
        outcome.warnings, outcome.logs = relayed.warnings, relayed.logs
        return outcome
    finally:
        counters.set_state(task.chunk, Counters.FINISHED)


def _instrumented(func: Any, task: Task, counters: Counters, calls_per_unit: int) -> Any:
    """``func``, publishing each call's start (a timeout is watched) or the
    calls made (a progress bar is shown)."""
    if task.skip_calls and isinstance(func, policies.Coercing):
        func.skip(task.skip_calls, TimeoutError(
            "the call did not return within timeout= and could not be interrupted; "
            "its worker process was stopped and replaced"))
    if task.watch_calls and counters.array is not None:
        return _watching(func, counters, task.chunk)
    if task.count_calls and counters.array is not None and calls_per_unit:
        return _counting(func, counters, task.chunk)
    return func


def _shipped(result: Any, task: Task, counters: Counters) -> Payload:
    if task.in_band:
        return in_band(result, task.transport)
    directory = None if counters.call_over else task.result_dir
    return ship_result(result, directory, f"result-{task.chunk}-{os.getpid()}.arrow",
                       task.transport)


def _set_up(program: Program, task: Task) -> Outcome | None:
    """Run the initializer where it has not run yet; a failure as the
    chunk's outcome."""
    per_thread = task.place in ("thread", "caller")
    where = (f"worker thread {threading.current_thread().name}" if per_thread
             else f"worker process {os.getpid()}")
    try:
        policies.ensure_setup(program.setup, per_thread, where, program)
    except InitializerError as exc:
        return Outcome(task.chunk, failure=Failure(exc, traceback.format_exc(), ""))
    return None


def run_chunk_pickled(task: Task) -> bytes:
    """:func:`run_chunk` in a worker process: the outcome pickled here, so
    an exception that does not unpickle as it is, or a result that does not
    pickle, becomes a clear failure rather than a dead worker or a
    different error in the parent. Read with :func:`load_outcome`."""
    outcome = run_chunk(task)
    if outcome.failure is not None:
        return _pickle_failure(outcome)
    outcome.row_errors = policies.portable(outcome.row_errors)
    try:
        return dumps_result(outcome)
    except Exception:
        try:  # classes defined in a function or notebook cell travel by value
            return cloudpickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            return _pickle_failure(_unpicklable_result(outcome, exc))


def run_chunk_sent_apart(task: Task, payload: Payload, program: Encoded) -> bytes:
    """:func:`run_chunk_pickled` for a task whose chunk and program reached
    the worker apart from it (a cluster's scatter or object store: sent
    once, straight to a worker, rather than inside every task)."""
    return run_chunk_pickled(dataclasses.replace(task, payload=payload, program=program))


def dumps_result(outcome: Outcome) -> bytes:
    """``outcome`` pickled; fast for a result holding lists of numpy
    scalars (``[row.a + i for i in ...]`` makes numpy floats, which pickle
    one by one at about 2 us each): each such list travels as one array
    and comes back as a list of the same scalar objects."""
    payload = outcome.payload
    inner = payload.value if isinstance(payload, Tagged) else payload
    if isinstance(inner, Inline):
        packed = _packed(inner.obj)
        if packed is not inner.obj:
            repacked = Inline(packed)
            outcome = dataclasses.replace(outcome, payload=Tagged(repacked, payload.tag)
                                          if isinstance(payload, Tagged) else repacked)
    return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


def _packed(result: Any) -> Any:
    """``result`` with its lists of numpy scalars packed (itself if it has
    none; checked on each object column's first value)."""
    if isinstance(result, pd.Series):
        return _packed_column(result)
    if not isinstance(result, pd.DataFrame):
        return result
    packed = result
    for position, (_, column) in enumerate(result.items()):
        replacement = _packed_column(column)
        if replacement is not column:
            if packed is result:
                packed = result.copy(deep=False)
            packed.isetitem(position, replacement)
    return packed


def _packed_column(column: pd.Series) -> pd.Series:
    if column.dtype != object or not len(column) or not _scalar_list_kind(column.iloc[0]):
        return column
    values = column.to_numpy()
    packed = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        kind = _scalar_list_kind(value)
        packed[i] = _PackedList(np.array(value, dtype=kind)) if kind else value
    result = pd.Series(packed, index=column.index, name=column.name, copy=False)
    result.attrs = column.attrs
    return result


def _scalar_list_kind(value: Any) -> type | None:
    """The numpy scalar type of every item of a list, if they share one."""
    if type(value) is not list or not value:
        return None
    kind = type(value[0])
    if kind in _SCALAR_TYPES and all(type(x) is kind for x in value):
        return kind
    return None


_SCALAR_TYPES = frozenset({np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                           np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_,
                           np.complex128, np.complex64})


class _PackedList:
    """A list of numpy scalars, as one array, while it is pickled: it
    unpickles as the list itself."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __reduce__(self) -> tuple[Any, ...]:
        return list, (self.values,)


def load_outcome(blob: bytes) -> Outcome:
    outcome: Outcome = pickle.loads(blob)
    return outcome


@dataclasses.dataclass(frozen=True)
class ChunkSeed:
    """A chunk's random streams: one for numpy's global generator, drawn from
    this process's numpy state, and one for ``random``, drawn from its
    ``random`` state. Kept apart so that a library drawing from ``random``
    in this process (dask's client picks workers with ``random.choice``,
    from its own thread) cannot change the numpy numbers of a seeded call."""

    numpy: np.random.SeedSequence
    python: np.random.SeedSequence


def _seed_globals(seed: ChunkSeed) -> None:
    """Give numpy's global generator and ``random`` this chunk's streams:
    forked workers would otherwise all repeat the parent's."""
    np.random.seed(seed.numpy.generate_state(4))
    random.seed(int.from_bytes(seed.python.generate_state(4).tobytes(), "little"))


def chunk_seeds(n_chunks: int) -> list[ChunkSeed]:
    """Independent random streams for each chunk, drawn from this process's
    numpy and ``random`` global state: after ``np.random.seed(s)`` the same
    call with the same chunks draws the same numpy numbers (and after
    ``random.seed(s)`` the same ``random`` ones), and each call advances
    this process's state, so a second call draws new ones."""
    numpy_entropy = [int(x) for x in np.random.randint(0, 2**32, size=4, dtype=np.uint64)]
    numpy_seeds = np.random.SeedSequence(numpy_entropy).spawn(n_chunks)
    python_seeds = np.random.SeedSequence(random.getrandbits(128)).spawn(n_chunks)
    return [ChunkSeed(n, p) for n, p in zip(numpy_seeds, python_seeds)]


def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    """An exception as the worker raised it: made from its ``args`` as
    pickle does, or, when its constructor needs other arguments (as
    ``NeedsArgs(code, msg)`` does), without calling it; then its
    attributes (notes included) restored."""
    try:
        exc = cls(*args)
    except Exception:
        exc = cls.__new__(cls, *args)
        exc.args = args
    exc.__dict__.update(state)
    return exc


class _FailurePickler(cloudpickle.Pickler):
    """Pickles exceptions by their type, ``args`` and picklable attributes,
    whatever reducer another library installed (tblib, which dask loads,
    rebuilds them without their constructor: ``SystemExit(3).code`` would
    come back ``None``); classes that cannot be imported travel by value."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            state = {}
            for name, value in vars(obj).items():
                try:
                    cloudpickle.dumps(value)
                except Exception:
                    continue
                state[name] = value
            return (_rebuild_exception, (type(obj), obj.args, state))
        return super().reducer_override(obj)


def _dumps_failure(outcome: Outcome) -> bytes:
    buffer = io.BytesIO()
    _FailurePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(outcome)
    return buffer.getvalue()


def _pickle_failure(outcome: Outcome) -> bytes:
    """A failed outcome, pickled so that its exception comes back as the
    same type with the same ``args`` and attributes; a clear RuntimeError
    naming its type when even that cannot travel."""
    assert outcome.failure is not None
    exc = outcome.failure.exception
    try:
        blob = _dumps_failure(outcome)
        if type(pickle.loads(blob).failure.exception) is type(exc):
            return blob
    except Exception:
        pass
    outcome.failure.exception = RuntimeError(
        f"{type(exc).__name__}: {exc} (the function raised a {type(exc).__qualname__}, "
        "which cannot be pickled back from the worker process)")
    return _dumps_failure(outcome)


def _unpicklable_result(outcome: Outcome, exc: Exception) -> Outcome:
    where = _unpicklable_value(outcome.payload)
    error = UnpicklableResultError(
        f"the function returned {where}, which cannot be pickled back from the "
        f"worker process ({type(exc).__name__}: {exc}). Return plain values "
        "(numbers, strings, lists, frames), or use backend='threading', which "
        "does not pickle.")
    return Outcome(outcome.chunk, failure=Failure(error, "", ""), seconds=outcome.seconds)


def _unpicklable_value(payload: Any) -> str:
    """Name the first value in a result that does not pickle: its type and
    index label."""
    value = getattr(payload, "value", payload)  # Tagged, then Inline
    value = getattr(value, "obj", value)
    if isinstance(value, pd.Series):
        items: Any = value.items()
    elif isinstance(value, pd.DataFrame):
        items = ((label, cell) for _, column in value.items() for label, cell in column.items())
    else:
        items = [(None, value)]
    for label, cell in items:
        try:
            cloudpickle.dumps(cell)
        except Exception:
            where = f" at index label {show_label(label)}" if label is not None else ""
            return f"a {type(cell).__module__}.{type(cell).__qualname__}{where}"
    return f"a {type(value).__qualname__}"

