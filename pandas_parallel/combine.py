"""Combine: put per-chunk results back together as pandas would have.

Each chunk's result is what pandas returned for that chunk. Concatenating
them is not enough: pandas infers a result's dtype over *all* values, so a
chunk of ints and a chunk holding a ``None`` must combine to what pandas
infers over the whole (float64), not to ``concat``'s object. Where chunk
dtypes disagree and concat falls back to object, the column is re-inferred
with the same pandas routine the operation uses (a :data:`Reinfer`).
Where chunk results disagree in *kind* (one chunk gave a Series, another a
DataFrame) no merge can be trusted: :class:`CannotCombine` is raised and the
caller hands the whole call to pandas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel._compat import PANDAS_3

Reinfer = Callable[[Sequence[pd.Series]], pd.Series]
"""Combine one result column from its chunks' pieces, whose dtypes differ."""


class CannotCombine(Exception):
    """Chunk results cannot be merged into exactly what pandas returns."""


def _identity(value: Any) -> Any:
    return value


def _objects(column: pd.Series) -> pd.Series:
    """A column's values as objects, as the function returned them: numpy
    scalars stay numpy scalars (``astype(object)`` would make them Python
    numbers, and pandas infers float32 from np.float32 but not from float)."""
    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf":
        values = np.empty(len(column), dtype=object)
        values[:] = list(column.to_numpy())
        return pd.Series(values, index=column.index, name=column.name, dtype=object)
    return column.astype(object)


def _as_objects(columns: Sequence[pd.Series]) -> pd.Series:
    """The pieces' values as objects, ready for pandas to infer again."""
    if not all(_replayable(c.dtype) for c in columns):
        raise CannotCombine("chunk results have different dtypes: "
                            f"{sorted({str(c.dtype) for c in columns})}")
    return pd.concat([_objects(c) for c in columns])


def _signed_with_unsigned(columns: Sequence[pd.Series]) -> pd.Series | None:
    """Chunks of int64 beside chunks of uint64 (values past int64's range):
    pandas infers object over all values when any is negative, whatever the
    function returned; otherwise uint64 from Python ints and object from
    numpy int64 scalars, which an int64 chunk does not tell apart."""
    kinds = {getattr(c.dtype, "kind", "O") for c in columns}
    if not {"i", "u"} <= kinds:
        return None
    if any(bool((c < 0).any()) for c in columns if getattr(c.dtype, "kind", "O") == "i"):
        return pd.concat([c.astype(object) for c in columns])
    raise CannotCombine("chunks of signed and of unsigned integers, none negative: pandas' "
                        "dtype depends on whether they were Python or numpy integers")


def reinfer_like_map(columns: Sequence[pd.Series]) -> pd.Series:
    """Inference of ``Series.map``/``apply``/``DataFrame.map`` (map_infer)."""
    mixed = _signed_with_unsigned(columns)
    if mixed is not None:
        return mixed
    return _as_objects(columns).map(_identity)


def reinfer_like_constructor(columns: Sequence[pd.Series]) -> pd.Series:
    """Inference of ``pd.Series(list_of_values)`` (apply's scalar results)."""
    mixed = _signed_with_unsigned(columns)
    if mixed is not None:
        return mixed
    values = _as_objects(columns)
    return pd.Series(values.tolist(), index=values.index, name=values.name)


def trust_concat(columns: Sequence[pd.Series]) -> pd.Series:
    """For results pandas itself concatenates: concat's dtype is its dtype."""
    return pd.concat(columns)


def numeric_concat(columns: Sequence[pd.Series]) -> pd.Series:
    """Numbers combine by concat's common type; anything else cannot be
    replayed (e.g. aggregation casts results back to the input dtype)."""
    if all(isinstance(c.dtype, np.dtype) and c.dtype.kind in "iuf" for c in columns):
        return pd.concat(columns)
    raise CannotCombine("group results of different types")


def map_is_chunk_stable(dtype: Any) -> bool:
    """Whether an elementwise ``map`` over values of ``dtype`` infers its
    result dtype the same way on chunks as on the whole.

    Nullable and Arrow-backed arrays cast the mapped values back with rules
    that look at all of them at once (all-missing results keep the input
    dtype, ints with ``None`` become Float64) and lose, per chunk, the
    difference between ``None``, ``NaN`` and ``NA``; those maps stay with
    pandas.
    """
    from pandas_parallel.transport import MASKED_DTYPES

    if isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA:
        return False  # "string" dtype: an all-missing chunk maps to NaN, not NA
    return not isinstance(dtype, (*MASKED_DTYPES, pd.ArrowDtype))


