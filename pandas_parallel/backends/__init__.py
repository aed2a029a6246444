"""Run: where a call's chunks execute, behind one interface.

A :class:`Backend` says what it needs (the program pickled or not, chunks
as shared files, in this process's memory or in-band), how many workers it
has, how its workers start (for the plan's price), and runs tasks:
``run(tasks, job)`` yields each chunk's :class:`~pandas_parallel.worker.Outcome`
as it finishes, raises the first failure at once and a dead worker as
:class:`~pandas_parallel.errors.WorkerCrashedError`. :func:`choose` picks
one per call; nothing else in the package names a backend.

=========== ============================================ =====================
name        where chunks run                             module
=========== ============================================ =====================
forked      processes forked from this one, then kept    :mod:`.forked`
forkserver  processes forked from a fork server, kept    :mod:`.forkserver`
pool        loky's warm pool of fresh interpreters       :mod:`.pool`
threads     threads of this process                      :mod:`.threads`
dask        the active ``dask.distributed`` Client       :mod:`.dask`
ray         a Ray runtime                                :mod:`.ray`
joblib      any other registered joblib backend          :mod:`.joblib`
=========== ============================================ =====================
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import multiprocessing
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from pandas_parallel.backends.names import DEFAULT, Traits, traits_of
from pandas_parallel.executor import EXITING, Progress, Reporter
from pandas_parallel.options import Options, resolve_n_jobs
from pandas_parallel.programs import Program
from pandas_parallel.splitting import Units
from pandas_parallel.transport import Deferred, Inline, Payload
from pandas_parallel.worker import Counters, Outcome, Task

__all__ = ["Backend", "Job", "Traits", "capacity", "choose", "prepare", "traits"]


@dataclasses.dataclass
class Job:
    """What a backend gets for one call, besides its tasks."""

    n_workers: int
    progress: Progress
    reporter: Reporter
    counters: Counters
    #: The program as this process has it: a chunk run here runs it, not a
    #: copy decoded from what the workers get (the caller's own code travels
    #: by value: a copy's globals are not the caller's).
    program: Program
    timeout: float | None = None
    #: errors="coerce": a call past the timeout that cannot be interrupted
    #: becomes missing; backends that can replace its worker go on.
    coerce: bool = False

    def here(self, task: Task) -> Task:
        """``task`` to run in this process (while workers start)."""
        return dataclasses.replace(task, result_dir=None, seed=None, place="caller",
                                   program=self.program)


class Backend:
    """Where one call's chunks run. Subclasses set the class attributes and
    implement :meth:`run`."""

    name: str
    #: Workers live in this process: the program and chunks are not pickled.
    in_process = False
    #: Workers are processes on this machine: chunks and results travel as
    #: files in the call's scratch directory.
    shares_files = True
    #: Each chunk crosses a network: the planner prices it so.
    cluster = False
    #: Workers get the program pickled (else as the object: they share or
    #: copied this process's memory). Pickled once per call either way,
    #: except in this process, so an unpicklable function fails alike.
    pickles_program = True
    #: Where chunks run, which says what of the caller's state a worker
    #: applies and what it sends back (see :data:`.worker.PLACES`).
    place = "process"
    #: For a person: which path calls take on it, and how its workers
    #: started, by the planner's word for it (see :func:`describe`).
    path = ""
    started: dict[str, str] = {}

    def capacity(self, n_jobs: int | None) -> int:
        """The workers ``n_jobs`` means here."""
        return resolve_n_jobs(n_jobs)

    def start(self, n_workers: int) -> str:
        """How workers start for this call, as the planner prices it:
        ``"warm"`` (running), ``"fork"`` or ``"cold"`` (started for it)."""
        return "warm"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        """Chunk ``i``'s payload, made when it is handed out."""
        if self.cluster:  # no shared storage: the cluster serializes the chunk itself
            return lambda i: Inline(units.local(*ranges[i]))
        return units.ship(ranges, directory, transport).payload

    def counters(self, n_chunks: int, directory: str | None) -> Counters:
        """Shared per-call counters the workers can reach."""
        return Counters.create(n_chunks, directory if self.shares_files else None)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        raise NotImplementedError

    def bytes_per_second(self) -> float | None:
        """How fast chunks and results travel, if measured (else the
        planner's constant for the kind of backend)."""
        return None

    def with_fresh_workers(self) -> Backend | None:
        """This backend with workers started for the call, where that is
        possible now (kept forked workers would be sent a large input that
        workers forked anew hold already); ``None`` otherwise."""
        return None

    def seconds_to_start(self) -> float:
        """How long its workers still take to start, while :meth:`start`
        says ``"starting"``."""
        return 0.0

    def start_workers(self, n_workers: int) -> None:
        """Start workers in the background, for the next call."""

    def finished(self, n_workers: int) -> None:
        """The call ran to its end (the pool now knows it is warm)."""

    def broken(self) -> None:
        """A worker died or the call was interrupted."""


