"""Gather: what every backend uses to collect outcomes as they finish.

One progress bar per call, advanced by completed work; a failure raised as
the user's own exception with a note naming its rows or group; a dead
worker as :class:`WorkerCrashedError` naming its chunk. The backends
themselves are in :mod:`pandas_parallel.backends`.
"""

from __future__ import annotations

import concurrent.futures
import linecache
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from pandas_parallel import progress, relay
from pandas_parallel.errors import InitializerError, RemoteTraceback, WorkerCrashedError
from pandas_parallel.worker import Outcome, Task

logger = logging.getLogger("pandas_parallel")

POLL_SECONDS = 0.25

#: Set as the interpreter begins to exit: a call still running in a daemon
#: thread then waits quietly to be stopped with it (as a pandas call would
#: be), instead of failing on workers stopped under it.
EXITING = threading.Event()


def quiet_at_exit() -> None:
    """In a daemon thread whose call failed because the interpreter is
    exiting: wait for the exit, which stops this thread mid-call as it would
    stop a pandas call, rather than raise a traceback over the exit."""
    if EXITING.is_set() and threading.current_thread().daemon:
        threading.Event().wait()


class Progress:
    """One bar per call, advanced by completed work (not by dispatch).

    Between chunk completions it also counts calls made inside running
    chunks (through shared counters), so it moves on long chunks.
    """

    def __init__(self, show: bool, total: int, desc: str, unit: str,
                 sizes: Sequence[int], calls_per_chunk: Sequence[int],
                 counters: np.ndarray | None, initial: int = 0) -> None:
        self.bar = None
        self.sizes = sizes
        self.calls = calls_per_chunk
        self.counters = counters
        self.finished = np.zeros(len(sizes), dtype=bool)
        self.shown = 0
        self.retries = 0  # calls tried again (the retries option), so far
        if show:  # (under a run's bar, show_progress says so: the call moves it)
            self.bar = progress.call_bar(total=total, initial=initial, desc=desc, unit=unit,
                                         dynamic_ncols=True, mininterval=0.2)

    def done(self, chunk: int, retries: int = 0) -> None:
        """Chunk ``chunk`` finished, after ``retries`` retries of calls."""
        self.finished[chunk] = True
        if retries:
            self.retries += retries
            if self.bar is not None:
                self.bar.set_postfix_str(f"retries={self.retries}", refresh=False)
        self.refresh()

    def refresh(self) -> None:
        if self.bar is None:
            return
        position = float(sum(s for s, f in zip(self.sizes, self.finished) if f))
        if self.counters is not None:
            for i in map(int, np.flatnonzero(~self.finished)):
                if self.calls[i]:
                    fraction = min(1.0, self.counters[i] / self.calls[i])
                    position += fraction * self.sizes[i]
        step = int(position) - int(self.shown)
        if step > 0:
            self.bar.update(step)
            self.shown = int(position)

    def close(self, ok: bool) -> None:
        if self.bar is not None:
            if ok:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


class Reporter:
    """Turns a chunk's failure into the exception the user sees.

    Parameters
    ----------
    label : str
        The operation, e.g. ``"groupby.apply"``.
    describe : callable
        ``describe(chunk) -> str`` naming a chunk's rows, groups or columns.
    func : callable
        The user's function, whose source file restores the lines that
        cloudpickle hides as ``<dynamic-code>`` in worker tracebacks.
    """

    def __init__(self, label: str, describe: Callable[[int], str],
                 func: Callable[..., Any]) -> None:
        self.label = label
        self.describe = describe
        self.func = func
        self.relay = relay.Relay(func)

    def issue_warnings(self, outcome: Outcome) -> None:
        """Issue again, here, the warnings and log records a worker relayed
        (see :mod:`pandas_parallel.relay`)."""
        if outcome.warnings or outcome.logs:
            self.relay.issue(outcome.warnings, outcome.logs)

    def raise_failure(self, outcome: Outcome) -> None:
        failure = outcome.failure
        assert failure is not None
        exc = failure.exception
        if isinstance(exc, InitializerError):  # names itself; no row ran
            exc.__cause__ = RemoteTraceback(failure.traceback)
            raise exc
        note = f"pandas_parallel: {self.label} failed on {self.describe(outcome.chunk)}"
        if failure.argument:
            note += f", when the function was called with {failure.argument}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        exc.__cause__ = RemoteTraceback(self.restore_source(failure.traceback))
        raise exc

    def restore_source(self, text: str) -> str:
        """Put file names and source lines back into a worker traceback."""
        files = relay.source_files(self.func)
        fallback = next(iter(files.values()), None)

        def restore(match: re.Match[str]) -> str:
            line, name = int(match.group(1)), match.group(2)
            filename = files.get(name, fallback)
            if filename is None:
                return match.group(0)
            source = linecache.getline(filename, line).strip()
            restored = f'File "{filename}", line {line}, in {name}'
            return restored + (f"\n    {source}" if source else "")

        return re.sub(r'File "<dynamic-code>", line (\d+), in (\S+)', restore, text)