def _kind(pieces: Sequence[Any]) -> type:
    kinds = {type(p) for p in pieces}
    if kinds <= {pd.Series}:
        return pd.Series
    if kinds <= {pd.DataFrame}:
        return pd.DataFrame
    raise CannotCombine(
        "chunks returned different kinds of result: "
        + ", ".join(sorted(k.__name__ for k in kinds))
    )


def union_labels(indexes: Sequence[pd.Index]) -> pd.Index:
    """Union of labels as pandas forms it when aligning Series into a frame:
    unchanged if all equal, otherwise sorted where the labels compare."""
    first = indexes[0]
    if all(first.equals(other) for other in indexes[1:]):
        return first
    result = first
    for other in indexes[1:]:
        result = result.union(other, sort=None)
    return result


def _replayable(dtype: Any) -> bool:
    """Whether values of ``dtype``, turned to objects, re-infer as pandas
    inferred them in the first place (numpy dtypes and strings do; nullable
    and Arrow dtypes come from inference paths of their own)."""
    return isinstance(dtype, (np.dtype, pd.StringDtype))


def _reconcile(columns: Sequence[pd.Series], reinfer: Reinfer | None) -> pd.Series:
    """One result column whose chunks came back with different dtypes.

    pandas inferred the dtype over all values at once; replay that on the
    values as objects. ``concat`` cannot be trusted here: its common-type
    rules differ from inference (bool with float, all-NA pieces).
    """
    if reinfer is None:
        raise CannotCombine("chunk results have different dtypes: "
                            f"{sorted({str(c.dtype) for c in columns})}")
    result = reinfer(columns)
    if result.dtype == object and any(_lost_missing(c) for c in columns):
        raise CannotCombine("an object result from pieces that turned None into NaN")
    return result


def _lost_missing(column: pd.Series) -> bool:
    """Whether inferring this piece's dtype turned missing values into NaN
    (float, ``str``), losing whether each was None or NaN: harmless when the
    whole result is numeric, not when it is object."""
    kind = getattr(column.dtype, "kind", "O")
    lossy = isinstance(column.dtype, pd.StringDtype) or kind == "f"
    return lossy and bool(column.hasnans)


def _reinfer_mixed(result: pd.DataFrame | pd.Series, pieces: Sequence[Any],
                   reinfer: Reinfer | None) -> pd.DataFrame | pd.Series:
    """Reconcile columns whose chunks had different dtypes (see :func:`_reconcile`).

    ``reinfer=None`` means the operation's inference cannot be replayed at
    all (e.g. ``raw=True``, where numpy fixes the dtype from the first row).
    """
    nonempty = [p for p in pieces if len(p)]
    if isinstance(result, pd.Series):
        if len({p.dtype for p in nonempty}) > 1:
            column = _reconcile(nonempty, reinfer)
            column.index, column.name = result.index, result.name
            return column
        return result
    for i in range(result.shape[1]):
        if len({p.dtypes.iloc[i] for p in nonempty}) > 1:
            column = _reconcile([p.iloc[:, i] for p in nonempty], reinfer)
            column.index = result.index
            result.isetitem(i, column)
    return result


@dataclasses.dataclass(frozen=True)
class Inference:
    """How the operation infers dtypes: one :data:`Reinfer` for Series
    results and one for DataFrame results (``None``: cannot be replayed)."""

    series: Reinfer | None
    frame: Reinfer | None

    def for_result(self, result: Any) -> Reinfer | None:
        return self.series if isinstance(result, pd.Series) else self.frame


def _nonempty(pieces: Sequence[Any]) -> list[Any]:
    kept = [p for p in pieces if len(p)]
    return kept or list(pieces[:1])


def concat_rows(pieces: Sequence[Any], inference: Inference) -> pd.DataFrame | pd.Series:
    """Stack chunk results vertically, columns aligned as pandas aligns them."""
    kind = _kind(pieces)
    if kind is pd.DataFrame:
        columns = union_labels([p.columns for p in pieces])
        pieces = [p if p.columns.equals(columns) else p.reindex(columns=columns)
                  for p in pieces]
    pieces = _nonempty(pieces)
    result = pd.concat(pieces, axis=0) if len(pieces) > 1 else pieces[0].copy()
    if kind is pd.DataFrame and len(pieces) > 1 and not PANDAS_3:
        _restore_missing_markers(result, pieces)
    return _reinfer_mixed(result, pieces, inference.for_result(result))


