"""Read the input files: Parquet (a file or a dataset directory), CSV and
Arrow IPC/Feather, in batches of rows or whole.

Each batch reaches the function as ``pd.read_*`` of the whole file gives its
rows: labelled by their position in the file, with the types pandas infers
over the whole file (see :func:`read_batches` for CSV).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_ds

logger = logging.getLogger("pandas_parallel")

FORMATS = ("parquet", "csv", "arrow")
_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".arrow": "arrow",
               ".feather": "arrow", ".ipc": "arrow"}
DEFAULT_BATCH_ROWS = 250_000


class InputError(ValueError):
    """The input or the output's place cannot be used: a file that cannot be
    read in its format, a column it does not have, an output directory that
    does not exist. The message names the file, column or directory."""


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


@dataclasses.dataclass
class Batch:
    """Rows of the file, as pandas reads them (labelled by their position in
    the file), and as Arrow read them when it did (whose types columns the
    function leaves unchanged keep in the output)."""

    frame: pd.DataFrame
    table: pa.Table | None


CSV_READERS = ("pandas", "pyarrow")


def read_batches(path: str, fmt: str, batch_rows: int, csv_reader: str = "pandas"
                 ) -> tuple[int | None, Iterator[Batch]]:
    """The file's row count when known before reading it, and its rows in
    batches of about ``batch_rows`` rows, in order.

    A CSV file is read by pandas, twice: once for the types of its columns
    over the whole file, then batch by batch with those types, so the
    function gets the values ``pd.read_csv(path, low_memory=False)`` gives
    (a column that turns from numbers to text midway is text throughout; a
    batch read alone would give it numbers). ``csv_reader="pyarrow"`` reads
    it once, faster, with Arrow's types, inferred from its first block (ISO
    timestamps become datetimes; a column that changes type midway fails).
    """
    must_exist(path)
    if fmt == "csv" and csv_reader == "pandas":
        return _csv_batches(path, batch_rows)
    with errors_name_the_file(path, fmt):
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
    tables = _read_on(path, fmt, _regroup(batches, schema, batch_rows))
    return total, _as_frames(tables)


def _as_frames(tables: Iterator[pa.Table]) -> Iterator[Batch]:
    offset = 0
    for table in tables:
        yield Batch(to_pandas(table, offset), table)
        offset += table.num_rows


def _csv_batches(path: str, batch_rows: int) -> tuple[int, Iterator[Batch]]:
    """A CSV file's rows, typed as pandas types them over the whole file
    (see :func:`read_batches`)."""
    rows, text, casts = _csv_types(path, batch_rows)

    def frames() -> Iterator[Batch]:
        with errors_name_the_file(path, "csv"):
            reader = pd.read_csv(path, chunksize=batch_rows, low_memory=False,
                                 dtype=dict.fromkeys(text, str))
            for frame in reader:
                for column, dtype in casts.items():
                    if frame[column].dtype != dtype:
                        frame[column] = frame[column].astype(dtype)
                yield Batch(frame, None)

    return rows, frames()


def _csv_types(path: str, batch_rows: int) -> tuple[int, list[str], dict[str, Any]]:
    """The rows of a CSV file, and where its batches' types differ from
    the whole file's: the columns to read as text, and the casts of the
    others (numbers to their common type, booleans to objects)."""
    seen: dict[str, set[str]] = {}
    rows = 0
    with errors_name_the_file(path, "csv"):
        for frame in pd.read_csv(path, chunksize=batch_rows, low_memory=False):
            rows += len(frame)
            for column in frame.columns:
                seen.setdefault(column, set()).add(_csv_kind(frame[column]))
    text: list[str] = []
    casts: dict[str, Any] = {}
    for column, kinds in seen.items():
        if len(kinds) == 1:
            continue
        numbers = {k for k in kinds if k.startswith("number:")}
        if numbers == kinds:
            casts[column] = np.result_type(*(k.partition(":")[2] for k in numbers))
        elif kinds <= {"bool", "booleans"}:
            casts[column] = object  # True/False with missing values: objects
        else:
            text.append(column)
    if text or casts:
        logger.debug("%s: typed as over the whole file: text %s, cast %s", path, text, casts)
    return rows, text, casts


def _csv_kind(column: pd.Series) -> str:
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return "bool"
    if isinstance(dtype, np.dtype) and dtype.kind in "iuf":
        return f"number:{dtype}"
    if (isinstance(dtype, np.dtype) and dtype.kind == "O"
            and pd.api.types.infer_dtype(column, skipna=True) == "boolean"):
        return "booleans"
    return "text"


def read_whole(path: str, fmt: str, csv_reader: str = "pandas") -> pd.DataFrame:
    """The whole file as one DataFrame (for work that needs every row at once)."""
    must_exist(path)
    with errors_name_the_file(path, fmt):
        if fmt == "csv" and csv_reader == "pandas":
            return pd.read_csv(path, low_memory=False)
        table = pa_csv.read_csv(path) if fmt == "csv" else _dataset(path, fmt).to_table()
    return to_pandas(table, 0)


def must_exist(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"no such file or directory: {path!r}")


@contextlib.contextmanager
def errors_name_the_file(path: str, fmt: str) -> Iterator[None]:
    """Arrow's and pandas' errors on a malformed or unreadable file, as an
    InputError that names the file (their own messages often do not)."""
    try:
        yield
    except (pa.ArrowInvalid, OSError, pd.errors.ParserError, pd.errors.EmptyDataError,
            UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path!r} as {fmt}: {str(exc).strip()}") from exc


def _read_on(path: str, fmt: str, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """``tables``, with errors further into the file named (see
    :func:`errors_name_the_file`)."""
    while True:
        with errors_name_the_file(path, fmt):
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


