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

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds
import pyarrow.parquet as pq

import pandas_parallel  # noqa: F401  (registers .parallel)
from pandas_parallel.errors import RowErrorsWarning
from pandas_parallel.executor import progress_bar
from pandas_parallel.options import validate

logger = logging.getLogger("pandas_parallel")

FORMATS = ("parquet", "csv", "arrow")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow",
               ".feather": "arrow", ".ipc": "arrow"}
OPERATIONS = ("apply", "map", "partitions")
DEFAULT_BATCH_ROWS = 250_000


class InputError(ValueError):
    """The input or the output's place cannot be used: a file that cannot be
    read in its format, a column it does not have, an output directory that
    does not exist. The message names the file, column or directory."""


@dataclasses.dataclass
class Summary:
    """What a run did: rows in and out, seconds, and where the output went."""

    rows_in: int
    rows_out: int
    seconds: float
    output: str

    def __str__(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.rows_in:,} rows in, {self.rows_out:,} rows out in "
                f"{self.seconds:.1f} s ({rate:,.0f} rows/s) -> {self.output}")


def detect_format(path: str, given: str | None = None) -> str:
    """The file format: ``given``, or from the extension (a directory is a
    Parquet dataset)."""
    if given is not None:
        if given not in FORMATS:
            raise InputError(f"unknown format {given!r}; choose one of {', '.join(FORMATS)}")
        return given
    if os.path.isdir(path) or path.endswith(os.sep):
        return "parquet"
    extension = os.path.splitext(path)[1].lower()
    if extension not in _EXTENSIONS:
        raise InputError(
            f"cannot tell the format of {path!r} from its extension; "
            f"use one of {', '.join(sorted(_EXTENSIONS))} or say --format")
    return _EXTENSIONS[extension]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def _dataset(path: str, fmt: str) -> pa_ds.Dataset:
    if fmt == "csv":
        return pa_ds.dataset(path, format="csv")
    if fmt == "arrow":
        return pa_ds.dataset(path, format="ipc")
    # Without pre-buffering, a Parquet fragment is read row group by row
    # group instead of all at once.
    parquet = pa_ds.ParquetFileFormat(
        default_fragment_scan_options=pa_ds.ParquetFragmentScanOptions(pre_buffer=False))
    return pa_ds.dataset(path, format=parquet)


def read_batches(path: str, fmt: str, batch_rows: int
                 ) -> tuple[int | None, Iterator[pa.Table]]:
    """The file's row count when known without reading it, and its rows as
    tables of about ``batch_rows`` rows, in order."""
    _must_exist(path)
    with _reading(path, fmt):
        if fmt == "csv":
            reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(
                block_size=1 << 22))
            schema: pa.Schema = reader.schema
            batches: Iterator[pa.RecordBatch] = iter(reader)
            total = None
        else:
            dataset = _dataset(path, fmt)
            schema = dataset.schema
            # No read-ahead: by default the scanner buffers 16 batches and 4 files.
            batches = iter(dataset.to_batches(batch_size=batch_rows, use_threads=False,
                                              batch_readahead=0, fragment_readahead=0))
            total = dataset.count_rows()
    return total, _read_on(path, fmt, _regroup(batches, schema, batch_rows))


def read_whole(path: str, fmt: str) -> pd.DataFrame:
    """The whole file as one DataFrame (for work that needs every row at once)."""
    _must_exist(path)
    with _reading(path, fmt):
        table = pa_csv.read_csv(path) if fmt == "csv" else _dataset(path, fmt).to_table()
    return to_pandas(table, 0)


def _must_exist(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"no such file or directory: {path!r}")


@contextlib.contextmanager
def _reading(path: str, fmt: str) -> Iterator[None]:
    """Arrow's errors on a malformed or unreadable file, as an InputError
    that names the file (pyarrow's own messages often do not)."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {path!r} as {fmt}: {exc}") from exc


def _read_on(path: str, fmt: str, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``tables``, with errors further into the file named as in :func:`_reading`."""
    while True:
        with _reading(path, fmt):
            table = next(tables, None)
        if table is None:
            return
        yield table