def _restore_missing_markers(result: pd.DataFrame, pieces: Sequence[pd.DataFrame]) -> None:
    """pandas 2.2's concat writes NaN over a piece whose object block is all
    missing, whatever it held (``None``, ``NaT``); on the whole frame pandas
    keeps them. Put the pieces' own values back in object columns."""
    object_dtype = np.dtype(object)
    for i in range(result.shape[1]):
        if result.dtypes.iloc[i] != object_dtype:
            continue
        columns = [p.iloc[:, i] for p in pieces]
        if (all(c.dtype == object_dtype for c in columns)
                and any(c.isna().all() for c in columns)):
            values = np.concatenate([c.to_numpy() for c in columns])
            result.isetitem(i, pd.Series(values, index=result.index, dtype=object))


def _stack_plain_series(pieces: Sequence[Any]) -> pd.Series | None:
    """What ``pd.concat(pieces)`` gives but for its index, in the common
    case it can be built directly: Series of one numpy dtype and one plain
    name. ``pd.concat`` costs a quarter of a millisecond even on three small
    Series, a share of a small call; ``None`` in any other case."""
    first = pieces[0]
    if type(first) is not pd.Series:
        return None
    dtype, name = first.dtype, first.name
    if not (isinstance(dtype, np.dtype)
            and (name is None or type(name) in (str, int))
            and all(type(p) is pd.Series and p.dtype == dtype
                    and type(p.name) is type(name) and p.name == name for p in pieces)):
        return None
    return pd.Series(np.concatenate([p.to_numpy() for p in pieces]), name=name, copy=False)


def combine_rows(pieces: Sequence[Any], original: pd.DataFrame | pd.Series,
                 inference: Inference) -> pd.DataFrame | pd.Series:
    """Results of an operation that keeps one result row per input row."""
    stacked = _stack_plain_series(pieces) if pieces else None
    result = concat_rows(pieces, inference) if stacked is None else stacked
    if len(result) != len(original):
        raise CannotCombine(f"{len(result)} result rows for {len(original)} input rows")
    result.index = original.index
    result.attrs = _attrs(pieces, original)
    return result


def combine_columns(pieces: Sequence[Any], original: pd.DataFrame,
                    inference: Inference) -> pd.DataFrame | pd.Series:
    """Results of a column-wise operation (``apply(axis=0)``, ``transform``)."""
    kind = _kind(pieces)
    if kind is pd.Series:
        result: pd.DataFrame | pd.Series = concat_rows(pieces, inference)
        if len(result) != original.shape[1]:
            raise CannotCombine("column results do not match the columns")
        result.index = original.columns
    else:
        indexes = [p.index for p in pieces]
        same_rows = all(indexes[0].equals(i) for i in indexes[1:])
        if not same_rows and all(isinstance(i, pd.RangeIndex) and i.start == 0
                                 for i in indexes):
            # Lists (or arrays) of different lengths: pandas makes a Series
            # of them, where Series results would align into a frame; a
            # chunk's frame does not say which its function returned.
            raise CannotCombine("column results of different lengths")
        if same_rows:
            result = pd.concat(pieces, axis=1)
        else:  # aligned as pandas aligns the columns' results: DataFrame(dict)
            columns = [p.iloc[:, j] for p in pieces for j in range(p.shape[1])]
            result = pd.DataFrame(dict(enumerate(columns)))
        if result.shape[1] != original.shape[1]:
            raise CannotCombine("column results do not match the columns")
        result.columns = original.columns
    result.attrs = _attrs(pieces, original)
    return result


def _attrs(pieces: Sequence[Any], original: pd.DataFrame | pd.Series) -> dict[Any, Any]:
    """The result's ``attrs``: pandas keeps the input's on some results and
    not on others (``Series.apply`` returning Series gives a frame without
    them); each chunk's result, made by pandas from a chunk carrying the
    input's ``attrs``, shows which."""
    if not pieces or not hasattr(pieces[0], "attrs"):
        return dict(original.attrs)
    return dict(pieces[0].attrs)


def restore_order(result: pd.DataFrame | pd.Series,
                  positions: np.ndarray) -> pd.DataFrame | pd.Series:
    """Reorder rows that came back in chunk order to original row order."""
    if len(positions) < 2 or bool(np.all(positions[1:] > positions[:-1])):
        return result
    return result.take(np.argsort(positions, kind="stable"))
