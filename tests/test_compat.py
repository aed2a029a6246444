"""The one non-public seam: the GroupBy accessor and how GroupBys are read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.api.typing import DataFrameGroupBy, SeriesGroupBy

import pandas_parallel  # noqa: F401
from pandas_parallel import _compat
from pandas_parallel.groupby import GroupByParallelAccessor


def test_accessor_is_attached_to_both_groupby_classes():
    df = pd.DataFrame({"k": [1, 1, 2], "v": [1, 2, 3]})
    assert isinstance(df.groupby("k").parallel, GroupByParallelAccessor)
    assert isinstance(df.groupby("k")["v"].parallel, GroupByParallelAccessor)
    assert DataFrameGroupBy.parallel is GroupByParallelAccessor
    assert SeriesGroupBy.parallel is GroupByParallelAccessor


def test_attaching_changes_no_pandas_behaviour():
    df = pd.DataFrame({"k": [1, 1, 2], "parallel": [1, 2, 3], "v": [4, 5, 6]})
    gb = df.groupby("k")
    expected = pd.Series([3, 3], name="parallel", index=pd.Index([1, 2], name="k"))
    pd.testing.assert_series_equal(gb["parallel"].sum(), expected)
    pd.testing.assert_frame_equal(gb.sum(), df.groupby("k").sum())
    assert "sum" in dir(gb)


@pytest.mark.parametrize("make", [
    lambda df: df.groupby("k", sort=False, dropna=False, as_index=False, group_keys=False),
    lambda df: df.groupby(["k", "j"], observed=True)[["v"]],
    lambda df: df.groupby("k")["v"],
    lambda df: df.groupby(level=0),
    lambda df: df.groupby(pd.Grouper(key="t", freq="1D")),
])
def test_groupby_spec_reads_back_how_the_groupby_was_made(make):
    df = pd.DataFrame({"k": ["a", None, "a"], "j": [1, 2, 1], "v": [1.0, 2.0, 3.0],
                       "t": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-01"])})
    gb = make(df)
    spec = _compat.groupby_spec(gb)
    assert spec.sort == gb.sort and spec.dropna == gb.dropna
    assert spec.as_index == gb.as_index and spec.group_keys == gb.group_keys
    assert len(spec.result_index) == gb.ngroups
    assert spec.obj is gb.obj


@pytest.mark.parametrize("make", [
    lambda df: df[["v"]].rolling(3, min_periods=1, center=True, closed="both", step=2),
    lambda df: df[["v", "t"]].rolling("2D", on="t"),
    lambda df: df[["j", "v"]].expanding(2)["v"],
    lambda df: df[["k", "j", "v"]].groupby(["k", "j"], sort=False).rolling(2),
    lambda df: df.groupby("k")["v"].expanding(),
])
def test_window_spec_makes_the_same_window_again(make):
    df = pd.DataFrame({"k": ["a", "b", "a", "b"], "j": [1, 2, 1, 1], "v": [1.0, 2.0, 3.0, 5.0],
                       "t": pd.date_range("2020-01-01", periods=4, freq="D")})
    window = make(df)
    spec = _compat.window_spec(window)
    assert spec.supported is None
    if spec.groups is None:
        again = getattr(spec.obj, spec.kind)(**spec.params)
        if spec.selection is not None:
            again = again[spec.selection]
        expected = window.sum()
        (pd.testing.assert_series_equal if isinstance(expected, pd.Series)
         else pd.testing.assert_frame_equal)(again.sum(), expected)
    else:
        # Every row in exactly one group, and pandas' own result index.
        order = np.sort(np.concatenate(spec.groups))
        np.testing.assert_array_equal(order, np.arange(len(df)))
        pd.testing.assert_index_equal(spec.index, window.sum().index, exact=True)
        assert [g.name for g in spec.groupings] == list(window.sum().index.names[:-1])
