"""The one place that touches non-public pandas.

pandas has no public registrar for GroupBy accessors and no public way to
read back how a GroupBy was made. Everything of that kind lives here, is
small, and is exercised by ``tests/test_compat.py`` on every pandas version
CI runs. Attributes read here (``keys``, ``level``, ``sort``, ``dropna``,
``observed``, ``as_index``, ``group_keys``, ``_selection``,
``_grouper.result_index``) have been stable since pandas 1.x.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd
from pandas.api.typing import DataFrameGroupBy, SeriesGroupBy

logger = logging.getLogger("pandas_parallel")

GROUPBY_CLASSES = (DataFrameGroupBy, SeriesGroupBy)
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


def register_groupby_accessor(name: str, accessor: type) -> None:
    """Attach ``accessor`` as ``.<name>`` on DataFrameGroupBy and SeriesGroupBy.

    Adds one class attribute and changes nothing else. A column named like
    the accessor stays reachable with ``gb["<name>"]``.
    """
    for cls in GROUPBY_CLASSES:
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
    )
