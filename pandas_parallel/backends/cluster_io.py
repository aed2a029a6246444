"""Files on a cluster: each worker reads its own part of a Parquet dataset and
writes its own part of the output, so this process never holds the data.

This process reads only the dataset's metadata (its files' footers) and cuts
it into *pieces*: runs of whole row groups of about ``batch_rows`` rows, in
the order a streaming run reads them. A task per piece, on a dask or Ray
worker, reads the piece, runs the pandas call on it serially (the cluster's
workers are the parallelism), and writes its output as one part file into
a directory beside the target; the result is what streaming the file
through :func:`pandas_parallel.io.process_file` gives: the same rows in the
same order, each row labelled by its position in the whole dataset. The
directory is renamed into place only when every task has finished, so the
output appears complete or not at all. The input and the output's
directory must be reachable under the same paths from every worker (a
shared file system; one machine's disk for a local cluster).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

from pandas_parallel import batches, programs, reading, worker, writing
from pandas_parallel.backends import clusters
from pandas_parallel.backends.clusters import worker_losses
from pandas_parallel.executor import POLL_SECONDS

logger = logging.getLogger("pandas_parallel")


@dataclasses.dataclass(frozen=True)
class Piece:
    """Whole row groups of one Parquet file: the ``number``-th piece of the
    dataset, whose first row is row ``offset`` of the whole."""

    number: int
    path: str
    row_groups: tuple[int, ...]
    offset: int
    rows: int

    def describe(self) -> str:
        return (f"{self.path} (row groups {self.row_groups[0]}-{self.row_groups[-1]}, "
                f"rows {self.offset}-{self.offset + self.rows - 1} of the dataset)")


@dataclasses.dataclass(frozen=True)
class Work:
    """What every task does to its piece: sent with each task."""

    operation: str
    func: Callable[..., Any]
    column: str | None
    into: str | None
    options: dict[str, Any]
    source: str
    directory: str  # where parts are written
    fmt: str


@dataclasses.dataclass(frozen=True)
class Done:
    """A finished piece: rows in and out, and the rows whose call failed
    (``errors="coerce"``)."""

    number: int
    rows_in: int
    rows_out: int
    failures: list[tuple[Any, BaseException]]


def pieces(source: str, batch_rows: int) -> list[Piece]:
    """The dataset cut into runs of whole row groups of about ``batch_rows``
    rows (a row group larger than that is a piece of its own), in the order
    its files and rows are read; from the files' footers only."""
    reading.must_exist(source)
    with reading.errors_name_the_file(source, "parquet"):
        files = pa_ds.dataset(source, format="parquet").files
        found: list[Piece] = []
        offset = 0
        for path in files:
            metadata = pq.ParquetFile(path).metadata
            groups: list[int] = []
            rows = 0
            for group in range(metadata.num_row_groups):
                groups.append(group)
                rows += metadata.row_group(group).num_rows
                if rows >= batch_rows or group == metadata.num_row_groups - 1:
                    if rows:
                        found.append(Piece(len(found), os.path.abspath(path), tuple(groups),
                                           offset, rows))
                    offset, groups, rows = offset + rows, [], 0
    return found


def process_piece(piece: Piece, encoded: bytes) -> Done:
    """Run on a cluster worker: read ``piece``, run the call (``encoded``:
    the :class:`Work`, pickled with cloudpickle, so that functions from
    ``__main__`` or a file travel by value) on it here, write its part. A
    failure of the user's function is raised as it is, with a note naming
    the piece."""

    work: Work = pickle.loads(encoded)

    table = pq.ParquetFile(piece.path).read_row_groups(list(piece.row_groups))
    options = {**work.options, "backend": "sequential", "progress": False}
    run = batches.operation(work.operation, work.func, work.column, work.into, options, work.source)
    failures: list[tuple[Any, BaseException]] = []
    try:
        with worker.working(), batches.collecting_failures(failures):
            result = run(reading.to_pandas(table, piece.offset))
    except Exception as exc:
        exc.add_note(f"pandas_parallel: {work.operation} failed on {piece.describe()}")
        raise
    out = writing.to_arrow(result, table if work.operation in ("map", "partitions") else None)
    writing.write_whole(out, os.path.join(work.directory, part_name(piece.number, work.fmt)),
                    work.fmt)
    return Done(piece.number, piece.rows, out.num_rows, failures)


