"""Transport: how chunks reach workers and how results come back.

A frame travels as an uncompressed Arrow IPC file in a per-call scratch
directory (``/dev/shm`` when it has room, else the temp directory) and is
memory-mapped by the reader, so only column data is copied, once. Arrow
carries column *values* only, under positional names; labels (index,
columns, Series name) and ``attrs`` travel pickled beside it, which keeps
labels exact whatever their type. A frame goes by Arrow only when every
column round-trips exactly (see :func:`arrow_exact`); otherwise the whole
frame is pickled (protocol 5, by joblib/loky). Small results skip the file
and come back pickled with the worker's reply, which is faster for them.
Every call's files live in one directory that is removed when the call
ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

logger = logging.getLogger("pandas_parallel")

SCRATCH_PREFIX = "pandas_parallel-"
_SHM_DIR = "/dev/shm"
_SPACE_MARGIN = 64 * 2**20
# Results up to this many values come back pickled with the worker's reply:
# for them, an Arrow file costs more (about 1-2 ms to write and read back,
# measured) than pickling (well under a millisecond).
INLINE_RESULT_VALUES = 2**19
# Input chunks up to this size are pickled into their task: an Arrow file
# costs this process about 0.4 ms to write whatever its size, pickling a
# small frame a tenth of that (the two meet near 2 MB, measured).
INLINE_INPUT_BYTES = 2**18
# Arrow costs each column of a chunk about 20 microseconds to write and read
# back into pandas; pickle costs a frame of numpy dtypes a block, whatever
# its columns. Numbers travel by Arrow only where each column of a chunk
# holds this much (100 columns of 8,000 floats: 5.0 ms by Arrow, 3.3 ms
# pickled in this process, more once piped to a worker; 10,000 columns of
# 100 floats: 233 ms against 2.6 ms).
ARROW_MIN_COLUMN_BYTES = 2**16

MASKED_DTYPES = (
    pd.Int8Dtype, pd.Int16Dtype, pd.Int32Dtype, pd.Int64Dtype,
    pd.UInt8Dtype, pd.UInt16Dtype, pd.UInt32Dtype, pd.UInt64Dtype,
    pd.Float32Dtype, pd.Float64Dtype, pd.BooleanDtype,
)  # fmt: skip


# --------------------------------------------------------------------------
# Exactness check
# --------------------------------------------------------------------------
def _all_str(values: Any) -> bool:
    return bool(pd.api.types.infer_dtype(values, skipna=False) == "string")


def _dtype_arrow_exact(dtype: Any, values: Any) -> bool:
    if isinstance(dtype, np.dtype):
        if dtype.kind in "biufmM":
            return True
        # Object strings come back as `str` under pandas 3; casting back to
        # object is exact only when no value is missing.
        return dtype.kind == "O" and _all_str(values)
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        return _dtype_arrow_exact(cats.dtype, cats)
    if isinstance(dtype, pd.ArrowDtype):
        # Nested Arrow types (list, struct) have no pandas dtype string that
        # to_pandas can parse back.
        arrow_type = dtype.pyarrow_dtype
        return not pa.types.is_nested(arrow_type) and not pa.types.is_dictionary(arrow_type)
    if isinstance(dtype, (pd.DatetimeTZDtype, pd.PeriodDtype, pd.StringDtype, *MASKED_DTYPES)):
        return True
    if isinstance(dtype, pd.IntervalDtype):
        return dtype.subtype is not None and dtype.subtype.kind in "iufmM"
    return False


def arrow_exact(frame: pd.DataFrame) -> bool:
    """Whether every column of ``frame`` survives an Arrow round trip exactly.

    Labels are not checked: they never travel through Arrow.
    """
    dtypes = list(frame.dtypes)
    exact: dict[Any, bool] = {}  # by dtype, for those that need no values
    for i, dtype in enumerate(dtypes):  # (a wide frame has 10,000 of them)
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            if not _dtype_arrow_exact(dtype, frame.iloc[:, i]):
                return False
        elif not exact.setdefault(dtype, _dtype_arrow_exact(dtype, None)):
            return False
    return True


# --------------------------------------------------------------------------
# Scratch directory, one per call
# --------------------------------------------------------------------------
def _free_bytes(path: str) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return -1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Scratch:
    """This process's scratch directories, under one lock: ``in_use``, those
    of calls under way (as the interpreter exits, a call in a daemon thread
    is stopped before its own cleanup runs: they are removed then);
    ``left_behind``, those a call could not remove (a worker was still
    writing into them), which the next sweep removes. A directory in use is
    never left behind, so concurrent calls cannot remove each other's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_use: set[str] = set()
        self.left_behind: set[str] = set()

    def take_left_behind(self) -> list[str]:
        with self.lock:
            paths, self.left_behind = list(self.left_behind), set()
        return paths

    def using(self) -> list[str]:
        with self.lock:
            return list(self.in_use)

    def begin(self, path: str) -> None:
        with self.lock:
            self.in_use.add(path)

    def end(self, path: str) -> None:
        with self.lock:
            self.in_use.discard(path)

    def leave(self, path: str) -> None:
        with self.lock:
            self.left_behind.add(path)


