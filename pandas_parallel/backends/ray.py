"""The ``ray`` backend: tasks on a Ray runtime (started locally if none is).

Each chunk is put into Ray's object store once, straight from this process
(on one machine: shared memory), and the call's program once; each task
names its chunk, and its result streams back as it finishes. A task whose
worker dies is not retried: the call fails with
:class:`~pandas_parallel.errors.WorkerCrashedError`, as on every backend.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

from pandas_parallel.backends import Backend, Job, bare, clusters
from pandas_parallel.backends.clusters import worker_losses
from pandas_parallel.executor import POLL_SECONDS, deliver
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_sent_apart


class Ray(Backend):
    name = "ray"
    shares_files = False
    cluster = True
    place = "cluster"

    def capacity(self, n_jobs: int | None) -> int:
        return clusters.capacity("ray", n_jobs)

    def bytes_per_second(self) -> float | None:
        return clusters.ray_bytes_per_second()

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        import ray

        label = job.reporter.label
        tasks = list(tasks)
        with worker_losses(label, "ray"):
            program = ray.put(tasks[0].program)
            pending = [_remote().remote(bare(task), ray.put(task.payload), program)
                       for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    with worker_losses(label, "ray"):
                        outcome = load_outcome(ray.get(ref))
                    yield deliver(outcome, job.progress, job.reporter)
                job.progress.refresh()
        finally:
            clusters.cancel_ray(pending)


@functools.cache
def _remote() -> Any:
    """The task, made once: not retried when its worker dies (the call
    fails fast instead), nor on an exception (failures travel as data)."""
    import ray

    return ray.remote(max_retries=0)(run_chunk_sent_apart)
