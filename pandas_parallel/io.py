"""Files bigger than memory: stream a Parquet, CSV or Arrow/Feather file
through the worker pool in record batches and write the output as it goes.

Peak memory is bounded by a few batches, whatever the file's size. Rows
keep their order; a row-wise function sees each row's position in the
whole file as its label (``row.name``), as it would on ``pd.read_*`` of the
whole file. The output appears under its name only when complete: it is
written beside the target under a temporary name and renamed into place, so
a failure leaves any existing target untouched.

>>> from pandas_parallel.io import process_parquet          # doctest: +SKIP
>>> process_parquet("events.parquet", clean_row, "clean.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from pandas_parallel import batches, progress, reading, writing
from pandas_parallel.backends.names import is_cluster
from pandas_parallel.batches import Summary
from pandas_parallel.options import validate
from pandas_parallel.reading import DEFAULT_BATCH_ROWS, FORMATS, InputError, detect_format
from pandas_parallel.writing import AtomicWriter, KeptBatches

__all__ = ["DEFAULT_BATCH_ROWS", "FORMATS", "AtomicWriter", "InputError", "Summary",
           "detect_format", "process_file", "process_parquet"]

logger = logging.getLogger("pandas_parallel")


def process_file(source: str, func: Callable[..., Any], destination: str, *,
                 operation: str = "apply", column: str | None = None,
                 into: str | None = None, input_format: str | None = None,
                 output_format: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
                 progress: bool | None = None, resume: bool = False,
                 csv_reader: str = "pandas", **options: Any) -> Summary:
    """Stream ``source`` through ``func`` on all cores into ``destination``.

    Parameters
    ----------
    source : str
        A Parquet file or dataset directory, a CSV file, or an Arrow IPC /
        Feather file.
    func : callable
        ``apply``: called with each row (a Series) like ``df.apply(func,
        axis=1)``. ``map``: called with each value of ``column``.
        ``partitions``: called with a DataFrame of rows, returns a DataFrame.
    destination : str
        The output file, or a directory (ending in ``/``) for one file per
        batch. Written under a temporary name and renamed when complete.
    operation : {"apply", "map", "partitions"}
    column, into : str, optional
        For ``map``: the column to map, and the column to write the result
        to (default: replace ``column``).
    input_format, output_format : {"parquet", "csv", "arrow"}, optional
        Default: from the file extension.
    batch_rows : int
        Rows read, processed and written at a time; peak memory grows with it.
    progress : bool, optional
        A progress bar over the file's rows (default: on a terminal).
    resume : bool
        Keep each finished batch's output beside the target (in
        ``.<name>.resume/``) and, when a run with the same input, function
        and settings left one there, continue after its last finished
        batch. The target still appears only when complete; the kept
        batches are removed then. ``False`` (default) starts over and
        keeps nothing.
    csv_reader : {"pandas", "pyarrow"}
        ``"pandas"`` (default): a CSV file's rows reach the function with the
        values ``pd.read_csv(source, low_memory=False)`` gives, typed over the
        whole file (it is read twice: once for the types). ``"pyarrow"``:
        read once, faster, typed by Arrow from the file's first block (ISO
        timestamps become datetimes; a column that changes type midway
        fails).
    **options
        pandas_parallel options (``n_jobs``, ``chunk_size``, ``backend``...).
        With ``backend="dask"`` or ``"ray"`` and a Parquet input, the
        cluster's workers read the input and write the output themselves,
        a part each, and this process holds none of the data (see
        :mod:`pandas_parallel.cluster_io`; the paths must be the same on
        every worker). A directory output keeps their parts as they are;
        a file output is assembled from them, one part at a time.

    Returns
    -------
    Summary
        Rows in and out, seconds, output path.

    Raises
    ------
    InputError
        The input cannot be read in its format (the message names the file),
        ``column`` is not in it, or the output's directory does not exist.
        Nothing is written.
    """
    validate(options)
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive int, got {batch_rows!r}")
    if csv_reader not in reading.CSV_READERS:
        raise ValueError(f"csv_reader must be one of {', '.join(reading.CSV_READERS)}, "
                         f"got {csv_reader!r}")
    fmt_in = detect_format(source, input_format)
    fmt_out = detect_format(destination, output_format)
    show = sys.stderr.isatty() if progress is None else progress
    if is_cluster(options.get("backend")) and fmt_in == "parquet":
        return _on_cluster(source, func, destination, operation, column, into, fmt_out,
                           batch_rows, show, resume, options)
    run = batches.operation(operation, func, column, into, {**options, "progress": False},
                     source)
    began = time.perf_counter()
    writer = AtomicWriter(destination, fmt_out)  # refuses a target another run writes
    bar = None
    try:
        total, read = reading.read_batches(source, fmt_in, batch_rows, csv_reader)
        bar = batches.file_progress_bar(show, total)
        kept = None
        if resume:
            kept = KeptBatches(destination, _run_identity(
                source, func, operation, column, into, batch_rows, fmt_out, options))
        rows_in, rows_out, failures = _stream(read, run, operation, writer, kept, bar)
        writer.commit()
        # Complete: batches kept by this run, or by a killed run this one did
        # not resume, are of no more use.
        shutil.rmtree(KeptBatches.place(destination), ignore_errors=True)
    except BaseException:
        writer.abort()
        raise
    finally:
        writer.release()
        if bar is not None:
            bar.close()
    summary = Summary(rows_in, rows_out, time.perf_counter() - began, destination)
    logger.info("%s", summary)
    batches.warn_row_errors(operation, source, destination, failures)
    return summary


def _stream(read: Iterator[reading.Batch], run: Callable[[Any], Any], operation: str,
            writer: AtomicWriter, kept: KeptBatches | None, bar: Any
            ) -> tuple[int, int, list[tuple[Any, BaseException]]]:
    """Each batch through the call, its output written (or kept, to resume
    from); the rows in and out, and the rows whose call failed."""
    rows_in = rows_out = 0
    failures: list[tuple[Any, BaseException]] = []
    for number, batch in enumerate(read):
        rows, moved = len(batch.frame), 0
        if kept is None or number >= kept.finished:
            # The bar moves per chunk of the batch, and a failure in this
            # process names its row, as in a worker.
            with batches.collecting_failures(failures), progress.share_of(bar, rows) as share:
                result = run(batch.frame)
            moved = share.moved
            out = writing.to_arrow(
                result, batch.table if operation in ("map", "partitions") else None)
            del result
            if kept is None:
                writer.write(out)
                rows_out += out.num_rows
            else:
                kept.keep(number, out)
            del out
            batches.release_freed_memory()
        del batch
        rows_in += rows
        if bar is not None:
            bar.update(rows - moved)
    if kept is not None:
        for out in kept.tables():
            writer.write(out)
            rows_out += out.num_rows
    return rows_in, rows_out, failures


def _on_cluster(source: str, func: Callable[..., Any], destination: str, operation: str,
                column: str | None, into: str | None, fmt_out: str, batch_rows: int,
                show: bool, resume: bool, options: dict[str, Any]) -> Summary:
    """:func:`process_file` with the cluster's workers reading and writing."""
    if resume:
        raise ValueError(
            "resume is not available when the cluster's workers read the input "
            f"(backend={options['backend']!r} on Parquet): each of them writes its "
            "part at once; run again to start over")
    from pandas_parallel.backends.cluster_io import process_on_cluster

    summary, failures = process_on_cluster(
        source, func, destination, operation=operation, column=column, into=into,
        fmt_out=fmt_out, batch_rows=batch_rows, show_progress=show, options=options)
    logger.info("%s", summary)
    batches.warn_row_errors(operation, source, destination, failures)
    return summary


