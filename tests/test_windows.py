"""``rolling(...).parallel`` and ``expanding(...).parallel`` return exactly
what pandas returns.

Forced parallel execution (two workers, tiny chunks, no serial fallback)
over window kinds, window sizes against chunk sizes (windows wider than a
chunk included), NaNs, index kinds and groupings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pandas_parallel
from pandas_parallel.windows import WindowParallelAccessor
from tests.helpers import check_like_pandas

pytestmark = pytest.mark.usefixtures("forced")


def spread(w):
    """Uses every value and the window's length."""
    values = np.asarray(w, dtype=float)
    return float(np.nansum(values) * 10 + len(values))


def last_label_day(w):
    """Uses the window's index (raw=False only)."""
    label = w.index[-1]
    return float(label.day if hasattr(label, "day") else hash(label) % 7)


def fails_on_big(w):
    if np.nanmax(np.asarray(w, dtype=float), initial=0.0) > 8:
        raise ZeroDivisionError("value too big")
    return 1.0


FUNCS = {"spread": spread, "first_or_nan": lambda w: np.asarray(w, dtype=float)[0],
         "fails_on_big": fails_on_big}


@st.composite
def series_with_index(draw, max_rows=40):
    n = draw(st.integers(0, max_rows))
    values = draw(st.lists(st.one_of(st.floats(-9, 9, allow_nan=False), st.just(np.nan)),
                           min_size=n, max_size=n))
    kind = draw(st.sampled_from(["range", "labels", "times", "times_desc", "times_dupes"]))
    if kind == "range":
        index = pd.RangeIndex(n)
    elif kind == "labels":
        index = pd.Index([f"r{i}" for i in range(n)], name="row")
    else:
        gaps = draw(st.lists(st.integers(0 if kind == "times_dupes" else 1, 9),
                             min_size=n, max_size=n))
        index = pd.DatetimeIndex(pd.Timestamp("2024-03-01")
                                 + pd.to_timedelta(np.cumsum(gaps), unit="h"), name="t")
        if kind == "times_desc":
            index = index[::-1]
    return pd.Series(values, index=index, name="x")


