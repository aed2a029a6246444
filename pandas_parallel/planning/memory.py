"""The cost memory: what calls really cost, kept from one call to the next.

Per function (weakly: as long as the function object lives; nothing for
objects that cannot be weakly referenced) and shape of call
(:attr:`.Operation.memory_key`): its compute seconds per row, how far its
parallel calls ran over their estimates, what its results cost to send
back, up to how many rows its calls were clearly too cheap for workers, and
whether parallel is paused after a call that lost to pandas. Per kind of
operation: pandas' fixed cost per call. Per place (this machine, a
cluster): how moving data compared with the model.

Figures are medians of the last few observations, so one noisy call (a
busy machine, a first call's warm-up) does not decide the next. Only
:func:`.planner.learn` writes here.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import threading
import weakref
from collections.abc import Hashable
from typing import Any

from pandas_parallel.planning.costs import ResultCost

RECENT = 5  # observations a figure is the median of
# A parallel call slower than pandas would have been pauses parallel for
# calls like it: for this many calls at first, twice as many after each
# further loss, up to the second figure; a call that wins resets it.
PAUSE_CALLS = (4, 64)
# Calls a pause covers: up to this many times the rows of the call that lost
# (a larger one may well win).
PAUSE_ROWS_FACTOR = 2
# An overrun is kept within these bounds: a call cannot be priced much below
# the model (its figures are conservative already), nor one hiccup as
# hopeless.
OVERRUN_BOUNDS = (0.8, 20.0)


@dataclasses.dataclass(frozen=True)
class Known:
    """What is known of one function in one shape of call, as the planner
    reads it."""

    per_row: float | None = None  # compute seconds per row
    cpu_share: float | None = None  # of its time computing (not waiting)
    overrun: float = 1.0  # parallel calls took this many times their estimate
    results: ResultCost | None = None  # sending a unit's result back
    cheap_up_to: int = 0  # calls this small were clearly too cheap for workers
    paused_up_to: int = 0  # calls this small run serially for now (a loss)
    inputs: ResultCost | None = None  # sending a unit of input to a worker (objects)


NOTHING = Known()


class Record:
    """The mutable figures behind a :class:`Known`, changed under the
    memory's lock."""

    def __init__(self) -> None:
        self.per_row: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.cpu_share: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.overrun: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.results: ResultCost | None = None
        self.inputs: ResultCost | None = None
        self.cheap_up_to = 0
        self.paused_up_to = 0
        self.paused_calls = 0  # serial calls left before parallel is tried again
        self.pause = PAUSE_CALLS[0]

    def known(self) -> Known:
        return Known(
            statistics.median(self.per_row) if self.per_row else None,
            statistics.median(self.cpu_share) if self.cpu_share else None,
            statistics.median(self.overrun) if self.overrun else 1.0,
            self.results, self.cheap_up_to, self.paused_up_to, self.inputs)

    def note_per_row(self, seconds: float, cpu_share: float | None) -> None:
        self.per_row.append(seconds)
        if cpu_share is not None:
            self.cpu_share.append(cpu_share)

    def note_results(self, cost: ResultCost | None, result_bytes: float | None) -> None:
        """What sending results back cost: encoding and decoding as last
        measured (on a sample), bytes per unit as last seen."""
        cost = cost or self.results or ResultCost(0.0, 0.0)
        if result_bytes is not None:
            cost = dataclasses.replace(cost, bytes=result_bytes)
        self.results = cost

    def note_inputs(self, cost: ResultCost | None) -> None:
        """What sending a unit of input to a worker cost, as last measured
        (on a sample; only for inputs holding Python objects)."""
        if cost is not None:
            self.inputs = cost

    def note_cheap(self, rows: int, cheap: bool) -> None:
        """A whole call over ``rows`` was (or was not) clearly too cheap:
        calls no larger are (or are no longer known to be)."""
        if cheap:
            self.cheap_up_to = max(self.cheap_up_to, rows)
        elif rows <= self.cheap_up_to:
            self.cheap_up_to = 0

    def note_parallel(self, rows: int, overrun: float, lost: bool) -> None:
        low, high = OVERRUN_BOUNDS
        self.overrun.append(min(high, max(low, overrun)))
        if lost:
            self.paused_up_to = PAUSE_ROWS_FACTOR * rows
            self.paused_calls = self.pause
            self.pause = min(PAUSE_CALLS[1], 2 * self.pause)
        else:
            self.pause = PAUSE_CALLS[0]

    def note_paused_call(self) -> None:
        """A call ran serially for the pause: after the last one, parallel
        is priced afresh (the overruns that made it lose are dropped)."""
        self.paused_calls -= 1
        if self.paused_calls <= 0:
            self.paused_up_to = 0
            self.overrun.clear()


class CostMemory:
    """Every figure the planner learns, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: weakref.WeakKeyDictionary[Any, dict[Hashable, Record]] = (
            weakref.WeakKeyDictionary())
        self._fixed: dict[Hashable, float] = {}  # pandas' fixed cost per call
        self._transfer: dict[str, collections.deque[float]] = {}  # measured / modelled

    def known(self, func: Any, key: Hashable | None) -> Known:
        """What is known of ``func`` in calls of shape ``key``."""
        if key is None:
            return NOTHING
        try:
            with self._lock:
                record = self._records.get(func, {}).get(key)
                return record.known() if record is not None else NOTHING
        except TypeError:  # not weakly referenceable, or the key not hashable
            return NOTHING

    def cheap_up_to(self, func: Any, key: Hashable) -> int:
        """:attr:`Known.cheap_up_to`, read without the lock (a lookup is
        atomic, and this one is on the path of every repeated call)."""
        try:
            record = self._records.get(func, {}).get(key)
        except TypeError:
            return 0
        return record.cheap_up_to if record is not None else 0

    def fixed_cost(self, family: Hashable) -> float:
        """pandas' fixed cost per call of ``family`` (0 until learned)."""
        return self._fixed.get(family, 0.0)

    def transfer_factor(self, place: str) -> float:
        """How many times the model's figure moving data took at ``place``
        (``"local"`` or ``"cluster"``), lately; 1.0 until measured."""
        with self._lock:
            seen = self._transfer.get(place)
            return statistics.median(seen) if seen else 1.0

    # -- written by planner.learn only -------------------------------------------
    def change(self, func: Any, key: Hashable | None, how: Any) -> None:
        """Call ``how(record)`` on the record of ``func`` and ``key`` (made
        if new), under the lock; nothing for what cannot be remembered."""
        if key is None:
            return
        try:
            with self._lock:
                records = self._records.setdefault(func, {})
                how(records.setdefault(key, Record()))
        except TypeError:
            pass

    def note_fixed_cost(self, family: Hashable, seconds: float) -> None:
        """The smallest seen is kept (a noisy sample can only make it look
        larger)."""
        with self._lock:
            self._fixed[family] = min(seconds, self._fixed.get(family, seconds))

    def note_transfer(self, place: str, factor: float) -> None:
        with self._lock:
            self._transfer.setdefault(place, collections.deque(maxlen=RECENT)).append(
                min(OVERRUN_BOUNDS[1], max(OVERRUN_BOUNDS[0], factor)))

    def forget(self) -> None:
        """Forget everything learned (as a fresh process knows nothing)."""
        with self._lock:
            self._records.clear()
            self._fixed.clear()
            self._transfer.clear()


MEMORY = CostMemory()
