"""The ``.parallel`` accessor on DataFrame and Series.

Each method mirrors the pandas method of the same name, for the installed
pandas version, and is one :class:`~.routing.Call` through
:func:`~.routing.route`: what cannot be parallelized (string names, lists
and dicts of functions, ufuncs, a dict or Series given to ``map``, another
``engine``, invalid arguments) is handed to pandas unchanged, so
``.parallel`` is always a drop-in. Here are only the build steps: how each
method's call becomes an operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import combine, pipeline, registration
from pandas_parallel.operation import Piece
from pandas_parallel.routing import (
    ONE_CALL,
    ROW_AXES,
    Call,
    Configurable,
    route,
)
from pandas_parallel.splitting import Units

_MAP = combine.Inference(combine.reinfer_like_map, combine.reinfer_like_map)
# Expanded apply results are inferred by pandas after a transpose, over
# whole blocks rather than per column: not replayable from chunk results.
_APPLY_ROWS = combine.Inference(combine.reinfer_like_constructor, None)
_APPLY_COLUMNS = combine.Inference(combine.reinfer_like_constructor, None)
_SERIES_APPLY = combine.Inference(combine.reinfer_like_map, None)
_STRICT = combine.Inference(None, None)


def call_on_partition(chunk: Any, func: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    """``func(chunk, *args, **kwargs)`` for ``map_partitions`` (runs in workers)."""
    return func(chunk, *args, **kwargs)


# --------------------------------------------------------------------------
# Build steps: a call, as an operation over rows or columns
# --------------------------------------------------------------------------
def _by_rows(call: Call, label: str, inference: combine.Inference,
             calls_per_unit: int = 1) -> Any:
    obj = call.obj
    return call.operation(
        label, Units.for_partition(obj, call.options.partition),
        lambda pieces: combine.combine_rows(_ordered(pieces, inference), obj, inference),
        calls_per_unit=calls_per_unit, failures_need_whole=call.method == "transform")


def _by_columns(call: Call, label: str, inference: combine.Inference) -> Any:
    frame = call.obj
    return call.operation(
        label, Units.of_columns(frame),
        lambda pieces: combine.combine_columns([p.result for p in pieces], frame, inference),
        unit="columns", failures_need_whole=call.method == "transform")


def _ordered(pieces: list[Piece], inference: combine.Inference) -> list[Any]:
    """Piece results in original row order (partitions may scatter rows)."""
    if all(isinstance(p.rows, slice) for p in pieces):
        return [p.result for p in pieces]
    results = [p.result for p in pieces]
    combined = combine.concat_rows(results, inference)
    positions = np.concatenate([np.asarray(p.rows) for p in pieces])
    return [combine.restore_order(combined, positions)]


def _frame_apply(call: Call) -> Any:
    raw = bool(call.params["raw"])
    if call.params["axis"] in ROW_AXES:
        return _by_rows(call, "apply(axis=1)", _STRICT if raw else _APPLY_ROWS)
    return _by_columns(call, "apply(axis=0)", _STRICT if raw else _APPLY_COLUMNS)


def _frame_aggregate(call: Call) -> Call:
    """pandas runs ``agg(func)`` as ``apply(func, axis)``, and so does this."""
    params = call.params
    return call.redirect("apply", (call.func, params["axis"]),
                         {"args": params["args"], **params["kwargs"]}, _frame_apply)


def _frame_map(call: Call) -> Any:
    return _by_rows(call, "map", _MAP, calls_per_unit=call.obj.shape[1])


def _frame_transform(call: Call) -> Any:
    if call.params["axis"] in ROW_AXES:
        return _by_rows(call, "transform(axis=1)", _STRICT)
    return _by_columns(call, "transform", _STRICT)


def _series_apply(call: Call) -> Any:
    return _by_rows(call, "apply", _SERIES_APPLY)


def _series_map(call: Call) -> Any:
    return _by_rows(call, "map", _MAP)


def _series_transform(call: Call) -> Any:
    return _by_rows(call, "transform", _STRICT)


def _partitions(call: Call) -> Any:
    obj = call.obj

    def combine_partitions(pieces: list[Piece]) -> Any:
        results = [p.result for p in pieces]
        for i, result in enumerate(results):
            if not isinstance(result, (pd.DataFrame, pd.Series)):
                raise TypeError(
                    f"map_partitions: the function returned {type(result).__name__} "
                    f"for partition {i}; it must return a DataFrame or Series")
        return pd.concat(results) if len(results) > 1 else results[0]

    return call.operation("map_partitions", Units.for_partition(obj, call.options.partition),
                          combine_partitions, runner=call_on_partition, calls_per_unit=0)


def _map_partitions(accessor: Configurable, func: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    if not callable(func):
        raise TypeError(f"map_partitions needs a callable, got {func!r}")
    obj = accessor._obj
    return route(Call(accessor, "map_partitions", (func, *args), kwargs, _partitions,
                      own=lambda: func(obj, *args, **kwargs)))


_MAP_PARTITIONS_DOC = """Call ``func(chunk, *args, **kwargs)`` on chunks of rows in parallel.

        For vectorized steps that work on any subset of rows. The chunks'
        results (DataFrames or Series) are concatenated in row order, as
        ``pd.concat([func(part) for part in partitions])``. With
        ``partition="index"`` rows sharing an index label are in the same
        chunk; with a frequency such as ``"1D"``, whole periods are.

        Parameters
        ----------
        func : callable
            ``func(DataFrame, *args, **kwargs) -> DataFrame | Series``.
        *args, **kwargs
            Passed to ``func``.
        """


class DataFrameParallelAccessor(Configurable):
    """``df.parallel``: DataFrame methods run on all cores.

    Examples
    --------
    >>> import pandas as pd, pandas_parallel
    >>> df = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    >>> df.parallel.apply(lambda row: row.a + row.b, axis=1)
    0    4
    1    6
    dtype: int64
    """

    kind = "DataFrame"
    _obj: pd.DataFrame

    def _failure_kind(self, call: Call) -> tuple[str, Any]:
        if call.method == "map_partitions":
            return "partitions", None
        if call.method == "map":
            return "elements", None
        return ("rows" if call.params.get("axis", 0) in ROW_AXES else "columns"), None

    def apply(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.DataFrame.apply`, same parameters and result.

        ``axis=1`` spreads rows over the workers, ``axis=0`` columns.
        """
        return route(Call(self, "apply", (func, *args), kwargs, _frame_apply))

    def aggregate(self, func: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Parallel :meth:`pandas.DataFrame.aggregate` with one function.

        pandas runs ``agg(func)`` as ``apply(func, axis)``, and so does this.
        Names, lists and dicts of functions, named aggregation, and the
        builtin or numpy functions pandas swaps for its own methods
        (``np.sum``) go to pandas.
        """
        return route(Call(self, "aggregate", (func, *args), kwargs, _frame_aggregate))

    agg = aggregate

    def map(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Parallel :meth:`pandas.DataFrame.map` (elementwise), same parameters."""
        return route(Call(self, "map", (func, *args), kwargs, _frame_map))

    def transform(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Parallel :meth:`pandas.DataFrame.transform`, same parameters.

        ``axis=0`` (default) transforms columns in parallel, ``axis=1`` rows.
        """
        return route(Call(self, "transform", (func, *args), kwargs, _frame_transform))

    def map_partitions(self, func: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> pd.DataFrame | pd.Series:
        return _map_partitions(self, func, args, kwargs)

    map_partitions.__doc__ = _MAP_PARTITIONS_DOC


class SeriesParallelAccessor(Configurable):
    """``s.parallel``: Series methods run on all cores.

    Examples
    --------
    >>> import pandas as pd, pandas_parallel
    >>> pd.Series([1, 2, 3]).parallel.map(lambda x: x * 10)
    0    10
    1    20
    2    30
    dtype: int64
    """

    kind = "Series"
    _obj: pd.Series

    def _failure_kind(self, call: Call) -> tuple[str, Any]:
        return ("partitions" if call.method == "map_partitions" else "elements"), None

    def apply(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.Series.apply`, same parameters and result."""
        return route(Call(self, "apply", (func, *args), kwargs, _series_apply))

    def map(self, *args: Any, **kwargs: Any) -> pd.Series:
        """Parallel :meth:`pandas.Series.map`, same parameters and result.

        A dict or Series mapping goes to pandas unchanged.
        """
        return route(Call(self, "map", args, kwargs, _series_map))

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`pandas.Series.aggregate`, run by pandas: with one function,
        pandas 3 calls it once, on the whole Series, so nothing is left to
        spread over workers. Here so that ``s.parallel.agg`` means ``s.agg``."""
        return pipeline.hand_over("aggregate", ONE_CALL.text,
                                  lambda: self._obj.aggregate(*args, **kwargs))

    agg = aggregate

    def transform(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.Series.transform`, same parameters and result."""
        return route(Call(self, "transform", (func, *args), kwargs, _series_transform))

    def map_partitions(self, func: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> pd.DataFrame | pd.Series:
        return _map_partitions(self, func, args, kwargs)

    map_partitions.__doc__ = _MAP_PARTITIONS_DOC.replace("chunks of rows", "chunks of the Series")


__all__ = ["DataFrameParallelAccessor", "SeriesParallelAccessor"]


registration.register_frame_accessors(DataFrameParallelAccessor, SeriesParallelAccessor)
