"""Plan: serial or parallel, and how many chunks.

The estimate is measured, not guessed: the first few units (rows, columns,
groups) run in this process, timed, and their results are kept as the
first piece of the answer - the function never runs twice on a row. A
function called again on the same kind of input skips the sample: the cost
per row measured over all of its last call is remembered
(:func:`remember`, :func:`recall`). From the per-unit cost, the known cost
of starting workers and of moving bytes, the planner picks serial or
parallel and sizes chunks so each takes a useful fraction of a second,
several per worker.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Hashable
from typing import Any

# Measured on a 2-core machine; conservative so parallel is chosen only
# when it clearly wins (see benchmarks/).
# Each starting worker spends CPU time importing pandas and pyarrow, on the
# same cores that do the work (this process works meanwhile: see
# backends.pool): 0.4 s measured on one 2-core machine, 1.0 s on a
# slower one, where at 0.4 a 2 s first call on a cold pool went parallel
# and took 2.2 s. The slower figure: a call this misjudges runs serially
# and starts the pool for the next one, rather than slower than pandas.
WORKER_START_CPU_SECONDS = 1.0
# Forking a worker from this process for one call (backends.forked):
# about 4 ms each, plus about 1 ms per GB the process holds (page tables),
# plus the worker's first writes to memory it shares with this process
# (copy-on-write): 10-15 ms on a 0.1 s map, measured.
FORK_START_SECONDS = 0.02
# The fork server (forkserver.py): its start, a fresh interpreter importing
# pandas, pyarrow and this library (0.45-0.5 s measured on a quiet 2-core
# machine), on another core while this process works, so a slower start
# costs nothing but the gain; then each worker's fork from it (a small
# process: a few milliseconds).
SERVER_START_SECONDS = 0.6
SERVER_FORK_SECONDS = 0.005
# While the server starts this process runs chunks, and looks for its
# workers between two: chunks no longer than this, so they take over soon.
STARTING_CHUNK_SECONDS = 0.1
TASK_OVERHEAD_SECONDS = 0.003  # ship, schedule, fetch and combine one chunk
TRANSFER_BYTES_PER_SECOND = 1.0e9
PROBE_SECONDS = 0.006  # the last (largest) sample must take this long
# On two workers, the first sample is 1/100 of the work, and all samples
# together at most 1/10 (see probe_sizes).
PROBE_FIRST_SHARES, PROBE_MAX_SHARES = 100, 10
# Remaining work projected below this runs serially, without sampling more:
# too little for workers to win by much (by estimate(), two warm workers
# need over 0.012 s, forked ones 0.09 s), while the projection from a small
# sample carries pandas' fixed cost per call and so is no basis to go
# parallel on.
CLEARLY_SERIAL_SECONDS = 0.02
PARALLEL_GAIN_REQUIRED = 0.75  # parallel must take < 75% of the serial time
TARGET_CHUNK_SECONDS = (0.05, 1.0)  # each chunk's duration lies in this range
CHUNKS_PER_WORKER = 4
# What this process spends on each chunk, one after another: hand it out,
# read its result, combine it (0.3-0.6 ms measured on small chunks); and
# the share of a call it may take at the most.
PARENT_SECONDS_PER_CHUNK = 0.0005
PARENT_SHARE = 0.05
MAX_CHUNK_BYTES = 256 * 2**20
# On a cluster (dask, Ray) every chunk crosses the network and the
# scheduler: fewer, larger chunks.
CLUSTER_TASK_OVERHEAD_SECONDS = 0.02
CLUSTER_BYTES_PER_SECOND = 1.0e8
CLUSTER_CHUNKS_PER_WORKER = 2
CLUSTER_TARGET_CHUNK_SECONDS = (0.25, 10.0)
# Start workers for next time only when a later call like this one would
# save a meaningful amount (starting them costs CPU).
MIN_SECONDS_TO_START_POOL = 0.5
# A measured cost is remembered only from this much work: on less, pandas'
# fixed cost per call (up to a couple of milliseconds for a groupby) would
# inflate the cost per row by more than a tenth. Below it, a call is clearly
# serial (remember_cheap), so every call size is remembered one way or the
# other and no repeated call samples again.
MIN_SECONDS_TO_REMEMBER = CLEARLY_SERIAL_SECONDS


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Predicted seconds for the remaining work, serial and parallel."""

    serial: float
    parallel: float

    @property
    def parallel_wins(self) -> bool:
        return self.parallel < PARALLEL_GAIN_REQUIRED * self.serial