def crash_error(exc: BaseException, running: list[int],
                 describe: Callable[[int], str]) -> WorkerCrashedError:
    chunks = "; ".join(describe(i) for i in running) or "an unknown chunk"
    text = str(exc)
    hint = ("Retry with a smaller chunk_size or fewer n_jobs if memory is short "
            "(a worker killed by SIGKILL was most likely out of memory).")
    return WorkerCrashedError(
        f"a worker process died while running {chunks}. {hint}\nDetails: {text}"
    )


def late_call(counters: Any, limit: float) -> tuple[int, int] | None:
    """A chunk whose current call has run longer than ``limit`` seconds,
    and that call's number within it; ``None`` if there is none."""
    if counters.call_starts is None or counters.calls is None:
        return None
    # One read of the shared memory: workers reset a start to 0 as a call
    # returns, and a second read would see "started at 0" (long ago).
    starts = counters.call_starts.copy()
    now = int(time.monotonic() * 1e6)
    late = np.flatnonzero((starts > 0) & (now - starts > limit * 1e6))
    return (int(late[0]), int(counters.calls[late[0]])) if len(late) else None


def stuck_error(job: Any, late: tuple[int, int], timeout: float) -> TimeoutError:
    """A call past its timeout that the worker's timer could not interrupt
    (native code that does not return to Python): its process is stopped."""
    chunk, number = late
    return TimeoutError(
        f"{job.reporter.label}: a call did not return within timeout={timeout} s and "
        f"could not be interrupted (call {number} of {job.reporter.describe(chunk)}): "
        "it was running code that does not return to Python, so its worker process "
        "was stopped. Give the function's own I/O or native calls a timeout.")


def stuck_limit(timeout: float) -> float:
    """When a call past ``timeout`` counts as stuck: its worker's timer
    should have interrupted it well before."""
    return timeout + max(1.0, timeout)


def top_up(waiting: Iterator[Task], in_flight: dict[Any, Task], limit: int,
            submit: Callable[..., Any]) -> bool:
    """Submit waiting tasks until ``limit`` are in flight; False once none
    are left to submit."""
    while len(in_flight) < limit:
        task = next(waiting, None)
        if task is None:
            return False
        in_flight[submit(task)] = task
    return True


def finished(in_flight: dict[Any, Task], timeout: float = POLL_SECONDS) -> list[Any]:
    """Wait up to ``timeout`` for tasks in flight; remove and return those done."""
    if not in_flight:
        return []
    done, _ = concurrent.futures.wait(in_flight, timeout=timeout,
                                      return_when=concurrent.futures.FIRST_COMPLETED)
    for future in done:
        in_flight.pop(future)
    return list(done)


def deliver(outcome: Outcome, progress: Progress, reporter: Reporter) -> Outcome:
    reporter.issue_warnings(outcome)
    if outcome.failure is not None:
        reporter.raise_failure(outcome)
    progress.done(outcome.chunk, outcome.retries)
    return outcome


def show_progress(setting: bool | str, expected_seconds: float | None) -> bool:
    """Whether a call shows a progress bar: as the ``progress`` option says;
    for ``"auto"``, when a person is likely watching and the call is long
    (or of unknown length)."""
    if progress.running_bar() is not None:  # a run's bar, moved by its calls
        return True
    if setting == "auto":
        long = expected_seconds is None or expected_seconds > 2.0
        return long and interactive()
    return bool(setting)


def interactive() -> bool:
    """Whether a person is likely watching (a terminal or a Jupyter kernel)."""
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


__all__ = ["Progress", "Reporter", "WorkerCrashedError", "deliver", "interactive",
           "show_progress"]
