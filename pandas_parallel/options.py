"""Options: global configuration, scoped overrides and per-call validation.

Every option is validated the moment it is given (``config(...)`` or
``df.parallel(...)``), so a typo fails before any work starts.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["Options", "config", "get_options"]

ProgressOption = bool | Literal["auto"]

_TRANSPORTS = ("auto", "arrow", "pickle")
_PARTITIONS = ("rows", "index")
_ERRORS = ("raise", "coerce")


@dataclasses.dataclass(frozen=True)
class Options:
    """The settings that shape one parallel call.

    Parameters
    ----------
    n_jobs : int or None
        Worker count. ``None`` or ``-1`` uses every CPU this process may run
        on (CPU affinity and cgroup quotas respected); ``-2`` all but one, as
        in joblib.
    backend : str or None
        ``"loky"`` (processes), ``"threading"``, ``"sequential"`` or the name
        of any backend registered with joblib. ``None`` (default) follows an
        enclosing ``joblib.parallel_config(...)``, and is ``"loky"`` otherwise.
    chunk_size : int or None
        Rows (columns for ``apply(axis=0)``, groups for groupby) per chunk.
        ``None`` sizes chunks automatically.
    partition : str
        ``"rows"`` splits by row count; ``"index"`` keeps rows that share an
        index label in one chunk; a pandas frequency such as ``"1D"`` splits
        a sorted DatetimeIndex into whole periods.
    serial_fallback : bool
        Run serially in-process when an estimate says parallel cannot win.
    progress : bool or "auto"
        Show one progress bar per call; ``"auto"`` shows it in interactive
        sessions for work expected to take more than a couple of seconds.
    transport : {"auto", "arrow", "pickle"}
        How chunks travel to workers and back. ``"auto"`` uses Arrow IPC in
        shared memory when a frame round-trips exactly, pickle otherwise
        and for small results (up to about 500,000 values). ``"arrow"``
        also sends small results through Arrow.
    concurrency : int
        For ``async def`` functions: calls in flight at once.
    timeout : float or None
        Seconds a single call of the function may take before it fails with
        ``TimeoutError`` naming its row (with ``errors="coerce"``, its value
        becomes missing). Interrupts the call in worker processes and for
        ``async def`` functions; a thread cannot be interrupted, so with
        ``backend="threading"`` the whole call fails with it. Not available
        on dask or Ray.
    fork : bool
        With the default ``"loky"`` backend, fork the workers from this
        process when that is safe: on Linux, with no other Python thread,
        no OpenMP runtime and no native thread pool running. Forked workers
        start in milliseconds with everything this process has imported and
        read the first call's chunks from its memory, so nothing is shipped
        to them. They are kept for later calls (which send them their
        chunks, as to the pool; a call whose input is large enough forks
        anew instead) unless this process held over 2 GB when it forked
        them, and retired after 5 minutes idle. Otherwise (and always with
        ``fork=False``) calls run on a warm pool of loky worker processes,
        started once and reused.
    initializer : callable or None
        ``initializer(*initargs)`` runs once in each worker (each thread,
        for ``backend="threading"``) before its first chunk, and once in
        this process (per thread) before the call runs any of the function
        here: to load a model or open a connection once per worker rather
        than once per row. A worker that ran it keeps its effect for the
        rest of the call; worker processes kept between calls (forked,
        warm pool, dask and Ray) also for later calls with the same
        initializer and arguments (threads are new for each call, and run
        it again).
    initargs : tuple
        Arguments for ``initializer``. Pickled to reach worker processes:
        pass what loads the object (a path), not the object.
    errors : {"raise", "coerce"}
        ``"raise"`` (default): the first call of the function that raises
        ends the whole call with its exception. ``"coerce"``: a call that
        raises gives ``None`` instead, which pandas turns into a missing
        value (or, for ``groupby.apply`` returning frames, drops the group;
        for ``filter``, a failing group counts as ``False``); the call
        finishes and a :class:`~pandas_parallel.RowErrorsWarning` lists
        every failure.
    retries : int
        Calls of the function that raise one of ``retry_on`` are tried
        again up to this many times, waiting ``retry_delay`` seconds before
        the first retry and twice as long before each next one.
    retry_on : tuple of exception types
        What is retried (default: any ``Exception``).
    retry_delay : float
        Seconds before the first retry.
    """

    n_jobs: int | None = None
    backend: str | None = None
    chunk_size: int | None = None
    partition: str = "rows"
    serial_fallback: bool = True
    progress: ProgressOption = "auto"
    transport: str = "auto"
    concurrency: int = 100
    timeout: float | None = None
    fork: bool = True
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    errors: str = "raise"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_delay: float = 0.1

    def resolved(self) -> Options:
        """These options with ``backend`` (and, if unset, ``n_jobs``) taken
        from an enclosing ``joblib.parallel_config`` when ``backend`` is None."""
        if self.backend is not None:
            return self
        from joblib.parallel import BACKENDS, get_active_backend

        from pandas_parallel.backends.names import DEFAULT

        active, n_jobs = get_active_backend()
        name = next((n for n, cls in BACKENDS.items() if type(active) is cls), DEFAULT)
        return _with_backend(self, name, self.n_jobs if self.n_jobs is not None else n_jobs)

    def replace(self, **changes: Any) -> Options:
        """Return a copy with ``changes`` applied, after validating them."""
        validate(changes)
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name for f in dataclasses.fields(Options)}


def _with_backend(options: Options, backend: str, n_jobs: int | None) -> Options:
    try:
        return _with_backend_cached(options, backend, n_jobs)
    except TypeError:  # an unhashable option (initargs holding a list)
        return dataclasses.replace(options, backend=backend, n_jobs=n_jobs)


@functools.lru_cache(maxsize=64)
def _with_backend_cached(options: Options, backend: str, n_jobs: int | None) -> Options:
    # Cached: options are resolved on every call, and a new dataclass costs
    # a noticeable share of a small call.
    return dataclasses.replace(options, backend=backend, n_jobs=n_jobs)


def validate(changes: dict[str, Any]) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first bad option."""
    for name, value in changes.items():
        if name not in _FIELDS:
            raise TypeError(
                f"unknown pandas_parallel option {name!r}; "
                f"valid options are: {', '.join(sorted(_FIELDS))}"
            )
        _CHECKS[name](value)


