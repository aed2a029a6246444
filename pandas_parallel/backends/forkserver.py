"""The ``forkserver`` backend: workers forked from this library's fork
server (:mod:`pandas_parallel.forkserver`), kept for later calls.

The no-fork path's workers: where forking this process is not safe (other
threads run: a Jupyter kernel, a threaded service, after a tqdm bar) or
``fork=False``. The server starts once, in the background, while the first
call that wants workers runs its chunks in this process; from then on a
worker starts in milliseconds, with pandas imported, rather than in a
CPU-second as a fresh interpreter (the warm pool's way, kept for systems
without ``fork``). Its workers are a :class:`~.crew.Crew` like the kept
forked workers: they are sent pickled tasks, the caller's state with them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

from pandas_parallel import forkserver
from pandas_parallel.backends import Backend, Job
from pandas_parallel.backends.crew import Crew, Starter, Worker
from pandas_parallel.forkserver import SERVER
from pandas_parallel.options import SETTINGS, resolve_n_jobs
from pandas_parallel.planning.costs import SERVER_START_SECONDS
from pandas_parallel.worker import Outcome, Task, in_worker


class ServerForks(Starter):
    """Workers forked from the fork server (started on first need)."""

    def __init__(self, server: forkserver.ForkServer) -> None:
        self.server = server

    def can_start(self) -> bool:
        self.server.start()
        return self.server.ready()

    def start(self, call_id: str, made: dict[int, Task]) -> Worker:
        pid, tasks, results = self.server.fork_worker()
        return Worker(pid, tasks, results, status=self.server.exit_status)

    def describe(self) -> str:
        return "fork-server workers"


CREW = Crew(ServerForks(SERVER))


def usable() -> bool:
    """Whether calls may use the fork server: on Linux (forking is the
    system's way to start a process there; on macOS and Windows Python
    starts processes by "spawn"), unless the server failed to start."""
    return sys.platform == "linux" and not SERVER.failed


class ForkServerWorkers(Backend):
    name = "forkserver"
    path = ("the no-fork path (workers forked from a fork server; this process is not forked)")
    started = {
        "starting": "the fork server started for it, this process working meanwhile",
        "server": "forked from the fork server for it",
        "warm": "forked from the fork server earlier and kept",
    }

    def start(self, n_workers: int) -> str:
        if CREW.ready(n_workers):
            return "warm"
        return "server" if SERVER.ready() else "starting"

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        return CREW.run(tasks, job)

    def seconds_to_start(self) -> float:
        started = time.monotonic() - SERVER.started_at if SERVER.process else 0.0
        return max(0.05, SERVER_START_SECONDS - started)

    def start_workers(self, n_workers: int) -> None:
        SERVER.start()


def start_early() -> None:
    """Start the server now, in the background, where calls will want it:
    in a Jupyter kernel (its threads rule out forking it), once a program
    says ``fork=False``, or as a call that will want it begins; so that it is
    up, half a second later, by the first call (which would otherwise run its
    first chunks itself meanwhile). Its imports take another core for half a
    second: on a single core, never."""
    if usable() and resolve_n_jobs(None) > 1 and not in_worker():
        SERVER.start()


def _start_for_no_fork(changes: dict[str, object]) -> None:
    if changes.get("fork") is False:  # the no-fork path: its fork server, early
        start_early()


SETTINGS.listeners.append(_start_for_no_fork)


def stop() -> None:
    """Stop the workers and the server."""
    CREW.retire()
    SERVER.stop()
