"""The ``dask`` backend: the workers of the active ``dask.distributed`` Client.

Submitted with the Client's public API rather than joblib's dask backend:
joblib 1.6 never completes a task whose worker died (its dask backend drops
the completion callback on errors), so the call would wait forever instead
of failing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

from pandas_parallel import clusters
from pandas_parallel.backends import Backend, Job
from pandas_parallel.executor import deliver, worker_losses
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_pickled


class Dask(Backend):
    name = "dask"
    shares_files = False
    cluster = True

    def capacity(self, n_jobs: int | None) -> int:
        return clusters.capacity("dask", n_jobs)

    def bytes_per_second(self) -> float | None:
        return clusters.dask_bytes_per_second()

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        from distributed import as_completed, get_client

        client = get_client()
        with warnings.catch_warnings():
            # Chunks travel inside their tasks by design (no shared storage).
            warnings.filterwarnings("ignore", message="Sending large graph")
            futures = [client.submit(run_chunk_pickled, task, pure=False,
                                     key=f"pandas_parallel-{task.call_id}-{task.chunk}")
                       for task in tasks]
        try:
            for future in as_completed(futures):
                with worker_losses(job.reporter.label, "dask"):
                    outcome = load_outcome(future.result())
                yield deliver(outcome, job.progress, job.reporter)
        finally:
            client.cancel([future for future in futures if not future.done()])
