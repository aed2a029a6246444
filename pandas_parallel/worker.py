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
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd

from pandas_parallel import policies
from pandas_parallel.errors import (
    InitializerError,
    UnpicklableFunctionError,
    UnpicklableResultError,
)
from pandas_parallel.transport import (
    Inline,
    Payload,
    Tagged,
    in_band,
    load_input,
    ship_result,
)

_local = threading.local()
_in_worker_process = False
_programs: OrderedDict[str, Program] = OrderedDict()
_programs_lock = threading.Lock()
_PROGRAM_CACHE_SIZE = 4
_PROGRESS_EVERY = 16  # calls between writes to the shared progress counter


def in_worker() -> bool:
    """True inside a pandas_parallel worker: nested calls then run serially."""
    return _in_worker_process or getattr(_local, "active", False)


def initialize_worker(parent: int | None = None) -> None:
    """Mark the process as a worker; with ``parent``, end it within a
    second of that process's death (SIGKILL included).

    Importing this module has already imported pandas and pyarrow, so the
    first chunk does not pay for them.
    """
    global _in_worker_process
    _in_worker_process = True
    policies.forget_setups()
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
class Program:
    """What every chunk of one call runs: ``runner(chunk, func, args, kwargs)``."""

    runner: Callable[..., Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    calls_per_unit: int = 1
    setup: policies.Setup | None = None  # the initializer option


def encode_program(program: Any) -> bytes:
    """Serialize a program once per call (cloudpickle: lambdas, closures and
    functions defined in ``__main__`` or a notebook work): a
    :class:`Program`, or anything else that carries the user's ``func``
    (and maybe its ``args`` and ``kwargs``).

    Raises
    ------
    UnpicklableFunctionError
        Naming what could not be pickled and how to avoid pickling.
    """
    try:
        return cloudpickle.dumps(program, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        culprit = _unpicklable_part(program)
        raise UnpicklableFunctionError(
            f"pandas_parallel cannot send {culprit} to the worker processes: {exc}. "
            "Functions and their arguments are pickled (with cloudpickle) to reach "
            "worker processes. Create the object inside the function instead of "
            "capturing it, or use backend='threading', which does not pickle."
        ) from exc


def _unpicklable_part(program: Any) -> str:
    """Name the first part of the call that does not pickle."""
    args, kwargs = getattr(program, "args", ()), getattr(program, "kwargs", {})
    parts: list[tuple[str, Any]] = [(f"the function {program.func!r}", program.func)]
    parts += [(f"positional argument {i} ({a!r})", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k}={v!r}", v) for k, v in kwargs.items()]
    for name, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return name
    return "the call"


def _decode_program(call_id: str, blob: bytes | Program) -> Program:
    """The call's program; ``blob`` is empty where this worker was sent it
    with an earlier chunk of the call."""
    if isinstance(blob, Program):
        return blob
    with _programs_lock:
        program = _programs.get(call_id)
        if program is None and not blob:
            raise RuntimeError(f"call {call_id}: this worker was not sent its program")
        if program is None:
            program = pickle.loads(blob)
            _programs[call_id] = program
            while len(_programs) > _PROGRAM_CACHE_SIZE:
                _programs.popitem(last=False)
        return program


@dataclasses.dataclass
class Task:
    """One chunk of one call, as sent to a worker."""

    call_id: str
    chunk: int
    payload: Payload
    program: bytes | Program
    units: int
    result_dir: str | None = None
    transport: str = "auto"
    counters: str | np.ndarray | None = None  # progress: file path or array
    count_calls: bool = False  # publish calls made within the chunk
    watch_calls: bool = False  # also publish each call's start time (timeout)
    in_band: bool = False  # the result travels back inside the reply (clusters)
    seed: ChunkSeed | None = None  # the chunk's random streams (processes)
    record_warnings: bool = False  # send warnings back to the parent (Backend.records_warnings)
    setup_per_thread: bool = False  # the initializer runs once per thread (not per process)
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
    # Warnings pandas or the function issued in a worker (process or thread):
    # each distinct (category, message) once, for the caller to issue again.
    warnings: list[tuple[type[Warning], str]] = dataclasses.field(default_factory=list)
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
    outer = getattr(_local, "active", False)
    _local.active = True
    try:
        yield
    finally:
        _local.active = outer


def run_chunk(task: Task) -> Outcome:
    """Run the call's program on one chunk."""
    with working():
        return _run_chunk(task)


def _run_chunk(task: Task) -> Outcome:
    counters = Counters.open(task.counters)
    counters.set_state(task.chunk, Counters.RUNNING)
    try:
        program = _decode_program(task.call_id, task.program)
        if program.setup is not None:
            failed = _set_up(program.setup, task)
            if failed is not None:
                return failed
        data = load_input(task.payload)
        func = policy = _fresh(program.func)
        if task.skip_calls and isinstance(policy, policies.Coercing):
            policy.skip(task.skip_calls, TimeoutError(
                "the call did not return within timeout= and could not be interrupted; "
                "its worker process was stopped and replaced"))
        if task.watch_calls and counters.array is not None:
            func = _watching(func, counters, task.chunk)
        elif task.count_calls and counters.array is not None and program.calls_per_unit:
            func = _counting(func, counters, task.chunk)
        if task.seed is not None:
            _seed_globals(task.seed)
        started = time.perf_counter()
        with _recording_warnings(task.record_warnings) as issued:
            try:
                result = program.runner(data, func, program.args, program.kwargs)
            except _FUNCTION_FAILURES as exc:
                found, argument = _failing_argument(program.func, exc.__traceback__)
                failure = Failure(exc, traceback.format_exc(),
                                  _describe_argument(argument, data) if found else "")
                return Outcome(task.chunk, failure=failure,
                               seconds=time.perf_counter() - started,
                               warnings=_distinct(issued))
        seconds = time.perf_counter() - started
        if task.in_band:
            payload = in_band(result, task.transport)
        else:
            directory = None if counters.call_over else task.result_dir
            payload = ship_result(result, directory,
                                  f"result-{task.chunk}-{os.getpid()}.arrow", task.transport)
        row_errors = policy.settle(data) if isinstance(policy, policies.Coercing) else []
        return Outcome(task.chunk, payload, seconds=seconds, warnings=_distinct(issued),
                       row_errors=row_errors, retries=_retries(policy))
    finally:
        counters.set_state(task.chunk, Counters.FINISHED)


def _set_up(setup: policies.Setup, task: Task) -> Outcome | None:
    """Run the initializer where it has not run yet; a failure as the
    chunk's outcome."""
    where = (f"worker thread {threading.current_thread().name}" if task.setup_per_thread
             else f"worker process {os.getpid()}")
    try:
        policies.ensure_setup(setup, task.setup_per_thread, where)
    except InitializerError as exc:
        return Outcome(task.chunk, failure=Failure(exc, traceback.format_exc(), ""))
    return None


_MAX_WARNINGS = 20  # distinct ones per chunk: a warning per row is one warning


@contextlib.contextmanager
def _recording_warnings(record: bool) -> Iterator[list[warnings.WarningMessage]]:
    """Warnings issued in the block, recorded for the parent to issue again
    (``record=False``: left alone).

    A worker process's only thread records them all. A worker thread
    shares the warnings machinery of the process: it collects only its own
    (the user's filters apply), through one hook installed for good, so no
    thread ever swaps the machinery under another."""
    if not record:
        yield []
    elif threading.current_thread() is threading.main_thread():
        with warnings.catch_warnings(record=True) as issued:
            warnings.simplefilter("always")
            yield issued
    else:
        _install_thread_collector()
        issued = []
        _collected.messages = issued
        try:
            yield issued
        finally:
            _collected.messages = None


_collected = threading.local()
_installed = threading.Lock()


def _install_thread_collector() -> None:
    """Route warnings shown in a collecting worker thread to its list.
    (``catch_warnings`` saves and restores what it replaces; it does not
    replace ``warnings._showwarnmsg``, which the C ``warn`` looks up.)"""
    with _installed:
        shown = warnings._showwarnmsg  # type: ignore[attr-defined]
        if getattr(shown, "pandas_parallel", False):
            return

        def show_or_collect(message: warnings.WarningMessage) -> None:
            messages = getattr(_collected, "messages", None)
            if messages is None:
                shown(message)
            else:
                messages.append(message)

        show_or_collect.pandas_parallel = True  # type: ignore[attr-defined]
        warnings._showwarnmsg = show_or_collect  # type: ignore[attr-defined]


def _distinct(issued: list[warnings.WarningMessage]) -> list[tuple[type[Warning], str]]:
    seen: dict[tuple[type[Warning], str], None] = {}
    for message in issued:
        seen.setdefault((message.category, str(message.message)), None)
        if len(seen) == _MAX_WARNINGS:
            break
    return list(seen)


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


def run_chunk_sent_apart(task: Task, payload: Payload, program: bytes) -> bytes:
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