def part_name(number: int, fmt: str) -> str:
    return f"part-{number:06d}.{fmt}"


def process_on_cluster(source: str, func: Callable[..., Any], destination: str, *,
                       operation: str, column: str | None, into: str | None,
                       fmt_out: str, batch_rows: int, show_progress: bool,
                       options: dict[str, Any]) -> tuple[batches.Summary, list[Any]]:
    """:func:`pandas_parallel.io.process_file` with the cluster's workers
    reading and writing (see the module's docstring); also the failures
    under ``errors="coerce"``, in the input's order."""
    began = time.perf_counter()
    backend = options["backend"]
    clusters.capacity(backend, None)  # a clear error when there is no cluster
    found = pieces(source, batch_rows)
    parts = _PartsDirectory(destination, fmt_out)
    work = Work(operation, func, column, into, options, os.path.abspath(source),
                parts.directory, parts.fmt)
    encoded = programs.pickled(work, out_of_band=False).blob
    bar = batches.file_progress_bar(show_progress, sum(p.rows for p in found))
    finished: dict[int, Done] = {}
    try:
        for done in _run_all(backend, found, work, encoded):
            finished[done.number] = done
            if bar is not None:
                bar.update(done.rows_in)
        parts.commit(len(found))
    except BaseException:
        parts.abort()
        raise
    finally:
        parts.writer.release()
        if bar is not None:
            bar.close()
    failures = [f for number in sorted(finished) for f in finished[number].failures]
    rows_in = sum(done.rows_in for done in finished.values())
    rows_out = sum(done.rows_out for done in finished.values())
    logger.debug("%s on %s: %d pieces of %s", operation, backend, len(found), source)
    return batches.Summary(rows_in, rows_out, time.perf_counter() - began, destination), failures


def _run_all(backend: str, found: list[Piece], work: Work, encoded: bytes
             ) -> Iterator[Done]:
    """A task per piece on the cluster; each :class:`Done` as it finishes.
    The first failure cancels the rest."""
    label = f"{work.operation} over {work.source}"
    if backend == "dask":
        from distributed import as_completed, get_client

        client = get_client()
        futures = [client.submit(process_piece, piece, encoded, pure=False) for piece in found]
        try:
            for future in as_completed(futures):
                with worker_losses(label, "dask"):
                    yield future.result()
        finally:
            client.cancel([future for future in futures if not future.done()])
        return
    import ray

    task = ray.remote(max_retries=0)(process_piece)
    pending = [task.remote(piece, encoded) for piece in found]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                with worker_losses(label, "ray"):
                    yield ray.get(ref)
    finally:
        # A task interrupted mid-write leaves no part behind: its directory
        # is removed with the run (a file it had open goes with it; one it
        # opens later cannot be made there).
        clusters.cancel_ray(pending)


class _PartsDirectory:
    """Where the workers write their parts: for a directory target, its
    temporary self, renamed into place when complete; for a file target, a
    directory beside it whose parts (Arrow IPC, exact) are appended to the
    file one at a time, as a streaming run appends its batches."""

    def __init__(self, destination: str, fmt: str) -> None:
        self.destination = destination
        self.writer = writing.AtomicWriter(destination, fmt)
        self.fmt = fmt if self.writer.directory_output else "arrow"
        self.directory = self.writer.temporary
        if not self.writer.directory_output:
            self.directory += "-parts"
            os.mkdir(self.directory)

    def commit(self, n_parts: int) -> None:
        """Put the output into place."""
        paths = [os.path.join(self.directory, part_name(i, self.fmt)) for i in range(n_parts)]
        missing = [path for path in paths if not os.path.exists(path)]
        if missing:
            raise RuntimeError(
                f"the workers did not write {len(missing)} of the {n_parts} parts of "
                f"{self.destination!r} (the first: {missing[0]}): is its directory the "
                "same on every worker (a shared file system)?")
        if not self.writer.directory_output:
            for path in paths:
                with pa.memory_map(path) as source:
                    self.writer.write(pa.ipc.open_file(source).read_all())
        self.writer.commit()
        if not self.writer.directory_output:
            shutil.rmtree(self.directory, ignore_errors=True)

    def abort(self) -> None:
        self.writer.abort()
        shutil.rmtree(self.directory, ignore_errors=True)
