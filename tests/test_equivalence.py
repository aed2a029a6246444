"""DataFrame/Series ``.parallel`` returns exactly what pandas returns.

Every test runs with forced parallel execution (two workers, one-row
chunks, no serial fallback) unless it says otherwise, so the split / ship /
combine path is what is tested, not pandas' own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pandas_parallel
from tests.helpers import check_like_pandas
from tests.strategies import frames

pytestmark = pytest.mark.usefixtures("forced")


def _odd_label(label) -> bool:
    return len(str(label)) % 2 == 1


ROW_FUNCS = {
    "length": lambda row: len(row),
    "first_value": lambda row: row.iloc[0],
    "first_as_str": lambda row: str(row.iloc[0]),
    "int_or_none": lambda row: None if _odd_label(row.name) else 1,
    "int_or_float": lambda row: 1 if _odd_label(row.name) else 2.5,
    "int_or_str": lambda row: 1 if _odd_label(row.name) else "x",
    "bool_or_none": lambda row: True if _odd_label(row.name) else None,
    "identity": lambda row: row,
    "head": lambda row: row.iloc[:1],
    "series_varying_keys": lambda row: pd.Series(
        {"b" if _odd_label(row.name) else "a": 1, "c": 2.0}),
    "list": lambda row: [1, len(row)],
    "dict": lambda row: {"n": len(row)},
    "nan": lambda row: np.nan,
    "timestamp": lambda row: pd.Timestamp("2020-01-01") + pd.Timedelta(days=len(row)),
    "raises_on_some": lambda row: 1 / 0 if _odd_label(row.name) else 1,
}

ELEMENT_FUNCS = {
    "identity": lambda x: x,
    "str": lambda x: str(x),
    "isna": lambda x: pd.isna(x),
    "int_or_none": lambda x: None if pd.isna(x) else 1,
    "int_or_float": lambda x: 1 if pd.isna(x) else 2.5,
    "list": lambda x: [x],
    "len_str": lambda x: len(str(x)),
    "raises_on_na": lambda x: 1 / 0 if pd.isna(x) else 0,
}

COLUMN_FUNCS = {
    "length": lambda col: len(col),
    "first_or_none": lambda col: col.iloc[0] if len(col) else None,
    "identity": lambda col: col,
    "head": lambda col: col.head(2),
    "as_str": lambda col: col.astype(str),
    "count": lambda col: col.count(),
}


@given(frame=frames(), name=st.sampled_from(sorted(ROW_FUNCS)),
       result_type=st.sampled_from([None, "expand", "reduce", "broadcast"]),
       chunk_size=st.sampled_from([1, 2, 3]))
def test_apply_rows(frame, name, result_type, chunk_size):
    func = ROW_FUNCS[name]
    check_like_pandas(
        lambda: frame.apply(func, axis=1, result_type=result_type),
        lambda: frame.parallel(chunk_size=chunk_size).apply(
            func, axis=1, result_type=result_type))


@given(frame=frames(dtypes=["int64", "float64", "bool", "int8"]),
       name=st.sampled_from(["sum", "first", "twice", "int_or_float"]))
def test_apply_rows_raw(frame, name):
    func = {"sum": lambda a: a.sum(), "first": lambda a: a[0], "twice": lambda a: a * 2,
            "int_or_float": lambda a: 1 if a[0] > 0 else 2.5}[name]
    check_like_pandas(lambda: frame.apply(func, axis=1, raw=True),
                      lambda: frame.parallel.apply(func, axis=1, raw=True))


@given(frame=frames(), name=st.sampled_from(sorted(COLUMN_FUNCS)),
       result_type=st.sampled_from([None, "expand", "reduce"]))
def test_apply_columns(frame, name, result_type):
    func = COLUMN_FUNCS[name]
    check_like_pandas(lambda: frame.apply(func, result_type=result_type),
                      lambda: frame.parallel.apply(func, result_type=result_type))


@given(frame=frames(), name=st.sampled_from(sorted(ELEMENT_FUNCS)),
       na_action=st.sampled_from([None, "ignore"]))
def test_series_map(frame, name, na_action):
    series = frame.iloc[:, 0].rename("values")
    func = ELEMENT_FUNCS[name]
    check_like_pandas(lambda: series.map(func, na_action=na_action),
                      lambda: series.parallel.map(func, na_action=na_action))


@given(frame=frames(), name=st.sampled_from(sorted(ELEMENT_FUNCS)))
def test_series_apply(frame, name):
    series = frame.iloc[:, -1]
    func = ELEMENT_FUNCS[name]
    check_like_pandas(lambda: series.apply(func), lambda: series.parallel.apply(func))


@given(frame=frames(max_cols=3), name=st.sampled_from(sorted(ELEMENT_FUNCS)),
       na_action=st.sampled_from([None, "ignore"]))
def test_frame_map(frame, name, na_action):
    func = ELEMENT_FUNCS[name]
    check_like_pandas(lambda: frame.map(func, na_action=na_action),
                      lambda: frame.parallel.map(func, na_action=na_action))


@given(frame=frames(), axis=st.sampled_from([0, 1]),
       name=st.sampled_from(["identity", "as_str", "plus_zero"]))
def test_frame_transform(frame, axis, name):
    func = {"identity": lambda x: x, "as_str": lambda x: x.astype(str),
            "plus_zero": lambda x: x + 0}[name]
    check_like_pandas(lambda: frame.transform(func, axis=axis),
                      lambda: frame.parallel.transform(func, axis=axis))


@given(frame=frames(min_rows=1), partition=st.sampled_from(["rows", "index"]))
def test_map_partitions_is_concat_of_parts(frame, partition):
    def row_local(part):  # any function whose rows depend only on their own row
        return part.iloc[:, :1].isna().rename(columns=str)

    expected = row_local(frame)
    actual = frame.parallel(partition=partition).map_partitions(row_local)
    if partition == "index" and not (frame.index.is_monotonic_increasing
                                     or frame.index.is_monotonic_decreasing):
        actual = actual.loc[expected.index]  # label chunks come in first-seen order
    pd.testing.assert_frame_equal(actual, expected)


# -- explicit cases -----------------------------------------------------------
def test_args_and_kwargs_reach_the_function():
    s = pd.Series([1.0, 2.0, 3.0], name="x")

    def scaled(x, offset, scale=1.0):
        return (x + offset) * scale

    check_like_pandas(lambda: s.apply(scaled, args=(2,), scale=3.0),
                      lambda: s.parallel.apply(scaled, args=(2,), scale=3.0))
    df = s.to_frame()
    check_like_pandas(lambda: df.apply(lambda r, k: r.x * k, axis=1, args=(4,)),
                      lambda: df.parallel.apply(lambda r, k: r.x * k, axis=1, args=(4,)))
    check_like_pandas(lambda: df.map(lambda v, k: v + k, k=5),
                      lambda: df.parallel.map(lambda v, k: v + k, k=5))


def test_attrs_and_freq_are_kept():
    df = pd.DataFrame({"a": range(5)}, index=pd.date_range("2024", periods=5, freq="h"))
    df.attrs = {"source": "sensor", "version": 2}
    check_like_pandas(lambda: df.apply(lambda r: r.a + 1, axis=1),
                      lambda: df.parallel.apply(lambda r: r.a + 1, axis=1))
    check_like_pandas(lambda: df.a.map(lambda v: v * 2),
                      lambda: df.a.parallel.map(lambda v: v * 2))
    check_like_pandas(lambda: df.map(str), lambda: df.parallel.map(str))


def test_duplicate_column_names_and_mixed_labels():
    df = pd.DataFrame([[1, 2, "x"], [3, 4, "y"]], columns=["a", "a", 0])
    check_like_pandas(lambda: df.apply(lambda r: r.iloc[1], axis=1),
                      lambda: df.parallel.apply(lambda r: r.iloc[1], axis=1))
    check_like_pandas(lambda: df.apply(lambda c: c.iloc[0]),
                      lambda: df.parallel.apply(lambda c: c.iloc[0]))


def test_lambdas_closures_and_local_functions():
    factor = 7

    def local(x):
        return x * factor

    s = pd.Series(range(6))
    check_like_pandas(lambda: s.map(local), lambda: s.parallel.map(local))
    check_like_pandas(lambda: s.map(lambda x: x - factor),
                      lambda: s.parallel.map(lambda x: x - factor))


@pytest.mark.parametrize("call", [
    lambda o: o.apply("sum"),
    lambda o: o.apply(["sum", "max"]),
    lambda o: o.apply({"a": "sum"}),
    lambda o: o.apply(np.sqrt),
    lambda o: o.apply(lambda r: r, axis=3),
    lambda o: o.apply(lambda r: r, axis=1, result_type="bogus"),
    lambda o: o.a.map({1: "one"}),
    lambda o: o.a.map(pd.Series({1: "one"})),
    lambda o: o.a.map(lambda v: v, na_action="bogus"),
    lambda o: o.transform(["sqrt", "abs"]),
    lambda o: o.a.apply(lambda v: v, by_row=False),
    lambda o: o.apply(lambda r: r, axis=1, not_an_option=True),
], ids=["str", "list", "dict", "ufunc", "bad-axis", "bad-result-type", "dict-map",
        "series-map", "bad-na-action", "transform-list", "by-row-false", "unknown-kwarg"])
def test_unparallelizable_calls_go_to_pandas(call):
    df = pd.DataFrame({"a": [1, 4, 9], "b": [2.0, 3.0, 4.0]})

    class Accessor:  # o.parallel-like view over the same call
        def __init__(self, frame):
            self.frame = frame

    check_like_pandas(lambda: call(df), lambda: call(_ParallelView(df)))


class _ParallelView:
    """Routes ``view.method(...)`` and ``view.col.method(...)`` to ``.parallel``."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        if isinstance(self._obj, pd.DataFrame) and name in self._obj.columns:
            return _ParallelView(self._obj[name])
        return getattr(self._obj.parallel, name)


