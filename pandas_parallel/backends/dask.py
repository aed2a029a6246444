"""The ``dask`` backend: the workers of the active ``dask.distributed`` Client.

The call's chunks are scattered to the workers straight from this process
when it can reach them (``clusters.dask_scatters_direct``; not through the
scheduler, as dask's default scatter and arguments inside tasks go), as
pandas objects that dask serializes itself: first one for each worker, then the
rest in one round trip; its program goes once to every worker. Each task
names its chunk, and the scheduler runs it where the chunk is. Results
stream back as tasks finish.

Submitted with the Client's public API rather than joblib's dask backend:
joblib 1.6 never completes a task whose worker died (its dask backend drops
the completion callback on errors), so the call would wait forever instead
of failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pandas_parallel.backends import Backend, Job, bare, clusters
from pandas_parallel.backends.clusters import worker_losses
from pandas_parallel.executor import deliver
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_sent_apart


class Dask(Backend):
    name = "dask"
    shares_files = False
    cluster = True
    place = "cluster"

    def capacity(self, n_jobs: int | None) -> int:
        return clusters.capacity("dask", n_jobs)

    def bytes_per_second(self) -> float | None:
        return clusters.dask_bytes_per_second()

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        from distributed import as_completed, get_client

        client = get_client()
        tasks = list(tasks)
        label = job.reporter.label
        direct = clusters.dask_scatters_direct(client)
        try:
            futures = _send(client, tasks, job.n_workers, direct)
        except Exception as exc:
            if not clusters.lost_worker(exc):
                raise
            # A worker that died in an earlier call may still be listed for
            # a moment (its nanny restarts it): once more, through the
            # scheduler, which knows which workers are alive.
            client.wait_for_workers(1, timeout=30)
            with worker_losses(label, "dask"):
                futures = _send(client, tasks, job.n_workers, direct=False)
        try:
            for future in as_completed(futures):
                with worker_losses(label, "dask"):
                    outcome = load_outcome(future.result())
                yield deliver(outcome, job.progress, job.reporter)
        finally:
            client.cancel([future for future in futures if not future.done()])


def _send(client: Any, tasks: list[Task], n_workers: int, direct: bool) -> list[Any]:
    """Scatter the program and the chunks and submit a task for each: a
    chunk for each worker first, so they start while the rest travel."""
    [program] = client.scatter([tasks[0].program], broadcast=True, hash=False, direct=direct)
    futures: list[Any] = []
    for batch in (tasks[:n_workers], tasks[n_workers:]):
        if not batch:
            continue
        chunks = client.scatter([task.payload for task in batch], hash=False, direct=direct)
        futures += [
            client.submit(run_chunk_sent_apart, bare(task), chunk, program,
                          pure=False, key=f"pandas_parallel-{task.call_id}-{task.chunk}")
            for task, chunk in zip(batch, chunks, strict=True)]
    return futures
