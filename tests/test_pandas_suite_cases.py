"""Differences pandas' own test suite found (tests/pandas_suite), each as a
small case against pandas, forced parallel on forked workers and the pool."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pandas_parallel._compat import PANDAS_3
from tests.helpers import assert_same

pytestmark = pytest.mark.usefixtures("forced")


def test_a_list_as_long_as_the_series_is_one_key_even_with_one_group():
    """pandas' test_result_name_when_one_group: groupby(["a", "a"])."""
    for name in ("some_name", None):
        s = pd.Series([1, 2], name=name)
        assert_same(s.groupby(["a", "a"], group_keys=False).apply(lambda x: x),
                    s.groupby(["a", "a"], group_keys=False).parallel.apply(lambda x: x))
        assert_same(s.groupby(["a", "a"]).transform(lambda x: x - x.mean()),
                    s.groupby(["a", "a"]).parallel.transform(lambda x: x - x.mean()))


def test_a_column_given_as_a_series_is_excluded_like_its_name():
    """pandas' test_positional_slice_groups_datetimelike."""
    df = pd.DataFrame({"date": pd.date_range("2010-01-01", freq="12h", periods=5),
                       "vals": range(5), "let": list("abcde")})
    keys = [df.let, df.date.dt.date]
    assert_same(df.groupby(keys, group_keys=False).apply(lambda x: x.iloc[0:]),
                df.groupby(keys, group_keys=False).parallel.apply(lambda x: x.iloc[0:]))


@pytest.mark.parametrize("none_for", ["Tiger", "Pony", "Lamb"])
def test_groups_returning_none_among_series(none_for):
    """pandas' test_inconsistent_return_type: a None group is a row of NaN."""
    df = pd.DataFrame({"A": ["Tiger", "Tiger", "Tiger", "Lamb", "Lamb", "Pony", "Pony"],
                       "B": np.arange(7), "C": pd.date_range("20130101", periods=7)})

    def first_or_none(group):
        return None if group.name == none_for else group.iloc[0]

    assert_same(df.groupby("A").apply(first_or_none),
                df.groupby("A").parallel.apply(first_or_none))


@pytest.mark.skipif(not PANDAS_3, reason="named aggregation in transform is pandas 3's")
def test_transform_with_named_aggregation():
    df = pd.DataFrame({"A": list("aaabbbccc"), "B": range(9), "D": range(9, 18)})
    named = dict(b_min=pd.NamedAgg(column="B", aggfunc="min"), d_sum=("D", "sum"))
    assert_same(df.groupby("A").transform(**named),
                df.groupby("A").parallel.transform(**named))


def test_transform_with_func_as_a_keyword():
    df = pd.DataFrame({"k": [1, 1, 2], "v": [1.0, 2.0, 4.0]})
    assert_same(df.groupby("k")["v"].transform(func=lambda g: g - g.min()),
                df.groupby("k")["v"].parallel.transform(func=lambda g: g - g.min()))


def test_a_cython_engine_with_engine_kwargs_is_pandas_error():
    s = pd.Series(range(3))
    with pytest.raises(ValueError, match="cython engine does not accept engine_kwargs"):
        s.rolling(1).parallel.apply(lambda x: x, engine="cython",
                                    engine_kwargs={"parallel": False})


@pytest.mark.parametrize("method", ["map", "apply"])
def test_one_value_past_int64_makes_uint64(method):
    s = pd.Series(range(300))

    def big_at_299(x):
        return 2**63 if x == 299 else x

    assert_same(getattr(s, method)(big_at_299), getattr(s.parallel, method)(big_at_299))
    df = s.to_frame("a")
    assert_same(df.apply(lambda row: big_at_299(row.a), axis=1),
                df.parallel.apply(lambda row: big_at_299(row.a), axis=1))