def test_categorical_series_map_goes_to_pandas():
    s = pd.Series(pd.Categorical(["a", "b", "a"]))
    check_like_pandas(lambda: s.map(str.upper), lambda: s.parallel.map(str.upper))


def test_empty_and_tiny_inputs():
    empty = pd.DataFrame({"a": pd.Series([], dtype="int64")})
    check_like_pandas(lambda: empty.apply(lambda r: r.a, axis=1),
                      lambda: empty.parallel.apply(lambda r: r.a, axis=1))
    no_columns = pd.DataFrame(index=range(3))
    check_like_pandas(lambda: no_columns.apply(lambda r: 1, axis=1),
                      lambda: no_columns.parallel.apply(lambda r: 1, axis=1))
    one = pd.DataFrame({"a": [5]})
    check_like_pandas(lambda: one.apply(lambda r: r.a * 2, axis=1),
                      lambda: one.parallel.apply(lambda r: r.a * 2, axis=1))


def test_transport_modes_agree(forced):
    df = pd.DataFrame({"a": np.arange(20), "s": [f"v{i}" for i in range(20)],
                       "o": [1, "x"] * 10})
    expected = df.apply(lambda r: f"{r.a}-{r.s}-{r.o}", axis=1)
    for transport in ("auto", "arrow", "pickle"):
        actual = df.parallel(transport=transport).apply(
            lambda r: f"{r.a}-{r.s}-{r.o}", axis=1)
        pd.testing.assert_series_equal(actual, expected)


