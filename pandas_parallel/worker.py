"""Run: what a worker does with one chunk.

Everything here executes inside a worker (a loky process, a thread, or a
remote dask/ray worker). The user's function arrives serialized once per
call and is decoded once per worker; each chunk then runs the pandas
operation itself. A failure in the user's function is caught and returned
as data, so the pool survives it and stays warm for the next call.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd

from pandas_parallel.errors import UnpicklableFunctionError
from pandas_parallel.transport import Payload, in_band, load_input, ship_result

_local = threading.local()
_in_worker_process = False
_programs: OrderedDict[str, Program] = OrderedDict()
_programs_lock = threading.Lock()
_PROGRAM_CACHE_SIZE = 4
_PROGRESS_EVERY = 16  # calls between writes to the shared progress counter


def in_worker() -> bool:
    """True inside a pandas_parallel worker: nested calls then run serially."""
    return _in_worker_process or getattr(_local, "active", False)


def initialize_worker() -> None:
    """loky initializer: mark the process as a worker.

    Importing this module has already imported pandas and pyarrow, so the
    first chunk does not pay for them.
    """
    global _in_worker_process
    _in_worker_process = True


@dataclasses.dataclass
class Program:
    """What every chunk of one call runs: ``runner(chunk, func, args, kwargs)``."""

    runner: Callable[..., Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    calls_per_unit: int = 1


def encode_program(program: Program) -> bytes:
    """Serialize a program once per call (cloudpickle: lambdas, closures and
    functions defined in ``__main__`` or a notebook work).

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


def _unpicklable_part(program: Program) -> str:
    """Name the first part of the call that does not pickle."""
    parts: list[tuple[str, Any]] = [(f"the function {program.func!r}", program.func)]
    parts += [(f"positional argument {i} ({a!r})", a) for i, a in enumerate(program.args)]
    parts += [(f"keyword argument {k}={v!r}", v) for k, v in program.kwargs.items()]
    for name, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return name
    return "the call"


def _decode_program(call_id: str, blob: bytes | Program) -> Program:
    if isinstance(blob, Program):
        return blob
    with _programs_lock:
        program = _programs.get(call_id)
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


class _Counters:
    """Shared per-call state: ``[0:n]`` calls done per chunk, ``[n:2n]``
    chunk state (1 running, 2 finished), ``[2n:3n]`` when the chunk's
    current call started (monotonic microseconds, 0 between calls; kept only
    when a timeout is watched), ``[3n]`` 1 once the call is over (failed or
    interrupted: write no more files). A memory-mapped file for processes, a
    plain array for threads."""

    def __init__(self, source: str | np.ndarray | None) -> None:
        self.array: np.ndarray | None
        if source is None or isinstance(source, np.ndarray):
            self.array = source
        else:
            try:
                self.array = np.memmap(source, dtype=np.int64, mode="r+")
            except OSError:  # the call already ended (e.g. cancelled)
                self.array = None

    def set(self, position: int, value: int) -> None:
        if self.array is not None:
            self.array[position] = value

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
    target = func
    while isinstance(target, functools.partial):
        target = target.func
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


def _counting(func: Callable[..., Any], counters: _Counters, slot: int
              ) -> Callable[..., Any]:
    """Wrap ``func`` to publish its call count (only while a bar is shown)."""
    calls = 0

    @functools.wraps(func)
    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls % _PROGRESS_EVERY == 0:
            counters.set(slot, calls)
        return func(*args, **kwargs)

    return counted


def _watching(func: Callable[..., Any], counters: _Counters, slot: int, n_chunks: int
              ) -> Callable[..., Any]:
    """Wrap ``func`` to publish every call's start time and count (for a
    per-call timeout, watched by the parent)."""
    calls = 0
    started = 2 * n_chunks + slot

    @functools.wraps(func)
    def watched(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        counters.set(slot, calls)
        counters.set(started, int(time.monotonic() * 1e6))
        try:
            return func(*args, **kwargs)
        finally:
            counters.set(started, 0)

    return watched


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc} (the original exception "
                            "could not be pickled back from the worker)")


def run_chunk(task: Task) -> Outcome:
    """Run the call's program on one chunk."""
    outer = getattr(_local, "active", False)
    _local.active = True
    counters = _Counters(task.counters)
    n_chunks = (len(counters.array) - 1) // 3 if counters.array is not None else 0
    counters.set(n_chunks + task.chunk, 1)
    try:
        program = _decode_program(task.call_id, task.program)
        data = load_input(task.payload)
        func = program.func
        if task.watch_calls and counters.array is not None:
            func = _watching(func, counters, task.chunk, n_chunks)
        elif task.count_calls and counters.array is not None and program.calls_per_unit:
            func = _counting(func, counters, task.chunk)
        started = time.perf_counter()
        try:
            result = program.runner(data, func, program.args, program.kwargs)
        except Exception as exc:
            found, argument = _failing_argument(program.func, exc.__traceback__)
            failure = Failure(
                _picklable(exc),
                traceback.format_exc(),
                _describe_argument(argument, data) if found else "",
            )
            return Outcome(task.chunk, failure=failure,
                           seconds=time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if task.in_band:
            payload = in_band(result, task.transport)
        else:
            directory = None if counters.call_over else task.result_dir
            payload = ship_result(result, directory,
                                  f"result-{task.chunk}-{os.getpid()}.arrow", task.transport)
        return Outcome(task.chunk, payload, seconds=seconds)
    finally:
        counters.set(n_chunks + task.chunk, 2)
        _local.active = outer
