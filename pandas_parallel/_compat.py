"""The one place that touches non-public pandas.

pandas has no public registrar for GroupBy accessors and no public way to
read back how a GroupBy was made. Everything of that kind lives here, is
small, and is exercised by ``tests/test_compat.py`` on every pandas version
CI runs. Attributes read here (``keys``, ``level``, ``sort``, ``dropna``,
``observed``, ``as_index``, ``group_keys``, ``_selection``,
``_grouper.result_index``; on window objects ``window``, ``min_periods``,
``center``, ``on``, ``closed``, ``step``, ``method``, ``_selection``,
``_as_index`` and the ``_grouper``'s groupings) have been stable since
pandas 1.x.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.typing import DataFrameGroupBy, Expanding, Rolling, SeriesGroupBy

logger = logging.getLogger("pandas_parallel")

GROUPBY_CLASSES = (DataFrameGroupBy, SeriesGroupBy)
# Their groupby variants (``df.groupby(k).rolling(...)``) are subclasses.
WINDOW_CLASSES = (Rolling, Expanding)
PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3


class _AccessorProperty:
    """A class attribute that builds the accessor for each GroupBy instance
    (what pandas' ``register_*_accessor`` does for DataFrame and Series)."""

    def __init__(self, name: str, accessor: type) -> None:
        self.name = name
        self.accessor = accessor

    def __get__(self, obj: Any, cls: type) -> Any:
        if obj is None:
            return self.accessor
        return self.accessor(obj)


def register_groupby_accessor(names: tuple[str, ...], accessor: type) -> None:
    """Attach ``accessor`` as ``.<name>`` for each of ``names`` on
    DataFrameGroupBy and SeriesGroupBy.

    Adds class attributes and changes nothing else. A column named like
    the accessor stays reachable with ``gb["<name>"]``.
    """
    _register(GROUPBY_CLASSES, names, accessor)


def register_window_accessor(names: tuple[str, ...], accessor: type) -> None:
    """Attach ``accessor`` as ``.<name>`` for each of ``names`` on Rolling
    and Expanding objects, plain and grouped (``r["<name>"]`` still selects
    a column)."""
    _register(WINDOW_CLASSES, names, accessor)


def _register(classes: tuple[type, ...], names: tuple[str, ...], accessor: type) -> None:
    for cls in classes:
        for name in names:
            existing = cls.__dict__.get(name)
            if existing is not None and not isinstance(existing, _AccessorProperty):
                logger.warning("%s.%s already exists; pandas_parallel replaces it",
                               cls.__name__, name)
            setattr(cls, name, _AccessorProperty(name, accessor))


@dataclasses.dataclass(frozen=True)
class GroupBySpec:
    """How a GroupBy was made: enough to make the same one on a chunk."""

    obj: pd.DataFrame | pd.Series
    keys: Any
    level: Any
    sort: bool
    dropna: bool
    observed: bool
    as_index: bool
    group_keys: bool
    selection: Any
    result_index: pd.Index
    n_keys: int  # groupings: a list as long as the axis is one key, not many
    # Per grouping, the column it is when it is one of obj's (a column's
    # name, or the column itself given as a Series), else None.
    in_axis: tuple[Any, ...] = ()
    # Columns of obj the groupby groups by, which pandas leaves out of what
    # the function sees (a pd.Grouper's key column among them).
    exclusions: frozenset[Any] = frozenset()
    # Some grouping is categorical.
    categorical: bool = False


def groupby_spec(gb: Any) -> GroupBySpec:
    """Read back the arguments ``gb`` was created with."""
    return GroupBySpec(
        obj=gb.obj,
        keys=gb.keys,
        level=gb.level,
        sort=bool(gb.sort),
        dropna=bool(gb.dropna),
        observed=bool(gb.observed),
        as_index=bool(gb.as_index),
        group_keys=bool(gb.group_keys),
        selection=getattr(gb, "_selection", None),
        result_index=gb._grouper.result_index,
        n_keys=len(gb._grouper.groupings),
        in_axis=tuple(g.name if g.in_axis else None for g in gb._grouper.groupings),
        exclusions=frozenset(getattr(gb, "exclusions", ())),
        categorical=any(isinstance(getattr(g.grouping_vector, "dtype", None), pd.CategoricalDtype)
                        for g in gb._grouper.groupings),
    )


@dataclasses.dataclass(frozen=True)
class Grouping:
    """One key of a grouped window object: its name and each row's value."""

    name: Any
    values: Any  # array-like, one value per row of the window's ``obj``
    observed: bool


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a Rolling/Expanding object (plain or grouped) was made."""

    kind: str  # "rolling" or "expanding"
    obj: pd.DataFrame | pd.Series
    params: dict[str, Any]  # keyword arguments that make it again
    selection: Any
    supported: str | None  # why it must stay with pandas, or None
    groupings: tuple[Grouping, ...] = ()
    sort: bool = True
    dropna: bool = True
    as_index: bool = True
    groups: list[np.ndarray] | None = None  # rows of each group, in output order
    index: pd.MultiIndex | None = None  # what a grouped window's result is indexed by


def window_spec(window: Any) -> WindowSpec:
    """Read back the arguments ``window`` (e.g. ``s.rolling(3)``) was made with."""
    kind = "expanding" if isinstance(window, Expanding) else "rolling"
    params: dict[str, Any] = {"min_periods": window.min_periods, "method": window.method}
    if kind == "rolling":
        params.update(window=window.window, center=window.center, on=window.on,
                      closed=window.closed, step=window.step)
    supported = None
    if getattr(window, "axis", 0) not in (0, "index", "rows"):
        supported = "axis=1"
    elif getattr(window, "win_type", None) is not None:
        supported = "win_type"
    elif window.method != "single":
        supported = f"method={window.method!r}"
    # Pass on only what was given: a GroupBy's ``rolling`` has no ``step``.
    params = {key: value for key, value in params.items() if value is not None}
    grouper = getattr(window, "_grouper", None)
    if grouper is None:
        return WindowSpec(kind, window.obj, params, window._selection, supported)
    if type(grouper).__name__ != "BaseGrouper":  # a time Grouper bins rows
        return WindowSpec(kind, window.obj, params, window._selection,
                          supported or "a pd.Grouper with a frequency")
    groupings = tuple(Grouping(g.name, g.grouping_vector, bool(g._observed))
                      for g in grouper.groupings)
    groups = grouped_window_rows(window)
    order = np.concatenate(groups) if groups else np.empty(0, dtype=np.intp)
    # The result's index, made as pandas' BaseWindowGroupby._apply makes it:
    # the grouper's levels and codes, then the rows' own index.
    index = window.obj.index.take(order)
    if not isinstance(index, pd.MultiIndex):
        index = pd.MultiIndex.from_arrays([index])
    result_index = pd.MultiIndex(
        levels=[*grouper.levels, *index.levels],
        codes=[*(codes.take(order) for codes in grouper.codes), *index.codes],
        names=[*grouper.names, *window.obj.index.names], verify_integrity=False)
    return WindowSpec(kind, window.obj, params, window._selection, supported,
                      groupings=groupings, sort=bool(grouper._sort),
                      dropna=bool(grouper.dropna), as_index=bool(window._as_index),
                      groups=groups, index=result_index)


def grouped_window_rows(window: Any) -> list[np.ndarray]:
    """The row positions of each group of a grouped window object, in the
    order pandas returns groups (empty groups left out)."""
    return [rows for rows in window._grouper.indices.values() if len(rows)]


class _OptionPlaces:
    """Where each of pandas' options lives: (the dict of pandas' option tree
    that holds it, its name there, its key, its default). pandas sets
    options in place, in those same dicts; the places are found again, under
    the lock, when options are added."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.defaults: dict[str, Any] = {}
        self.places: tuple[tuple[dict[str, Any], str, str, Any], ...] = ()

    def now(self) -> tuple[dict[str, Any], tuple[tuple[dict[str, Any], str, str, Any], ...]]:
        """The defaults, by key, and the places, as pandas has them now."""
        from pandas._config import config

        registered = config._registered_options
        with self.lock:
            if len(self.defaults) != len(registered):
                self.defaults = {key: option.defval for key, option in registered.items()}
                found = (self._find(config._global_config, key, default)
                         for key, default in self.defaults.items())
                self.places = tuple(place for place in found if place is not None)
            return self.defaults, self.places

    @staticmethod
    def _find(tree: dict[str, Any], key: str, default: Any) -> Any:
        *path, name = key.split(".")
        for part in path:
            tree = tree.get(part, {})
        return (tree, name, key, default) if name in tree else None