SCRATCH = _Scratch()


def sweep_stale_scratch() -> None:
    """Remove scratch directories left by processes that no longer exist,
    and this process's own that a call left behind; also the worker pool's
    semaphores (``sem.loky-<pid>-*`` in ``/dev/shm``) of processes that no
    longer exist.

    A parent killed with SIGKILL cannot clean up after itself; the next
    process to use the library does it.
    """
    for path in SCRATCH.take_left_behind():
        shutil.rmtree(path, ignore_errors=True)
    for base in {_SHM_DIR, tempfile.gettempdir()}:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            for prefix, remove in _LEFTOVERS:
                if not name.startswith(prefix):
                    continue
                try:
                    pid = int(name[len(prefix):].split("-", 1)[0])
                except ValueError:
                    continue
                if pid != os.getpid() and not _pid_alive(pid):
                    remove(os.path.join(base, name))


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_LEFTOVERS = (
    (SCRATCH_PREFIX, lambda path: shutil.rmtree(path, ignore_errors=True)),
    # The program store (see programs.py): large objects, kept between calls.
    ("pandas_parallel_store-", lambda path: shutil.rmtree(path, ignore_errors=True)),
    ("sem.loky-", _unlink),  # loky's named semaphores, should their owner die
)


@contextlib.contextmanager
def scratch_directory(nbytes: int) -> Iterator[str | None]:
    """A private directory for one call's files, removed on exit.

    Prefers ``/dev/shm`` (memory-backed, so memory-mapped reads are free);
    uses the temp directory when shared memory is absent or has less than
    ``nbytes`` free (Docker gives it 64 MB). Yields ``None`` when neither
    has room: the caller then pickles.
    """
    needed = 2 * nbytes + _SPACE_MARGIN
    base = None
    for candidate in (_SHM_DIR, tempfile.gettempdir()):
        if os.path.isdir(candidate) and _free_bytes(candidate) >= needed:
            base = candidate
            break
        logger.debug(
            "scratch: %s has less than %d MB free, not using it",
            candidate,
            needed >> 20,
        )
    if base is None:
        logger.debug("scratch: no directory has room; chunks will be pickled")
        yield None
        return
    path = os.path.join(base, f"{SCRATCH_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    os.mkdir(path, 0o700)
    SCRATCH.begin(path)
    try:
        yield path
    finally:
        SCRATCH.end(path)
        _remove(path)


def _remove_at_exit() -> None:
    for path in SCRATCH.using():
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_at_exit)


def _remove(path: str) -> None:
    """Remove a scratch directory. After a failure a worker may be writing
    its last result into it: retry briefly; the next call sweeps what is left."""
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.01)
    SCRATCH.leave(path)
    logger.debug("scratch: %s still in use; the next call removes it", path)


