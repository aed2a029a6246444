"""The one non-public seam: the GroupBy accessor and how GroupBys are read."""

from __future__ import annotations

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
