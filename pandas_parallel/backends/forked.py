"""The ``forked`` backend: workers forked from this process, kept for later calls.

Where it is safe (:func:`available`), a call with no kept workers forks its
own: they start in milliseconds with everything imported, and cut their
chunks from their copy of this process's memory, so nothing is shipped to
them (:class:`Forked`). After the call they are kept (:data:`CREW`) while
they pin little memory (a forked worker holds on to every page this process
had when it forked), and later calls hand them pickled tasks with the input
shipped like the warm pool's (:class:`Kept`): no fork, no copy-on-write
faults, no start-up, which is what lets 64 workers scale. The pool is a few
pipes, with no threads of its own, so the process stays single-threaded and
can fork again:

- each worker reads messages from its task pipe: a chunk number of the call
  it was forked in (it holds that call's tasks), a pickled task, "the call is
  over" or "exit"; it answers each chunk with a pickled
  :class:`~pandas_parallel.worker.Outcome` on its result pipe (pickled by
  :func:`~pandas_parallel.worker.run_chunk_pickled`, so a result that cannot
  travel is a clear failure, not a dead worker);
- chunks are handed out one at a time, as workers free up;
- a worker that dies closes its result pipe, and this process knows exactly
  which chunk it held;
- a failure or Ctrl-C kills the workers and reaps them; the next call forks
  new ones. Workers also die with this process (``PR_SET_PDEATHSIG``), and
  kept ones that sit idle are retired (:data:`IDLE_SECONDS`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import pickle
import re
import selectors
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection, Pipe

from pandas_parallel import worker
from pandas_parallel.backends import Backend, Job, cut_in_worker
from pandas_parallel.errors import WorkerCrashedError
from pandas_parallel.executor import (
    POLL_SECONDS,
    Reporter,
    crash_error,
    deliver,
    late_call,
    stuck_error,
    stuck_limit,
)
from pandas_parallel.programs import Encoded
from pandas_parallel.splitting import Units
from pandas_parallel.transport import Payload
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_pickled

logger = logging.getLogger("pandas_parallel")

_PR_SET_PDEATHSIG = 1
# Workers forked from a process holding more than this are not kept: they
# pin every page it had (its frames included) for as long as they live.
KEEP_RSS_BYTES = 2 * 2**30
# Kept workers idle this long are retired at the next call (as loky retires
# its pool's); they exit on their own a minute later, should none come.
IDLE_SECONDS = 300.0
_WORKER_IDLE_SECONDS = IDLE_SECONDS + 60.0
# Messages other than a chunk number or a task.
_EXIT, _CALL_OVER = -1, -2


class Forked(Backend):
    """Workers forked from this process for the call: they hold its memory,
    so the program and the input are not shipped; results travel back."""

    name = "forked"
    pickles_program = False

    def start(self, n_workers: int) -> str:
        return "fork"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return cut_in_worker(units, ranges)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return CREW.run(tasks, job, fresh=True)


class Kept(Forked):
    """Workers forked by an earlier call and kept: the program is pickled to
    them once per call and the input shipped, as to the warm pool."""

    pickles_program = True

    def start(self, n_workers: int) -> str:
        return "warm"

    def payloads(self, units: Units, ranges: Sequence[tuple[int, int]],
                 directory: str | None, transport: str) -> Callable[[int], Payload]:
        return Backend.payloads(self, units, ranges, directory, transport)

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return CREW.run(tasks, job, fresh=False)

    def with_fresh_workers(self, thorough: bool = True) -> Backend | None:
        return Forked() if available(thorough) else None


def available(thorough: bool = True) -> bool:
    """Whether worker processes may be forked from this one now.

    On Linux, with no other Python thread running (a fork copies only the
    calling thread: a lock another thread held would stay locked in the
    child), and, checked when ``thorough``, no native thread pool that does
    not survive a fork: an OpenMP runtime (GNU OpenMP's pool hangs in a
    child that uses it after the parent did) or a thread that named itself
    (polars' and tokio's pools do; a child of a process running them can
    deadlock). The thorough part reads ``/proc`` (under a millisecond).
    """
    return (sys.platform == "linux" and threading.active_count() == 1
            and not (thorough and (_openmp_loaded() or _native_threads())))


_OPENMP_LIBRARY = re.compile(r"/lib(?:gomp|iomp5|omp)\b[^/\n]*\.so")
_openmp_seen = False


def _openmp_loaded() -> bool:
    """Whether an OpenMP runtime is mapped into this process (read from
    ``/proc/self/maps``: about a millisecond; once seen, it stays)."""
    global _openmp_seen
    if not _openmp_seen:
        try:
            with open("/proc/self/maps") as maps:
                _openmp_seen = _OPENMP_LIBRARY.search(maps.read()) is not None
        except OSError:
            _openmp_seen = True  # cannot tell: do not fork
    return _openmp_seen


# Threads named otherwise than the process are some library's own pool.
# These few are known to survive a fork: jemalloc's background thread
# (pyarrow) re-initializes in the child.
_FORK_SAFE_THREADS = frozenset({"jemalloc_bg_thd"})


def _native_threads() -> list[str]:
    """Names of this process's threads that some library started and named
    (OpenBLAS's workers, like Python's own threads, carry the process's
    name)."""
    try:
        tasks = os.listdir("/proc/self/task")
        names = []
        for tid in tasks:
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as comm:
                names.append(comm.read().strip())
    except OSError:
        return ["(unknown: /proc cannot be read)"]
    own = names[tasks.index(str(os.getpid()))] if str(os.getpid()) in tasks else ""
    found = sorted({n for n in names if n != own and n not in _FORK_SAFE_THREADS})
    if found:
        logger.debug("fork: not forking while native threads run: %s", ", ".join(found))
    return found


def _resident_bytes() -> int:
    """This process's resident memory (one small read of ``/proc``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return KEEP_RSS_BYTES + 1  # cannot tell: do not keep