def _check_n_jobs(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"n_jobs must be an int or None, got {value!r}")
    if value == 0:
        raise ValueError(
            "n_jobs=0 is not valid: use a positive worker count, "
            "or -1 (or None) for all CPUs"
        )


def _check_backend(value: Any) -> None:
    from pandas_parallel.backends import names  # imports options: not at the top

    names.check(value)


def _check_chunk_size(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"chunk_size must be a positive int or None, got {value!r}")
    if value < 1:
        raise ValueError(f"chunk_size must be at least 1, got {value}")


def _check_partition(value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"partition must be a string, got {value!r}")
    if value in _PARTITIONS:
        return
    from pandas.tseries.frequencies import to_offset

    try:
        to_offset(value)
    except ValueError:
        raise ValueError(
            f"unknown partition {value!r}: use 'rows', 'index' or a pandas "
            "frequency string such as '1D' (for a sorted DatetimeIndex)"
        ) from None


def _check_bool(name: str) -> Any:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")

    return check


def _check_progress(value: Any) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"progress must be True, False or 'auto', got {value!r}")


def _check_transport(value: Any) -> None:
    if value not in _TRANSPORTS:
        raise ValueError(
            f"unknown transport {value!r}; use one of: {', '.join(_TRANSPORTS)}"
        )


