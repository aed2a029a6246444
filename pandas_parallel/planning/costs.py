"""The cost model: what a call costs serially and in parallel, as pure
functions of what is measured or known (no state, no clock).

The figures are measured on 2-core machines and conservative, so parallel
is chosen only when it clearly wins (see ``benchmarks/``); what calls
really cost corrects them (:mod:`.memory`).
"""

from __future__ import annotations

import dataclasses
import math

from pandas_parallel.transport import ARROW_MIN_COLUMN_BYTES

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
# A chunk travelling by Arrow costs each of its columns about 20 us to write
# and read back into pandas (transport sends numbers by Arrow only in
# columns long enough for that to be a small part: ARROW_MIN_COLUMN_BYTES).
COLUMN_SECONDS = 2.0e-5
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
# serial (cheap_up_to), so every call size is remembered one way or the
# other and no repeated call samples again.
MIN_SECONDS_TO_REMEMBER = CLEARLY_SERIAL_SECONDS
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

#: How a call gets its worker processes: already running (or a cluster's),
#: forked from this process for it, forked from the fork server for it, the
#: same once the fork server is up (this process works meanwhile), or
#: started during the call, importing pandas.
STARTS = ("warm", "fork", "server", "starting", "cold")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Predicted seconds for the remaining work: ``serial``, in this
    process; in parallel, the sum of named ``terms`` (``compute``,
    ``start``, ``tasks``, ``input``, ``results``, ``program``, ``alone``
    while the fork server starts, ``overrun`` that earlier calls ran over
    their estimates)."""

    serial: float
    terms: tuple[tuple[str, float], ...] = ()

    @property
    def parallel(self) -> float:
        return sum(seconds for _, seconds in self.terms)

    @property
    def parallel_wins(self) -> bool:
        return self.parallel < PARALLEL_GAIN_REQUIRED * self.serial

    def term(self, name: str) -> float:
        return sum(seconds for term, seconds in self.terms if term == name)

    def with_term(self, name: str, seconds: float) -> Estimate:
        return dataclasses.replace(self, terms=(*self.terms, (name, seconds)))

    def __str__(self) -> str:
        parts = " + ".join(f"{name} {seconds:.3f}" for name, seconds in self.terms
                           if seconds)
        return (f"serial {self.serial:.3f}s, parallel {self.parallel:.3f}s"
                + (f" ({parts})" if parts else ""))


NEVER = Estimate(0.0, (("never", math.inf),))


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


@dataclasses.dataclass(frozen=True)
class ResultCost:
    """Seconds per unit to encode a result in a worker and decode it here
    (objects pickled one by one; 0 for numbers), and its bytes per unit
    (``None``: not known, taken as the input's)."""

    encode: float
    decode: float
    bytes: float | None = None


@dataclasses.dataclass(frozen=True)
class Work:
    """The work an estimate prices: ``units`` more units at
    ``seconds_per_unit``, ``n_bytes`` of input in ``n_columns`` columns
    (split by columns when ``by_columns``), on ``n_workers``. For workers
    that are threads of this process, ``cpu_share`` is the share of the
    work spent computing (not waiting), which holds the GIL: that part runs
    one thread at a time. ``inputs``: for input holding Python objects,
    the seconds per unit to encode it here and decode it in a worker
    (measured on a sample: object strings cost far more than their
    pointers' bytes say)."""

    seconds_per_unit: float
    units: int
    n_workers: int
    n_bytes: int = 0
    n_columns: int = 1
    by_columns: bool = False
    cpu_share: float | None = None
    inputs: ResultCost | None = None

    @property
    def serial(self) -> float:
        return self.seconds_per_unit * self.units

    def rest(self, share: float) -> Work:
        """The part left after the first ``1 - share`` of it."""
        units = int(self.units * share)
        return dataclasses.replace(self, units=units,
                                   n_bytes=self.n_bytes * units // max(self.units, 1))


@dataclasses.dataclass(frozen=True)
class Transfer:
    """How fast data moves to the workers and back: bytes a second, and a
    factor measured calls found over the model (1.0 until measured)."""

    bytes_per_second: float = TRANSFER_BYTES_PER_SECOND
    factor: float = 1.0

    def seconds(self, n_bytes: float, columns: float) -> float:
        return self.factor * (n_bytes / self.bytes_per_second + columns * COLUMN_SECONDS)


def estimate(work: Work, workers: str = "warm", cluster: bool = False,
             results: ResultCost | None = None, transfer: Transfer | None = None,
             program: ProgramCost | None = None,
             starting_seconds: float = SERVER_START_SECONDS) -> Estimate:
    """Serial vs parallel time for ``work``.

    ``workers`` says how the call gets its worker processes (one of
    :data:`STARTS`); ``results``: what sending each unit's result back
    costs, when measured; ``transfer``: how fast data moves (the cluster's
    rate, when measured); ``program``: what the call's program weighs;
    ``starting_seconds``: how long the fork server still takes to start
    (``"starting"``).
    """
    if transfer is None:
        transfer = Transfer(CLUSTER_BYTES_PER_SECOND if cluster else TRANSFER_BYTES_PER_SECOND)
    serial = work.serial
    if workers == "starting":
        # This process runs the call alone until the server is up.
        alone = min(serial, starting_seconds)
        rest = work.rest(1 - alone / serial if serial > 0 else 0.0)
        if not rest.units:
            return Estimate(serial, (("alone", serial),
                                     ("start", work.n_workers * SERVER_FORK_SECONDS)))
        after = estimate(rest, "server", cluster, results, transfer, program)
        return Estimate(serial, (("alone", alone), *after.terms))
    n = work.n_workers
    n_chunks = chunk_count(work.seconds_per_unit, work.units, n, work.n_bytes, cluster)
    start_cpu = {"warm": 0.0, "fork": FORK_START_SECONDS, "server": SERVER_FORK_SECONDS,
                 "cold": WORKER_START_CPU_SECONDS}[workers] * n
    overhead = CLUSTER_TASK_OVERHEAD_SECONDS if cluster else TASK_OVERHEAD_SECONDS
    held = serial * (work.cpu_share or 0.0)  # one thread at a time
    terms = [("compute", held + (serial - held) / n), ("start", start_cpu / n),
             ("tasks", n_chunks * overhead / n)]
    # Forked workers read their input from memory; results still travel.
    if workers != "fork":
        sending = transfer.seconds(work.n_bytes, _arrow_columns(work, n_chunks, work.n_bytes))
        if work.inputs is not None:  # encoded here, one chunk after another; decoded there
            sending += work.units * (work.inputs.encode + work.inputs.decode / n)
        terms.append(("input", sending))
    returned = (work.n_bytes if results is None or results.bytes is None
                else work.units * results.bytes)
    sending_back = transfer.seconds(returned, _arrow_columns(work, n_chunks, returned))
    if results is not None:  # encoded in the workers, decoded here, one by one
        sending_back += work.units * (results.encode / n + results.decode)
    terms.append(("results", sending_back))
    if program is not None and workers != "fork":  # forked ones hold it already
        terms.append(("program", program.seconds(n, transfer.bytes_per_second)))
    return Estimate(serial, tuple(terms))


def _arrow_columns(work: Work, n_chunks: int, n_bytes: float) -> float:
    """Columns of chunks that travel by Arrow, each at :data:`COLUMN_SECONDS`
    (short ones are pickled in blocks instead)."""
    columns = work.n_columns if work.by_columns else work.n_columns * n_chunks
    return columns if n_bytes / max(columns, 1) >= ARROW_MIN_COLUMN_BYTES else 0


def forking_is_cheaper(n_bytes: int, n_workers: int, program: ProgramCost | None) -> bool:
    """Whether sending ``n_bytes`` of input and the program to workers that
    are running costs more than forking new ones, which hold both already
    (what :func:`estimate` weighs when it prices a call, without its work)."""
    seconds = n_bytes / TRANSFER_BYTES_PER_SECOND
    if program is not None:
        seconds += program.seconds(n_workers, TRANSFER_BYTES_PER_SECOND)
    return seconds > FORK_START_SECONDS


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


def fixed_cost(samples: list[tuple[int, float]] | tuple[tuple[int, float], ...]
               ) -> float | None:
    """pandas' fixed cost per call, from samples of different sizes: what the
    last one took beyond the slope between the last two (``None`` when the
    samples cannot tell)."""
    if len(samples) < 2 or samples[-1][0] <= samples[-2][0]:
        return None
    (before_rows, before_seconds), (rows, seconds) = samples[-2:]
    slope = (seconds - before_seconds) / (rows - before_rows)
    fixed = seconds - slope * rows
    return fixed if slope > 0 and 0 < fixed <= samples[0][1] else None