def test_nested_calls_run_serially_inside_workers():
    import os

    def inner(row):
        series = pd.Series(range(3))
        return (os.getpid(), int(series.parallel.map(lambda v: os.getpid()).nunique()))

    df = pd.DataFrame({"a": range(4)})
    results = df.parallel.apply(inner, axis=1)
    assert {pid for pid, _ in results} != {os.getpid()}
    assert all(n == 1 for _, n in results)  # nested map ran in one process


def test_partition_by_frequency():
    index = pd.date_range("2024-01-01", periods=48, freq="3h")
    df = pd.DataFrame({"v": np.arange(48)}, index=index)

    def daily_total(part):
        assert part.index.normalize().nunique() == 1  # whole days, one per chunk
        return part.groupby(part.index.normalize())["v"].sum()

    with pandas_parallel.config(chunk_size=1):
        result = df.parallel(partition="1D").map_partitions(daily_total)
    pd.testing.assert_series_equal(result, daily_total.__wrapped__(df)
                                   if hasattr(daily_total, "__wrapped__")
                                   else df.groupby(df.index.normalize())["v"].sum())


def test_partition_by_frequency_needs_sorted_datetime_index():
    df = pd.DataFrame({"v": range(3)})
    with pytest.raises(ValueError, match="partition='1D' needs a sorted DatetimeIndex"):
        df.parallel(partition="1D").map_partitions(lambda p: p)


class _CountsPickling:
    """A callable that counts how often it is pickled (in this process)."""

    pickled = 0

    def __call__(self, value):
        return value + 1

    def __reduce__(self):
        type(self).pickled += 1
        return (_CountsPickling, ())


