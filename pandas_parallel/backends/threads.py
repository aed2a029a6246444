"""The ``threads`` backend: threads of this process.

Nothing is pickled, so unpicklable functions and arguments (connections,
sessions) work; for functions that wait (I/O) rather than compute, whose
waits release the GIL. Threads share this process's random generators.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator

from pandas_parallel.backends import InProcess, Job
from pandas_parallel.executor import deliver, finished, late_call, top_up
from pandas_parallel.worker import Outcome, Task, run_chunk


class Threads(InProcess):
    name = "threads"

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        """Yield outcomes as chunks finish. ``job.n_workers`` may exceed the
        CPU count. With ``job.timeout``, a call running longer raises
        ``TimeoutError`` naming its row; the thread stuck in it cannot be
        stopped and is left to finish."""
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=job.n_workers, thread_name_prefix="pandas_parallel")
        waiting = iter(tasks)
        in_flight: dict[concurrent.futures.Future[Outcome], Task] = {}
        complete = False
        try:
            more = True
            while more or in_flight:
                more = more and top_up(waiting, in_flight, 2 * job.n_workers,
                                       lambda task: pool.submit(run_chunk, task))
                for future in finished(in_flight):
                    yield deliver(future.result(), job.progress, job.reporter)
                if job.timeout is not None:
                    _check_timeouts(job, job.timeout)
                job.progress.refresh()
            complete = True
        finally:
            # Chunks not started are cancelled; running ones cannot be stopped.
            pool.shutdown(wait=complete, cancel_futures=True)


def _check_timeouts(job: Job, timeout: float) -> None:
    late = late_call(job.counters, timeout)
    if late is not None:
        chunk, number = late
        raise TimeoutError(
            f"{job.reporter.label}: a call did not return within timeout={timeout} s "
            f"(call {number} of {job.reporter.describe(chunk)}). Its thread cannot be "
            "stopped and finishes on its own; give the function's own I/O a timeout, "
            "or use an async def function, whose calls are cancelled.")