@dataclasses.dataclass(eq=False)
class _Worker:
    """One forked process and the two pipes that connect it to this one."""

    pid: int
    tasks: Connection  # messages to the worker
    results: Connection  # outcomes from the worker
    call_id: str  # the call it was forked in
    knows: Container[int]  # chunks of that call it holds (sent by number)
    resident: int  # this process's resident bytes when it forked
    chunk: int | None = None  # the chunk it is running
    program_digest: str = ""  # the program it decoded last (it keeps it)

    def hand(self, task: Task) -> None:
        """Give the worker a chunk: by number if it holds the task, else
        pickled, the call's program with the first of the call's chunks.

        Raises
        ------
        _CannotPickle
            The task does not pickle (an object column holding a lock, say):
            nothing was sent.
        """
        if task.call_id == self.call_id and task.chunk in self.knows:
            message = pickle.dumps(task.chunk)
        else:
            program = task.program
            if isinstance(program, Encoded) and program.digest == self.program_digest:
                task = dataclasses.replace(task, program=program.known())
            try:
                message = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise _CannotPickle(task, exc) from exc
            if isinstance(program, Encoded):
                self.program_digest = program.digest
        self.chunk = task.chunk
        self.send(message)

    def tell(self, control: int) -> None:
        """Send ``_EXIT`` or ``_CALL_OVER``."""
        self.send(pickle.dumps(control))

    def send(self, message: bytes) -> None:
        with contextlib.suppress(OSError):  # it may have died: its result pipe says so
            self.tasks.send_bytes(message)

    def close(self) -> None:
        self.tasks.close()
        self.results.close()

    def alive(self) -> bool:
        if not self.pid:
            return False
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid  # reaped by someone else
        if pid:
            self.pid = 0
        return not pid

    def exit_status(self) -> str:
        """How the (dead) worker ended, for a person."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return "it ended in an unknown way"
        self.pid = 0
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            return f"it was killed by signal {signal.Signals(number).name}"
        return f"it exited with status {os.WEXITSTATUS(status)}"

    def end(self, kill: bool) -> None:
        """Stop the worker (``kill``: it may be running a chunk) and reap it."""
        self.stop(kill)
        self.reap()

    def stop(self, kill: bool) -> None:
        """Tell the worker to exit, or kill it; reap it with :meth:`reap`."""
        if self.pid and kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        elif self.pid:
            self.tell(_EXIT)
        self.close()

    def reap(self) -> None:
        if self.pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0


class _CannotPickle(Exception):
    """A task that cannot be pickled to a kept worker."""

    def __init__(self, task: Task, cause: Exception) -> None:
        super().__init__(f"chunk {task.chunk}: {cause}")
        self.task = task
        self.cause = cause


class _Call:
    """One call's chunks on the crew: those made so far (a worker forked
    during the call holds them), those waiting, and the workers running one
    (registered with :attr:`selector`, which waits for their results)."""

    def __init__(self, tasks: Iterable[Task], job: Job, fresh: bool) -> None:
        self.job = job
        self.fresh = fresh
        self.made: dict[int, Task] = {}
        if fresh:  # every payload is cut in the worker: make them all first
            self.made = {task.chunk: task for task in tasks}
            tasks = list(self.made.values())
        self.waiting = iter(tasks)
        self.selector = selectors.DefaultSelector()

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.selector.close()

    @property
    def busy(self) -> bool:
        return bool(self.selector.get_map())

    def next_task(self) -> Task | None:
        task = next(self.waiting, None)
        if task is not None:
            self.made[task.chunk] = task
        return task

    def hand(self, current: _Worker, task: Task) -> None:
        idle = current.chunk is None
        current.hand(task)
        if idle:
            self.selector.register(current.results, selectors.EVENT_READ, current)

    def hand_next(self, current: _Worker) -> None:
        """Give ``current`` the next waiting chunk, or let it idle."""
        task = self.next_task()
        if task is not None:
            self.hand(current, task)
        else:
            self.idle(current)

    def idle(self, current: _Worker) -> None:
        if current.chunk is not None:
            self.selector.unregister(current.results)
            current.chunk = None


class Crew:
    """This process's forked workers: those running a call, and those kept
    for the next. One call uses them at a time (:attr:`lock`)."""

    def __init__(self) -> None:
        self.workers: list[_Worker] = []
        self.exiting: list[_Worker] = []  # stopped, not yet reaped
        self.lock = threading.Lock()
        self.last_used = 0.0  # time.monotonic() when a call last ended

    def ready(self, n_workers: int) -> bool:
        """Whether ``n_workers`` kept workers wait for a call (their being
        alive is checked when the call starts)."""
        return (len(self.workers) == n_workers and not self.lock.locked()
                and time.monotonic() - self.last_used < IDLE_SECONDS)

    def retire(self, wait: bool = True) -> None:
        """Stop every worker: those running a chunk are killed. Without
        ``wait``, they are reaped at the end of the call (exiting takes a
        process a few milliseconds, which the call need not wait for)."""
        workers, self.workers = self.workers, []
        for current in workers:
            current.stop(kill=current.chunk is not None)
        self.exiting += workers
        if wait:
            self.reap()

    def reap(self) -> None:
        exiting, self.exiting = self.exiting, []
        for current in exiting:
            current.reap()

    def forget_in_child(self) -> None:
        """In a process forked from this one: these workers are not its own."""
        for current in self.workers:
            with contextlib.suppress(OSError):
                current.close()
        self.workers, self.exiting = [], []
        self.lock = threading.Lock()

    def run(self, tasks: Iterable[Task], job: Job, fresh: bool) -> Iterator[Outcome]:
        """Run ``tasks``, yielding outcomes as they finish; ``fresh``: on
        workers forked for this call (holding its tasks), else on the kept
        ones (tasks pickled to them), forking any that are missing."""
        with self.lock, _Call(tasks, job, fresh) as call:
            ok = False
            try:
                if fresh:
                    self.retire(wait=False)
                self._drop_dead()
                self._start(call)
                while call.busy:
                    yield from self._collect(call)
                    job.progress.refresh()
                    if job.timeout is not None:
                        self._check_stuck(call, job.timeout)
                ok = True
            finally:
                self._settle(ok)

    def _start(self, call: _Call) -> None:
        """Hand the kept workers a chunk each, then fork any missing, each
        handed its chunk as it starts."""
        for current in list(self.workers):
            self._hand_next(call, current)
        may_fork = call.fresh or available()  # a fresh call's plan checked it
        first: list[tuple[_Worker, Task]] = []
        while may_fork and len(self.workers) < call.job.n_workers:
            task = call.next_task()
            if task is None:
                break
            self.workers.append(self._fork(task.call_id, call.made))
            first.append((self.workers[-1], task))
        # Handed out once all are forked: a worker running its chunk would take
        # CPU from the forks still to come (on few cores, 64 forks took 0.33 s
        # so, against 0.14 s with every new worker waiting).
        for current, task in first:
            call.hand(current, task)
        if not self.workers:
            raise WorkerCrashedError(
                "the worker processes kept from an earlier call died while idle, and "
                "new ones cannot be forked now (another thread or a native thread "
                "pool runs in this process). Call pandas_parallel.shutdown_pool() "
                "and try again: the call then runs on the warm pool.")

    def _collect(self, call: _Call) -> Iterator[Outcome]:
        for key, _ in call.selector.select(timeout=POLL_SECONDS):
            current: _Worker = key.data
            try:
                outcome = load_outcome(current.results.recv_bytes())
            except (EOFError, OSError):  # it died, maybe in mid-message
                raise _crashed(current, call.job.reporter) from None
            self._hand_next(call, current)
            yield deliver(outcome, call.job.progress, call.job.reporter)

    def _hand_next(self, call: _Call, current: _Worker) -> None:
        """Give ``current`` the next chunk; one that cannot be pickled goes to
        a worker forked in its place, which holds it."""
        try:
            call.hand_next(current)
        except _CannotPickle as failure:
            if not available():
                failure.cause.add_note(
                    f"pandas_parallel: {call.job.reporter.describe(failure.task.chunk)} "
                    "of the input cannot be pickled to reach the worker processes. "
                    "Use backend='threading', which does not pickle.")
                raise failure.cause from None
            call.idle(current)
            current.end(kill=False)
            self.workers.remove(current)
            self.workers.append(self._fork(failure.task.call_id, call.made))
            call.hand(self.workers[-1], failure.task)

    def _fork(self, call_id: str, made: dict[int, Task]) -> _Worker:
        # A child would write what this process has buffered a second time.
        sys.stdout.flush()
        sys.stderr.flush()
        knows = frozenset(made)
        task_reader, task_writer = Pipe(duplex=False)
        result_reader, result_writer = Pipe(duplex=False)
        resident = _resident_bytes()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                task_writer.close()
                result_reader.close()
                _serve(made, task_reader, result_writer)
                code = 0
            except BaseException:  # nothing may escape a forked child
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        task_reader.close()
        result_writer.close()
        return _Worker(pid, task_writer, result_reader, call_id, knows, resident)

    def _drop_dead(self) -> None:
        """Reap kept workers that died while idle (killed, out of memory):
        the call forks others in their place where that is safe, else runs
        on those left."""
        alive = [w for w in self.workers if w.alive()]
        if len(alive) < len(self.workers):
            logger.debug("fork: %d kept workers died while idle",
                         len(self.workers) - len(alive))
            for dead in self.workers:
                if dead not in alive:
                    dead.close()
            self.workers = alive

    def _check_stuck(self, call: _Call, timeout: float) -> None:
        """A call past the timeout that its worker's timer could not
        interrupt: fail the call, or (``errors="coerce"``) replace the
        worker and run its chunk again with that call skipped."""
        job = call.job
        late = late_call(job.counters, stuck_limit(timeout))
        if late is None:
            return
        if not job.coerce or not available():  # the worker is stopped by _settle
            raise stuck_error(job, late, timeout)
        chunk, number = late
        stuck = next(w for w in self.workers if w.chunk == chunk)
        logger.debug("chunk %d: call %d is stuck past the timeout; replacing its worker",
                     chunk, number)
        call.selector.unregister(stuck.results)
        stuck.end(kill=True)
        self.workers.remove(stuck)
        task = call.made[chunk]
        call.made[chunk] = dataclasses.replace(task, skip_calls=(*task.skip_calls, number - 1))
        job.counters.set_call_start(chunk, 0)
        job.counters.set_calls(chunk, 0)
        self.workers.append(self._fork(task.call_id, call.made))
        call.hand(self.workers[-1], call.made[chunk])

    def _settle(self, ok: bool) -> None:
        """After a call: keep the workers for the next (each told the call
        is over, so it lets go of the call's tasks), or, after a failure or
        Ctrl-C, or when they pin too much memory, stop them."""
        self.last_used = time.monotonic()
        if not ok:
            self.retire()
            return
        self.reap()
        keep = [w for w in self.workers if w.resident <= KEEP_RSS_BYTES]
        for current in self.workers:
            if current in keep:
                current.tell(_CALL_OVER)
            else:
                current.end(kill=False)
        if len(keep) < len(self.workers):
            logger.debug("fork: not keeping %d workers: they were forked from a "
                         "process holding over %d MB", len(self.workers) - len(keep),
                         KEEP_RSS_BYTES >> 20)
        self.workers = keep


CREW = Crew()
os.register_at_fork(after_in_child=lambda: CREW.forget_in_child())
atexit.register(lambda: CREW.retire())


def _serve(made: dict[int, Task] | None, inbox: Connection, outbox: Connection) -> None:
    """The worker's loop: run the chunks it is handed until told to exit or
    left idle too long. ``made``: the tasks of the call it was forked in."""
    # Ctrl-C reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        return
    _let_go_of_pipes(keep={inbox.fileno(), outbox.fileno()})
    worker.initialize_worker(kind="forked")
    # Leave inherited objects out of garbage collections: a full collection
    # would walk (and so copy) all of them, tens of milliseconds.
    gc.freeze()
    while inbox.poll(_WORKER_IDLE_SECONDS):
        try:
            message = pickle.loads(inbox.recv_bytes())
        except EOFError:
            return
        if message == _EXIT:
            return
        if message == _CALL_OVER:
            made = None  # let go of the call's input
            continue
        task = message if isinstance(message, Task) else made[message]  # type: ignore[index]
        outbox.send_bytes(run_chunk_pickled(task))


def _let_go_of_pipes(keep: set[int]) -> None:
    """In a new worker: point the pipes and sockets it inherited (other than
    its own, and its standard streams) at ``/dev/null``. A kept worker
    holding the write end of another program's input (a subprocess's stdin
    this process closed) would keep that program waiting for the end of its
    input for as long as the worker lives; a listening socket would stay
    bound. (Pointed elsewhere rather than closed: a Python object inherited
    with the descriptor would close whatever file took its number.)"""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in descriptors:
            if fd <= 2 or fd in keep or fd == null:
                continue
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
    finally:
        os.close(null)


def _crashed(dead: _Worker, reporter: Reporter) -> BaseException:
    how = dead.exit_status()
    chunk = [dead.chunk] if dead.chunk is not None else []
    return crash_error(RuntimeError(f"the worker process died: {how}"), chunk,
                       reporter.describe)
