"""Any registered joblib backend (``"multiprocessing"``, a library's own),
through ``joblib.Parallel(return_as="generator_unordered")`` where the
backend streams results."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator

import joblib

from pandas_parallel.backends import Backend, Job
from pandas_parallel.backends.clusters import worker_losses
from pandas_parallel.executor import deliver
from pandas_parallel.worker import Outcome, Task, load_outcome, run_chunk_pickled


class Joblib(Backend):
    """A joblib backend by its registered name (``"multiprocessing"``, ...)."""

    name = "joblib"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        # Other backends may run anywhere: results come back in-band, and
        # their workers are treated as a cluster's.
        self.shares_files = backend == "multiprocessing"
        self.place = "process" if self.shares_files else "cluster"

    def run(self, tasks: Iterable[Task], job: Job) -> Iterator[Outcome]:
        # A backend made by parallel_config, not Parallel(backend=...): the
        # latter passes nesting_level to constructors that do not expect it.
        with joblib.parallel_config(backend=self.backend):
            active = joblib.parallel.get_active_backend()[0]
            streams = getattr(active, "supports_return_generator", False)
            parallel = joblib.Parallel(
                n_jobs=job.n_workers, batch_size=1,
                return_as="generator_unordered" if streams else "list")
        label = job.reporter.label
        with worker_losses(label, self.backend):
            blobs = iter(parallel(joblib.delayed(run_chunk_pickled)(task) for task in tasks))
        try:
            while True:
                with worker_losses(label, self.backend):
                    blob = next(blobs, None)
                if blob is None:
                    return
                yield deliver(load_outcome(blob), job.progress, job.reporter)
        finally:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                # joblib warns that results of chunks still running go unused.
                warnings.simplefilter("ignore")
                getattr(blobs, "close", lambda: None)()