@dataclasses.dataclass(frozen=True)
class ProgramCost:
    """What a call's program weighs for workers that do not hold it (all
    but those forked for the call): its pickle, sent to each worker, and
    its large buffers, hashed here and written once where the store does
    not hold them yet (see :mod:`pandas_parallel.programs`)."""

    pickle_bytes: int
    buffer_bytes: int = 0
    unstored_bytes: int = 0

    def seconds(self, n_workers: int, bytes_per_second: float) -> float:
        hashing = self.buffer_bytes / (HASH_BYTES_PER_SECOND * min(n_workers, 8))
        stored = STORE_WRITE_SHARE * self.unstored_bytes / STORE_BYTES_PER_SECOND
        return self.pickle_bytes * n_workers / bytes_per_second + stored + hashing


# Hashing a program's large buffers: CRC-32 at 4 GB/s a core, on as many
# cores as there are 64 MB blocks (taken as the workers, up to 8).
HASH_BYTES_PER_SECOND = 4.0e9
# Writing a buffer into the store (shared memory), which workers then map:
# 2.5 GB/s measured for 500 MB on a 2-core machine. Written once, it serves
# the calls after this one too: this call is charged half. (Charged in full,
# a call of a function holding 500 MB, twice as fast on warm workers, ran
# serially call after call: none ever wrote it.)
STORE_BYTES_PER_SECOND = 2.0e9
STORE_WRITE_SHARE = 0.5


def estimate(seconds_per_unit: float, units: int, n_workers: int, n_bytes: int,
             workers: str = "warm", cluster: bool = False,
             results: ResultCost | None = None,
             bytes_per_second: float | None = None,
             program: ProgramCost | None = None,
             starting_seconds: float = SERVER_START_SECONDS) -> Estimate:
    """Serial vs parallel time for ``units`` more units of work.

    ``workers`` says how the call gets its worker processes: ``"warm"``
    (already running, or a cluster's), ``"fork"`` (forked from this process
    for the call), ``"server"`` (forked from the fork server for the call),
    ``"starting"`` (the same, once the fork server has started; this process
    works meanwhile) or ``"cold"`` (started, importing pandas, during the
    call).
    ``results``: what sending each unit's result back costs, when measured;
    ``bytes_per_second``: how fast the backend moves data, when measured;
    ``program``: what the call's program weighs; ``starting_seconds``: how
    long the fork server still takes to start (``"starting"``).
    """
    serial = seconds_per_unit * units
    if workers == "starting":
        # This process runs the call alone until the server is up.
        lead = min(serial, starting_seconds)
        rest = int(units * (1 - lead / serial)) if serial > 0 else 0
        after = estimate(seconds_per_unit, rest, n_workers, n_bytes * rest // max(units, 1),
                         "server", cluster, results, bytes_per_second, program)
        return Estimate(serial, lead + after.parallel if rest else serial + n_workers
                        * SERVER_FORK_SECONDS)
    n_chunks = chunk_count(seconds_per_unit, units, n_workers, n_bytes, cluster)
    start_cpu = {"warm": 0.0, "fork": FORK_START_SECONDS, "server": SERVER_FORK_SECONDS,
                 "cold": WORKER_START_CPU_SECONDS}[workers] * n_workers
    overhead = CLUSTER_TASK_OVERHEAD_SECONDS if cluster else TASK_OVERHEAD_SECONDS
    rate = bytes_per_second or (CLUSTER_BYTES_PER_SECOND if cluster
                                else TRANSFER_BYTES_PER_SECOND)
    # Forked workers read their input from memory; results still travel.
    sent = 0 if workers == "fork" else n_bytes
    returned = n_bytes if results is None or results.bytes is None else units * results.bytes
    parallel = (
        (serial + start_cpu) / n_workers
        + n_chunks * overhead / n_workers
        + (sent + returned) / rate
    )
    if results is not None:  # encoded in the workers, decoded here, one by one
        parallel += units * (results.encode / n_workers + results.decode)
    if program is not None and workers != "fork":  # forked ones hold it already
        parallel += program.seconds(n_workers, rate)
    return Estimate(serial, parallel)


