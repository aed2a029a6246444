"""``df.groupby(...).parallel`` and ``s.groupby(...).parallel``.

Whole groups go to workers in a few chunks of many groups each, balanced by
row count (never one task per group). Each chunk holds a contiguous range
of groups in pandas' group order, with its rows in their original relative
order, so pandas' own groupby on a chunk yields those groups in the same
order as on the whole frame. The pieces then concatenate in group order;
``transform``/``filter`` (and ``apply`` returning same-indexed results) are
put back in original row order.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import _compat, combine, registration
from pandas_parallel.operation import Operation, Piece
from pandas_parallel.routing import (
    EMPTY,
    EMPTY_GROUPS,
    FILTER_NAN_GROUP,
    GROUPS_OF_COLUMNS,
    SERIES_GROUPBY_AS_INDEX,
    UNOBSERVED,
    UNSORTED_CATEGORICAL,
    Call,
    Configurable,
    Reason,
    route,
)
from pandas_parallel.splitting import Carrier, Units
from pandas_parallel.transport import Tagged

logger = logging.getLogger("pandas_parallel")


@dataclasses.dataclass(frozen=True)
class Regroup:
    """Recreates a GroupBy on a chunk. Sent to workers once per call.

    A chunk is a :class:`Carrier` frame: the data columns, then one column
    per key that is not a column of the data (arrays, Series, functions,
    Groupers, index levels by name), holding each row's key value. Column
    keys are grouped by label, so pandas excludes them from groups exactly
    as it does on the whole frame.
    """

    layout: Carrier
    keys: tuple[tuple[str, Any], ...]  # ("column", label) or ("carried", name)
    level: Any
    sort: bool
    dropna: bool
    as_index: bool
    group_keys: bool
    selection: Any

    def groupby(self, carrier: pd.DataFrame) -> Any:
        data = self.layout.data(carrier)
        options = dict(sort=self.sort, dropna=self.dropna, as_index=self.as_index,
                       group_keys=self.group_keys, observed=True)
        if self.level is not None and not self.keys:
            gb = data.groupby(level=self.level, **options)
        else:
            keys: list[Any] = []
            carried = 0
            for kind, ref in self.keys:
                if kind == "column":
                    keys.append(ref)
                else:
                    keys.append(self.layout.extra(carrier, carried).rename(ref))
                    carried += 1
            gb = data.groupby(keys if len(keys) > 1 else keys[0], **options)
        return gb if self.selection is None else gb[self.selection]


def call_grouped(method: str, regroup: Regroup, chunk: pd.DataFrame,
                 func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``regroup(chunk).<method>(func, *args, **kwargs)`` (runs in workers)."""
    return getattr(regroup.groupby(chunk), method)(func, *args, **kwargs)


def _kind_of_type(cls: type) -> str:
    if issubclass(cls, pd.DataFrame):
        return "DataFrame"
    if issubclass(cls, pd.Series):
        return "Series"
    return "None" if cls is type(None) else "scalar"


@dataclasses.dataclass(frozen=True)
class Returned:
    """What ``func`` returned across one chunk's groups, as pandas' apply
    sees it: the kinds of value, and whether any group's value was not
    indexed like the group (pandas' "mutated": then results stay in group
    order, else they go back to row order)."""

    kinds: frozenset[str]
    mutated: bool


def _indexed_like(value: Any, group: Any) -> bool:
    """pandas' own test (``groupby.ops._is_indexed_like``, the same on 2.2
    and 3.x): a Series is like a Series group with the same index, a frame
    like any group with the same index; nothing else is."""
    if isinstance(value, pd.Series):
        return isinstance(group, pd.Series) and value.index.equals(group.index)
    if isinstance(value, pd.DataFrame):
        return value.index.equals(group.index)
    return False