def test_function_is_serialized_once_per_call_not_per_chunk():
    func = _CountsPickling()
    s = pd.Series(range(40))
    _CountsPickling.pickled = 0
    pd.testing.assert_series_equal(s.parallel.map(func), s + 1)  # 40 one-row chunks
    assert _CountsPickling.pickled == 1


def test_apply_with_scattered_label_partitions_infers_like_pandas():
    # Unsorted labels: each chunk holds rows scattered across the frame. The
    # row with a missing value makes pandas infer object columns for the whole
    # result, which chunks without it cannot know; the result must still be
    # pandas' own.
    df = pd.DataFrame({"s": ["x"] * 6, "n": pd.array([0, 0, None, 0, 0, 0], dtype="Int64")},
                      index=[3, 1, 3, 2, 1, 0])
    check_like_pandas(lambda: df.apply(lambda row: row, axis=1),
                      lambda: df.parallel(partition="index").apply(lambda row: row, axis=1))


def test_transform_failures_are_pandas_own():
    # When the column-wise attempt raises, pandas' transform falls back to
    # func(whole frame): a failing chunk must not decide the answer.
    df = pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5, 6]})

    def frame_only(x):
        if isinstance(x, pd.Series):
            raise KeyError("works on whole frames only")
        return x[["c", "b", "a"]][["a", "b", "c"]] * 2  # needs every column

    check_like_pandas(lambda: df.transform(frame_only),
                      lambda: df.parallel.transform(frame_only))
    check_like_pandas(lambda: df.a.transform(lambda v: v.missing),
                      lambda: df.a.parallel.transform(lambda v: v.missing))


def test_none_stays_none_where_pandas_keeps_objects(caplog):
    # Chunk [None, 1] infers float64 [nan, 1.0]; with a string elsewhere pandas
    # keeps the original objects [1, "a", None, 1].
    df = pd.DataFrame({"v": pd.Series([1, "a", None, 1], dtype=object)})
    with pandas_parallel.config(chunk_size=2):
        check_like_pandas(lambda: df.apply(lambda r: r.v, axis=1),
                          lambda: df.parallel.apply(lambda r: r.v, axis=1))
    # Ints with None across chunks give float64, as pandas does, without
    # handing the call back to pandas.
    s = pd.Series([1, 2, 3, 4])
    caplog.clear()
    with caplog.at_level("WARNING", logger="pandas_parallel"):
        check_like_pandas(lambda: s.map(lambda v: None if v == 4 else v),
                          lambda: s.parallel.map(lambda v: None if v == 4 else v))
    assert "recomputing serially" not in caplog.text


def test_rows_all_missing_keep_their_markers():
    """pandas 2.2's concat wrote NaN over a chunk whose object values were all
    missing (None here); pandas, on the whole frame, keeps None."""
    frame = pd.DataFrame({"col0": [0.0, np.nan],
                          "col1": pd.Series([1, None], dtype=object)})
    check_like_pandas(lambda: frame.transform(lambda x: x, axis=1),
                      lambda: frame.parallel(chunk_size=1).transform(lambda x: x, axis=1))
    assert frame.parallel(chunk_size=1).transform(lambda x: x, axis=1).iloc[1, 1] is None


BIG = 2**63  # past int64's range: pandas needs uint64, or object


@pytest.mark.parametrize("value", [
    lambda row: BIG if row.name == 399 else int(row["b"]),  # Python ints: uint64
    lambda row: BIG if row.name == 399 else row["b"],  # numpy int64 scalars: object
    lambda row: BIG if row.name == 399 else -int(row["b"]),  # a negative: object
    lambda row: np.uint64(BIG) if row.name == 399 else int(row["b"]),
], ids=["python_ints", "numpy_ints", "negative", "numpy_uint64"])
def test_integers_past_int64_in_one_chunk_combine_as_pandas_infers(value):
    """One chunk's values need uint64, the others' int64: the whole result
    takes the dtype pandas infers over all values (an int64 chunk does not
    say whether it held Python or numpy integers: where that decides, the
    call is recomputed by pandas)."""
    frame = pd.DataFrame({"b": np.arange(400)})
    with pandas_parallel.config(chunk_size=50):  # the last chunk holds the big one
        check_like_pandas(lambda: frame.apply(value, axis=1),
                          lambda: frame.parallel.apply(value, axis=1))
        series = frame["b"]
        check_like_pandas(
            lambda: series.map(lambda x: value(pd.Series({"b": x}, name=x))),
            lambda: series.parallel.map(lambda x: value(pd.Series({"b": x}, name=x))))