def _regroup(batches: Iterator[pa.RecordBatch], schema: pa.Schema, rows: int
             ) -> Iterator[pa.Table]:
    """Record batches joined or split into tables of ``rows`` rows."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        while size >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending, schema=schema)


def to_pandas(table: pa.Table, offset: int) -> pd.DataFrame:
    frame = table.to_pandas()
    if isinstance(frame.index, pd.RangeIndex):
        # Row labels as when the whole file is read: positions in the file.
        frame.index = pd.RangeIndex(offset, offset + len(frame))
    return frame


# --------------------------------------------------------------------------
# Writing, atomically
# --------------------------------------------------------------------------
class AtomicWriter:
    """Writes tables to a temporary name beside ``path``; :meth:`commit`
    renames it into place."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path.rstrip(os.sep) or path
        self.fmt = fmt
        self.directory_output = path.endswith(os.sep) or os.path.isdir(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise InputError(f"the output's directory does not exist: {parent!r}")
        name = os.path.basename(self.path)
        _sweep_partials(parent, name)
        self.temporary = os.path.join(
            parent, f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if self.directory_output:
            os.mkdir(self.temporary)
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self._parts = 0

    def write(self, table: pa.Table) -> None:
        if self.directory_output:
            part = os.path.join(self.temporary, f"part-{self._parts:06d}.{self.fmt}")
            self._parts += 1
            _write_whole(table, part, self.fmt)
            return
        if self._schema is None:
            self._schema = table.schema
            self._writer = _open_writer(self.temporary, self.fmt, table.schema)
        elif table.schema != self._schema:
            table = _conform(table, self._schema)
        self._writer.write_table(table)

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.close()
        elif not self.directory_output:  # no rows at all: still a valid, empty file
            _write_whole(pa.table({}), self.temporary, self.fmt)
        if self.directory_output and os.path.isdir(self.path):
            old = f"{self.temporary}.old"
            os.rename(self.path, old)
            os.rename(self.temporary, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.temporary, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer is not None:
                self._writer.close()
        if os.path.isdir(self.temporary):
            shutil.rmtree(self.temporary, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.temporary)


def _sweep_partials(parent: str, name: str) -> None:
    """Remove what killed runs (SIGKILL leaves no chance to clean up) left
    beside the target: partial outputs of processes no longer running."""
    prefix = f".{name}.partial-"
    for entry in os.listdir(parent):
        pid = entry[len(prefix):].split("-")[0] if entry.startswith(prefix) else ""
        if pid.isdigit() and not _running(int(pid)):
            path = os.path.join(parent, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _open_writer(path: str, fmt: str, schema: pa.Schema) -> Any:
    if fmt == "parquet":
        return pq.ParquetWriter(path, schema)
    if fmt == "arrow":
        return pa.ipc.new_file(path, schema)
    return pa_csv.CSVWriter(path, schema)


def _write_whole(table: pa.Table, path: str, fmt: str) -> None:
    writer = _open_writer(path, fmt, table.schema)
    writer.write_table(table)
    writer.close()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A later batch in the first batch's schema (pandas may infer a column
    as int64 in one batch and double in the next)."""
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
        raise ValueError(
            "the function's output changed shape between batches of the file "
            f"(first batch: {schema}; this batch: {table.schema}): {exc}. Make it "
            "return the same columns and types for every row, or process the file "
            "in one batch (--batch-rows larger than the file).") from exc


def to_arrow(result: pd.DataFrame | pd.Series, source: pa.Table | None) -> pa.Table:
    """The result as a table; columns the function left unchanged keep the
    input's Arrow types."""
    frame = result.to_frame(name=result.name if result.name is not None else "result") \
        if isinstance(result, pd.Series) else result
    keep_index = not isinstance(frame.index, pd.RangeIndex)
    frame = frame.reset_index() if keep_index else frame
    frame.columns = [str(c) for c in frame.columns]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if source is None:
        return table
    for i, field in enumerate(table.schema):
        index = source.schema.get_field_index(field.name)
        if index < 0 or source.schema.field(index).type == field.type:
            continue
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            original = source.schema.field(index)
            table = table.set_column(i, original, table.column(i).cast(original.type))
    return table.replace_schema_metadata(None)


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------
def _operation(kind: str, func: Callable[..., Any], column: str | None, into: str | None,
               options: dict[str, Any], source: str
               ) -> Callable[[pd.DataFrame], pd.DataFrame | pd.Series]:
    if kind == "apply":
        return lambda frame: frame.parallel(**options).apply(func, axis=1)
    if kind == "map":
        if column is None:
            raise ValueError("map needs the column to map (column=... / --column)")

        def map_column(frame: pd.DataFrame) -> pd.DataFrame:
            if column not in frame.columns:
                raise InputError(f"no column {column!r} in {source!r}; it has "
                               f"{', '.join(map(str, frame.columns))}")
            frame[into or column] = frame[column].parallel(**options).map(func)
            return frame
        return map_column
    if kind == "partitions":
        return lambda frame: frame.parallel(**options).map_partitions(func)
    raise ValueError(f"unknown operation {kind!r}; choose one of {', '.join(OPERATIONS)}")


def process_file(source: str, func: Callable[..., Any], destination: str, *,
                 operation: str = "apply", column: str | None = None,
                 into: str | None = None, input_format: str | None = None,
                 output_format: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
                 progress: bool | None = None, resume: bool = False,
                 **options: Any) -> Summary:
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
    fmt_in = detect_format(source, input_format)
    fmt_out = detect_format(destination, output_format)
    show = sys.stderr.isatty() if progress is None else progress
    if options.get("backend") in ("dask", "ray") and fmt_in == "parquet":
        return _on_cluster(source, func, destination, operation, column, into, fmt_out,
                           batch_rows, show, resume, options)
    run = _operation(operation, func, column, into, {**options, "progress": False},
                     source)
    began = time.perf_counter()
    total, tables = read_batches(source, fmt_in, batch_rows)
    bar = _progress_bar(show, total)
    writer = AtomicWriter(destination, fmt_out)
    kept = None
    if resume:
        kept = KeptBatches(destination, _run_identity(
            source, func, operation, column, into, batch_rows, fmt_out, options))
    rows_in = rows_out = 0
    failures: list[tuple[Any, BaseException]] = []
    try:
        for number, table in enumerate(tables):
            if kept is None or number >= kept.finished:
                with _collecting(failures):
                    result = run(to_pandas(table, rows_in))
                out = to_arrow(result, table if operation in ("map", "partitions") else None)
                del result
                if kept is None:
                    writer.write(out)
                    rows_out += out.num_rows
                else:
                    kept.keep(number, out)
                del out
                _release_freed_memory()
            rows_in += table.num_rows
            if bar is not None:
                bar.update(table.num_rows)
        if kept is not None:
            for out in kept.tables():
                writer.write(out)
                rows_out += out.num_rows
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    # Complete: batches kept by this run, or by a killed run this one did
    # not resume, are of no more use.
    shutil.rmtree(KeptBatches.place(destination), ignore_errors=True)
    summary = Summary(rows_in, rows_out, time.perf_counter() - began, destination)
    logger.info("%s", summary)
    _warn_row_errors(operation, source, destination, failures)
    return summary


def _on_cluster(source: str, func: Callable[..., Any], destination: str, operation: str,
                column: str | None, into: str | None, fmt_out: str, batch_rows: int,
                show: bool, resume: bool, options: dict[str, Any]) -> Summary:
    """:func:`process_file` with the cluster's workers reading and writing."""
    if resume:
        raise ValueError(
            "resume is not available when the cluster's workers read the input "
            f"(backend={options['backend']!r} on Parquet): each of them writes its "
            "part at once; run again to start over")
    from pandas_parallel.cluster_io import process_on_cluster

    summary, failures = process_on_cluster(
        source, func, destination, operation=operation, column=column, into=into,
        fmt_out=fmt_out, batch_rows=batch_rows, show_progress=show, options=options)
    logger.info("%s", summary)
    _warn_row_errors(operation, source, destination, failures)
    return summary


def _warn_row_errors(operation: str, source: str, destination: str,
                     failures: list[tuple[Any, BaseException]]) -> None:
    """One RowErrorsWarning for the whole run (``errors="coerce"``)."""
    if not failures:
        return
    from pandas_parallel._compat import caller_stack_level

    label, first = failures[0]
    warnings.warn(RowErrorsWarning(
        f"{operation} over {source}: the function raised for {len(failures)} rows "
        f"(errors='coerce'); they are missing values in {destination}. The first: row "
        f"{label!r} ({type(first).__name__}: {first}); this warning's .failures "
        "lists (label, exception) for each.", failures), stacklevel=caller_stack_level())


@contextlib.contextmanager
def _collecting(failures: list[tuple[Any, BaseException]]) -> Iterator[None]:
    """Collect the failures of each batch's RowErrorsWarning into
    ``failures`` (one warning for the whole file follows); other warnings
    are issued as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in caught:
        if isinstance(message.message, RowErrorsWarning):
            failures.extend(message.message.failures)
        else:
            warnings.warn_explicit(message.message, message.category, message.filename,
                                   message.lineno, source=message.source)


class KeptBatches:
    """The outputs of a run's finished batches, kept beside its target (in
    ``.<name>.resume/``) so that a run killed midway continues after its
    last finished batch.

    Each batch's output is an Arrow file, renamed into place when written
    in full; ``identity.json`` says which run they belong to (input,
    function and settings). Kept batches of another run are removed.
    """

    def __init__(self, destination: str, identity: dict[str, Any]) -> None:
        self.directory = self.place(destination)
        marker = os.path.join(self.directory, "identity.json")
        self.finished = 0
        if os.path.isdir(self.directory):
            if _read_json(marker) == identity:
                while os.path.exists(self._part(self.finished)):
                    self.finished += 1
                logger.info("resuming after %d finished batches kept in %s",
                            self.finished, self.directory)
            else:
                logger.warning("the batches kept in %s are from another run (its input, "
                               "function or settings differ): starting over", self.directory)
                shutil.rmtree(self.directory)
        if not os.path.isdir(self.directory):
            os.mkdir(self.directory)
            _write_json(marker, identity)

    @staticmethod
    def place(destination: str) -> str:
        """Where the batches of a run writing ``destination`` are kept."""
        path = destination.rstrip(os.sep) or destination
        return os.path.join(os.path.dirname(os.path.abspath(path)),
                            f".{os.path.basename(path)}.resume")

    def _part(self, number: int) -> str:
        return os.path.join(self.directory, f"batch-{number:06d}.arrow")

    def keep(self, number: int, table: pa.Table) -> None:
        path = self._part(number)
        partial = f"{path}.partial"
        with pa.OSFile(partial, "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        os.replace(partial, path)

    def tables(self) -> Iterator[pa.Table]:
        number = 0
        while os.path.exists(self._part(number)):
            with pa.memory_map(self._part(number)) as source:
                yield pa.ipc.open_file(source).read_all()
            number += 1


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


def _read_json(path: str) -> Any:
    import json

    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _write_json(path: str, value: Any) -> None:
    import json

    with open(f"{path}.partial", "w") as file:
        json.dump(value, file)
    os.replace(f"{path}.partial", path)


def _release_freed_memory() -> None:
    """Give memory freed by the last batch back to the system (glibc keeps
    freed heap memory for reuse, so without this a stream's footprint creeps
    up to several batches' worth of fragments)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, ...)
        return None


_libc = _load_libc()


def process_parquet(source: str, func: Callable[..., Any], destination: str,
                    **kwargs: Any) -> Summary:
    """:func:`process_file` for Parquet in and out (see there for parameters)."""
    return process_file(source, func, destination, input_format="parquet",
                        output_format=kwargs.pop("output_format", "parquet"), **kwargs)


def _progress_bar(show: bool, total: int | None) -> Any:
    if not show:
        return None
    return progress_bar(total=total, unit="rows", unit_scale=True, desc="pandas-parallel")