@st.composite
def rolling_args(draw, index):
    timed = isinstance(index, pd.DatetimeIndex) and draw(st.booleans())
    args = {}
    if timed:
        args["window"] = draw(st.sampled_from(["1h", "5h", "1D", pd.Timedelta("3h")]))
    else:
        args["window"] = draw(st.integers(1, 15))
        if draw(st.booleans()):
            args["step"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        top = args["window"] if isinstance(args["window"], int) else 3
        args["min_periods"] = draw(st.integers(0, top))
    args["center"] = draw(st.booleans())
    args["closed"] = draw(st.sampled_from([None, "right", "left", "both", "neither"]))
    return args


@given(data=st.data(), func=st.sampled_from(sorted(FUNCS)), raw=st.booleans(),
       chunk_size=st.integers(1, 7))
def test_rolling_series(data, func, raw, chunk_size):
    s = data.draw(series_with_index())
    args = data.draw(rolling_args(s.index))
    with pandas_parallel.config(chunk_size=chunk_size):
        check_like_pandas(lambda: s.rolling(**args).apply(FUNCS[func], raw=raw),
                          lambda: s.rolling(**args).parallel.apply(FUNCS[func], raw=raw))


@given(data=st.data(), chunk_size=st.integers(1, 5))
def test_rolling_frame_with_on_column_and_selection(data, chunk_size):
    s = data.draw(series_with_index())
    df = pd.DataFrame({"a": s.to_numpy(), "b": np.arange(len(s)) % 4,
                       "t": pd.date_range("2024-01-01", periods=len(s), freq="90min")},
                      index=s.index)
    use_on = data.draw(st.booleans())
    args = data.draw(rolling_args(pd.DatetimeIndex(df["t"]) if use_on else df.index))
    if use_on:
        args["on"] = "t"
    select = data.draw(st.sampled_from([None, "a", ["b", "a"]]))

    def make(frame):
        frame = frame if use_on else frame.drop(columns="t")
        window = frame.rolling(**args)
        return window if select is None else window[select]

    with pandas_parallel.config(chunk_size=chunk_size):
        check_like_pandas(lambda: make(df).apply(spread, raw=True),
                          lambda: make(df).parallel.apply(spread, raw=True))


def test_raw_false_windows_carry_their_index_labels():
    s = pd.Series(np.arange(30.0), index=pd.date_range("2024-01-01", periods=30, freq="7h"))
    check_like_pandas(lambda: s.rolling("1D").apply(last_label_day),
                      lambda: s.rolling("1D").parallel.apply(last_label_day))


def test_extra_arguments_reach_the_function():
    s = pd.Series(np.arange(20.0))

    def scaled(w, factor, shift=0.0):
        return w.sum() * factor + shift

    check_like_pandas(
        lambda: s.rolling(4).apply(scaled, args=(2.0,), kwargs={"shift": 1.0}),
        lambda: s.rolling(4).parallel.apply(scaled, args=(2.0,), kwargs={"shift": 1.0}))


@st.composite
def grouped_frames(draw):
    n = draw(st.integers(1, 30))
    n_groups = draw(st.sampled_from([1, 2, 3, n]))
    groups = draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    nan_keys = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    values = draw(st.lists(st.one_of(st.floats(-9, 9, allow_nan=False), st.just(np.nan)),
                           min_size=n, max_size=n))
    df = pd.DataFrame({
        "k": [f"g{g}" for g in groups],
        "k2": [g % 2 for g in groups],
        "kn": [None if nan else f"g{g}" for g, nan in zip(groups, nan_keys)],
        "kc": pd.Categorical([f"c{g % 3}" for g in groups], categories=["c2", "c0", "c1", "c9"]),
        "v": values,
        "t": pd.date_range("2024-01-01", periods=n, freq="45min"),
    })
    if draw(st.booleans()):
        df.index = pd.Index([f"r{i // 2}" for i in range(n)], name="row")
    return df


def _parity(df):
    return pd.Series(np.arange(len(df)) % 2, index=df.index, name="parity")


KEYS = {  # the key columns each grouping needs, and the grouping
    "column": (["k"], lambda df, o: df.groupby("k", **o)),
    "two_columns": (["k2", "k"], lambda df, o: df.groupby(["k2", "k"], **o)),
    "series": ([], lambda df, o: df.groupby(_parity(df), **o)),
    "level": (["k"], lambda df, o: df.set_index("k", append=True).groupby(level="k", **o)),
    "categorical": (["kc"], lambda df, o: df.groupby("kc", **o)),
    "with_nan": (["kn"], lambda df, o: df.groupby("kn", **o)),
    "selected": (["k"], lambda df, o: df.groupby("k", **o)["v"]),
}


@given(df=grouped_frames(), key=st.sampled_from(sorted(KEYS)), sort=st.booleans(),
       dropna=st.booleans(), observed=st.booleans(), as_index=st.booleans(),
       kind=st.sampled_from(["int", "time", "expanding"]), min_periods=st.integers(0, 3),
       raw=st.booleans(), chunk_size=st.integers(1, 3))
def test_grouped_windows(df, key, sort, dropna, observed, as_index, kind, min_periods, raw,
                         chunk_size):
    options = dict(sort=sort, dropna=dropna, observed=observed)
    if key != "selected":
        options["as_index"] = as_index
    key_columns, group = KEYS[key]
    data = df[key_columns + ["v"] + (["t"] if kind == "time" else [])]

    def make():
        gb = group(data, options)
        if kind == "int":
            return gb.rolling(3, min_periods=min_periods)
        if kind == "time":
            return gb.rolling("2h", on="t", min_periods=min_periods)
        return gb.expanding(min_periods=min_periods)

    with pandas_parallel.config(chunk_size=chunk_size):
        check_like_pandas(lambda: make().apply(spread, raw=raw),
                          lambda: make().parallel.apply(spread, raw=raw))


def label_sum(w):
    """Reads the window's labels, which pandas pairs with the values in its
    own way for grouped windows (its issue 49878)."""
    return float(sum(ord(str(label)[-1]) for label in w.index)) + float(np.nansum(w))


INTERLEAVED = pd.DataFrame({"k": [1, 2, 3, 4] * 3, "v": np.arange(12.0),
                            "w": np.arange(12.0) * 2}, index=list("abcdefghijkl"))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4])
