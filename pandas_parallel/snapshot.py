"""What the caller sees, carried to the workers with every call.

A worker that outlives a call (kept forked workers, the warm pool, a
cluster's) would otherwise answer from the state it started with. Each call
takes a :class:`Snapshot` of the caller's state in the calling thread, and
each worker applies it before the call's first chunk there:

- process-wide: the environment, the working directory, ``sys.path``, the
  recursion limit, the time zone, pandas' options that differ from their
  defaults, and the warnings filters;
- per thread (Python keeps them in context variables, which a new thread
  starts without): numpy's error handling and print options, and the
  ``decimal`` context;
- the levels of the caller's loggers, which decide which log records a
  worker keeps for the caller (see :mod:`pandas_parallel.relay`).

A worker compares each part with the one it applied last, so an unchanged
state costs a comparison. What a worker applies is the caller's state as it
is, not a change to it: nothing needs restoring afterwards, and state that
is not listed here is left as the worker has it.

On a cluster (``scope="cluster"``) a worker process serves other tasks too,
on other machines: the environment travels as the changes the caller made
since this package was imported, the working directory and ``sys.path``
entries only where they exist on the worker, and the warnings filters are
not applied (they are process-wide there, under the worker's own code).
"""

from __future__ import annotations

import contextvars
import dataclasses
import decimal
import logging
import os
import pickle
import sys
import threading
import time
import warnings
from typing import Any

import cloudpickle
import numpy as np

from pandas_parallel import _compat

__all__ = ["LogLevels", "Snapshot", "apply", "capture"]