# --------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------
@dataclasses.dataclass
class Labels:
    """What Arrow does not carry: labels, names, attrs and exact dtypes."""

    index: pd.Index
    columns: pd.Index | None  # None for a Series
    name: Any = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtypes: list[Any] | None = None

    @classmethod
    def of(cls, obj: pd.DataFrame | pd.Series) -> Labels:
        if isinstance(obj, pd.Series):
            return cls(obj.index, None, obj.name, dict(obj.attrs), [obj.dtype])
        return cls(obj.index, obj.columns, None, dict(obj.attrs), list(obj.dtypes))

    def apply_to(self, frame: pd.DataFrame) -> pd.DataFrame | pd.Series:
        if self.dtypes is not None:
            loaded = list(frame.dtypes)  # once: frame.dtypes builds a Series
            for i, dtype in enumerate(self.dtypes):
                if loaded[i] != dtype:
                    frame.isetitem(i, frame.iloc[:, i].astype(dtype))
        frame.index = self.index
        if self.columns is None:
            result: pd.DataFrame | pd.Series = frame.iloc[:, 0]
            result.name = self.name
        else:
            frame.columns = self.columns
            result = frame
        result.attrs = dict(self.attrs)
        return result

    def plain(self) -> bool:
        """Whether every column has a plain numpy dtype (see :func:`detach`)."""
        return self.dtypes is not None and _plain(self.dtypes)

    def with_index(self, index: pd.Index) -> Labels:
        return dataclasses.replace(self, index=index)


@dataclasses.dataclass
class ArrowSlice:
    """A reference to rows (one record batch) and columns of an IPC file."""

    path: str
    batch: int
    labels: Labels
    columns: Sequence[int] | None = None
    shared: bool = False  # other payloads read the same file

    def load(self, borrow: bool = False) -> pd.DataFrame | pd.Series:
        """The frame; with ``borrow``, numeric columns without missing
        values are read-only views of the mapped file instead of copies
        (the mapping outlives the file: see :func:`detach`). Without, it
        owns its memory (Arrow shares even then, e.g. a single column)."""
        with pa.memory_map(self.path) as source:
            batch = self._batch(source)
            frame = pa.Table.from_batches([batch]).to_pandas(
                split_blocks=borrow and self.labels.plain())
        loaded = self.labels.apply_to(frame)
        return loaded if borrow else detach(loaded)

    def _batch(self, source: Any) -> pa.RecordBatch:
        batch = pa.ipc.open_file(source).get_batch(self.batch)
        return batch if self.columns is None else batch.select(list(self.columns))

    def load_private(self) -> pd.DataFrame | pd.Series | None:
        """The frame, its numeric columns writable views of a private
        (copy-on-write) mapping of the file: nothing is copied unless the
        reader writes to it. ``None`` when some column cannot be viewed."""
        dtypes = self.labels.dtypes
        if dtypes is None or not dtypes or not _plain(dtypes) or any(
                d.kind == "b" for d in dtypes):  # Arrow packs booleans in bits
            return None
        with open(self.path, "rb") as file:
            mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        mapped = pa.py_buffer(mapping)
        batch = self._batch(pa.BufferReader(mapped))
        if batch.num_rows == 0:
            return None
        arrays = {}
        for i, (column, dtype) in enumerate(zip(batch.columns, dtypes, strict=True)):
            values = column.buffers()[1]
            if column.null_count or column.offset or values.size < len(column) * dtype.itemsize:
                # NaT travels as a null: Arrow writes the column out anew.
                arrays[i] = column.to_numpy(zero_copy_only=False, writable=True)
            else:
                arrays[i] = np.frombuffer(mapping, dtype=dtype, count=len(column),
                                          offset=values.address - mapped.address)
        return self.labels.apply_to(pd.DataFrame(arrays, copy=False))


@dataclasses.dataclass
class Inline:
    """An object handed over as is: pickled by the backend, or not at all."""

    obj: Any

    def load(self, borrow: bool = False) -> Any:
        return self.obj


@dataclasses.dataclass
class Deferred:
    """A chunk its worker cuts for itself from the input (``make()``): for
    workers forked from this process, which hold a copy of the input, so
    the parent does not spend its time cutting every chunk up front."""

    make: Callable[[], Any]

    def load(self, borrow: bool = False) -> Any:
        return self.make()


@dataclasses.dataclass
class Tagged:
    """A result with facts about how it was made (e.g. the kinds of values
    the user's function returned), which the combine step needs."""

    value: Any
    tag: Any

    def load(self, borrow: bool = False) -> Tagged:
        value = self.value
        if isinstance(value, (ArrowSlice, ArrowBytes, Inline)):
            value = value.load(borrow)
        return Tagged(value, self.tag)