@pytest.mark.parametrize("make", [
    lambda df: df.groupby("k").v.rolling(2, min_periods=1),
    lambda df: df.groupby("k").v.expanding(),
    lambda df: df.groupby("k")[["v", "w"]].rolling(2, min_periods=1),
    lambda df: df.groupby("k")[["v", "w"]].expanding(),
], ids=["series_rolling", "series_expanding", "frame_rolling", "frame_expanding"])
def test_grouped_windows_carry_the_labels_pandas_gives_them(make, chunk_size):
    """Four interleaved groups: every chunk size gives pandas' own labels."""
    expected = make(INTERLEAVED).apply(label_sum, raw=False)
    with pandas_parallel.config(chunk_size=chunk_size):
        got = make(INTERLEAVED).parallel.apply(label_sum, raw=False)
    assert pandas_parallel.last_run().backend != "serial"
    pd.testing.assert_frame_equal(got.to_frame() if got.ndim == 1 else got,
                                  expected.to_frame() if expected.ndim == 1 else expected)


def test_grouped_time_windows_that_read_labels_go_to_pandas():
    """A time window's bounds read the labels pandas mismatches with the
    values: no chunk can reproduce both, so pandas runs it."""
    df = INTERLEAVED.assign(t=pd.date_range("2024-01-01", periods=12, freq="h"))
    check_like_pandas(
        lambda: df.groupby("k").rolling("2h", on="t").v.apply(label_sum, raw=False),
        lambda: df.groupby("k").rolling("2h", on="t").v.parallel.apply(label_sum, raw=False))
    assert pandas_parallel.last_run().backend == "serial"


@given(df=grouped_frames(), key=st.sampled_from(sorted(KEYS)),
       kind=st.sampled_from(["int", "expanding"]), chunk_size=st.integers(1, 4))
def test_grouped_windows_reading_labels(df, key, kind, chunk_size):
    key_columns, group = KEYS[key]
    data = df[[*key_columns, "v"]]

    def make():
        gb = group(data, {})
        return gb.rolling(3, min_periods=1) if kind == "int" else gb.expanding()

    with pandas_parallel.config(chunk_size=chunk_size):
        check_like_pandas(lambda: make().apply(label_sum, raw=False),
                          lambda: make().parallel.apply(label_sum, raw=False))


# -- what stays with pandas ---------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda s: s.expanding(2),
    lambda s: s.rolling(pd.api.indexers.FixedForwardWindowIndexer(window_size=3)),
    lambda s: s.rolling(3, method="table"),
], ids=["expanding", "custom_indexer", "table"])
def test_handed_to_pandas(make):
    s = pd.Series(np.arange(12.0))
    check_like_pandas(lambda: make(s).apply(spread, raw=True),
                      lambda: make(s).parallel.apply(spread, raw=True))


def test_numba_engine_goes_to_pandas():
    s = pd.Series(np.arange(12.0))
    check_like_pandas(lambda: s.rolling(3).apply(spread, raw=True, engine="numba"),
                      lambda: s.rolling(3).parallel.apply(spread, raw=True, engine="numba"))


def test_bad_arguments_fail_like_pandas():
    s = pd.Series(np.arange(12.0))
    check_like_pandas(lambda: s.rolling(3).apply(spread, raw="yes"),
                      lambda: s.rolling(3).parallel.apply(spread, raw="yes"))
    with pytest.raises(TypeError):
        s.rolling(3).parallel.apply(spread, bogus=1)
    with pytest.raises(TypeError, match="n_jobs"):
        s.rolling(3).parallel(n_jobs="many")


def test_failure_names_the_rows_and_keeps_the_type():
    s = pd.Series(np.arange(40.0))
    with pytest.raises(ZeroDivisionError) as info:
        s.rolling(3).parallel.apply(fails_on_big)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "rolling.apply failed on chunk" in notes and "rows [" in notes
    assert "called with a Series with index [" in notes  # the failing window


def test_accessor_is_attached_to_window_classes():
    df = pd.DataFrame({"k": [1, 1, 2], "parallel": [1.0, 2.0, 3.0]})
    for window in (df.rolling(2), df.expanding(), df.groupby("k").rolling(2),
                   df.groupby("k").expanding()):
        assert isinstance(window.parallel, WindowParallelAccessor)
    # A column named "parallel" stays reachable by item access.
    pd.testing.assert_series_equal(df.rolling(2)["parallel"].sum(), df["parallel"].rolling(2).sum())
