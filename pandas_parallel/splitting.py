"""Split: see the input as a sequence of *units* and cut it into chunks.

A unit is the smallest piece of work that must stay whole: a row, a run of
rows sharing an index label, a period of a DatetimeIndex, a group, or a
column. A chunk is any contiguous range of units; chunks are balanced by
row count. Scattered units (groups, labels of an unsorted index) keep their
rows in original relative order inside a chunk, which is what lets pandas,
run on a chunk, produce groups in the same relative order as on the whole.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import transport


def even_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Ranges of at most ``chunk_size`` covering ``range(n)``, sizes within one."""
    return even_cuts(n, -(-n // chunk_size)) if n > 0 else []


def even_cuts(n: int, n_chunks: int) -> list[tuple[int, int]]:
    """``n_chunks`` ranges (fewer if ``n`` is smaller) covering ``range(n)``,
    sizes within one."""
    if n <= 0:
        return []
    edges = np.linspace(0, n, min(max(1, n_chunks), n) + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def balanced_cuts(weights: np.ndarray, n_chunks: int) -> list[tuple[int, int]]:
    """Cut ``weights`` (in order) into about ``n_chunks`` contiguous ranges of
    similar total weight. An item heavier than a fair share gets a range of
    its own; the others balance around it."""
    n = len(weights)
    if n == 0:
        return []
    n_chunks = max(1, min(n_chunks, n))
    cumulative = np.cumsum(weights, dtype=np.float64)
    total = cumulative[-1]
    if total <= 0:
        return even_bounds(n, -(-n // n_chunks))
    targets = total * np.arange(1, n_chunks) / n_chunks
    cuts = np.searchsorted(cumulative, targets, side="left") + 1
    # An item of a fair share or more stands alone: cut before and after it.
    heavy = np.flatnonzero(weights >= total / n_chunks)
    edges = np.unique(np.concatenate([[0], np.clip(cuts, 1, n), heavy, heavy + 1, [n]]))
    edges = edges[(edges >= 0) & (edges <= n)]
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


@dataclasses.dataclass(frozen=True)
class Carrier:
    """How a *carrier* frame holds the input: its data columns under
    positional labels ``0..n_data-1``, then extra columns riding along (group
    keys, row positions). Sent to workers, it recovers the data and the extras
    from a chunk of the carrier.
    """

    n_data: int
    columns: pd.Index | None  # data column labels; None when the data is a Series
    series_name: Any

    @classmethod
    def wrap(cls, obj: pd.DataFrame | pd.Series, extras: Sequence[Any] = ()
             ) -> tuple[Carrier, pd.DataFrame]:
        """The layout for ``obj``, and the carrier frame with ``extras``
        (one array-like per extra column, a value per row) appended."""
        series = isinstance(obj, pd.Series)
        frame = obj.to_frame() if series else obj
        carrier = frame.set_axis(range(frame.shape[1]), axis=1)
        for i, values in enumerate(extras):
            carrier[frame.shape[1] + i] = values
        layout = cls(frame.shape[1], None if series else obj.columns,
                     obj.name if series else None)
        return layout, carrier

    def data(self, carrier: pd.DataFrame) -> pd.DataFrame | pd.Series:
        if self.columns is None:
            return carrier.iloc[:, 0].rename(self.series_name)
        data = carrier.iloc[:, : self.n_data]
        data.columns = self.columns
        return data

    def extra(self, carrier: pd.DataFrame, i: int) -> pd.Series:
        return carrier.iloc[:, self.n_data + i]


class Units:
    """The input as a sequence of units; a chunk is a range of units.

    Parameters
    ----------
    obj : DataFrame or Series
        The input.
    weights : ndarray or None
        Rows per unit, the balance criterion; ``None`` for one row per unit
        (kept implicit: an array of ones for 10M rows costs 80 ms to make
        and sum).
    codes : ndarray, optional
        The unit of each row (-1 for rows in no unit, e.g. dropped NaN
        groups) when units are scattered; ``None`` when unit ``i`` is the
        contiguous block of rows following unit ``i - 1``.
    columns : bool
        Units are the columns of ``obj`` (``apply(axis=0)``, ``transform``).
    """

    def __init__(self, obj: pd.DataFrame | pd.Series, weights: np.ndarray | None,
                 codes: np.ndarray | None = None, columns: bool = False) -> None:
        self.obj = obj
        self.codes = codes
        self.columns = columns
        self.weights = None if weights is None else np.asarray(weights, dtype=np.int64)
        if self.weights is None:
            self.n_units = obj.shape[1] if columns else len(obj)
            self.starts = None
        else:
            self.n_units = len(self.weights)
            self.starts = np.concatenate([[0], np.cumsum(self.weights)])

    # -- constructors for each way of splitting -----------------------------
    @classmethod
    def rows(cls, obj: pd.DataFrame | pd.Series) -> Units:
        """One unit per row."""
        return cls(obj, None)

    @classmethod
    def of_columns(cls, frame: pd.DataFrame) -> Units:
        """One unit per column."""
        return cls(frame, None, columns=True)

    @classmethod
    def index_labels(cls, obj: pd.DataFrame | pd.Series) -> Units:
        """One unit per index label: rows sharing a label stay together."""
        index = obj.index
        if index.is_monotonic_increasing or index.is_monotonic_decreasing:
            starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
            return cls(obj, np.diff(np.r_[starts, len(index)]))
        codes, uniques = pd.factorize(index, use_na_sentinel=False)
        codes = np.asarray(codes, dtype=np.int64)
        return cls(obj, np.bincount(codes, minlength=len(uniques)), codes=codes)

    @classmethod
    def periods(cls, obj: pd.DataFrame | pd.Series, freq: str) -> Units:
        """One unit per period (``"1D"``, ``"1h"``...) of a sorted DatetimeIndex."""
        index = obj.index
        if not isinstance(index, pd.DatetimeIndex) or not index.is_monotonic_increasing:
            kind = ("an unsorted DatetimeIndex" if isinstance(index, pd.DatetimeIndex)
                    else f"a {type(index).__name__}")
            raise ValueError(
                f"partition={freq!r} needs a sorted DatetimeIndex, but the input "
                f"has {kind}. Sort it (df.sort_index()) or use partition='rows' "
                "or 'index'.")
        ones = pd.Series(np.ones(len(index), dtype=np.int64), index=index)
        return cls(obj, ones.resample(freq).sum().to_numpy())

    @classmethod
    def groups(cls, obj: pd.DataFrame | pd.Series, codes: np.ndarray,
               n_groups: int) -> Units:
        """One unit per group, numbered in pandas' group order."""
        grouped = codes if codes.min(initial=0) >= 0 else codes[codes >= 0]
        return cls(obj, np.bincount(grouped, minlength=n_groups), codes=codes)

    @classmethod
    def for_partition(cls, obj: pd.DataFrame | pd.Series, partition: str) -> Units:
        """Units for row-wise work under the ``partition`` option."""
        if partition == "rows":
            return cls.rows(obj)
        if partition == "index":
            return cls.index_labels(obj)
        return cls.periods(obj, partition)

    # -- queries --------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_units

    def row_start(self, unit: int) -> int:
        """The first row of ``unit`` (for contiguous units)."""
        return unit if self.starts is None else int(self.starts[unit])

    def rows_in(self, start: int, stop: int) -> int:
        """How many rows units ``[start, stop)`` hold."""
        if self.weights is None:
            return stop - start
        return int(self.weights[start:stop].sum())

    def rows_of(self, start: int, stop: int) -> np.ndarray | slice:
        """Original row positions of units ``[start, stop)``."""
        if self.columns:
            return slice(0, len(self.obj))
        if self.codes is None:
            return slice(self.row_start(start), self.row_start(stop))
        return np.flatnonzero((self.codes >= start) & (self.codes < stop))

    def local(self, start: int, stop: int) -> pd.DataFrame | pd.Series:
        """The input restricted to units ``[start, stop)``."""
        if self.columns:
            return self.obj.iloc[:, start:stop]
        return self.obj.iloc[self.rows_of(start, stop)]

    def cut(self, start: int, n_chunks: int | None, chunk_size: int | None
            ) -> list[tuple[int, int]]:
        """Unit ranges covering ``[start, len)``: ``chunk_size`` units each,
        or ``n_chunks`` ranges balanced by rows."""
        if chunk_size is not None:
            ranges = even_bounds(len(self) - start, chunk_size)
        else:
            remaining = len(self) - start
            if self.weights is None:
                ranges = even_cuts(remaining, n_chunks or 1)
            else:
                ranges = balanced_cuts(self.weights[start:], n_chunks or 1)
        return [(a + start, b + start) for a, b in ranges]

    def nbytes(self) -> int:
        """Bytes of column data (what transport moves)."""
        return transport.nbytes(self.obj)

    def ship(self, ranges: Sequence[tuple[int, int]], directory: str | None,
             mode: str) -> transport.Shipped:
        """The chunks ``ranges``, ready to ship (see :mod:`transport`)."""
        if self.columns:
            groups = [list(range(a, b)) for a, b in ranges]
            return transport.Shipment(self.obj, [], directory, mode, columns=groups)
        if self.codes is None:
            first = self.row_start(ranges[0][0])
            bounds = [(self.row_start(a) - first, self.row_start(b) - first)
                      for a, b in ranges]
            return transport.Shipment(self.obj.iloc[first:], bounds, directory, mode)
        order, bounds = self.chunk_order(ranges)
        return transport.Shipment(self.obj.take(order), bounds, directory, mode)

    def chunk_order(self, ranges: Sequence[tuple[int, int]]
                    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Rows of scattered units, chunk after chunk (original order within
        a chunk), and each chunk's bounds in that order."""
        assert self.codes is not None
        chunk_of_unit = np.full(len(self) + 1, len(ranges), dtype=np.int64)
        for i, (a, b) in enumerate(ranges):
            chunk_of_unit[a:b] = i
        chunk_of_row = chunk_of_unit[self.codes]  # code -1: past the last chunk
        # A stable sort of small integers is a radix sort: fast on many rows.
        narrow = np.int8 if len(ranges) < 127 else np.int16 if len(ranges) < 32767 else np.int64
        order = np.argsort(chunk_of_row.astype(narrow), kind="stable")
        counts = np.bincount(chunk_of_row, minlength=len(ranges) + 1)[: len(ranges)]
        edges = np.concatenate([[0], np.cumsum(counts)])
        bounds = [(int(a), int(b)) for a, b in itertools.pairwise(edges)]
        return order[: edges[-1]], bounds


class WindowGroups(Units):
    """One unit per group of a grouped window, labelled as pandas labels
    the windows it passes to the function (``raw=False``).

    pandas hands the function each window as a Series of the values in
    group order under the labels of the *original* row order, position for
    position (pandas issue 49878): the window over group-ordered positions
    ``[i, j)`` carries ``labels[i:j]``. A chunk of whole groups is a run of
    those positions, ``[offset, offset + rows)``: labelled with that run of
    ``labels``, pandas gives each window on the chunk the labels it gives it
    on the whole input.
    """

    def __init__(self, obj: pd.DataFrame, codes: np.ndarray, n_groups: int,
                 labels: pd.Index) -> None:
        grouped = codes if codes.min(initial=0) >= 0 else codes[codes >= 0]
        super().__init__(obj, np.bincount(grouped, minlength=n_groups), codes=codes)
        self.labels = labels

    def local(self, start: int, stop: int) -> pd.DataFrame | pd.Series:
        chunk = super().local(start, stop).copy(deep=False)
        offset = self.row_start(start)
        chunk.index = self.labels[offset:offset + len(chunk)]
        return chunk

    def ship(self, ranges: Sequence[tuple[int, int]], directory: str | None,
             mode: str) -> transport.Shipped:
        order, bounds = self.chunk_order(ranges)
        chunks = self.obj.take(order)
        offset = self.row_start(ranges[0][0])  # the chunks' groups follow one another
        chunks.index = self.labels[offset:offset + len(chunks)]
        return transport.Shipment(chunks, bounds, directory, mode)


class PaddedRows(Units):
    """One unit per row; each chunk also carries the rows around it that its
    windows reach (``rolling``), so pandas computes its rows exactly.

    A chunk arrives as ``Tagged(rows, (head, keep))``: the padded rows, of
    which ``keep`` rows starting at position ``head`` are the chunk's own.

    Parameters
    ----------
    obj : DataFrame or Series
    pad : callable
        ``pad(start, stop) -> (lo, hi)``: the rows ``[lo, hi)`` that rows
        ``[start, stop)`` need.
    max_chunks : int
        At most this many chunks, so that padding stays a small share of
        the work.
    """

    def __init__(self, obj: pd.DataFrame | pd.Series,
                 pad: Callable[[int, int], tuple[int, int]], max_chunks: int) -> None:
        super().__init__(obj, None)
        self.pad = pad
        self.max_chunks = max(1, max_chunks)

    def local(self, start: int, stop: int) -> transport.Tagged:  # type: ignore[override]
        lo, hi = self.pad(start, stop)
        return transport.Tagged(self.obj.iloc[lo:hi], (start - lo, stop - start))

    def cut(self, start: int, n_chunks: int | None, chunk_size: int | None
            ) -> list[tuple[int, int]]:
        if chunk_size is None:
            n_chunks = min(n_chunks or 1, self.max_chunks)
        return super().cut(start, n_chunks, chunk_size)

    def ship(self, ranges: Sequence[tuple[int, int]], directory: str | None,
             mode: str) -> transport.Shipped:
        padded = [self.pad(a, b) for a, b in ranges]
        first = min(lo for lo, _ in padded)
        shipment = transport.Shipment(self.obj.iloc[first:],
                                      [(lo - first, hi - first) for lo, hi in padded],
                                      directory, mode)
        tags = [(a - lo, b - a) for (a, b), (lo, _) in zip(ranges, padded)]
        return _PaddedShipment(shipment, tags)


class _PaddedShipment:
    def __init__(self, shipment: transport.Shipment, tags: list[tuple[int, int]]) -> None:
        self.shipment = shipment
        self.tags = tags

    def payload(self, i: int) -> transport.Payload:
        return transport.Tagged(self.shipment.payload(i), self.tags[i])
