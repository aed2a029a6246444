"""Route: how a public ``.parallel`` call reaches pandas or the pipeline.

Every public method of the accessors (DataFrame, Series, GroupBy, windows)
is one :class:`Call` through :func:`route`, in this order:

1. options that put a policy around the function (``errors=``,
   ``retries=``, ``timeout=``, ``initializer=``) wrap it, checked first;
2. an ``async def`` function's coroutines run concurrently in this process
   (:mod:`.asynchronous`);
3. a call known to be clearly too cheap for workers is pandas' own, before
   any other work (not even binding its arguments);
4. the method's reasons to hand the call to pandas (:data:`HAND_OVER`, each
   named and logged at DEBUG) are checked in order;
5. otherwise the method's build step makes an
   :class:`~.operation.Operation` (or finds one more reason, or redirects
   to another method) and the pipeline runs it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any, cast

import numpy as np
import pandas as pd

from pandas_parallel import _compat, asynchronous, backends, combine, pipeline, planning, policies
from pandas_parallel.operation import Operation, Piece
from pandas_parallel.options import Options, get_options, validate
from pandas_parallel.splitting import Units

ROW_AXES = (1, "columns")
COLUMN_AXES = (0, "index", "rows")
_FUNC_KEYWORDS = ("func", "arg")  # how pandas' methods name the function
_POLICY_DEFAULTS = {"initializer": None, "errors": "raise", "retries": 0, "timeout": None}


def plain_callable(func: Any) -> bool:
    """A function pandas would call once per row/element/group.

    Strings, lists and dicts of functions are pandas' own dispatch; numpy
    ufuncs are applied vectorized by pandas. Both stay with pandas.
    """
    return callable(func) and not isinstance(func, (str, np.ufunc, type))


def _pandas_signature(cls: type, name: str) -> inspect.Signature:
    """The signature of pandas' ``cls.name`` (built once: 0.1 ms a call)."""
    return _signature(cast(Hashable, cls), name)


@functools.cache
def _signature(cls: Hashable, name: str) -> inspect.Signature:
    return inspect.signature(getattr(cls, name))


