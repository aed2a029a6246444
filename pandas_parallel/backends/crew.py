"""A crew of worker processes of our own, each connected by two pipes, and
the loop that runs a call's chunks on it.

Two backends keep such workers: ``forked`` (forked from this process, see
:mod:`.forked`) and ``forkserver`` (forked from a small server process, see
:mod:`.forkserver`). They differ only in how a worker starts, which a
:class:`Starter` says; the protocol and the loop are the same:

- each worker reads messages from its task pipe: a chunk number of the call
  it was forked in (it holds that call's tasks), a pickled task, "the call is
  over" or "exit"; it answers each chunk with a pickled
  :class:`~pandas_parallel.worker.Outcome` on its result pipe (pickled by
  :func:`~pandas_parallel.worker.run_chunk_pickled`, so a result that cannot
  travel is a clear failure, not a dead worker);
- chunks are handed out one at a time, as workers free up; while fewer
  workers than the call wants can start (a fork server still starting), this
  process runs chunks itself between looks at the workers;
- a worker that dies closes its result pipe, and this process knows exactly
  which chunk it held;
- a failure or Ctrl-C kills the workers; kept ones that sit idle are
  retired (:data:`IDLE_SECONDS`).

The crew has no thread of its own: a process whose crew is idle can fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import pickle
import selectors
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Container, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import NoReturn

from pandas_parallel import worker
from pandas_parallel.backends import Job
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
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk, run_chunk_pickled

logger = logging.getLogger("pandas_parallel")

# Kept workers idle this long are retired at the next call (as loky retires
# its pool's); they exit on their own a minute later, should none come.
IDLE_SECONDS = 300.0
WORKER_IDLE_SECONDS = IDLE_SECONDS + 60.0
# Messages other than a chunk number or a task.
EXIT, CALL_OVER = -1, -2
# At most this long for a stopped worker that is not this process's child to
# be gone (its parent reaps it).
REAP_SECONDS = 2.0


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process and the two pipes that connect it to this one."""

    pid: int
    tasks: Connection  # messages to the worker
    results: Connection  # outcomes from the worker
    call_id: str = ""  # the call it was forked in (by this process)
    knows: Container[int] = frozenset()  # chunks of that call it holds (sent by number)
    resident: int = 0  # this process's resident bytes when it forked it
    #: For a worker that is not this process's child: how it ended, by pid
    #: (its parent, the fork server, knows); ``None`` for a child.
    status: Callable[[int], int | None] | None = None
    chunk: int | None = None  # the chunk it is running
    program_digest: str = ""  # the program it decoded last (it keeps it)

    def hand(self, task: Task) -> None:
        """Give the worker a chunk: by number if it holds the task, else
        pickled, the program with the first of the program's chunks.

        Raises
        ------
        CannotPickle
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
                raise CannotPickle(task, exc) from exc
            if isinstance(program, Encoded):
                self.program_digest = program.digest
        self.chunk = task.chunk
        self.send(message)

    def tell(self, control: int) -> None:
        """Send :data:`EXIT` or :data:`CALL_OVER`."""
        self.send(pickle.dumps(control))

    def send(self, message: bytes) -> None:
        with contextlib.suppress(OSError):  # it may have died: its result pipe says so
            self.tasks.send_bytes(message)

    def close(self) -> None:
        self.tasks.close()
        self.results.close()

    def alive(self) -> bool:
        """Whether the (idle) worker still lives."""
        if not self.pid:
            return False
        if self.status is not None:
            # Idle, it writes nothing: its result pipe is readable once it died.
            with contextlib.suppress(OSError):
                return not self.results.poll(0)
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
        if self.status is not None:
            code = self.status(self.pid)
        else:
            try:
                _, code = os.waitpid(self.pid, 0)
            except ChildProcessError:
                code = None
        self.pid = 0
        if code is None:
            return "it ended in an unknown way"
        if os.WIFSIGNALED(code):
            return f"it was killed by signal {signal.Signals(os.WTERMSIG(code)).name}"
        return f"it exited with status {os.WEXITSTATUS(code)}"

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
            self.tell(EXIT)
        self.close()

    def reap(self) -> None:
        """Wait for the stopped worker to be gone: reaped here (a child of
        this process), else by its parent (the fork server reaps at once)."""
        if self.pid and self.status is None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        elif self.pid:
            deadline = time.monotonic() + REAP_SECONDS
            with contextlib.suppress(ProcessLookupError):
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.001)
        self.pid = 0


class CannotPickle(Exception):
    """A task that cannot be pickled to a kept worker."""

    def __init__(self, task: Task, cause: Exception) -> None:
        super().__init__(f"chunk {task.chunk}: {cause}")
        self.task = task
        self.cause = cause


class Starter:
    """How a crew's workers start: what a backend's crew differs by."""

    def can_start(self) -> bool:
        """Whether a worker can start now (``False`` while a fork server is
        still starting, or where forking is not safe)."""
        raise NotImplementedError

    def start(self, call_id: str, made: dict[int, Task]) -> Worker:
        """A new worker (of the call ``call_id``, whose tasks so far are
        ``made``)."""
        raise NotImplementedError

    def keeps(self, current: Worker) -> bool:
        """Whether to keep ``current`` for the next call."""
        return True

    def holds_unpicklable(self) -> bool:
        """Whether a chunk that cannot be pickled can go to a worker started
        for it, which holds it (one forked from this process now)."""
        return False

    def describe(self) -> str:
        """What its workers are, for log lines."""
        return "workers"


class Call:
    """One call's chunks on the crew: those made so far (a worker forked
    during the call holds them), those waiting, and the workers running one
    (registered with :attr:`selector`, which waits for their results)."""

    def __init__(self, tasks: Iterable[Task], job: Job, holds_tasks: bool) -> None:
        self.job = job
        self.made: dict[int, Task] = {}
        if holds_tasks:  # every payload is cut in the worker: make them all first
            self.made = {task.chunk: task for task in tasks}
            tasks = list(self.made.values())
        self.waiting = iter(tasks)
        self.exhausted = False  # every task handed out (or run here)
        self.selector = selectors.DefaultSelector()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.selector.close()

    @property
    def busy(self) -> bool:
        return bool(self.selector.get_map())

    def next_task(self) -> Task | None:
        task = next(self.waiting, None)
        if task is None:
            self.exhausted = True
        else:
            self.made[task.chunk] = task
        return task

    def hand(self, current: Worker, task: Task) -> None:
        idle = current.chunk is None
        current.hand(task)
        if idle:
            self.selector.register(current.results, selectors.EVENT_READ, current)

    def hand_next(self, current: Worker) -> None:
        """Give ``current`` the next waiting chunk, or let it idle."""
        task = self.next_task()
        if task is not None:
            self.hand(current, task)
        else:
            self.idle(current)

    def idle(self, current: Worker) -> None:
        if current.chunk is not None:
            self.selector.unregister(current.results)
            current.chunk = None


class Crew:
    """Worker processes of one kind: those running a call, and those kept
    for the next. One call uses them at a time (:attr:`lock`)."""

    def __init__(self, starter: Starter) -> None:
        self.starter = starter
        self.workers: list[Worker] = []
        self.exiting: list[Worker] = []  # stopped, not yet reaped
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

    def run(self, tasks: Iterable[Task], job: Job, fresh: bool = False) -> Iterator[Outcome]:
        """Run ``tasks``, yielding outcomes as they finish; ``fresh``: on
        workers forked from this process for this call, which hold its tasks
        (the kept ones are retired first)."""
        with self.lock, Call(tasks, job, holds_tasks=fresh) as call:
            ok = False
            try:
                if fresh:
                    self.retire(wait=False)
                self._drop_dead()
                while True:
                    self._start(call)
                    if call.exhausted and not call.busy:
                        break
                    # While fewer workers than wanted could start, this
                    # process works too, looking at the workers between chunks.
                    here = len(self.workers) < job.n_workers and not call.exhausted
                    yield from self._collect(call, 0.0 if here else POLL_SECONDS)
                    if here:
                        yield from self._run_one_here(call)
                    job.progress.refresh()
                    if job.timeout is not None:
                        self._check_stuck(call, job.timeout)
                ok = True
            finally:
                self._settle(ok)

    def _start(self, call: Call) -> None:
        """Hand idle workers a chunk each, then start any missing where the
        starter can, each handed its chunk once all are started (a worker
        running its chunk would take CPU from the starts still to come: on
        few cores, 64 forks took 0.33 s so, against 0.14 s with every new
        worker waiting)."""
        for current in list(self.workers):
            if current.chunk is None and not call.exhausted:
                self._hand_next(call, current)
        first: list[tuple[Worker, Task]] = []
        while (len(self.workers) < call.job.n_workers and not call.exhausted
               and self.starter.can_start()):
            task = call.next_task()
            if task is None:
                break
            self.workers.append(self.starter.start(task.call_id, call.made))
            first.append((self.workers[-1], task))
        for current, task in first:
            call.hand(current, task)

    def _collect(self, call: Call, timeout: float) -> Iterator[Outcome]:
        for key, _ in call.selector.select(timeout=timeout):
            current: Worker = key.data
            try:
                outcome = load_outcome(current.results.recv_bytes())
            except (EOFError, OSError):  # it died, maybe in mid-message
                raise _crashed(current, call.job.reporter) from None
            self._hand_next(call, current)
            yield deliver(outcome, call.job.progress, call.job.reporter)

    @staticmethod
    def _run_one_here(call: Call) -> Iterator[Outcome]:
        """Run the next waiting chunk in this process (its workers are still
        starting)."""
        task = call.next_task()
        if task is not None:
            yield deliver(run_chunk(call.job.here(task)), call.job.progress, call.job.reporter)

    def _hand_next(self, call: Call, current: Worker) -> None:
        """Give ``current`` the next chunk; one that cannot be pickled goes to
        a worker started in its place, which holds it."""
        try:
            call.hand_next(current)
        except CannotPickle as failure:
            if not self.starter.holds_unpicklable():
                failure.cause.add_note(
                    f"pandas_parallel: {call.job.reporter.describe(failure.task.chunk)} "
                    "of the input cannot be pickled to reach the worker processes. "
                    "Use backend='threading', which does not pickle.")
                raise failure.cause from None
            call.idle(current)
            current.end(kill=False)
            self.workers.remove(current)
            self.workers.append(self.starter.start(failure.task.call_id, call.made))
            call.hand(self.workers[-1], failure.task)

    def _drop_dead(self) -> None:
        """Forget kept workers that died while idle (killed, out of memory):
        the call starts others in their place where it can, else runs on
        those left, and here."""
        alive = [w for w in self.workers if w.alive()]
        if len(alive) < len(self.workers):
            logger.debug("%s: %d kept workers died while idle", self.starter.describe(),
                         len(self.workers) - len(alive))
            for dead in self.workers:
                if dead not in alive:
                    dead.close()
            self.workers = alive

    def _check_stuck(self, call: Call, timeout: float) -> None:
        """A call past the timeout that its worker's timer could not
        interrupt: fail the call, or (``errors="coerce"``) replace the
        worker and run its chunk again with that call skipped."""
        job = call.job
        late = late_call(job.counters, stuck_limit(timeout))
        if late is None:
            return
        if not job.coerce or not self.starter.can_start():  # stopped by _settle
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
        self.workers.append(self.starter.start(task.call_id, call.made))
        call.hand(self.workers[-1], call.made[chunk])

    def _settle(self, ok: bool) -> None:
        """After a call: keep the workers for the next (each told the call
        is over, so it lets go of the call's tasks), or, after a failure or
        Ctrl-C, or where the starter would not keep them, stop them."""
        self.last_used = time.monotonic()
        if not ok:
            self.retire()
            return
        self.reap()
        keep = [w for w in self.workers if self.starter.keeps(w)]
        for current in self.workers:
            if current in keep:
                current.tell(CALL_OVER)
            else:
                current.end(kill=False)
        self.workers = keep


def serve(made: dict[int, Task] | None, inbox: Connection, outbox: Connection,
          kind: str) -> None:
    """A worker's loop: run the chunks it is handed until told to exit or
    left idle too long. ``made``: the tasks of the call it was forked in.
    Its parent has set it to die with it."""
    # Ctrl-C reaches the whole process group: the caller stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    let_go_of_pipes(keep={inbox.fileno(), outbox.fileno()})
    worker.initialize_worker(kind=kind)
    # Leave inherited objects out of garbage collections: a full collection
    # would walk (and so copy) all of them, tens of milliseconds.
    gc.freeze()
    while inbox.poll(WORKER_IDLE_SECONDS):
        try:
            message = pickle.loads(inbox.recv_bytes())
        except EOFError:
            return
        if message == EXIT:
            return
        if message == CALL_OVER:
            made = None  # let go of the call's input
            continue
        task = message if isinstance(message, Task) else made[message]  # type: ignore[index]
        outbox.send_bytes(run_chunk_pickled(task))


def let_go_of_pipes(keep: set[int]) -> None:
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


def _crashed(dead: Worker, reporter: Reporter) -> BaseException:
    how = dead.exit_status()
    chunk = [dead.chunk] if dead.chunk is not None else []
    return crash_error(RuntimeError(f"the worker process died: {how}"), chunk,
                       reporter.describe)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def serve_forked(parent: int, serving: Callable[[], object]) -> NoReturn:
    """In a worker just forked from ``parent`` (this process, or the fork
    server): die with it (SIGKILL included), run ``serving``, and never
    return to the code that forked it; nothing may escape."""
    code = 1
    try:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == parent:  # else the parent died before the line above
            serving()
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


__all__ = ["CALL_OVER", "EXIT", "IDLE_SECONDS", "Crew", "Starter", "Worker", "serve",
           "serve_forked"]