def call_grouped_apply(regroup: Regroup, chunk: pd.DataFrame, func: Any,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tagged:
    """``apply`` on a chunk, noting what ``func`` returned (:class:`Returned`).

    pandas shapes apply's output from what *all* groups returned; the
    combine step needs to know it for every chunk. Built-in functions are
    passed unwrapped (pandas may swap them for its own implementations), so
    what they return is unknown (``None``).
    """
    if not hasattr(func, "__code__") and not hasattr(func, "__wrapped__"):
        return Tagged(regroup.groupby(chunk).apply(func, *args, **kwargs), None)
    types: set[type] = set()
    note = types.add
    mutated = False

    @functools.wraps(func)
    def noting(group: Any, *a: Any, **k: Any) -> Any:
        nonlocal mutated
        value = func(group, *a, **k)
        note(value.__class__)  # cheap per group; classified once, below
        if not mutated and not _indexed_like(value, group):
            mutated = True  # once true, pandas stops checking too
        return value

    result = regroup.groupby(chunk).apply(noting, *args, **kwargs)
    return Tagged(result, Returned(frozenset(_kind_of_type(t) for t in types), mutated))


def _as_list(keys: Any, n_keys: int) -> list[Any]:
    """The keys of a groupby, one per grouping (a list of values as long as
    the axis, ``groupby(["a", "a"])``, is one key)."""
    keys = list(keys) if isinstance(keys, list) else [keys]
    return keys if len(keys) == n_keys else [keys]


def _is_column_key(obj: Any, key: Any) -> bool:
    if not isinstance(obj, pd.DataFrame):
        return False
    try:
        return key in obj.columns and obj.columns.is_unique
    except TypeError:  # unhashable: an array or list of values
        return False


class Grouped:
    """One parallel groupby call: its groups as units, how workers regroup a
    chunk, and how the chunks' results combine into pandas' own result."""

    def __init__(self, gb: Any, filter_dropna: bool = True) -> None:
        self.filter_dropna = filter_dropna
        spec = _compat.groupby_spec(gb)
        self.spec = spec
        obj = spec.obj
        codes = gb.ngroup().to_numpy()
        if codes.dtype.kind == "f":
            codes = np.where(np.isnan(codes), -1, codes)
        codes = codes.astype(np.int64, copy=False)
        n_groups = len(spec.result_index)

        keys: list[tuple[str, Any]] = []
        carried: list[np.ndarray | pd.api.extensions.ExtensionArray] = []
        if spec.keys is not None:
            index = spec.result_index
            for position, key in enumerate(_as_list(spec.keys, spec.n_keys)):
                if isinstance(key, pd.Series) and _is_column_key(obj, spec.in_axis[position]):
                    key = spec.in_axis[position]  # a column, given as itself
                if _is_column_key(obj, key):
                    keys.append(("column", key))
                else:
                    level_values = index.get_level_values(position)
                    keys.append(("carried", index.names[position]))
                    carried.append(level_values.take(np.maximum(codes, 0)).array)
        layout, carrier = Carrier.wrap(obj, carried)
        self.units = Units.groups(carrier, codes, n_groups)
        # Groups with no rows (unobserved categories, empty time bins) are
        # numbered differently by ngroup, and pandas calls the function on
        # them: such groupbys stay with pandas.
        sizes = self.units.weights
        assert sizes is not None
        self.has_empty_groups = len(sizes) != n_groups or bool((sizes == 0).any())
        self.regroup = Regroup(
            layout=layout, keys=tuple(keys), level=spec.level, sort=spec.sort, dropna=spec.dropna,
            as_index=spec.as_index, group_keys=spec.group_keys,
            # A SeriesGroupBy's obj is already the selected column.
            selection=spec.selection if isinstance(obj, pd.DataFrame) else None)

    def _chunk_index(self, piece: Piece) -> pd.Index:
        return self.spec.obj.index[np.asarray(piece.rows)]

    def _in_row_order(self, results: list[Any], pieces: list[Piece], fill_dropped: bool
                      ) -> Any:
        """Concatenate row-aligned results and restore original row order;
        rows in no group (NaN keys with dropna) come back as missing when
        ``fill_dropped`` (as pandas' transform does)."""
        obj = self.spec.obj
        combined = combine.concat_rows(results, _TRUST_CONCAT)
        positions = np.concatenate([np.asarray(p.rows) for p in pieces])
        combined = combine.restore_order(combined, positions)
        if fill_dropped and len(combined) != len(obj):
            combined.index = pd.RangeIndex(len(obj))[np.sort(positions)]
            combined = combined.reindex(pd.RangeIndex(len(obj)))
            combined.index = obj.index
        return combined

    def combine_transform(self, pieces: list[Piece]) -> Any:
        results = [p.result for p in pieces]
        for piece, result in zip(pieces, results):
            if len(result) != len(np.asarray(piece.rows)):
                raise combine.CannotCombine("transform returned a different length")
        return self._in_row_order(results, pieces, fill_dropped=True)

    def combine_filter(self, pieces: list[Piece]) -> Any:
        results = [p.result for p in pieces]
        if not self.filter_dropna:
            return self._in_row_order(results, pieces, fill_dropped=True)
        kept: list[np.ndarray] = []
        for piece, result in zip(pieces, results):
            chunk_index = self._chunk_index(piece)
            if not chunk_index.is_unique:
                raise combine.CannotCombine("filter on a non-unique index")
            kept.append(np.asarray(piece.rows)[chunk_index.get_indexer(result.index)])
        combined = combine.concat_rows(results, _TRUST_CONCAT)
        return combine.restore_order(combined, np.concatenate(kept))

    def combine_agg(self, pieces: list[Piece]) -> Any:
        result = combine.concat_rows([p.result for p in pieces], _NUMERIC)
        return self._group_index(result)

    def _group_index(self, result: Any) -> Any:
        """Give a one-row-per-group result pandas' exact group index."""
        spec = self.spec
        if not spec.as_index:
            result.index = pd.RangeIndex(len(result))
        elif len(result) == len(spec.result_index):
            if not result.index.equals(spec.result_index):
                raise combine.CannotCombine("groups came back out of order")
            result.index = spec.result_index
        return result

    def combine_apply(self, pieces: list[Piece]) -> Any:
        returned: list[Returned | None] = [p.result.tag for p in pieces]
        results = [p.result.value for p in pieces]
        spec = self.spec
        known = [r for r in returned if r is not None]
        kinds = set().union(*(r.kinds for r in known)) if len(known) == len(returned) else None
        if kinds is not None and "None" in kinds:
            # pandas skips None results when it concatenates frames, fills a
            # None group's row when it stacks Series into rows, and returns
            # an empty frame (pandas' own, as each chunk made it) when all
            # groups of a DataFrameGroupBy returned None.
            only_none = [r.kinds == {"None"} for r in known]
            if all(only_none) and isinstance(spec.obj, pd.DataFrame):
                return self._all_none(results[0])
            if "Series" in kinds:
                raise combine.CannotCombine("groups returned both Series and None")
            if "scalar" in kinds and any(only_none):
                raise combine.CannotCombine("all groups of a chunk returned None")
            if kinds - {"None", "scalar"}:
                keep = [not none for none in only_none]
                pieces = [p for p, k in zip(pieces, keep) if k]
                results = [r for r, k in zip(results, keep) if k]
                known = [r for r, k in zip(known, keep) if k]
        if kinds is not None and kinds <= {"scalar", "None"}:
            return self._scalar_results(results)
        if not all(isinstance(r, (pd.Series, pd.DataFrame)) for r in results):
            raise combine.CannotCombine("apply returned something other than pandas objects")
        if kinds is None:
            raise combine.CannotCombine("the kinds of values returned are unknown")
        if not spec.group_keys:
            # Results indexed like their groups (pandas' test, group by
            # group) come back in original row order; any others in group
            # order. A chunk of each cannot be told apart from the whole.
            if not any(r.mutated for r in known):
                if spec.obj.index.has_duplicates:
                    # pandas then orders rows by label, then by group.
                    raise combine.CannotCombine("like-indexed results on duplicate labels")
                return self._in_row_order(results, pieces, fill_dropped=False)
            if not all(r.mutated for r in known):
                raise combine.CannotCombine("some chunks returned like-indexed results")
        if "scalar" in kinds:
            raise combine.CannotCombine("groups returned both scalars and pandas objects")
        if kinds <= {"Series", "None"}:
            # pandas stacks Series into rows when *all* groups return the
            # same index; chunks that disagree cannot tell what the whole
            # frame would have done.
            stacked = [isinstance(r, pd.DataFrame) for r in results]
            if any(stacked):
                if not (all(stacked) and all(
                        r.columns.equals(results[0].columns) for r in results)):
                    raise combine.CannotCombine("Series results with different indexes")
                return self._group_index(combine.concat_rows(results, _TRUST_CONCAT))
        if not spec.as_index and spec.group_keys and not _compat.PANDAS_3:
            # pandas 2.2 labels each group's rows with the group's number.
            results = [_renumber_groups(r, p.units[0]) for p, r in zip(pieces, results)]
        return self._key_levels(combine.concat_rows(results, _TRUST_CONCAT))

    def _key_levels(self, result: Any) -> Any:
        """Give the group-key levels of a concatenated result their dtype
        back (concat turns a categorical level into a plain one)."""
        spec = self.spec
        index = result.index
        keys = spec.result_index
        if not (spec.as_index and spec.group_keys and isinstance(index, pd.MultiIndex)
                and index.nlevels > keys.nlevels):
            return result
        exact = [keys] if keys.nlevels == 1 else [keys.levels[i] for i in range(keys.nlevels)]
        for i, level in enumerate(exact):
            if index.levels[i].equals(level) and index.levels[i].dtype == level.dtype:
                # Same labels: take pandas' own level object (dtype, freq).
                index = index.set_levels(level, level=i, verify_integrity=False)
        result.index = index
        arrays = [index.get_level_values(i) for i in range(index.nlevels)]
        changed = False
        for i in range(keys.nlevels):
            level = keys.get_level_values(i)
            if isinstance(level, pd.CategoricalIndex) and not _compat.PANDAS_3:
                level = level.remove_unused_categories()  # what pandas 2.2 keeps
            dtype = level.dtype
            if arrays[i].dtype != dtype:
                arrays[i] = arrays[i].astype(dtype)
                changed = True
        if changed:
            result.index = pd.MultiIndex.from_arrays(arrays, names=index.names)
        return result

    def _all_none(self, chunk_result: pd.DataFrame) -> pd.DataFrame:
        """pandas' empty frame for groups that all returned None, from a
        chunk's: without the columns the whole groupby groups by (pandas 3
        keeps the others), which a chunk grouped by carried keys (a
        ``pd.Grouper(key=..., freq=...)``) still holds."""
        grouped_by = self.spec.exclusions
        return chunk_result.drop(columns=[c for c in chunk_result.columns if c in grouped_by])

    def _scalar_results(self, results: list[Any]) -> Any:
        """One value per group: a Series on the group index (pandas'
        inference over all values), or a frame with the keys as columns."""
        spec = self.spec
        if spec.as_index:
            return self._group_index(combine.concat_rows(results, _APPLY_SCALARS))
        return self._group_index(combine.concat_rows(results, _TRUST_CONCAT))


class GroupByParallelAccessor(Configurable):
    """``gb.parallel``: GroupBy methods with groups spread over all cores.

    Examples
    --------
    >>> import pandas as pd, pandas_parallel
    >>> df = pd.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    >>> df.groupby("k")["v"].parallel.agg(lambda s: s.max() - s.min())
    k
    a    2
    b    0
    Name: v, dtype: int64
    """

    kind = "GroupBy"

    @property
    def _gb(self) -> Any:
        return self._obj

    def _failure_kind(self, call: Call) -> tuple[str, Any]:
        return "groups", (False if call.method == "filter" else None)

    def _label(self, name: str) -> str:
        return f"groupby.{'agg' if name == 'aggregate' else name}"

    def _labels_source(self) -> Any:
        return self._gb.obj

    def _group_namer(self) -> Callable[[Any], Any]:
        gb = self._gb
        codes: list[np.ndarray] = []

        def name(row_label: Any) -> Any:
            if not codes:  # only once a failure needs it
                codes.append(gb.ngroup().to_numpy())
            where = gb.obj.index.get_loc(row_label)
            if isinstance(where, slice):
                where = where.start
            elif not isinstance(where, (int, np.integer)):
                where = int(np.argmax(where))
            code = codes[0][where]
            keys = _compat.groupby_spec(gb).result_index
            return keys[int(code)] if code == code and code >= 0 else None

        return name

    def _async_placeholder(self, name: str) -> Callable[[Any], Any]:
        return {"filter": lambda _: True, "aggregate": lambda _: 0}.get(
            name, lambda group: group)

    def _input(self) -> tuple[int, Hashable]:
        gb = self._gb
        return len(gb.obj), (type(gb), gb.obj.shape[1:], gb.ngroups)

    # -- public methods, mirroring pandas ---------------------------------------
    def apply(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Parallel ``GroupBy.apply``: same parameters (including pandas 3's
        ``include_groups``), same result."""
        return route(Call(self, "apply", (func, *args), kwargs, _grouped))

    def transform(self, *args: Any, **kwargs: Any) -> Any:
        """Parallel ``GroupBy.transform`` with a callable; string names and
        named aggregation (pandas 3) go to pandas."""
        return route(Call(self, "transform", args, kwargs, _grouped))

    def aggregate(self, func: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Parallel ``GroupBy.aggregate`` with a callable; names, lists and
        dicts of functions, and named aggregation go to pandas."""
        return route(Call(self, "aggregate", (func, *args), kwargs, _grouped))

    agg = aggregate

    def filter(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Parallel ``GroupBy.filter``: same parameters, same result."""
        return route(Call(self, "filter", (func, *args), kwargs, _grouped))


def _grouped(call: Call) -> Operation | Reason:
    """The operation of a groupby call, or why pandas runs it."""
    gb = call.obj
    reason = _why_pandas(call, gb)
    if reason is not None:
        return reason
    grouped = Grouped(gb, bool(call.params.get("dropna", True)))
    spec = grouped.spec
    if not _compat.PANDAS_3 and not spec.observed and spec.categorical:
        return UNOBSERVED
    if not _compat.PANDAS_3 and not spec.sort and any(
            isinstance(spec.result_index.get_level_values(i).dtype, pd.CategoricalDtype)
            for i in range(spec.result_index.nlevels)):
        return UNSORTED_CATEGORICAL
    if grouped.has_empty_groups:
        return EMPTY_GROUPS
    name = call.method
    return call.operation(
        call.label, grouped.units,
        {"apply": grouped.combine_apply, "transform": grouped.combine_transform,
         "aggregate": grouped.combine_agg, "filter": grouped.combine_filter}[name],
        unit="groups",
        runner=(functools.partial(call_grouped_apply, grouped.regroup) if name == "apply"
                else functools.partial(call_grouped, name, grouped.regroup)),
        # pandas 2.2's agg checks that the *first* group's result is a
        # scalar ("Must produce aggregated value"): a chunk starting at a
        # later group may raise where the whole does not.
        failures_need_whole=name == "aggregate" and not _compat.PANDAS_3)


def _why_pandas(call: Call, gb: Any) -> Reason | None:
    """Why a groupby call goes to pandas, before grouping it for chunks."""
    if len(gb.obj) == 0 or gb.ngroups == 0:
        return EMPTY
    if isinstance(gb.obj, pd.Series) and not gb.as_index:
        return SERIES_GROUPBY_AS_INDEX
    if _compat.groups_columns(gb):
        return GROUPS_OF_COLUMNS
    if call.method == "filter" and not gb.dropna and not _compat.PANDAS_3:
        return FILTER_NAN_GROUP
    return None


def _renumber_groups(result: Any, first_group: int) -> Any:
    """Shift the group-number level of a chunk's result to global numbers."""
    index = result.index
    if not isinstance(index, pd.MultiIndex):
        raise combine.CannotCombine("expected group numbers in the index")
    result = result.copy(deep=False)
    result.index = index.set_levels(index.levels[0] + first_group, level=0)
    return result


_TRUST_CONCAT = combine.Inference(combine.trust_concat, combine.trust_concat)
_APPLY_SCALARS = combine.Inference(combine.reinfer_like_constructor, combine.trust_concat)
_NUMERIC = combine.Inference(combine.numeric_concat, combine.numeric_concat)

_compat.register_groupby_accessor(registration.NAMES, GroupByParallelAccessor)
