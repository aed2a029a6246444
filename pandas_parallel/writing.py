"""Write the output: atomically (it appears under its name only when
complete), by one run at a time, and, for resumable runs, batch by batch
beside the target."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pandas_parallel.reading import InputError

logger = logging.getLogger("pandas_parallel")


class TargetLock:
    """One run writes a target at a time: an exclusive lock on
    ``.NAME.lock`` beside it, held for the run (the system lets go of it
    when the process ends, however it ends), which names the process that
    holds it.

    Raises
    ------
    InputError
        Another run is writing the target: it names that run's process.
    """

    def __init__(self, target: str) -> None:
        parent, name = os.path.split(os.path.abspath(target))
        self.path = os.path.join(parent, f".{name}.lock")
        while True:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _lock(self.fd):
                other = _read_text(self.fd) or "another"
                os.close(self.fd)
                raise InputError(
                    f"{target!r} is being written by another run (process {other}): wait "
                    "for it to end, or write to another output") from None
            # The file locked may be one a run that just ended removed: the
            # lock is valid only on the file that is at the path now.
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    break
            os.close(self.fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = -1


def _lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` now, if no one holds it."""
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_text(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 64, 0).decode(errors="replace").strip()
    return ""


class AtomicWriter:
    """Writes tables to a temporary name beside ``path``; :meth:`commit`
    renames it into place. The target is locked (:class:`TargetLock`) from
    the writer's making to :meth:`release`."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path.rstrip(os.sep) or path
        self.fmt = fmt
        self.directory_output = path.endswith(os.sep) or os.path.isdir(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise InputError(f"the output's directory does not exist: {parent!r}")
        name = os.path.basename(self.path)
        self.lock = TargetLock(self.path)
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
            write_whole(table, part, self.fmt)
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
            write_whole(pa.table({}), self.temporary, self.fmt)
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

    def release(self) -> None:
        """Let another run write the target (after :meth:`commit` or
        :meth:`abort`, and whatever else the run does to it)."""
        self.lock.release()


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
    return _CsvWriter(path, schema)


class _CsvWriter:
    """pyarrow's CSV writer, with floats written as pandas writes them: a
    whole number keeps its ``.0`` (pyarrow writes 2.0 as ``2``, which
    ``pd.read_csv`` reads back as an integer)."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.floats = [i for i, field in enumerate(schema) if pa.types.is_floating(field.type)]
        for i in self.floats:
            schema = schema.set(i, pa.field(schema[i].name, pa.string()))
        self.writer = pa_csv.CSVWriter(path, schema)

    def write_table(self, table: pa.Table) -> None:
        for i in self.floats:
            table = table.set_column(i, table.schema[i].name, _float_text(table.column(i)))
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()


def _float_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    text = pc.cast(column, pa.string())
    whole = pc.invert(pc.match_substring_regex(text, r"[.eEnN]"))  # not 2.5, 1e+20, nan, inf
    return pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)


def write_whole(table: pa.Table, path: str, fmt: str) -> None:
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
        for entry in os.listdir(self.directory):  # left by a run killed mid-write
            if entry.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, entry))

    @staticmethod
    def place(destination: str) -> str:
        """Where the batches of a run writing ``destination`` are kept."""
        path = destination.rstrip(os.sep) or destination
        return os.path.join(os.path.dirname(os.path.abspath(path)),
                            f".{os.path.basename(path)}.resume")

    def _part(self, number: int) -> str:
        return os.path.join(self.directory, f"batch-{number:06d}.arrow")

    def keep(self, number: int, table: pa.Table) -> None:
        """Keep batch ``number``'s output: in full, or (the disk full, say)
        not at all, the batches kept before it still valid."""
        path = self._part(number)
        partial = f"{path}.partial"
        try:
            with pa.OSFile(partial, "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
                out.write_table(table)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise

    def tables(self) -> Iterator[pa.Table]:
        number = 0
        while os.path.exists(self._part(number)):
            with pa.memory_map(self._part(number)) as source:
                yield pa.ipc.open_file(source).read_all()
            number += 1


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


