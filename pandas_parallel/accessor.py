"""The ``.parallel`` accessor on DataFrame and Series.

Each method mirrors the pandas method of the same name, for the installed
pandas version: the call is bound against pandas' own signature, and what
cannot be parallelized (string names, lists/dicts of functions, ufuncs, a
dict or Series given to ``map``, another ``engine``, invalid arguments) is
handed to pandas unchanged - so ``.parallel`` is always a drop-in.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import _compat, asynchronous, clusters, combine, planning, policies
from pandas_parallel.options import Options, get_options, validate
from pandas_parallel.pipeline import (
    Operation,
    Piece,
    execute,
    ran_serially,
    run_known_cheap,
    serving,
)
from pandas_parallel.splitting import Units

_MAP = combine.Inference(combine.reinfer_like_map, combine.reinfer_like_map)
# Expanded apply results are inferred by pandas after a transpose, over
# whole blocks rather than per column: not replayable from chunk results.
_APPLY_ROWS = combine.Inference(combine.reinfer_like_constructor, None)
_APPLY_COLUMNS = combine.Inference(combine.reinfer_like_constructor, None)
_STRICT = combine.Inference(None, None)
_ROW_AXES = (1, "columns")
_COLUMN_AXES = (0, "index", "rows")


# --------------------------------------------------------------------------
# Runners: the pandas call on one chunk (top-level so workers can import them)
# --------------------------------------------------------------------------
def call_method(name: str, chunk: Any, func: Callable[..., Any],
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``chunk.<name>(func, *args, **kwargs)``."""
    return getattr(chunk, name)(func, *args, **kwargs)