OPTION_PLACES = _OptionPlaces()


def changed_pandas_options() -> dict[str, Any]:
    """pandas' options whose value differs from their default, by key.

    Read from pandas' option registry (``pandas._config.config``): a few
    microseconds, where ``pd.get_option`` for each of its 75-odd options
    takes fifty times as long.
    """
    _, places = OPTION_PLACES.now()
    return {key: level[name] for level, name, key, default in places
            if not _same(level[name], default)}


def _same(value: Any, default: Any) -> bool:
    try:
        return value is default or bool(value == default)
    except Exception:  # a value whose comparison is not a bool
        return False


def set_pandas_options(wanted: dict[str, Any]) -> None:
    """Make pandas' options those of ``wanted`` (the options that differ
    from their defaults, as :func:`changed_pandas_options` gives them);
    the others back at their defaults."""
    changed = changed_pandas_options()
    defaults, _ = OPTION_PLACES.now()
    with warnings.catch_warnings():  # setting a deprecated option warns
        warnings.simplefilter("ignore")
        for key in changed.keys() - wanted.keys():
            pd.set_option(key, defaults[key])
        for key, value in wanted.items():
            if key not in changed or not _same(changed[key], value):
                pd.set_option(key, value)


def cython_alias(func: Any) -> str | None:
    """The name of the pandas method ``agg`` swaps a builtin or numpy
    function for (``np.sum`` and ``sum`` -> ``"sum"``), or None."""
    from pandas.core import common

    alias = common.get_cython_func(func)
    return alias if isinstance(alias, str) else None