class InProcess(Backend):
    """A base for backends whose workers are threads of this process."""

    in_process = True
    shares_files = False
    pickles_program = False
    place = "thread"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return lambda i: Inline(units.local(*ranges[i]))

    def counters(self, n_chunks: int, directory: str | None) -> Counters:
        return Counters.create(n_chunks, True)


def cut_in_worker(units: Units, ranges: Sequence[tuple[int, int]]
                  ) -> Callable[[int], Payload]:
    """Payloads for workers holding a copy of this process's memory: each
    cuts its chunk itself, so nothing is shipped."""
    return lambda i: Deferred(functools.partial(units.local, *ranges[i]))


def bare(task: Task) -> Task:
    """``task`` without its chunk and program, for a cluster to which they
    travel apart (scattered, or put in its object store)."""
    return dataclasses.replace(task, payload=None, program=b"")  # type: ignore[arg-type]


def stop_at_exit_first() -> None:
    """Register :func:`_stop_at_exit` to run first as the interpreter exits:
    threading's exit handlers run before atexit's, the last registered
    first, and loky registers its own (which waits for the pool's tasks) as
    its first pool starts, so this is called again after that."""
    getattr(threading, "_register_atexit", atexit.register)(_stop_at_exit)


def _stop_at_exit() -> None:
    """Stop every worker at once: a call still running in a daemon thread
    then waits, quietly, to end with the interpreter (see
    :func:`~pandas_parallel.executor.quiet_at_exit`)."""
    from pandas_parallel.backends import forked, forkserver, pool

    EXITING.set()
    pool.POOL.shutdown(wait=False)
    forked.CREW.retire(wait=False)
    forkserver.CREW.retire(wait=False)


def traits(options: Options) -> Traits:
    """The :class:`~.names.Traits` of the backend a call with ``options`` gets."""
    return traits_of(options.backend)


def capacity(options: Options) -> int:
    """The workers a call with ``options`` gets (a cluster's, or this
    machine's), before its backend is chosen."""
    if options.backend is not None and traits(options).cluster:
        from pandas_parallel.backends import clusters

        return clusters.capacity(options.backend, options.n_jobs)
    return resolve_n_jobs(options.n_jobs)


def prepare(options: Options, n_workers: int) -> None:
    """As a call begins, before it is planned: start what costs this
    process nothing to start (the fork server, in another process) where
    the call will likely want it."""
    from pandas_parallel.backends import forked, forkserver

    if (options.backend or DEFAULT) != "loky" or _start_method() == "spawn":
        return
    if _may_fork(options) and (forked.CREW.ready(n_workers) or forked.available(False)):
        return
    if forkserver.usable():
        forkserver.start_early()


def choose(options: Options) -> Backend:
    """The backend a call with ``options`` runs on now (chosen once per
    call, after its sample: the function may have started a thread)."""
    from pandas_parallel.backends import dask, forked, forkserver, joblib, pool, ray, threads

    name = options.backend or DEFAULT
    if name == "loky":
        # Python's start method, where the program set one, says how
        # processes may start: "spawn" never forks, "forkserver" never
        # forks this process.
        if _may_fork(options) and forked.CREW.ready(resolve_n_jobs(options.n_jobs)):
            return forked.Kept()
        if _may_fork(options) and forked.available():
            return forked.Forked()
        if _start_method() != "spawn" and forkserver.usable():
            return forkserver.ForkServerWorkers()
        return pool.POOL
    if name == "threading":
        return threads.Threads()
    if name == "dask":
        return dask.Dask()
    if name == "ray":
        return ray.Ray()
    return joblib.Joblib(name)


def describe(backend: str, start: str = "") -> str:
    """How a call ran on ``backend`` (a :class:`Run`'s name), its workers
    started as ``start``, for a person (``"forked earlier and kept"``); the
    name where there is nothing more to say."""
    return _by_name().get(backend, Backend).started.get(start, backend)


def path_of(options: Options) -> str:
    """Which path a call with ``options`` takes now, for a person."""
    chosen = choose(options)
    return chosen.path or chosen.name


@functools.cache
def _by_name() -> dict[str, type[Backend]]:
    from pandas_parallel.backends import forked, forkserver, pool

    return {cls.name: cls for cls in (forked.Forked, forkserver.ForkServerWorkers, pool.Pool)}


def _start_method() -> str | None:
    return multiprocessing.get_start_method(allow_none=True)


def _may_fork(options: Options) -> bool:
    return options.fork and _start_method() not in ("spawn", "forkserver")