def _check_concurrency(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"concurrency must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"concurrency must be at least 1, got {value}")


def _check_timeout(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"timeout must be positive, got {value}")


def _check_initializer(value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"initializer must be a callable or None, got {value!r}")


def _check_initargs(value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(f"initargs must be a tuple, got {value!r}")


def _check_errors(value: Any) -> None:
    if value not in _ERRORS:
        raise ValueError(f"errors must be 'raise' or 'coerce', got {value!r}")


def _check_retries(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"retries must be a non-negative int, got {value!r}")
    if value < 0:
        raise ValueError(f"retries must be 0 or more, got {value}")


def _check_retry_on(value: Any) -> None:
    if isinstance(value, type) and issubclass(value, BaseException):
        raise TypeError("retry_on must be a tuple of exception types: "
                        f"write retry_on=({value.__name__},)")
    if not (isinstance(value, tuple) and value and all(
            isinstance(t, type) and issubclass(t, BaseException) for t in value)):
        raise TypeError(f"retry_on must be a tuple of exception types, got {value!r}")


def _check_retry_delay(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"retry_delay must be a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"retry_delay must be 0 or more, got {value}")


_CHECKS = {
    "n_jobs": _check_n_jobs,
    "backend": _check_backend,
    "chunk_size": _check_chunk_size,
    "partition": _check_partition,
    "serial_fallback": _check_bool("serial_fallback"),
    "progress": _check_progress,
    "transport": _check_transport,
    "concurrency": _check_concurrency,
    "timeout": _check_timeout,
    "fork": _check_bool("fork"),
    "initializer": _check_initializer,
    "initargs": _check_initargs,
    "errors": _check_errors,
    "retries": _check_retries,
    "retry_on": _check_retry_on,
    "retry_delay": _check_retry_delay,
}

@dataclasses.dataclass(eq=False)
class _Change:
    changes: dict[str, Any]
    permanent: bool = False


class _Settings:
    """The settings in force, in two layers. Plain ``config(...)`` calls
    change the process-wide settings, seen by every thread. A ``with
    config(...)`` block changes them only for the code it runs (its thread
    or asyncio task): the scope lives in a ContextVar, so overlapping blocks
    in two threads never see, or leave behind, each other's settings.

    ``base`` is the process-wide settings, changes still pending aside;
    ``pending``, changes made by ``config(...)`` and not yet known to be
    plain calls (whose config object is gone) or blocks (entered), each in
    force process-wide; ``process_wide``, ``base`` with every pending change
    applied. All three under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base = Options()
        self.pending: list[_Change] = []
        self.process_wide = self.base
        self.scoped: contextvars.ContextVar[Options | None] = contextvars.ContextVar(
            "pandas_parallel_options", default=None)
        # Told of each config(...) as it is made (the backends start what a
        # setting will want: the fork server, for fork=False).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def add(self, change: _Change) -> None:
        """In force at once, process-wide (a plain call ends here); a block
        takes it back when entered."""
        with self.lock:
            self.pending.append(change)
            self._settle()

    def take_back(self, change: _Change) -> None:
        with self.lock:
            if change in self.pending:
                self.pending.remove(change)
                self._settle()

    def keep(self, change: _Change) -> None:
        """A config object was dropped without entering a block: a plain
        call, whose change stays for the rest of the session."""
        with self.lock:
            change.permanent = True
            self._settle()

    def _settle(self) -> None:
        """Fold leading permanent changes into the base settings, and apply
        the rest (the caller holds the lock)."""
        while self.pending and self.pending[0].permanent:
            self.base = dataclasses.replace(self.base, **self.pending.pop(0).changes)
        options = self.base
        for change in self.pending:
            options = dataclasses.replace(options, **change.changes)
        self.process_wide = options


SETTINGS = _Settings()


def get_options() -> Options:
    """Return the options in force now: the enclosing ``with config(...)``
    block's, else the process-wide settings."""
    scoped = SETTINGS.scoped.get()
    return SETTINGS.process_wide if scoped is None else scoped


class config:
    """Set options for the whole process, or for a ``with`` block.

    ``pandas_parallel.config(n_jobs=2)`` changes the settings for the rest of
    the session, in every thread. Used as a context manager it changes them
    only inside the block (for its thread, or its asyncio task) and restores
    them on exit; blocks running in other threads do not see it.

    Examples
    --------
    >>> import pandas_parallel
    >>> with pandas_parallel.config(n_jobs=2, progress=False):
    ...     pandas_parallel.get_options().n_jobs
    2
    """

    def __init__(self, **options: Any) -> None:
        validate(options)
        for listener in SETTINGS.listeners:
            listener(options)
        self._change = _Change(options)
        self._token: contextvars.Token[Options | None] | None = None
        SETTINGS.add(self._change)
        self._finalizer = weakref.finalize(self, SETTINGS.keep, self._change)

    def __enter__(self) -> Options:
        self._finalizer.detach()
        SETTINGS.take_back(self._change)
        scoped = dataclasses.replace(get_options(), **self._change.changes)
        self._token = SETTINGS.scoped.set(scoped)
        return scoped

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            SETTINGS.scoped.reset(self._token)
            self._token = None


class _UsableCpus:
    """joblib's count of usable CPUs, counted at most every few seconds (it
    reads cgroup files: 0.3 ms, a tenth of a small call); the pair ``(when
    counted, count)`` is replaced whole, so threads need no lock."""

    EVERY_SECONDS = 5.0

    def __init__(self) -> None:
        self.counted: tuple[float, int] = (-1.0, 0)

    def __call__(self) -> int:
        when, cpus = self.counted
        now = time.monotonic()
        if now - when > self.EVERY_SECONDS:
            import joblib  # (on first use: importing it costs every import 20 ms)

            cpus = joblib.cpu_count()
            self.counted = (now, cpus)
        return cpus


_usable_cpus = _UsableCpus()


def resolve_n_jobs(n_jobs: int | None) -> int:
    """The number of workers ``n_jobs`` means on this machine, at least 1.

    Counts only the CPUs this process may use (affinity mask, cgroup quota),
    as joblib/loky do, not the host's total.
    """
    cpus = _usable_cpus()
    if n_jobs is None:
        return max(1, cpus)
    if n_jobs < 0:
        return max(1, cpus + 1 + n_jobs)
    return n_jobs