@pytest.mark.parametrize("call", [
    lambda obj: obj["a"].apply(lambda x: pd.Series({"p": x})),   # frame: no attrs
    lambda obj: obj["a"].apply(lambda x: x + 1),                 # Series: attrs kept
    lambda obj: obj["a"].map(lambda x: x + 1),
    lambda obj: obj.apply(lambda row: row.a + row.b, axis=1),
    lambda obj: obj.apply(lambda row: row * 2, axis=1),
    lambda obj: obj.apply(lambda column: column.sum()),
    lambda obj: obj.transform(lambda column: column * 2),
], ids=["series-to-frame", "series", "map", "rows", "rows-to-frame", "columns", "transform"])
def test_attrs_are_kept_exactly_where_pandas_keeps_them(call):
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]})
    df.attrs = {"source": "test"}

    class Parallel:
        """``obj[...]`` and methods of ``obj``, through ``.parallel``."""

        def __init__(self, obj):
            self.obj = obj

        def __getitem__(self, key):
            return Parallel(self.obj[key])

        def __getattr__(self, name):
            return getattr(self.obj.parallel, name)

    assert_same(call(df), call(Parallel(df)))


@pytest.mark.parametrize("call, spread", [
    (lambda obj: obj.agg(lambda column: [column.min(), column.max()]), True),
    (lambda obj: obj.agg(lambda column, k: column.sum() * k, 0, 3), True),
    (lambda obj: obj.agg(lambda row, k=1: row.a - row.b * k, axis=1, k=2), True),
    (lambda obj: obj.aggregate(lambda column: column.max()), True),
    (lambda obj: obj.agg(np.sum), False),            # pandas' own DataFrame.sum
    (lambda obj: obj.agg(["min", "max"]), False),
    (lambda obj: obj.agg({"a": "sum"}), False),
], ids=["list-result", "args", "axis-1-kwargs", "aggregate", "np.sum", "list", "dict"])
def test_dataframe_agg_with_a_function_runs_as_apply(call, spread, forced_backend):
    import pandas_parallel

    df = pd.DataFrame({"a": [1.0, 2.0, 5.0], "b": [4.0, 5.0, 6.0]})
    expected = call(df)
    actual = call(df.parallel)
    assert_same(expected, actual)
    ran = pandas_parallel.last_run()
    assert ran is not None and ran.backend == (forced_backend if spread else "serial")


def test_series_agg_is_pandas_own():
    s = pd.Series([1.0, 2.0, 4.0])
    assert_same(s.agg(lambda x: x.max() - x.min()), s.parallel.agg(lambda x: x.max() - x.min()))
    assert_same(s.agg(["min", "max"]), s.parallel.aggregate(["min", "max"]))


@pytest.mark.parametrize("select", [None, "v", ["v"]], ids=["frame", "series", "frame-sel"])
@pytest.mark.parametrize("group_keys", [True, False])
def test_every_group_returning_none_calls_the_function_once_per_group(select, group_keys,
                                                                      tmp_path):
    """pandas' test_group_apply_once_per_group2: no second, serial pass.
    Calls are counted in a file: workers cannot count in this process."""
    df = pd.DataFrame({"k": [0, 0, 1, 1, 2], "v": [1.0, 2.0, 3.0, 4.0, 5.0]})
    calls = tmp_path / "calls"

    def nothing(group):
        with open(calls, "a") as fh:
            fh.write("called\n")

    def grouped(obj):
        gb = obj.groupby("k", group_keys=group_keys)
        return gb if select is None else gb[select]

    expected = grouped(df).apply(nothing)
    calls.unlink()
    actual = grouped(df).parallel.apply(nothing)
    assert_same(expected, actual)
    assert calls.read_text().count("called") == 3


@pytest.mark.parametrize("func", [
    lambda column: list(column.dropna().unique()),            # lengths differ: a Series
    lambda column: list(column.iloc[:2]),                       # same length: a frame
    lambda column: column.dropna().astype(str).value_counts(),  # Series: aligned
], ids=["lists-of-different-lengths", "lists-of-one-length", "series"])
def test_column_results_of_lists_and_series(func):
    """pandas' test_agg_listlike_result."""
    df = pd.DataFrame({"A": [2, 2, 3], "B": [1.5, np.nan, 1.5], "C": ["foo", None, "bar"]})
    assert_same(df.apply(func), df.parallel.apply(func))
    assert_same(df.agg(func), df.parallel.agg(func))


