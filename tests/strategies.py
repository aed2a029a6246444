"""Hypothesis strategies: frames over many dtypes and index kinds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import strategies as st

PANDAS_3 = int(pd.__version__.split(".")[0]) >= 3

DTYPES = [
    "int64", "int8", "float64", "float32", "bool", "Int64", "Float64", "boolean",
    "str", "string[pyarrow]", "category", "datetime_tz", "datetime", "timedelta",
    "period", "object_mixed",
]


def make_column(kind: str, ints: list[int], nulls: list[bool]) -> pd.Series:
    """A column of dtype ``kind`` from small ints, missing where ``nulls``."""
    masked = [None if null else v for v, null in zip(ints, nulls)]
    if kind in ("int64", "int8"):
        return pd.Series(np.array(ints, dtype=kind))
    if kind in ("float64", "float32"):
        return pd.Series(np.array([np.nan if v is None else v for v in masked],
                                  dtype=kind))
    if kind == "bool":
        return pd.Series(np.array(ints) > 0)
    if kind in ("Int64", "Float64"):
        return pd.Series(pd.array(masked, dtype=kind))
    if kind == "boolean":
        return pd.Series(pd.array([None if v is None else v > 0 for v in masked],
                                  dtype="boolean"))
    if kind == "str":
        return pd.Series([None if v is None else f"s{v}" for v in masked])
    if kind == "string[pyarrow]":
        return pd.Series(pd.array([None if v is None else f"s{v}" for v in masked],
                                  dtype="string[pyarrow]"))
    if kind == "category":
        return pd.Series(pd.Categorical([None if v is None else f"c{v % 3}" for v in masked],
                                        categories=["c2", "c0", "c1", "unused"]))
    if kind == "datetime_tz":
        return pd.Series(pd.to_datetime([None if v is None else v for v in masked],
                                        unit="D").tz_localize("Europe/Paris"))
    if kind == "datetime":
        return pd.Series(pd.to_datetime([None if v is None else v for v in masked],
                                        unit="h"))
    if kind == "timedelta":
        return pd.Series(pd.to_timedelta([None if v is None else v for v in masked],
                                         unit="min"))
    if kind == "period":
        return pd.Series(pd.array([None if v is None else pd.Period("2020-01", "M") + v
                                   for v in masked], dtype="period[M]"))
    if kind == "object_mixed":
        choices = [1, "a", 2.5, None, ("t", 1), b"x"]
        return pd.Series([choices[v % len(choices)] for v in ints], dtype=object)
    raise ValueError(kind)


INDEX_KINDS = ["range", "range_offset", "int_dupes", "str", "datetime_freq", "multi"]


def make_index(kind: str, n: int) -> pd.Index:
    if kind == "range":
        return pd.RangeIndex(n)
    if kind == "range_offset":
        return pd.RangeIndex(10, 10 + 3 * n, 3, name="rid")
    if kind == "int_dupes":
        return pd.Index([i // 2 for i in range(n)], dtype="int64", name="dup")
    if kind == "str":
        return pd.Index([f"row{i}" for i in range(n)], name="label")
    if kind == "datetime_freq":
        return pd.date_range("2021-03-01", periods=n, freq="D", name="when")
    if kind == "multi":
        return pd.MultiIndex.from_arrays([[i % 2 for i in range(n)], list(range(n))],
                                         names=["outer", "inner"])
    raise ValueError(kind)


@st.composite
def frames(draw, min_rows: int = 0, max_rows: int = 10, max_cols: int = 4,
           dtypes: list[str] = DTYPES) -> pd.DataFrame:
    n = draw(st.integers(min_rows, max_rows))
    n_cols = draw(st.integers(1, max_cols))
    kinds = draw(st.lists(st.sampled_from(dtypes), min_size=n_cols, max_size=n_cols))
    columns = {}
    for i, kind in enumerate(kinds):
        ints = draw(st.lists(st.integers(-4, 9), min_size=n, max_size=n))
        nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        columns[i] = make_column(kind, ints, nulls)
    frame = pd.DataFrame(columns)
    frame.index = make_index(draw(st.sampled_from(INDEX_KINDS)), n)
    labels = draw(st.sampled_from(["str", "int", "multi"]))
    if labels == "str":
        frame.columns = [f"col{i}" for i in range(n_cols)]
    elif labels == "multi":
        frame.columns = pd.MultiIndex.from_arrays(
            [["x"] * n_cols, [f"c{i}" for i in range(n_cols)]], names=["top", None])
    return frame