@dataclasses.dataclass
class ArrowBytes:
    """A frame as Arrow IPC stream bytes: travels in-band to another machine."""

    data: bytes
    labels: Labels

    def load(self, borrow: bool = False) -> pd.DataFrame | pd.Series:
        frame = pa.ipc.open_stream(self.data).read_all().to_pandas()
        return self.labels.apply_to(frame)


Payload = ArrowSlice | ArrowBytes | Inline | Deferred | Tagged


def in_band(obj: Any, transport: str) -> Payload:
    """``obj`` ready to travel inside a task (to a cluster): Arrow IPC bytes
    for frames that round-trip exactly, pickled with the task otherwise."""
    if isinstance(obj, Tagged):
        return Tagged(in_band(obj.value, transport), obj.tag)
    if not isinstance(obj, (pd.DataFrame, pd.Series)) or len(obj) == 0:
        return Inline(obj)
    table = _to_table(obj) if use_arrow(obj, transport) else None
    if table is None:
        return Inline(obj)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return ArrowBytes(sink.getvalue().to_pybytes(), Labels.of(obj))


def _positional(obj: pd.DataFrame | pd.Series) -> pd.DataFrame:
    frame = obj.to_frame() if isinstance(obj, pd.Series) else obj
    frame = frame.copy(deep=False)
    frame.columns = [f"c{i}" for i in range(frame.shape[1])]
    frame.index = pd.RangeIndex(len(frame))
    return frame


def _write_ipc(table: pa.Table, path: str, bounds: Sequence[tuple[int, int]]) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for start, stop in bounds:
            # One batch per chunk, so a reader fetches chunk i as batch i.
            batches = table.slice(start, stop - start).combine_chunks().to_batches()
            if len(batches) != 1:
                raise ValueError("an Arrow chunk must hold at least one row")
            writer.write_batch(batches[0])


def _to_table(obj: pd.DataFrame | pd.Series) -> pa.Table | None:
    """Convert a frame that :func:`use_arrow` accepted; ``None`` if Arrow refuses."""
    frame = _positional(obj)
    if _plain(frame.dtypes):
        # Numbers, booleans and datetimes straight from numpy: zero-copy, and
        # NaN stays NaN (from_pandas turns it into a null, scanning and
        # copying every float column: 20x slower).
        if len(set(frame.dtypes)) == 1:  # one block: its columns as views
            block = frame.to_numpy()
            arrays = [pa.array(block[:, i], from_pandas=False) for i in range(block.shape[1])]
        else:
            arrays = [pa.array(column.to_numpy(), from_pandas=False)
                      for _, column in frame.items()]
        return pa.Table.from_arrays(arrays, names=list(frame.columns))
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        logger.debug("transport: Arrow refused the frame (%s); pickling", exc)
        return None


_PLAIN_KINDS = "biufmM"  # numpy kinds whose Arrow type converts back to the same dtype


def nbytes(obj: pd.DataFrame | pd.Series) -> int:
    """Bytes of column data (what transport moves): for a frame of numpy
    dtypes, its rows times a row's width (a wide frame has 10,000 columns:
    summing them one by one takes a second; ``memory_usage`` builds a Series,
    four times slower on a narrow one)."""
    if isinstance(obj, pd.Series):
        return int(obj.nbytes)
    dtypes = list(obj.dtypes)
    if all(isinstance(d, np.dtype) for d in dtypes):
        return len(obj) * sum(d.itemsize for d in dtypes)
    return int(sum(column.nbytes for _, column in obj.items()))


def data_bytes(obj: Any) -> int | None:
    """Bytes of column data of a chunk's result (a frame, Series or array,
    tagged or not); ``None`` for anything else."""
    obj = obj.value if isinstance(obj, Tagged) else obj
    if isinstance(obj, pd.DataFrame | pd.Series):
        return nbytes(obj)
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    return None