def _environ() -> dict[Any, Any]:
    """This process's environment as a plain dict (bytes on POSIX: reading
    ``os.environ`` key by key decodes each, a hundred times slower)."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


class _Captured:
    """What capturing keeps between calls: the environment when this package
    was imported (a cluster's workers get the caller's changes since then:
    their own environment is their machine's), and the last snapshot
    pickled, with its bytes (a run of calls that see the same state pickles
    it once; the pair is replaced whole, so threads need no lock)."""

    def __init__(self) -> None:
        self.environ_at_import = _environ()
        self.last_pickled: tuple[Any, bytes] = (None, b"")


CAPTURED = _Captured()


@dataclasses.dataclass(frozen=True)
class LogLevels:
    """The caller's logging configuration that decides whether a logger
    makes a record: each logger's own level (those set), the loggers
    disabled, and ``logging.disable``'s level."""

    levels: tuple[tuple[str, int], ...]
    disabled: frozenset[str]
    disable: int

    @classmethod
    def capture(cls) -> LogLevels:
        manager = logging.root.manager
        levels = [("", logging.root.level)]
        disabled = []
        for name, logger in list(manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                if logger.level:
                    levels.append((name, logger.level))
                if logger.disabled:
                    disabled.append(name)
        return cls(tuple(levels), frozenset(disabled), manager.disable)

    def effective(self, name: str) -> int:
        """The caller's effective level of logger ``name``."""
        own = dict(self.levels)
        while name:
            if name in own:
                return own[name]
            name = name.rpartition(".")[0]
        return own.get("", logging.WARNING)

    def enabled(self, name: str, level: int) -> bool:
        """Whether the caller's logger ``name`` makes a record at ``level``."""
        if level <= self.disable or name in self.disabled:
            return False
        return level >= self.effective(name)


@dataclasses.dataclass(frozen=True)
class ProcessState:
    """The process-wide part of the caller's state."""

    environ: tuple[tuple[Any, Any], ...]
    removed: tuple[Any, ...]  # cluster scope: variables the caller deleted
    cwd: str
    path: tuple[str, ...]
    recursion_limit: int
    timezone: tuple[Any, ...]
    pandas_options: tuple[tuple[str, Any], ...]
    warning_filters: tuple[Any, ...] | None  # None: left as the worker has them


@dataclasses.dataclass(frozen=True)
class ThreadState:
    """The part of the caller's state Python keeps per thread."""

    numpy_errors: tuple[tuple[str, Any], ...]
    numpy_print: tuple[tuple[str, Any], ...]
    decimal: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The caller's state at the moment of a call (see the module docstring)."""

    process: ProcessState
    thread: ThreadState
    logs: LogLevels
    scope: str = "process"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with the C pickler (cloudpickle's Python one takes 80
        # microseconds over its filters and classes), once for a run of
        # calls that see the same state.
        last, blob = CAPTURED.last_pickled
        if last != self:
            fields = (self.process, self.thread, self.logs, self.scope)
            try:
                blob = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # a warning category of the caller's own code
                blob = cloudpickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
            CAPTURED.last_pickled = (self, blob)
        return _unpickled, (blob,)


def _unpickled(blob: bytes) -> Snapshot:
    return Snapshot(*pickle.loads(blob))


def capture(scope: str = "process") -> Snapshot:
    """The calling thread's view of the state, for workers of ``scope``:
    ``"process"`` (processes on this machine) or ``"cluster"``."""
    environ = _environ()
    removed: tuple[Any, ...] = ()
    if scope == "cluster":
        at_import = CAPTURED.environ_at_import
        changed = {k: v for k, v in environ.items() if at_import.get(k) != v}
        removed = tuple(k for k in at_import if k not in environ)
        environ = changed
    process = ProcessState(
        environ=tuple(environ.items()), removed=removed, cwd=_cwd(),
        path=tuple(sys.path), recursion_limit=sys.getrecursionlimit(),
        timezone=(time.tzname, time.timezone, time.altzone, time.daylight),
        pandas_options=tuple(_compat.changed_pandas_options().items()),
        warning_filters=None if scope == "cluster" else tuple(warnings.filters))
    context = decimal.getcontext()
    thread = ThreadState(
        numpy_errors=tuple(np.geterr().items()),
        numpy_print=tuple(np.get_printoptions().items()),
        decimal=(context.prec, context.rounding, context.Emin, context.Emax,
                 context.capitals, context.clamp,
                 tuple(s for s, on in context.flags.items() if on),
                 tuple(s for s, on in context.traps.items() if on)))
    return Snapshot(process, thread, LogLevels.capture(), scope)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under the process
        return ""


# -- in a worker ------------------------------------------------------------------
class _Applied:
    """What this worker applied last: ``process``, the part applied to the
    whole process, under ``lock`` (a cluster worker runs tasks on several
    threads); ``thread``, the per-thread part, kept where that part lives, a
    context variable (a cluster worker may run each task in a copy of its
    context); ``set_on_cluster``, on a cluster's worker, the variables
    calls set, with the worker's own value before the first of them
    (``None``: it had none)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: ProcessState | None = None
        self.thread: contextvars.ContextVar[ThreadState | None] = contextvars.ContextVar(
            "pandas_parallel_applied_thread_state", default=None)
        self.set_on_cluster: dict[Any, Any] = {}

    def forget(self) -> None:
        self.process = None
        self.thread.set(None)


APPLIED = _Applied()


def apply(snapshot: Snapshot, scope: str) -> None:
    """Make this worker see ``snapshot``. ``scope``: ``"process"`` (a
    worker process of our own: all of it), ``"thread"`` (a worker thread of
    the caller's process: the per-thread part; the rest is the caller's
    already), or ``"cluster"`` (a cluster's worker process)."""
    if scope != "thread":
        with APPLIED.lock:
            if APPLIED.process != snapshot.process:
                _apply_process(snapshot.process, cluster=scope == "cluster")
                APPLIED.process = snapshot.process
    if APPLIED.thread.get() != snapshot.thread:
        _apply_thread(snapshot.thread)
        APPLIED.thread.set(snapshot.thread)


def _apply_process(state: ProcessState, cluster: bool) -> None:
    _apply_environ(state, cluster)
    if state.cwd and os.path.isdir(state.cwd) and state.cwd != _cwd():
        os.chdir(state.cwd)
    _apply_path(state.path, cluster)
    if sys.getrecursionlimit() != state.recursion_limit:
        sys.setrecursionlimit(state.recursion_limit)
    if (time.tzname, time.timezone, time.altzone, time.daylight) != state.timezone:
        time.tzset()  # TZ came with the environment
    _compat.set_pandas_options(dict(state.pandas_options))
    if state.warning_filters is not None and tuple(warnings.filters) != state.warning_filters:
        warnings.filters[:] = list(state.warning_filters)  # type: ignore[index]
        warnings._filters_mutated()  # type: ignore[attr-defined]


def _apply_environ(state: ProcessState, cluster: bool) -> None:
    """Locally, the caller's environment as it is. On a cluster, the
    caller's changes over the worker's own; a variable an earlier call set
    and this one does not goes back to the worker's own value."""
    target = dict(state.environ)
    current = _environ()
    if cluster:
        set_on_cluster = APPLIED.set_on_cluster
        for key in [k for k in set_on_cluster if k not in target]:
            original = set_on_cluster.pop(key)
            target[key] = original
            if original is None:
                target.pop(key)
                state = dataclasses.replace(state, removed=(*state.removed, key))
        for key in target:
            set_on_cluster.setdefault(key, current.get(key))
    environ = os.environb if isinstance(next(iter(target), ""), bytes) else os.environ
    for key, value in target.items():
        if current.get(key) != value:
            environ[key] = value  # type: ignore[index]
    gone = state.removed if cluster else [k for k in current if k not in target]
    for key in gone:
        environ.pop(key, None)  # type: ignore[call-overload]


def _apply_path(path: tuple[str, ...], cluster: bool) -> None:
    """The caller's ``sys.path`` first, in its order, then the worker's
    other entries (on a cluster, the caller's that exist on the worker)."""
    wanted = [p for p in path if not cluster or not p or os.path.exists(p)]
    merged = wanted + [p for p in sys.path if p not in set(wanted)]
    if merged != sys.path:
        sys.path[:] = merged


def _apply_thread(state: ThreadState) -> None:
    np.seterr(**dict(state.numpy_errors))
    np.set_printoptions(**dict(state.numpy_print))
    prec, rounding, emin, emax, capitals, clamp, flags, traps = state.decimal
    decimal.setcontext(decimal.Context(
        prec=prec, rounding=rounding, Emin=emin, Emax=emax, capitals=capitals, clamp=clamp,
        flags=list(flags), traps=list(traps)))


def forget() -> None:
    """In a newly forked worker: its state is its parent's, applied by no one."""
    APPLIED.forget()