def _warns_per_value(x):
    import warnings

    warnings.warn("careful with this value", FutureWarning, stacklevel=2)
    return x * 2


def test_a_warning_in_the_workers_is_issued_here_once_at_the_callers_line():
    """pandas' test_dispatch_transform: a FutureWarning from the function.
    pandas issues it where the function is called; a worker's would be lost."""
    import inspect
    import warnings

    s = pd.Series(range(12))
    with pytest.warns(FutureWarning, match="careful"):
        expected = s.map(_warns_per_value)
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        actual = s.parallel.map(_warns_per_value)
    assert_same(expected, actual)
    ours = [w for w in issued if "careful" in str(w.message)]
    # The parent's sample chunk may issue it too; the workers' come back once.
    assert ours and all(w.category is FutureWarning for w in ours)
    assert (__file__, line) in {(w.filename, w.lineno) for w in ours}
    assert len({(w.filename, w.lineno) for w in ours}) <= 2


def test_pandas_warnings_name_the_callers_line_not_this_librarys():
    """pandas names the first frame outside pandas in its warnings; through
    .parallel that must still be the user's line (pandas' tests check it)."""
    import os
    import warnings

    from pandas.util._exceptions import find_stack_level

    import pandas_parallel

    inside_us = os.path.join(os.path.dirname(pandas_parallel.__file__), "_a_frame.py")
    namespace = {"find_stack_level": find_stack_level, "warnings": warnings}
    exec(compile("def through_us():\n"
                 "    warnings.warn('x', FutureWarning, stacklevel=find_stack_level())\n",
                 inside_us, "exec"), namespace)
    with pytest.warns(FutureWarning) as issued:
        namespace["through_us"]()
    assert issued[0].filename == __file__


@pytest.mark.skipif(PANDAS_3, reason="pandas 2.2 warns about include_groups")
def test_a_pandas_deprecation_through_parallel_names_the_callers_line():
    df = pd.DataFrame({"k": [1, 1, 2], "v": [1.0, 2.0, 3.0]})
    with pytest.warns(DeprecationWarning, match="grouping columns") as issued:
        df.groupby("k").parallel.apply(lambda g: g.v.sum())
    assert {w.filename for w in issued} == {__file__}



@pytest.mark.parametrize("kind", ["rolling", "expanding"])
def test_a_grouped_window_selected_down_to_its_column(kind):
    """pandas' test_groupby_rolling_agg_namedagg: named aggregation on a
    grouped window calls ``apply`` on a window whose object is the selected
    column itself (a Series that keeps the selection), made as pandas'
    ``agg_list_like`` makes it."""
    df = pd.DataFrame({"kind": ["cat", "dog", "cat", "dog", "cat", "dog"],
                       "height": [9.1, 6.0, 9.5, 34.0, 12.0, 8.0],
                       "weight": [7.9, 7.5, 9.9, 198.0, 10.0, 42.0]})
    grouped = df.groupby("kind")
    window = grouped.rolling(2) if kind == "rolling" else grouped.expanding()
    column = window._gotitem("weight", ndim=1)
    column = column._gotitem("weight", ndim=1, subset=column._selected_obj)
    assert isinstance(column.obj, pd.Series)
    assert_same(column.apply(sum, raw=False), column.parallel.apply(sum, raw=False))


@pytest.mark.filterwarnings("ignore:Converting a Series or array of length 1")
@pytest.mark.parametrize("rows, expected", [
    ([[20, "A"], [20, "B"], [10, "C"]], {0: [10, 20], 1: ["C", ["A", "B"]]}),
    ([["a", 1], ["a", 1], ["b", 2], ["b", 3]], {0: ["a", "b"], 1: [1, [2, 3]]}),
])
def test_agg_where_a_later_group_returns_several_values(rows, expected):
    """pandas' test_agg_of_mode_list: pandas checks only the first group's
    result for a scalar; a chunk starting at a later group must not fail."""
    df = pd.DataFrame(rows)
    assert_same(df.groupby(0).agg(pd.Series.mode), df.groupby(0).parallel.agg(pd.Series.mode))
    assert_same(pd.DataFrame(expected).set_index(0), df.groupby(0).parallel.agg(pd.Series.mode))
