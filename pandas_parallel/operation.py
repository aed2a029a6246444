"""An operation: one parallel pandas call, described as data.

:mod:`.accessor`, :mod:`.groupby` and :mod:`.windows` build operations;
:mod:`.planning` prices them and :mod:`.pipeline` runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import policies
from pandas_parallel.errors import WorkerCrashedError
from pandas_parallel.options import Options
from pandas_parallel.splitting import Units
from pandas_parallel.worker import failing_call, show_label


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
    memory_key : hashable or None
        What, besides its function, the cost memory knows the call by (the
        method, the input's type and columns, the other arguments, the
        backend; see :func:`.routing.memory_key`); ``None``: nothing is
        remembered of it (an argument is not hashable).
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
    memory_key: Hashable | None = None

    @property
    def rows(self) -> int:
        """Rows of the input."""
        return len(self.units.obj)

    @property
    def family(self) -> Hashable:
        """What pandas' fixed cost per call depends on: the operation and
        the columns a row holds, whatever the function."""
        obj = self.units.obj
        return (self.label, self.unit, type(obj), obj.shape[1:])

    def work_rows(self, start: int, stop: int) -> int:
        """The rows units ``[start, stop)`` hold (all rows of each column,
        for column units): what a function's cost is proportional to."""
        if self.units.columns:
            return (stop - start) * len(self.units.obj)
        return self.units.rows_in(start, stop)

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

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Around running chunks: for ``failures_need_whole``, a failure of
        the function becomes :class:`PandasDecides` (a worker's crash stays
        what it is)."""
        try:
            yield
        except Exception as exc:
            if not self.failures_need_whole or isinstance(exc, WorkerCrashedError):
                raise
            raise PandasDecides(f"{type(exc).__name__}: {exc}") from exc

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


class PandasDecides(Exception):
    """A chunk failed in an operation whose failures depend on the whole
    input: pandas runs the whole call for its own answer."""


@dataclasses.dataclass(frozen=True)
class Run:
    """How a call ran: ``backend`` is ``"serial"`` (pandas in this process),
    ``"async"`` (an ``async def`` function's coroutines, ``workers`` at a
    time, in this process) or the backend's name (``"forked"``,
    ``"forkserver"``, ``"pool"``, ``"threads"``, ``"dask"``, ``"ray"``,
    ``"joblib"``); ``start`` how its workers started: ``"fork"`` (forked from
    this process for the call), ``"server"`` (forked from the fork server for
    the call), ``"starting"`` (the fork server started for the call, and this
    process ran chunks until it was up), ``"warm"`` (already running: kept
    from an earlier call, or a cluster's) or ``"cold"`` (the pool, started
    for the call)."""

    backend: str
    workers: int = 1
    chunks: int = 0
    start: str = ""


SERIAL = Run("serial")