def _run_identity(source: str, func: Callable[..., Any], operation: str,
                  column: str | None, into: str | None, batch_rows: int, fmt_out: str,
                  options: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' batches interchangeable: the same input files
    (sizes and modification times), function, operation and settings that
    change the output."""
    import hashlib
    import marshal

    files = ([os.path.join(root, name) for root, _, names in sorted(os.walk(source))
              for name in sorted(names)] if os.path.isdir(source) else [source])
    stats = [[os.path.relpath(f, source) if f != source else "", st.st_size, st.st_mtime_ns]
             for f in files for st in [os.stat(f)]]
    code = getattr(func, "__code__", None)  # edited code is another function
    function = (f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}:"
                + (hashlib.sha1(marshal.dumps(code)).hexdigest() if code is not None else ""))
    settings = {k: repr(options.get(k)) for k in ("errors", "timeout")}
    return {"input": os.path.abspath(source), "files": stats, "function": function,
            "operation": operation, "column": column, "into": into,
            "batch_rows": batch_rows, "output_format": fmt_out, "settings": settings}


def process_parquet(source: str, func: Callable[..., Any], destination: str,
                    **kwargs: Any) -> Summary:
    """:func:`process_file` for Parquet in and out (see there for parameters)."""
    return process_file(source, func, destination, input_format="parquet",
                        output_format=kwargs.pop("output_format", "parquet"), **kwargs)