def forking_is_cheaper(n_bytes: int, n_workers: int, program: ProgramCost | None) -> bool:
    """Whether sending ``n_bytes`` of input and the program to workers that
    are running costs more than forking new ones, which hold both already
    (what :func:`estimate` weighs when it prices a call, without its work)."""
    seconds = n_bytes / TRANSFER_BYTES_PER_SECOND
    if program is not None:
        seconds += program.seconds(n_workers, TRANSFER_BYTES_PER_SECOND)
    return seconds > FORK_START_SECONDS


@dataclasses.dataclass(frozen=True)
class ResultCost:
    """Seconds per unit to encode a result in a worker and decode it here
    (objects pickled one by one; 0 for numbers), and its bytes per unit
    (``None``: not known, taken as the input's)."""

    encode: float
    decode: float
    bytes: float | None = None


def remember_results(func: Any, kind: Hashable, cost: ResultCost) -> None:
    """Note what sending results of ``func`` back cost per unit."""
    _note(_costs, func, ("results", kind), cost)


def recall_results(func: Any, kind: Hashable) -> ResultCost | None:
    cost = _known(_costs, func, ("results", kind))
    return cost if isinstance(cost, ResultCost) else None


def chunk_count(seconds_per_unit: float | None, units: int, n_workers: int,
                n_bytes: int, cluster: bool = False, starting: bool = False) -> int:
    """How many chunks to cut ``units`` into.

    Several per worker, so a slow chunk does not leave cores idle; none so
    short that overhead dominates, none so long that the progress bar
    stalls, none larger than :data:`MAX_CHUNK_BYTES`. ``starting``: this
    process runs chunks while the fork server starts, looking between two
    for its workers: none longer than :data:`STARTING_CHUNK_SECONDS`.
    """
    if units <= 0:
        return 0
    n = n_workers * (CLUSTER_CHUNKS_PER_WORKER if cluster else CHUNKS_PER_WORKER)
    if seconds_per_unit is not None and seconds_per_unit > 0:
        total = seconds_per_unit * units
        shortest, longest = CLUSTER_TARGET_CHUNK_SECONDS if cluster else TARGET_CHUNK_SECONDS
        if starting:
            longest = STARTING_CHUNK_SECONDS
        if total / n < shortest:
            n = max(n_workers, math.floor(total / shortest))
        elif total / n > longest:
            n = math.ceil(total / longest)
        # This process handles chunks one after another: with many workers,
        # fewer chunks, so that handling them stays a small share of the call.
        affordable = PARENT_SHARE * total / n_workers / PARENT_SECONDS_PER_CHUNK
        n = min(n, max(n_workers, math.floor(affordable)))
    n = max(n, math.ceil(n_bytes / MAX_CHUNK_BYTES))
    # A whole number of chunks per worker: with one chunk more than a
    # multiple, one worker runs it while the others idle (0.5 s in 11 s, on
    # 23 one-second chunks over two workers).
    n = math.ceil(n / n_workers) * n_workers
    return max(1, min(n, units))