def groups_columns(gb: Any) -> bool:
    """Whether ``gb`` groups columns (pandas 2.2's deprecated ``axis=1``)."""
    return getattr(gb, "axis", 0) == 1


def caller_stack_level() -> int:
    """pandas' ``find_stack_level``, skipping this library's frames too.

    pandas names, in each warning it issues, the first frame outside its
    own package: called through ``.parallel``, that would be a line of this
    library instead of the user's. Only local imports: this code replaces
    pandas' function's own and runs with that module's globals.
    """
    import os
    import sys

    import pandas

    import pandas_parallel

    pandas_dir = os.path.dirname(pandas.__file__) + os.sep
    tests_dir = os.path.join(pandas_dir, "tests") + os.sep
    ours = os.path.dirname(pandas_parallel.__file__) + os.sep
    frame: Any = sys._getframe(0)
    level = 0
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(ours)
                or (name.startswith(pandas_dir) and not name.startswith(tests_dir))):
            break
        frame, level = frame.f_back, level + 1
    return level


def caller_frame() -> Any:
    """The frame of the line that called into this library (the first
    outside it and pandas, as :func:`caller_stack_level` counts)."""
    import sys

    level = caller_stack_level()  # counted from its own frame, whose caller is this one
    frame = sys._getframe(0)
    for _ in range(level - 1):
        if frame.f_back is None:
            break
        frame = frame.f_back
    return frame


def attribute_warnings_to_callers() -> None:
    """Make pandas' warnings name the user's line when issued through this
    library (see :func:`caller_stack_level`); a pandas without the function
    as expected is left alone."""
    try:
        from pandas.util import _exceptions
    except ImportError:
        return
    target = getattr(_exceptions, "find_stack_level", None)
    code = getattr(target, "__code__", None)
    if code is None or code.co_argcount or code.co_freevars:
        return
    target.__code__ = caller_stack_level.__code__  # type: ignore[union-attr]