def _narrow_columns(obj: pd.DataFrame | pd.Series) -> bool:
    """Numbers whose columns are too short for Arrow's cost per column."""
    dtypes = _dtypes(obj)
    return _plain(dtypes) and nbytes(obj) < ARROW_MIN_COLUMN_BYTES * len(dtypes)


def _dtypes(obj: pd.DataFrame | pd.Series) -> list[Any]:
    return [obj.dtype] if isinstance(obj, pd.Series) else list(obj.dtypes)


def _plain(dtypes: Any) -> bool:
    return all(isinstance(d, np.dtype) and d.kind in _PLAIN_KINDS for d in dtypes)


def use_arrow(obj: pd.DataFrame | pd.Series, transport: str) -> bool:
    """Decide, for one frame, whether it travels by Arrow."""
    if transport == "pickle":
        return False
    frame = obj.to_frame() if isinstance(obj, pd.Series) else obj
    exact = arrow_exact(frame)
    if transport == "arrow" and not exact:
        logger.debug("transport: transport='arrow' but a column does not "
                     "round-trip exactly; pickling this frame")
    return exact


class Shipped(Protocol):
    """Chunks ready to hand out: chunk ``i``'s payload, made when asked for."""

    def payload(self, i: int) -> Payload: ...


class Shipment:
    """Payloads for the chunks of one call, made when first asked for.

    Row chunks are written one file per chunk at the moment the chunk is
    about to be handed out, so workers start on the first chunk while later
    ones are still being written. The frame is converted to Arrow once.
    """

    def __init__(self, obj: pd.DataFrame | pd.Series, bounds: Sequence[tuple[int, int]],
                 directory: str | None, transport: str,
                 columns: Sequence[Sequence[int]] | None = None) -> None:
        self.obj = obj
        self.bounds = list(bounds)
        self.columns = columns
        self.directory = directory
        self.arrow = directory is not None and use_arrow(obj, transport)
        self.auto = transport == "auto"
        self._table: pa.Table | None = None
        # Row chunks smaller than this many rows are pickled ("auto" only).
        self.inline_rows = 0
        if self.arrow and transport == "auto":
            plain = _plain(_dtypes(obj))
            table = None if plain else self.table  # numbers: as in numpy
            size = max(1, nbytes(obj) if table is None else table.nbytes)
            self.inline_rows = INLINE_INPUT_BYTES * len(obj) // size
            if plain:
                n_columns = 1 if isinstance(obj, pd.Series) else obj.shape[1]
                self.inline_rows = max(self.inline_rows,
                                       ARROW_MIN_COLUMN_BYTES * n_columns * len(obj) // size)
        how = "Arrow IPC in " + str(directory) if self.arrow else "pickle"
        logger.debug("transport: %d chunks by %s", len(self), how)
        self._whole: str | None = None

    @property
    def table(self) -> pa.Table | None:
        """The frame in Arrow, converted once, when a chunk first needs it
        (never, when every chunk is small enough to pickle)."""
        if self.arrow and self._table is None:
            self._table = _to_table(self.obj)
            self.arrow = self._table is not None
        return self._table

    def __len__(self) -> int:
        return len(self.columns) if self.columns is not None else len(self.bounds)

    def payload(self, i: int) -> Payload:
        if self.columns is not None:
            return self._columns(i)
        start, stop = self.bounds[i]
        piece = self.obj.iloc[start:stop]
        if stop - start <= self.inline_rows or self.table is None:
            return Inline(piece)
        path = os.path.join(self.directory, f"input-{i}.arrow")  # type: ignore[arg-type]
        _write_ipc(self.table.slice(start, stop - start), path, [(0, stop - start)])
        return ArrowSlice(path, 0, Labels.of(piece))

    def _columns(self, i: int) -> Payload:
        assert self.columns is not None
        frame = self.obj
        positions = list(self.columns[i])
        column_bytes = nbytes(frame) / max(1, frame.shape[1])
        small = column_bytes * len(positions) <= INLINE_INPUT_BYTES or (
            column_bytes < ARROW_MIN_COLUMN_BYTES and _plain(frame.dtypes))
        if (self.auto and small) or self.table is None:
            return Inline(frame.iloc[:, positions])
        if self._whole is None:  # every column chunk reads the same file
            self._whole = os.path.join(self.directory, "input.arrow")  # type: ignore[arg-type]
            _write_ipc(self.table, self._whole, [(0, len(frame))])
        labels = Labels.of(frame.iloc[:0, positions]).with_index(frame.index)
        return ArrowSlice(self._whole, 0, labels, positions, shared=True)


def ship_result(
    result: Any, directory: str | None, name: str, transport: str
) -> Payload:
    """Called in a worker: hand a chunk's result back to the parent.

    ``directory`` is ``None`` when results must come back in-band (e.g. the
    call is already over, or there is nowhere to write).
    """
    if isinstance(result, Tagged):
        return Tagged(ship_result(result.value, directory, name, transport), result.tag)
    if directory is None or not isinstance(result, (pd.DataFrame, pd.Series)):
        return Inline(result)
    if len(result) == 0 or (transport == "auto" and (
            result.size <= INLINE_RESULT_VALUES or _narrow_columns(result))):
        return Inline(result)
    if not use_arrow(result, transport):
        return Inline(result)
    table = _to_table(result)
    if table is None or not os.path.isdir(directory):
        return Inline(result)
    path = os.path.join(directory, name)
    _write_ipc(table, path, [(0, len(result))])
    return ArrowSlice(path, 0, Labels.of(result.iloc[:0]).with_index(result.index))


def load_input(payload: Payload) -> Any:
    """Called in a worker: its chunk of the input, owned by the worker.
    Numeric columns in a file are mapped privately rather than copied (a
    copy of a 40 MB chunk costs 15-20 ms, and the function may only read it)."""
    if isinstance(payload, Tagged):
        return Tagged(load_input(payload.value), payload.tag)
    if isinstance(payload, ArrowSlice):
        frame = payload.load_private()
        if frame is not None:
            return frame
    return payload.load()


def release_input(payload: Payload) -> None:
    """Called in the parent once a chunk's result is back: delete the
    chunk's input file now, rather than with the scratch directory, so
    its memory is freed early and the deletion overlaps other chunks."""
    inner = payload.value if isinstance(payload, Tagged) else payload
    if isinstance(inner, ArrowSlice) and not inner.shared:
        with contextlib.suppress(OSError):
            os.unlink(inner.path)


def fetch_result(payload: Payload, borrow: bool = True) -> Any:
    """Called in the parent: load a result and delete its file.

    With ``borrow``, numeric columns are views of the mapped file, not
    copies: for combine steps that copy them into the result anyway (rows
    stacked). Pass what the combine step returns through :func:`detach`.
    Without, each result is copied as it arrives and its memory freed: for
    combine steps that set results side by side without copying.
    """
    value = payload.load(borrow=borrow)
    inner = payload.value if isinstance(payload, Tagged) else payload
    if isinstance(inner, ArrowSlice):
        with contextlib.suppress(OSError):
            os.unlink(inner.path)
    return value


def receive(result: Payload, sent: Payload, borrow: bool) -> tuple[Any, int | None]:
    """Called in the parent as a chunk's result arrives: the result loaded
    (:func:`fetch_result`), the chunk's input released
    (:func:`release_input`), and the result's bytes of column data
    (:func:`data_bytes`)."""
    value = fetch_result(result, borrow=borrow)
    release_input(sent)
    return value, data_bytes(value)


def detach(result: Any) -> Any:
    """``result``, copied if any of its columns still borrows a result
    file's memory (a single chunk, or a concat that kept the pieces' arrays):
    the caller gets writable arrays that own their memory, as from pandas."""
    if isinstance(result, pd.Series):
        borrowed = _borrows(result)
    elif isinstance(result, pd.DataFrame):
        borrowed = any(_borrows(result.iloc[:, i]) for i in range(result.shape[1]))
    else:
        return result
    return result.copy(deep=True) if borrowed else result


def _borrows(column: pd.Series) -> bool:
    """Whether a numpy-backed column's memory belongs to something other
    than numpy (here: Arrow's mapping of a result file)."""
    if not isinstance(column.dtype, np.dtype):
        return False
    root = column.to_numpy()
    while isinstance(root.base, np.ndarray):
        root = root.base
    return not root.flags.owndata and root.base is not None