def bind_like_pandas(obj: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> dict[str, Any]:
    """Bind a call against pandas' own signature (TypeError as pandas)."""
    bound = _pandas_signature(type(obj), name).bind(obj, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class Configurable:
    """What every ``.parallel`` accessor has: the object it is attached to,
    and options given to it with a call (``df.parallel(n_jobs=4)``).
    Subclasses say what their calls are made on (:attr:`kind`) and how the
    function's failures and async stand-ins look for them."""

    #: The first word of the method names in :data:`HAND_OVER`.
    kind = ""

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

    def _option(self, name: str) -> Any:
        """One option, without resolving them all (on every call's path)."""
        return self._overrides.get(name, getattr(get_options(), name))

    def _options_at_default(self, defaults: dict[str, Any]) -> bool:
        """Whether every option of ``defaults`` has its default value (the
        options in force read once: this runs on every call's path)."""
        base, overrides = get_options(), self._overrides
        return all(overrides.get(name, getattr(base, name)) == default
                   for name, default in defaults.items())

    def _input(self) -> tuple[int, Hashable]:
        """Rows of the input, and what besides them a call's cost depends on."""
        return len(self._obj), (type(self._obj), self._obj.shape[1:])

    def _failure_kind(self, call: Call) -> tuple[str, Any]:
        """What the function is called on (one of :data:`policies.LABEL_KINDS`,
        or what else), and what a failed call returns with ``errors="coerce"``."""
        return "elements", None

    def _label(self, name: str) -> str:
        return name

    def _labels_source(self) -> Any:
        """What failures are named against: the whole input."""
        return self._obj

    def _group_namer(self) -> Callable[[Any], Any] | None:
        """For groupby: the group key of the group holding a row label."""
        return None

    def _async_placeholder(self, name: str) -> Callable[[Any], Any]:
        """What pandas accepts from the function while an async call records
        its arguments."""
        return _same


def _same(value: Any) -> Any:
    return value


Build = Callable[["Call"], "Operation | Reason | Call"]


@dataclasses.dataclass
class Call:
    """One public call as the user made it: ``accessor.<method>(*args,
    **kwargs)``, and the method's build step."""

    accessor: Configurable
    method: str  # pandas' name for it
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    build: Build
    #: pandas' own call, where the method is not pandas' (map_partitions).
    own: Callable[[], Any] | None = None

    @property
    def obj(self) -> Any:
        return self.accessor._obj

    @property
    def name(self) -> str:
        """The method's row in :data:`HAND_OVER`."""
        return f"{self.accessor.kind}.{self.method}"

    @property
    def label(self) -> str:
        """The call as logs, errors and the progress bar name it."""
        return self.accessor._label(self.method)

    @functools.cached_property
    def options(self) -> Options:
        return self.accessor.options

    @functools.cached_property
    def params(self) -> dict[str, Any]:
        """The arguments bound against pandas' signature (a TypeError as
        pandas would raise)."""
        return bind_like_pandas(self.obj, self.method, self.args, self.kwargs)

    @functools.cached_property
    def parts(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The function, and the call's other arguments."""
        if self.own is not None or not hasattr(type(self.obj), self.method):
            return self.args[0], self.args[1:], self.kwargs
        parameter = list(_pandas_signature(type(self.obj), self.method).parameters)[1]
        if parameter in self.kwargs:
            rest = dict(self.kwargs)
            return rest.pop(parameter), self.args, rest
        if not self.args:
            return None, (), self.kwargs
        return self.args[0], self.args[1:], self.kwargs

    @property
    def func(self) -> Any:
        return self.parts[0]

    def pandas(self) -> Any:
        """pandas' own call."""
        if self.own is not None:
            return self.own()
        return getattr(self.obj, self.method)(*self.args, **self.kwargs)

    @functools.cached_property
    def memory_key(self) -> Hashable | None:
        """What the cost memory knows the call by, besides its function:
        the method, the input's type and columns, the other arguments and
        the backend; ``None`` when an argument is not hashable."""
        _, rest, kwargs = self.parts
        key = (self.method, self.accessor._input()[1], rest, tuple(kwargs.items()),
               self.accessor._option("backend"))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def planner_decides(self) -> bool:
        """Whether the planner chooses how the call runs (options do not:
        no chunk size, a serial fallback, no progress bar asked for)."""
        option = self.accessor._option
        return (option("chunk_size") is None and option("serial_fallback")
                and option("progress") is not True)

    def with_func(self, func: Any) -> Call:
        """The same call of another function (``func`` wrapped in a policy)."""
        _, rest, kwargs = self.parts
        parameter = None
        if self.own is None and hasattr(type(self.obj), self.method):
            parameter = list(_pandas_signature(type(self.obj), self.method).parameters)[1]
        if parameter in self.kwargs:
            return dataclasses.replace(self, kwargs={**kwargs, parameter: func})
        return dataclasses.replace(self, args=(func, *rest))

    def redirect(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 build: Build) -> Call:
        """The call pandas makes for this one (``agg`` runs ``apply``)."""
        return Call(self.accessor, method, args, kwargs, build)

    def operation(self, label: str, units: Units, combine: Callable[[list[Piece]], Any],
                  **fields: Any) -> Operation:
        """The operation running this call: pandas' call on each chunk
        (``runner``, by default the same method on the chunk)."""
        func, rest, kwargs = self.parts
        fields.setdefault("runner", functools.partial(call_method, self.method))
        fields.setdefault("unit", "rows")
        return Operation(label=label, units=units, func=func, args=rest, kwargs=kwargs,
                         combine=combine, serial=self.pandas, options=self.options,
                         memory_key=self.memory_key, **fields)


def call_method(name: str, chunk: Any, func: Callable[..., Any],
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``chunk.<name>(func, *args, **kwargs)`` (runs in workers)."""
    return getattr(chunk, name)(func, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Reason:
    """A reason to hand a call to pandas: ``applies(call)`` says whether it
    holds (reasons only a build step can find never apply here)."""

    text: str
    applies: Callable[[Call], bool] = lambda call: False

    def __str__(self) -> str:
        return self.text


def route(call: Call) -> Any:
    """Run ``call`` as its options, function and arguments say (see the
    module docstring), and return exactly what pandas returns."""
    policy = _policy(call)
    if policy is None:
        return _route(call, None)
    if not asynchronous.is_async(call.func):
        call = call.with_func(policy.wrap(call.func))
    result = _route(call, policy)
    policy.warn(call.accessor._labels_source(), call.accessor._group_namer())
    return result


def _route(call: Call, policy: policies.CallPolicy | None) -> Any:
    if asynchronous.is_async(call.func):
        concurrency = call.parts[2].get("concurrency", call.options.concurrency)
        return pipeline.run_async(concurrency, lambda: _run_async(call, policy))
    if policy is None and call.planner_decides() and call.memory_key is not None:
        rows = call.accessor._input()[0]
        known = planning.plan_known(call.func, call.memory_key, rows)
        if known is not None:
            return pipeline.run_known(known, call.label, call.pandas)
    reason = next((r for r in HAND_OVER.get(call.name, ()) if r.applies(call)), None)
    built = call.build(call) if reason is None else reason
    if isinstance(built, Call):
        return _route(built, policy)
    if isinstance(built, Reason):
        return pipeline.hand_over(call.label, built.text, call.pandas)
    return pipeline.execute(built)


def _policy(call: Call) -> policies.CallPolicy | None:
    """The policy the call's options put around its function (``None``
    when they ask for none, or the function is pandas' own); checked, and
    the initializer run in this process, before any work."""
    accessor = call.accessor
    if accessor._options_at_default(_POLICY_DEFAULTS):
        return None
    func = call.func
    if not plain_callable(func) or _compat.cython_alias(func):
        return None  # pandas' own: none of the user's code
    options = call.options
    setup = policies.Setup.of(options.initializer, options.initargs)
    if setup is not None:
        policies.ensure_setup(setup, per_thread=True, where="this process")
    kind, missing = accessor._failure_kind(call)
    policy = policies.CallPolicy(
        accessor._label(call.method), kind, missing, options.errors, options.timeout,
        options.retries, options.retry_on, options.retry_delay)
    _check_policy(policy, options, asynchronous.is_async(func))
    if getattr(accessor._labels_source(), "size", 1) == 0:
        # No row to fail: pandas calls the function on a stand-in only to
        # infer the result's shape, and ignores its exception.
        policy.errors = "raise"
    return policy


def _check_policy(policy: policies.CallPolicy, options: Options, is_async: bool) -> None:
    if policy.errors == "coerce" and policy.kind not in policies.LABEL_KINDS:
        raise ValueError(
            f"errors='coerce' is not available for {policy.label}: the function is "
            f"called on {policy.kind}, which have no missing value pandas would "
            "accept; catch the exception in the function and return what should "
            "stand in its place.")
    if policy.timeout is not None and not is_async and backends.traits(options).cluster:
        raise ValueError(
            f"timeout= is not available on the {options.backend} backend (its workers "
            "run calls on threads, which cannot be interrupted); use a local backend, "
            "an async def function, or a timeout in the function's own I/O.")


def _run_async(call: Call, policy: policies.CallPolicy | None) -> Any:
    """``obj.<method>(async_func, ...)`` with the coroutines run concurrently.

    ``concurrency=`` and ``timeout=`` may be given with the call (they are
    not passed to the function) or as options.
    """
    func, rest, kwargs = call.parts
    kwargs = dict(kwargs)
    changes = {k: kwargs.pop(k) for k in ("concurrency", "timeout") if k in kwargs}
    options = call.options.replace(**changes)
    method = getattr(call.obj, call.method)
    return asynchronous.run(
        lambda f: method(f, *rest, **kwargs), func,
        call.accessor._async_placeholder(call.method), call.label, options.concurrency,
        options.timeout, options.progress, policy)


# --------------------------------------------------------------------------
# Reasons to hand a call to pandas
# --------------------------------------------------------------------------
def _param(name: str, allowed: tuple[Any, ...]) -> Callable[[Call], bool]:
    return lambda call: call.params.get(name) not in allowed


def _broadcast_unsafe(call: Call) -> bool:
    # pandas broadcasts into a buffer shaped like `frame.T.values` and
    # selects by label: with duplicate labels or extension dtypes, the
    # result depends on which rows share a chunk.
    frame = call.obj
    labels = frame.index if call.params["axis"] in ROW_AXES else frame.columns
    return call.params["result_type"] == "broadcast" and not (
        labels.is_unique and all(isinstance(d, np.dtype) for d in frame.dtypes))


def elementwise_splits(dtype: Any) -> bool:
    """Whether an elementwise call over a Series of ``dtype`` can be split:
    not categoricals (pandas maps their categories, not their rows) and not
    dtypes whose map inference needs all values (see
    :func:`combine.map_is_chunk_stable`)."""
    return (not isinstance(dtype, pd.CategoricalDtype)
            and combine.map_is_chunk_stable(dtype))


NOT_A_FUNCTION = Reason(
    "a function pandas dispatches itself: a name, a list or dict of functions, a ufunc, "
    "a type, a mapping", lambda call: not plain_callable(call.func))
OTHER_ENGINE = Reason("engine= names pandas' own compiled path",
                      _param("engine", (None, "python")))
NO_COLUMNS = Reason("a frame without columns", lambda call: call.obj.shape[1] == 0)
RESULT_TYPE = Reason("a result_type= pandas rejects",
                     _param("result_type", (None, "reduce", "broadcast", "expand")))
AXIS = Reason("an axis= pandas rejects", _param("axis", ROW_AXES + COLUMN_AXES))
BROADCAST = Reason(
    "result_type='broadcast' with duplicate labels or extension dtypes: pandas' result "
    "depends on which rows share a chunk", _broadcast_unsafe)
NA_ACTION = Reason("an na_action= pandas rejects", _param("na_action", (None, "ignore")))
MAP_INFERENCE = Reason(
    "a dtype whose map result pandas infers from all values together",
    lambda call: not all(map(combine.map_is_chunk_stable, call.obj.dtypes)))
ROWWISE_EXTENSION = Reason(
    "a row-wise transform of extension dtypes: its missing-value marker depends on which "
    "rows share a chunk",
    lambda call: call.params["axis"] in ROW_AXES
    and not all(isinstance(d, np.dtype) for d in call.obj.dtypes))
BY_ROW_FALSE = Reason("by_row=False: pandas calls the function once, on the whole Series",
                      lambda call: call.params.get("by_row", "compat") is False)
SERIES_ELEMENTWISE = Reason(
    "a categorical Series (pandas maps its categories) or a dtype whose map result pandas "
    "infers from all values together", lambda call: not elementwise_splits(call.obj.dtype))
SERIES_ENGINE = Reason("engine= names pandas' own compiled path",
                       _param("engine", (None,)))
SERIES_AXIS = Reason("an axis= pandas rejects", _param("axis", (0, "index", "rows")))
ONE_CALL = Reason("pandas 3 calls a single function once, on the whole Series")
NO_FUNCTION = Reason("no function: a name, or named aggregation",
                     lambda call: call.params.get("func") is None)
AGG_ALIAS = Reason(
    "a function pandas swaps for its own method (np.sum, builtins.max)",
    lambda call: bool(_compat.cython_alias(call.func) and not call.params["args"]
                      and not call.params["kwargs"]))
# Found by build steps.
EMPTY = Reason("the input is empty")
SERIES_GROUPBY_AS_INDEX = Reason(
    "df.groupby(k, as_index=False)[col]: pandas inserts key columns of the parent frame")
GROUPS_OF_COLUMNS = Reason("pandas 2.2's groupby(axis=1): groups of columns")
FILTER_NAN_GROUP = Reason(
    "pandas 2.2's filter with dropna=False drops a NaN-key group when it is a frame's only "
    "group, as it would be in some chunk")
UNOBSERVED = Reason(
    "pandas 2.2 adds unobserved combinations of categorical keys after the call")
UNSORTED_CATEGORICAL = Reason(
    "pandas 2.2 with sort=False gives categorical group keys categories of their own")
EMPTY_GROUPS = Reason("some groups have no rows: unobserved categories or empty time bins")
WINDOW_ENGINE = Reason("a function or engine pandas handles itself")
EXPANDING = Reason("an expanding window needs every row before it")
NO_REACH = Reason("a window whose reach cannot be measured")

#: The reasons each public method checks, in order, before its build step.
HAND_OVER: dict[str, tuple[Reason, ...]] = {
    "DataFrame.apply": (NOT_A_FUNCTION, OTHER_ENGINE, RESULT_TYPE, AXIS, NO_COLUMNS,
                        BROADCAST),
    "DataFrame.aggregate": (NOT_A_FUNCTION, AGG_ALIAS),
    "DataFrame.map": (NOT_A_FUNCTION, NA_ACTION, NO_COLUMNS, MAP_INFERENCE),
    "DataFrame.transform": (NOT_A_FUNCTION, AXIS, NO_COLUMNS, ROWWISE_EXTENSION),
    "Series.apply": (NOT_A_FUNCTION, BY_ROW_FALSE, SERIES_ELEMENTWISE),
    "Series.map": (NOT_A_FUNCTION, SERIES_ENGINE, NA_ACTION, SERIES_ELEMENTWISE),
    "Series.transform": (NOT_A_FUNCTION, SERIES_AXIS, SERIES_ELEMENTWISE),
    "GroupBy.apply": (NOT_A_FUNCTION,),
    "GroupBy.transform": (NO_FUNCTION, SERIES_ENGINE, NOT_A_FUNCTION),
    "GroupBy.aggregate": (NO_FUNCTION, SERIES_ENGINE, NOT_A_FUNCTION),
    "GroupBy.filter": (NOT_A_FUNCTION,),
    "Window.apply": (NOT_A_FUNCTION,),
}