def call_on_partition(chunk: Any, func: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
    """``func(chunk, *args, **kwargs)`` for ``map_partitions``."""
    return func(chunk, *args, **kwargs)


def plain_callable(func: Any) -> bool:
    """A function pandas would call once per row/element/group.

    Strings, lists and dicts of functions are pandas' own dispatch; numpy
    ufuncs are applied vectorized by pandas. Both stay with pandas.
    """
    return callable(func) and not isinstance(func, (str, np.ufunc, type))


_signatures: dict[tuple[type, str], inspect.Signature] = {}


def _pandas_signature(cls: type, name: str) -> inspect.Signature:
    """The signature of pandas' ``cls.name`` (built once: 0.1 ms a call)."""
    key = (cls, name)
    if key not in _signatures:
        _signatures[key] = inspect.signature(getattr(cls, name))
    return _signatures[key]


def bind_like_pandas(obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
          ) -> dict[str, Any]:
    """Bind a call against pandas' own signature (TypeError as pandas)."""
    bound = _pandas_signature(type(obj), name).bind(obj, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _split_func(name: str, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """Separate the function from the rest of the call's arguments."""
    parameter = list(_pandas_signature(type(obj), name).parameters)[1]
    if parameter in kwargs:
        rest = dict(kwargs)
        return rest.pop(parameter), args, rest
    return args[0], args[1:], kwargs


def _same(value: Any) -> Any:
    return value


def run_async_call(obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                   label: str, options: Options,
                   placeholder: Callable[[Any], Any] = _same) -> Any:
    """``obj.<name>(async_func, ...)`` with the coroutines run concurrently.

    ``concurrency=`` and ``timeout=`` may be given with the call (they are
    not passed to the function) or as options.
    """
    kwargs = dict(kwargs)
    changes = {k: kwargs.pop(k) for k in ("concurrency", "timeout") if k in kwargs}
    options = options.replace(**changes)
    func, rest_args, rest_kwargs = _split_func(name, obj, args, kwargs)
    method = getattr(obj, name)
    return asynchronous.run(
        lambda f: method(f, *rest_args, **rest_kwargs), func, placeholder, label,
        options.concurrency, options.timeout, options.progress, _async_policy.get())


class Configurable:
    """What every ``.parallel`` accessor has: the object it is attached to,
    and options given to it with a call (``df.parallel(n_jobs=4)``)."""

    def __init__(self, obj: Any, overrides: dict[str, Any] | None = None) -> None:
        self._obj = obj
        self._overrides = overrides or {}

    def __call__(self, **options: Any) -> Any:
        """Per-call options: ``df.parallel(n_jobs=4, progress=False).apply(...)``.

        Accepts every option of :func:`pandas_parallel.config`; they are
        validated now, before any work starts.
        """
        validate(options)
        return type(self)(self._obj, {**self._overrides, **options})

    @property
    def options(self) -> Options:
        """The options this accessor will use (global, scoped, per-call, and an
        enclosing ``joblib.parallel_config`` when no backend is set)."""
        options = get_options()
        if self._overrides:
            options = options.replace(**self._overrides)
        return options.resolved()

    def _failure_kind(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> tuple[str, Any]:
        """What ``name``'s function is called on (one of
        :data:`policies.LABEL_KINDS`, or what else), and what a failed call
        returns with ``errors="coerce"``."""
        return "elements", None

    def _policy_label(self, name: str) -> str:
        return name

    def _labels_source(self) -> Any:
        """What failures are named against: the whole input."""
        return self._obj

    def _group_namer(self) -> Callable[[Any], Any] | None:
        """For groupby: the group key of the group holding a row label."""
        return None

    def _input_shape(self) -> tuple[int, Hashable]:
        """Rows of the input, and what besides them its cost depends on."""
        return len(self._obj), (type(self._obj), self._obj.shape[1:])

    def _call_shape(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[Any, int, Hashable] | None:
        """The function of a call, the input's rows, and what else the cost
        depends on: the other arguments, the type of input and its columns.
        ``None`` when options make the planner decide (a chunk size, no
        serial fallback, a progress bar). A call with an argument that is
        not hashable is never remembered."""
        options, overrides = get_options(), self._overrides
        if (overrides.get("chunk_size", options.chunk_size) is not None
                or not overrides.get("serial_fallback", options.serial_fallback)
                or overrides.get("progress", options.progress) is True):
            return None
        if args:
            func, rest = args[0], args[1:]
        else:
            keyword = next((k for k in _FUNC_KEYWORDS if k in kwargs), None)
            if keyword is None:
                return None
            func, rest = kwargs[keyword], ()
            kwargs = {k: v for k, v in kwargs.items() if k != keyword}
        rows, input_kind = self._input_shape()
        return func, rows, (input_kind, rest, tuple(kwargs.items()))


_FUNC_KEYWORDS = ("func", "arg")  # how pandas' methods name the function


_POLICY_DEFAULTS = {"initializer": None, "errors": "raise", "retries": 0, "timeout": None}
# The policy of the async call being made (read by run_async_call).
_async_policy: contextvars.ContextVar[policies.CallPolicy | None] = contextvars.ContextVar(
    "pandas_parallel_async_policy", default=None)


def _wants_policies(accessor: Configurable) -> bool:
    """Whether options of this call ask for a policy around the function."""
    options, overrides = get_options(), accessor._overrides
    return any(overrides.get(name, getattr(options, name)) != default
               for name, default in _POLICY_DEFAULTS.items())


def with_policies(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a public method with the function under its call's policies
    (:mod:`pandas_parallel.policies`) when its options ask for any."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Configurable, *args: Any, **kwargs: Any) -> Any:
        if not _wants_policies(self):
            return method(self, *args, **kwargs)
        return _run_with_policies(self, name, method, args, kwargs)

    return call


def _run_with_policies(accessor: Configurable, name: str, method: Callable[..., Any],
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The initializer run here, then the method with the function wrapped;
    then the warning for the rows that failed (``errors="coerce"``)."""
    options = accessor.options
    keyword = None if args else next((k for k in _FUNC_KEYWORDS if k in kwargs), None)
    func = args[0] if args else kwargs.get(keyword) if keyword else None
    if not plain_callable(func) or _compat.cython_alias(func):
        return method(accessor, *args, **kwargs)  # pandas' own: none of the user's code
    setup = policies.Setup.of(options.initializer, options.initargs)
    if setup is not None:
        policies.ensure_setup(setup, per_thread=True, where="this process")
    kind, missing = accessor._failure_kind(name, args, kwargs)
    policy = policies.CallPolicy(
        accessor._policy_label(name), kind, missing, options.errors, options.timeout,
        options.retries, options.retry_on, options.retry_delay)
    is_async = asynchronous.is_async(func)
    _check_policy(policy, options, is_async)
    labels = accessor._labels_source()
    if getattr(labels, "size", 1) == 0:
        # No row to fail: pandas calls the function on a stand-in only to
        # infer the result's shape, and ignores its exception.
        policy.errors = "raise"
    if is_async:
        token = _async_policy.set(policy)
        try:
            result = method(accessor, *args, **kwargs)
        finally:
            _async_policy.reset(token)
    else:
        wrapped = policy.wrap(func)  # type: ignore[arg-type]
        if args:
            args = (wrapped, *args[1:])
        else:
            kwargs = {**kwargs, keyword: wrapped}  # type: ignore[dict-item]
        result = method(accessor, *args, **kwargs)
    policy.warn(labels, accessor._group_namer())
    return result


def _check_policy(policy: policies.CallPolicy, options: Options, is_async: bool) -> None:
    if policy.errors == "coerce" and policy.kind not in policies.LABEL_KINDS:
        raise ValueError(
            f"errors='coerce' is not available for {policy.label}: the function is "
            f"called on {policy.kind}, which have no missing value pandas would "
            "accept; catch the exception in the function and return what should "
            "stand in its place.")
    if policy.timeout is not None and not is_async and clusters.is_cluster(
            options.backend or ""):
        raise ValueError(
            f"timeout= is not available on the {options.backend} backend (its workers "
            "run calls on threads, which cannot be interrupted); use a local backend, "
            "an async def function, or a timeout in the function's own I/O.")


def straight_to_pandas_when_known_cheap(method: Callable[..., Any]) -> Callable[..., Any]:
    """Send a call to pandas before any of this library's work (binding,
    options, grouping, planning) when a call of the same shape, with as
    many rows or more, was clearly too cheap for workers.

    On a frame of a thousand rows and a cheap function, pandas takes half a
    millisecond, and that work would add a third to it. Costs are noted
    by the pipeline under the call's shape (:func:`pipeline.serving`).
    """
    name = method.__name__

    @functools.wraps(method)
    def call(self: Configurable, *args: Any, **kwargs: Any) -> Any:
        ran_serially()  # until the call's pipeline says otherwise
        if _wants_policies(self):
            return _run_with_policies(self, name, method, args, kwargs)
        shape = self._call_shape(args, kwargs)
        if shape is None:
            return method(self, *args, **kwargs)
        func, rows, kind = shape
        kind = (name, kind)
        if 0 < rows <= planning.cheap_up_to(func, kind):
            return run_known_cheap(name, func, kind, rows,
                                   lambda: getattr(self._obj, name)(*args, **kwargs))
        with serving(func, kind):
            return method(self, *args, **kwargs)

    return call


class _Base(Configurable):
    """Shared machinery of the DataFrame and Series accessors."""

    def _delegate(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> Callable[[], Any]:
        obj = self._obj
        func = _split_func(name, obj, args, kwargs)[0] if args or kwargs else None
        if asynchronous.is_async(func):
            options = self.options
            return lambda: run_async_call(obj, name, args, kwargs, name, options)
        return lambda: getattr(obj, name)(*args, **kwargs)

    def _operation(self, name: str, label: str, units: Units, args: tuple[Any, ...],
                   kwargs: dict[str, Any], combine_pieces: Callable[[list[Piece]], Any],
                   unit: str = "rows", calls_per_unit: int = 1,
                   runner: Callable[..., Any] | None = None,
                   options: Options | None = None) -> Any:
        """Run ``obj.<name>(*args, **kwargs)`` as an operation; its function
        is not ``async`` (the public methods sent those elsewhere)."""
        obj = self._obj
        func, rest_args, rest_kwargs = _split_func(name, obj, args, kwargs)
        operation = Operation(
            label=label, unit=unit, units=units,
            runner=runner or functools.partial(call_method, name),
            func=func, args=rest_args, kwargs=rest_kwargs,
            combine=combine_pieces, serial=lambda: getattr(obj, name)(*args, **kwargs),
            options=options or self.options, calls_per_unit=calls_per_unit,
            failures_need_whole=name == "transform")
        return execute(operation)

    def _rows(self, name: str, label: str, args: tuple[Any, ...],
              kwargs: dict[str, Any], inference: combine.Inference,
              calls_per_unit: int = 1) -> Any:
        obj = self._obj
        options = self.options
        return self._operation(
            name, label, Units.for_partition(obj, options.partition), args, kwargs,
            lambda pieces: combine.combine_rows(
                _ordered(pieces, inference), obj, inference),
            calls_per_unit=calls_per_unit, options=options)


def _ordered(pieces: list[Piece], inference: combine.Inference) -> list[Any]:
    """Piece results in original row order (partitions may scatter rows)."""
    if all(isinstance(p.rows, slice) for p in pieces):
        return [p.result for p in pieces]
    results = [p.result for p in pieces]
    combined = combine.concat_rows(results, inference)
    positions = np.concatenate([np.asarray(p.rows) for p in pieces])
    return [combine.restore_order(combined, positions)]


@pd.api.extensions.register_dataframe_accessor("parallel")
class DataFrameParallelAccessor(_Base):
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

    _obj: pd.DataFrame

    def _failure_kind(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> tuple[str, Any]:
        if name == "map_partitions":
            return "partitions", None
        if name == "map":
            return "elements", None
        pandas_name = "aggregate" if name == "agg" else name
        axis = bind_like_pandas(self._obj, pandas_name, args, kwargs).get("axis", 0)
        return ("rows" if axis in _ROW_AXES else "columns"), None

    @straight_to_pandas_when_known_cheap
    def apply(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.DataFrame.apply`, same parameters and result.

        ``axis=1`` spreads rows over the workers, ``axis=0`` columns.
        """
        call_args = (func, *args)
        if asynchronous.is_async(func):
            return run_async_call(self._obj, "apply", call_args, kwargs, "apply", self.options)
        params = bind_like_pandas(self._obj, "apply", call_args, kwargs)
        axis, engine = params["axis"], params.get("engine")
        if (not plain_callable(func) or engine not in (None, "python")
                or params["result_type"] not in (None, "reduce", "broadcast", "expand")
                or axis not in _ROW_AXES + _COLUMN_AXES or self._obj.shape[1] == 0):
            return self._delegate("apply", call_args, kwargs)()
        raw = bool(params["raw"])
        labels = self._obj.index if axis in _ROW_AXES else self._obj.columns
        if params["result_type"] == "broadcast" and not (
                labels.is_unique
                and all(isinstance(d, np.dtype) for d in self._obj.dtypes)):
            # pandas broadcasts into a buffer shaped like `frame.T.values` and
            # selects by label: with duplicate labels or extension dtypes, the
            # result depends on which rows share a chunk.
            return self._delegate("apply", call_args, kwargs)()
        if axis in _ROW_AXES:
            return self._rows("apply", "apply(axis=1)", call_args, kwargs,
                              _STRICT if raw else _APPLY_ROWS)
        return self._columns("apply", "apply(axis=0)", call_args, kwargs,
                             _STRICT if raw else _APPLY_COLUMNS)

    @straight_to_pandas_when_known_cheap
    def aggregate(self, func: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Parallel :meth:`pandas.DataFrame.aggregate` with one function.

        pandas runs ``agg(func)`` as ``apply(func, axis)``, and so does this.
        Names, lists and dicts of functions, named aggregation, and the
        builtin or numpy functions pandas swaps for its own methods
        (``np.sum``) go to pandas.
        """
        params = bind_like_pandas(self._obj, "aggregate", (func, *args), kwargs)
        extra_args, extra_kwargs = params["args"], params["kwargs"]
        if not plain_callable(func) or (
                _compat.cython_alias(func) and not extra_args and not extra_kwargs):
            return self._obj.aggregate(func, *args, **kwargs)
        return self.apply(func, params["axis"], args=extra_args, **extra_kwargs)

    agg = aggregate

    @straight_to_pandas_when_known_cheap
    def map(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Parallel :meth:`pandas.DataFrame.map` (elementwise), same parameters."""
        call_args = (func, *args)
        if asynchronous.is_async(func):
            return run_async_call(self._obj, "map", call_args, kwargs, "map", self.options)
        params = bind_like_pandas(self._obj, "map", call_args, kwargs)
        if (not plain_callable(func) or params["na_action"] not in (None, "ignore")
                or self._obj.shape[1] == 0
                or not all(map(combine.map_is_chunk_stable, self._obj.dtypes))):
            return self._delegate("map", call_args, kwargs)()
        return self._rows("map", "map", call_args, kwargs, _MAP,
                          calls_per_unit=self._obj.shape[1])

    @straight_to_pandas_when_known_cheap
    def transform(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Parallel :meth:`pandas.DataFrame.transform`, same parameters.

        ``axis=0`` (default) transforms columns in parallel, ``axis=1`` rows.
        """
        call_args = (func, *args)
        if asynchronous.is_async(func):
            return run_async_call(self._obj, "transform", call_args, kwargs, "transform",
                                  self.options)
        params = bind_like_pandas(self._obj, "transform", call_args, kwargs)
        axis = params["axis"]
        if (not plain_callable(func) or axis not in _ROW_AXES + _COLUMN_AXES
                or self._obj.shape[1] == 0):
            return self._delegate("transform", call_args, kwargs)()
        if axis in _ROW_AXES:
            if not all(isinstance(d, np.dtype) for d in self._obj.dtypes):
                # Row-wise transform transposes; with extension dtypes the
                # missing-value marker depends on which rows share a chunk.
                return self._delegate("transform", call_args, kwargs)()
            return self._rows("transform", "transform(axis=1)", call_args, kwargs,
                              _STRICT)
        return self._columns("transform", "transform", call_args, kwargs, _STRICT)

    @with_policies
    def map_partitions(self, func: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Call ``func(chunk, *args, **kwargs)`` on chunks of rows in parallel.

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
        if not callable(func):
            raise TypeError(f"map_partitions needs a callable, got {func!r}")
        return _map_partitions(self, func, args, kwargs)

    def _columns(self, name: str, label: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], inference: combine.Inference) -> Any:
        frame = self._obj
        units = Units.of_columns(frame)
        return self._operation(
            name, label, units, args, kwargs,
            lambda pieces: combine.combine_columns(
                [p.result for p in pieces], frame, inference),
            unit="columns")


@pd.api.extensions.register_series_accessor("parallel")
class SeriesParallelAccessor(_Base):
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

    _obj: pd.Series

    def _failure_kind(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> tuple[str, Any]:
        return ("partitions" if name == "map_partitions" else "elements"), None

    @straight_to_pandas_when_known_cheap
    def apply(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.Series.apply`, same parameters and result."""
        call_args = (func, *args)
        if asynchronous.is_async(func):
            return run_async_call(self._obj, "apply", call_args, kwargs, "apply", self.options)
        params = bind_like_pandas(self._obj, "apply", call_args, kwargs)
        if (not plain_callable(func) or params.get("by_row", "compat") is False
                or not _elementwise_parallel(self._obj.dtype)):
            return self._delegate("apply", call_args, kwargs)()
        return self._rows("apply", "apply", call_args, kwargs,
                          combine.Inference(combine.reinfer_like_map, None))

    @straight_to_pandas_when_known_cheap
    def map(self, *args: Any, **kwargs: Any) -> pd.Series:
        """Parallel :meth:`pandas.Series.map`, same parameters and result.

        A dict or Series mapping goes to pandas unchanged.
        """
        given = args[0] if args else kwargs.get("func", kwargs.get("arg"))
        if asynchronous.is_async(given):
            return run_async_call(self._obj, "map", args, kwargs, "map", self.options)
        params = bind_like_pandas(self._obj, "map", args, kwargs)
        func = params.get("func", params.get("arg"))
        if (not plain_callable(func) or params.get("engine") is not None
                or params["na_action"] not in (None, "ignore")
                or not _elementwise_parallel(self._obj.dtype)):
            return self._delegate("map", args, kwargs)()
        return self._rows("map", "map", args, kwargs, _MAP)

    def aggregate(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`pandas.Series.aggregate`, run by pandas: with one function,
        pandas 3 calls it once, on the whole Series, so nothing is left to
        spread over workers. Here so that ``s.parallel.agg`` means ``s.agg``."""
        ran_serially()
        return self._obj.aggregate(*args, **kwargs)

    agg = aggregate

    @straight_to_pandas_when_known_cheap
    def transform(self, func: Any, *args: Any, **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.Series.transform`, same parameters and result."""
        call_args = (func, *args)
        if asynchronous.is_async(func):
            return run_async_call(self._obj, "transform", call_args, kwargs, "transform",
                                  self.options)
        params = bind_like_pandas(self._obj, "transform", call_args, kwargs)
        if (not plain_callable(func) or params["axis"] not in (0, "index", "rows")
                or not _elementwise_parallel(self._obj.dtype)):
            return self._delegate("transform", call_args, kwargs)()
        return self._rows("transform", "transform", call_args, kwargs, _STRICT)

    @with_policies
    def map_partitions(self, func: Callable[..., Any], *args: Any,
                       **kwargs: Any) -> pd.DataFrame | pd.Series:
        """Call ``func(chunk, *args, **kwargs)`` on chunks of the Series in
        parallel and concatenate the results in order (see
        :meth:`DataFrameParallelAccessor.map_partitions`)."""
        if not callable(func):
            raise TypeError(f"map_partitions needs a callable, got {func!r}")
        return _map_partitions(self, func, args, kwargs)


def _elementwise_parallel(dtype: Any) -> bool:
    """Whether an elementwise call over a Series of ``dtype`` can be split:
    not categoricals (pandas maps their categories, not their rows) and not
    dtypes whose map inference needs all values (see
    :func:`combine.map_is_chunk_stable`)."""
    return (not isinstance(dtype, pd.CategoricalDtype)
            and combine.map_is_chunk_stable(dtype))


def _map_partitions(accessor: _Base, func: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    obj = accessor._obj
    options = accessor.options

    def combine_partitions(pieces: list[Piece]) -> Any:
        results = [p.result for p in pieces]
        for i, result in enumerate(results):
            if not isinstance(result, (pd.DataFrame, pd.Series)):
                raise TypeError(
                    f"map_partitions: the function returned {type(result).__name__} "
                    f"for partition {i}; it must return a DataFrame or Series")
        return pd.concat(results) if len(results) > 1 else results[0]

    operation = Operation(
        label="map_partitions", unit="rows", units=Units.for_partition(obj, options.partition),
        runner=call_on_partition, func=func, args=args, kwargs=kwargs,
        combine=combine_partitions, serial=lambda: func(obj, *args, **kwargs),
        options=options, calls_per_unit=0)
    return execute(operation)