def probe_sizes(units: int, n_workers: int = 2) -> list[int]:
    """Doubling sample sizes within the sampling budget.

    On two workers the first sample is 1% of the work (at least one unit)
    and all of them at most 10%. Samples' results are kept, so a sample
    costs only the parallelism it forgoes (half its time, on two cores),
    while each one pays pandas' fixed cost per call (a groupby's is a
    couple of milliseconds): on typical work this takes two samples where
    starting at 0.1% took four, and on cheap work over a few thousand rows
    one sample shows it is too little for workers (a smaller one would carry
    so much of pandas' fixed cost that it could not tell).

    With more workers each share shrinks in proportion: what a sample
    forgoes grows with the workers that could have shared it (1% of the
    work is 64% of what 64 workers take for all of it).
    """
    shares = max(2, n_workers) // 2
    limit = max(1, units // (PROBE_MAX_SHARES * shares))
    sizes, size, taken = [], max(1, units // (PROBE_FIRST_SHARES * shares)), 0
    while taken + size <= limit:
        sizes.append(size)
        taken += size
        size *= 2
    return sizes


def cost_per_row(samples: list[tuple[int, float]], fixed: float = 0.0) -> float:
    """Seconds per row from timed samples ``(rows, seconds)`` of growing size.

    Each sample carries pandas' fixed cost per call, which inflates a small
    sample's average (a row-wise ``apply`` pays about 0.35 ms per call, a
    groupby about 1 ms). Between two samples of different sizes it cancels:
    the cost is the slope between the last two, kept between half the last
    sample's average (so timing noise cannot make work look free) and that
    average. With a single sample, ``fixed`` (pandas' fixed cost for this
    kind of call, learned from earlier calls: :func:`fixed_cost`) is taken
    off, keeping at least a tenth of the average.
    """
    rows, seconds = samples[-1]
    average = seconds / max(rows, 1)
    if len(samples) < 2 or rows <= samples[-2][0]:
        return max(average / 10, (seconds - fixed) / max(rows, 1)) if fixed else average
    before_rows, before_seconds = samples[-2]
    slope = (seconds - before_seconds) / (rows - before_rows)
    return min(average, max(slope, average / 2))


def learn_fixed_cost(kind: Hashable, samples: list[tuple[int, float]]) -> None:
    """Note pandas' fixed cost per call of ``kind`` (the operation and the
    input's shape, whatever the function), from samples of different sizes:
    what the last one took beyond the slope between the last two. The
    smallest seen is kept (a noisy sample can only make it look larger)."""
    if len(samples) < 2 or samples[-1][0] <= samples[-2][0]:
        return
    (before_rows, before_seconds), (rows, seconds) = samples[-2:]
    slope = (seconds - before_seconds) / (rows - before_rows)
    fixed = seconds - slope * rows
    if slope > 0 and 0 < fixed <= samples[0][1]:
        with _memory_lock:
            _fixed[kind] = min(fixed, _fixed.get(kind, fixed))


def fixed_cost(kind: Hashable) -> float:
    """pandas' fixed cost per call of ``kind``, if learned (else 0)."""
    return _fixed.get(kind, 0.0)


# What was learned of each function, per kind of call (the operation and the
# shape of a row): kept as long as the function object lives; nothing is kept
# for objects that cannot be weakly referenced (mappings, some built-ins).
_Memory = weakref.WeakKeyDictionary[Any, dict[Hashable, Any]]
_costs: _Memory = weakref.WeakKeyDictionary()  # seconds per row
_cheap: _Memory = weakref.WeakKeyDictionary()  # rows that were clearly serial
_fixed: dict[Hashable, float] = {}  # pandas' fixed cost per call, by kind of call
_memory_lock = threading.Lock()


def _note(memory: _Memory, func: Any, kind: Hashable, value: Any) -> None:
    try:
        with _memory_lock:
            known = memory.setdefault(func, {})
            if value is None:
                known.pop(kind, None)
            else:
                known[kind] = value
    except TypeError:
        pass


def _known(memory: _Memory, func: Any, kind: Hashable) -> Any:
    # No lock: a lookup is atomic, and this one is on the path of every call.
    try:
        return memory.get(func, {}).get(kind)
    except TypeError:  # not weakly referenceable, or the kind not hashable
        return None


def remember(func: Any, kind: Hashable, seconds: float, rows: int) -> None:
    """Note that ``func`` took ``seconds`` over ``rows`` rows, in a call of
    ``kind``, for later calls (only from enough work to measure soundly)."""
    if seconds >= MIN_SECONDS_TO_REMEMBER and rows > 0:
        _note(_costs, func, kind, seconds / rows)


def recall(func: Any, kind: Hashable) -> float | None:
    """Seconds per row that ``func`` took in the last call of ``kind``
    long enough to measure, or ``None``."""
    return _known(_costs, func, kind)


def remember_cheap(func: Any, kind: Hashable, rows: int, seconds: float) -> None:
    """Note a whole call of ``kind`` over ``rows`` rows that took only
    ``seconds``: calls no larger can go to pandas without sampling. One no
    larger that took :data:`CLEARLY_SERIAL_SECONDS` or more unlearns it."""
    known = cheap_up_to(func, kind)
    if seconds >= CLEARLY_SERIAL_SECONDS:
        if rows <= known:
            _note(_cheap, func, kind, None)
    elif rows > known:
        _note(_cheap, func, kind, rows)


def cheap_up_to(func: Any, kind: Hashable) -> int:
    """Calls of ``kind`` with up to this many rows were clearly too cheap
    for workers (0 when nothing is known)."""
    return int(_known(_cheap, func, kind) or 0)
