"""Policies around the user's function: per-worker setup, row errors,
time limits and retries (the ``initializer``, ``errors``, ``timeout`` and
``retries`` options).

Each policy is a wrapper around the function, made once per public call in
this process and carried to the workers with the function, so every place
that calls it (a worker process, a thread, this process running a sample
or handing the call to pandas) applies it alike. From the inside out::

    Coercing(Retrying(Timed(func)))

A call that times out is retried if ``TimeoutError`` is in ``retry_on``,
and becomes missing if every try failed and ``errors="coerce"``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import marshal
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd

from pandas_parallel.errors import InitializerError

__all__ = ["CallPolicy", "Coercing", "Retrying", "Setup", "Timed", "ensure_setup"]


# -- per-worker setup --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
    """``initializer(*initargs)``, and ``key``, which tells whether a worker
    ran it last: the same function and arguments, pickled alike (the
    caller's own code by value, so with the globals it reads)."""

    initializer: Callable[..., Any]
    initargs: tuple[Any, ...]
    key: str

    @classmethod
    def of(cls, initializer: Callable[..., Any] | None,
           initargs: tuple[Any, ...]) -> Setup | None:
        """The setup of the ``initializer`` option; ``None`` without one."""
        if initializer is None:
            return None
        inner = unwrap(initializer)
        code = getattr(inner, "__code__", None)
        try:
            # The function by its name and code (not the globals it reads,
            # which it may set itself), its arguments by value.
            identity = (f"{getattr(inner, '__module__', '')}.{getattr(inner, '__qualname__', '')}"
                        .encode() + marshal.dumps(code) if code is not None
                        else cloudpickle.dumps(initializer))
            blob = identity + cloudpickle.dumps(initargs)
        except Exception:  # only threads can take it: known by identity
            blob = repr((id(initializer), id(initargs))).encode()
        return cls(initializer, initargs, hashlib.sha1(blob).hexdigest())

    def by_value(self) -> bool:
        """Whether this is a copy that reached a worker by value (see
        :mod:`.programs`): what it sets in its module's globals lives in
        that copy's globals, not in a module of the worker's."""
        inner = unwrap(self.initializer)
        module = sys.modules.get(getattr(inner, "__module__", None) or "")
        return getattr(inner, "__globals__", None) is not getattr(module, "__dict__", None)

    def describe(self) -> str:
        name = getattr(self.initializer, "__qualname__", repr(self.initializer))
        return f"the initializer {name}(*initargs)"


class _SetupsRun:
    """Which setup ran last here: in this process (a worker's: ``in_process``,
    under the lock, as a dask or Ray worker runs tasks on several threads),
    and in each thread (``in_thread.key``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_process: tuple[str, int] | None = None
        self.in_thread = threading.local()


SETUPS_RUN = _SetupsRun()


def ensure_setup(setup: Setup, per_thread: bool, where: str, program: Any = None) -> None:
    """Run ``setup`` here unless it is the one that ran here last: in this
    thread (``per_thread``) or in this process. In a worker process, a
    setup that travels by value runs again for each new ``program`` (the
    decoded copy its effects live in).

    Raises
    ------
    InitializerError
        Naming the initializer and ``where`` it ran, from its exception.
    """
    if per_thread:
        in_thread = SETUPS_RUN.in_thread
        if getattr(in_thread, "key", None) != setup.key:
            in_thread.key = None
            _run_setup(setup, where)
            in_thread.key = setup.key
        return
    ran = (setup.key, id(program) if setup.by_value() else 0)
    with SETUPS_RUN.lock:
        if SETUPS_RUN.in_process != ran:
            SETUPS_RUN.in_process = None
            _run_setup(setup, where)
            SETUPS_RUN.in_process = ran


def forget_setups() -> None:
    """In a new worker process: what its parent ran is not its own."""
    SETUPS_RUN.in_process = None


def _run_setup(setup: Setup, where: str) -> None:
    try:
        setup.initializer(*setup.initargs)
    except Exception as exc:
        raise InitializerError(
            f"{setup.describe()} failed in {where}, before any row ran there: "
            f"{type(exc).__name__}: {exc}. Fix the initializer (or its initargs); "
            "it runs once in each worker and in this process.") from exc


# -- time limits ---------------------------------------------------------------------
class Timed:
    """Interrupt a call of ``func`` that runs longer than ``timeout``
    seconds with ``TimeoutError``, by a timer signal: in a process's main
    thread (each worker process's, and this one's for its own share).
    Threads cannot be interrupted; the threads backend watches them from
    the calling thread instead (see :mod:`.backends.threads`)."""

    def __init__(self, func: Callable[..., Any], timeout: float) -> None:
        self.func = self.__wrapped__ = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)  # for pandas
        self.timeout = timeout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (threading.current_thread() is not threading.main_thread()
                or not hasattr(signal, "setitimer")):  # Windows: no interval timers
            return self.func(*args, **kwargs)
        # Another timer (pytest-timeout's, the user's own) is put back as
        # it would have run on; if it is due first, it is left to fire.
        outer, interval = signal.getitimer(signal.ITIMER_REAL)
        if outer and outer <= self.timeout:
            return self.func(*args, **kwargs)
        began = time.monotonic()
        previous = signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return self.func(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:
                left = outer - (time.monotonic() - began)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), interval)

    def _expired(self, signum: int, frame: Any) -> None:
        raise TimeoutError(f"the call did not return within timeout={self.timeout} s")


# -- retries -------------------------------------------------------------------------
class Retrying:
    """Call ``func`` again when it raises one of ``retry_on``, up to
    ``retries`` more times, waiting ``delay`` seconds, then twice as long
    before each next try. ``retried`` counts the retries made."""

    def __init__(self, func: Callable[..., Any], retries: int,
                 retry_on: tuple[type[BaseException], ...], delay: float) -> None:
        self.func = self.__wrapped__ = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)  # for pandas
        self.retries, self.retry_on, self.delay = retries, retry_on, delay
        self.retried = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self.func(*args, **kwargs)
            except self.retry_on:
                if attempt == self.retries:
                    raise
                with self._lock:
                    self.retried += 1
                time.sleep(self.delay * 2 ** attempt)
        raise AssertionError("unreachable")

    def fresh(self) -> Retrying:
        return Retrying(self.func, self.retries, self.retry_on, self.delay)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state, retried=0, _lock=threading.Lock())


def unwrap(func: Any) -> Any:
    """The user's own function inside partials and policy wrappers."""
    while isinstance(func, (functools.partial, Coercing, Retrying, Timed)):
        func = func.func
    return func


# -- row errors ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RowOf:
    """A failure's group, known from here only by its first row's label:
    the parent, which holds the groupby, names the group."""

    label: Any


#: What a failed call is labelled by: the argument's ``.name`` (rows and
#: columns of ``DataFrame.apply``), its position among the chunk's elements
#: (``map``), or its first row (groups: resolved by the caller).
LABEL_KINDS = ("rows", "columns", "elements", "groups")


class Coercing:
    """Return ``missing`` where ``func`` raises, and keep the failure.

    Failures are kept as the calls raise (``_pending``: call number,
    argument, exception) and named once the pandas call over a chunk is
    done (:meth:`settle`), when the number of calls tells where each call
    was; ``failures`` holds them named, in the order of the input.
    """

    def __init__(self, func: Callable[..., Any], kind: str, missing: Any = None) -> None:
        self.func = self.__wrapped__ = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)  # for pandas
        self.kind, self.missing = kind, missing
        self.failures: list[tuple[Any, BaseException]] = []
        self._pending: list[tuple[int, Any, BaseException]] = []
        self._calls = 0
        self._skipped: dict[int, BaseException] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        number = self._calls
        self._calls += 1
        if number in self._skipped:
            self.record(number, args[0] if args else None, self._skipped[number])
            return self.missing
        try:
            return self.func(*args, **kwargs)
        except Exception as exc:
            self.record(number, args[0] if args else None, exc)
            return self.missing

    def record(self, number: int, argument: Any, exc: BaseException) -> None:
        """Keep the failure of call ``number`` (counted from 0 in the order
        pandas made the calls) with ``argument``."""
        self._pending.append((number, _small(argument, self.kind), exc))

    def skip(self, numbers: tuple[int, ...], exc: BaseException) -> None:
        """Do not make calls ``numbers``: they failed with ``exc`` before
        (they hung where nothing could interrupt them)."""
        self._skipped.update(dict.fromkeys(numbers, exc))

    def counted(self, calls: int) -> None:
        """Calls were made elsewhere (``async def`` functions): ``calls`` in all."""
        self._calls = calls

    def fresh(self) -> Coercing:
        """The same policy, with no failures: one per chunk."""
        inner = self.func.fresh() if isinstance(self.func, Retrying) else self.func
        return Coercing(inner, self.kind, self.missing)

    def restart(self) -> None:
        """Forget every failure: the call is run again from the start."""
        self.failures.clear()
        self._pending.clear()
        self._calls = 0

    def settle(self, chunk: Any) -> list[tuple[Any, BaseException]]:
        """Name the failures of the pandas call over ``chunk`` just made,
        add them to ``failures`` and return them."""
        pending = sorted(self._pending, key=_first)
        if self.kind == "elements" and isinstance(chunk, pd.DataFrame) and len(chunk):
            # pandas calls column by column; a person reads row by row (and
            # chunks of rows come back in row order).
            rows = len(chunk)
            pending.sort(key=lambda failure: (failure[0] % rows, failure[0] // rows))
        named = [(self._label(number, argument, chunk), exc)
                 for number, argument, exc in pending]
        self._pending.clear()
        self._calls = 0
        self.failures.extend(named)
        return named

    def _label(self, number: int, argument: Any, chunk: Any) -> Any:
        if self.kind == "groups":
            return argument  # a RowOf, or None
        if isinstance(argument, _Named):
            return argument.name
        return _position_label(self.kind, number, self._calls, argument, chunk)

    def __getstate__(self) -> dict[str, Any]:
        return {"func": self.func, "kind": self.kind, "missing": self.missing}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["func"], state["kind"], state["missing"])  # type: ignore[misc]


def _first(pending: tuple[int, Any, BaseException]) -> int:
    return pending[0]


@dataclasses.dataclass(frozen=True)
class _Named:
    name: Any


def _small(argument: Any, kind: str) -> Any:
    """What to keep of a failed call's argument until it is named (not the
    row itself: pandas may reuse one Series object for every row)."""
    if isinstance(argument, (pd.Series, pd.DataFrame)):
        if kind == "groups":
            return RowOf(argument.index[0]) if len(argument.index) else None
        if kind in ("rows", "columns"):
            return _Named(argument.name)
    if isinstance(argument, np.ndarray):
        return None  # raw rows: named by position
    return argument


def _position_label(kind: str, number: int, calls: int, value: Any, chunk: Any) -> Any:
    """The label of call ``number`` of ``calls`` over ``chunk``: by
    position when every element (row, column) was called once in order,
    else (``na_action="ignore"`` skips some) the first element equal to
    the value."""
    if isinstance(chunk, pd.Series):
        if calls == len(chunk):
            return chunk.index[number]
        return _first_label_of(chunk, value)
    if isinstance(chunk, pd.DataFrame):
        rows = len(chunk)
        if kind == "rows" and calls == rows:
            return chunk.index[number]
        if kind == "columns" and calls == chunk.shape[1]:
            return chunk.columns[number]
        if kind == "elements" and calls == chunk.size and rows:  # column by column
            return (chunk.index[number % rows], chunk.columns[number // rows])
    return None


def _first_label_of(series: pd.Series, value: Any) -> Any:
    try:
        matches = series.isna() if pd.isna(value) else (series == value)
        hits = np.flatnonzero(np.asarray(matches, dtype=bool))
    except Exception:  # comparisons of arbitrary objects may fail
        return None
    return series.index[hits[0]] if len(hits) else None


def portable(failures: list[tuple[Any, BaseException]]) -> list[tuple[Any, BaseException]]:
    """``failures`` with each exception that would not come back from a
    worker process as itself replaced by a RuntimeError naming it."""
    kept = []
    for label, exc in failures:
        try:
            back = pickle.loads(pickle.dumps(exc))
            if type(back) is not type(exc) or back.args != exc.args:
                raise TypeError
        except Exception:
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        kept.append((label, exc))
    return kept


# -- one public call -----------------------------------------------------------------
_UNIT_WORDS = {"rows": "row", "columns": "column", "elements": "element", "groups": "group"}


@dataclasses.dataclass
class CallPolicy:
    """The policies of one public call, from its options: the function
    wrapped for them, and, after the call, the warning for its failures.

    ``kind`` is one of :data:`LABEL_KINDS` (what the function is called on),
    ``missing`` what a failed call returns (``None``; ``False`` for
    ``filter``).
    """

    label: str
    kind: str
    missing: Any = None
    errors: str = "raise"
    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_delay: float = 0.1
    coercing: Coercing | None = None

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` under this call's policies (itself when there are none)."""
        if self.timeout is not None:
            func = Timed(func, self.timeout)
        if self.retries:
            func = Retrying(func, self.retries, self.retry_on, self.retry_delay)
        if self.errors == "coerce":
            func = self.coercing = Coercing(func, self.kind, self.missing)
        return func

    def warn(self, obj: Any, name_group: Callable[[Any], Any] | None = None) -> None:
        """Issue the :class:`RowErrorsWarning` for the call's failures, if
        any: those still pending named against ``obj``, the whole input;
        groups named by ``name_group(first_row_label)``."""
        from pandas_parallel._compat import caller_stack_level
        from pandas_parallel.errors import RowErrorsWarning

        if self.coercing is None:
            return
        self.coercing.settle(obj)
        failures = [(_group_key(label, name_group), exc)
                    for label, exc in self.coercing.failures]
        if not failures:
            return
        word = _UNIT_WORDS[self.kind] + ("s" if len(failures) != 1 else "")
        if self.missing is False:
            outcome = "those groups were left out of the result, as if it returned False"
        elif self.kind == "groups":
            outcome = ("they are missing values in the result, or left out of it where "
                       "other groups returned frames or Series (as pandas does with None)")
        else:
            outcome = "they are missing values in the result"
        first_label, first = failures[0]
        warnings.warn(RowErrorsWarning(
            f"{self.label}: the function raised for {len(failures)} {word} (errors='coerce'); "
            f"{outcome}. The first: {first_label!r} ({type(first).__name__}: {first}); "
            "this warning's .failures lists (label, exception) for each.", failures),
            stacklevel=caller_stack_level())


def _group_key(label: Any, name_group: Callable[[Any], Any] | None) -> Any:
    if isinstance(label, RowOf):
        label = name_group(label.label) if name_group is not None else label.label
    return plain(label)


def plain(label: Any) -> Any:
    """A label as a person wrote it: ``20``, not ``np.int64(20)``."""
    if isinstance(label, np.generic):
        return label.item()
    if isinstance(label, tuple):
        return tuple(plain(part) for part in label)
    return label
