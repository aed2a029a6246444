"""GroupBy ``.parallel`` returns exactly what pandas' GroupBy returns.

Forced parallel execution (two workers, one group per chunk unless the
test draws otherwise, no serial fallback) over key kinds, group counts,
skew, options and result shapes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pandas_parallel
from tests.helpers import check_like_pandas

pytestmark = pytest.mark.usefixtures("forced")

KEYS = ["column", "two_columns", "series", "array", "function", "level",
        "grouper_freq", "categorical", "with_nan"]


@st.composite
def grouped_frames(draw):
    n = draw(st.integers(1, 30))
    n_groups = draw(st.sampled_from([1, 2, 3, 5, n]))
    skewed = draw(st.booleans())
    if skewed:  # one huge group among small ones
        groups = [0 if i < n * 3 // 4 else i % max(n_groups, 1) for i in range(n)]
    else:
        groups = draw(st.lists(st.integers(0, max(n_groups - 1, 0)), min_size=n, max_size=n))
    nan_rows = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    df = pd.DataFrame({
        "k1": [f"g{g}" for g in groups],
        "k2": [g % 2 for g in groups],
        "kn": [None if nan else f"g{g}" for g, nan in zip(groups, nan_rows)],
        "kc": pd.Categorical([f"c{g % 3}" for g in groups], categories=["c2", "c0", "c1"]),
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta([g * 30 for g in groups], unit="min"),
        "v": draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)),
        "w": draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n, max_size=n)),
    })
    index_kind = draw(st.sampled_from(["range", "labels", "duplicates"]))
    if index_kind == "labels":
        df.index = pd.Index([f"r{i}" for i in range(n)], name="row")
    elif index_kind == "duplicates":
        df.index = pd.Index([i // 3 for i in range(n)], name="row")
    return df


def make_groupby(df, key, sort, dropna, as_index, group_keys, observed):
    options = dict(sort=sort, dropna=dropna, as_index=as_index, group_keys=group_keys)
    if key == "column":
        return df.groupby("k1", **options)
    if key == "two_columns":
        return df.groupby(["k1", "k2"], **options)
    if key == "series":
        return df.groupby(df["k2"].rename("parity"), **options)
    if key == "array":
        return df.groupby(df["k1"].to_numpy(), **options)
    if key == "function":
        return df.groupby(lambda label: len(str(label)) % 2, **options)
    if key == "level":
        return df.groupby(level=0, **options)
    if key == "grouper_freq":
        return df.groupby(pd.Grouper(key="ts", freq="1h"), **options)
    if key == "categorical":
        return df.groupby("kc", observed=observed, **options)
    if key == "with_nan":
        return df.groupby("kn", **options)
    raise ValueError(key)


gb_options = dict(key=st.sampled_from(KEYS), sort=st.booleans(), dropna=st.booleans(),
                  as_index=st.booleans(), group_keys=st.booleans(), observed=st.booleans(),
                  chunk_size=st.sampled_from([1, 2, 5]))

FRAME_APPLY = {
    "length": lambda g: len(g),
    "float_or_none": lambda g: None if len(g) % 2 else float(g["v"].sum()),
    "like_indexed": lambda g: g["v"] * 2,
    "head_series": lambda g: g["v"].head(1),
    "fixed_series": lambda g: pd.Series({"n": len(g), "total": g["w"].sum()}),
    "head_frame": lambda g: g[["v", "w"]].head(2),
    "identity_frame": lambda g: g[["v", "w"]],
    "none": lambda g: None,
    "raises_on_big": lambda g: 1 // 0 if len(g) > 20 else len(g),
}

SERIES_AGG = {
    "sum": lambda s: s.sum(),
    "spread": lambda s: s.max() - s.min(),
    "float_len": lambda s: float(len(s)),
    "int_or_float": lambda s: len(s) if len(s) % 2 else len(s) / 2,
    "first_as_str": lambda s: str(s.iloc[0]),
}

TRANSFORMS = {
    "demean": lambda s: s - s.mean(),
    "cumsum": lambda s: s.cumsum(),
    "broadcast_scalar": lambda s: len(s),
    "rank": lambda s: s.rank(),
}

FILTERS = {
    "bigger_than_one": lambda g: len(g) > 1,
    "even_total": lambda g: g["v"].sum() % 2 == 0,
}


@given(df=grouped_frames(), name=st.sampled_from(sorted(FRAME_APPLY)), **gb_options)
def test_frame_groupby_apply(df, name, key, sort, dropna, as_index, group_keys, observed,
                             chunk_size):
    func = FRAME_APPLY[name]
    make = lambda: make_groupby(df, key, sort, dropna, as_index, group_keys, observed)  # noqa: E731
    check_like_pandas(lambda: make().apply(func),
                      lambda: make().parallel(chunk_size=chunk_size).apply(func))


@given(df=grouped_frames(), name=st.sampled_from(sorted(SERIES_AGG)), **gb_options)
def test_series_groupby_agg_and_apply(df, name, key, sort, dropna, as_index, group_keys,
                                      observed, chunk_size):
    func = SERIES_AGG[name]
    make = lambda: make_groupby(df, key, sort, dropna, True, group_keys, observed)["w"]  # noqa: E731
    check_like_pandas(lambda: make().agg(func),
                      lambda: make().parallel(chunk_size=chunk_size).agg(func))
    check_like_pandas(lambda: make().apply(func),
                      lambda: make().parallel(chunk_size=chunk_size).apply(func))


@given(df=grouped_frames(), name=st.sampled_from(sorted(SERIES_AGG)), **gb_options)
def test_frame_groupby_agg_with_selection(df, name, key, sort, dropna, as_index,
                                          group_keys, observed, chunk_size):
    func = SERIES_AGG[name]
    make = lambda: make_groupby(df, key, sort, dropna, as_index, group_keys,  # noqa: E731
                                observed)[["v", "w"]]
    check_like_pandas(lambda: make().agg(func),
                      lambda: make().parallel(chunk_size=chunk_size).agg(func))


@given(df=grouped_frames(), name=st.sampled_from(sorted(TRANSFORMS)),
       selection=st.sampled_from(["w", ["v", "w"]]), **gb_options)
def test_groupby_transform(df, name, selection, key, sort, dropna, as_index, group_keys,
                           observed, chunk_size):
    func = TRANSFORMS[name]
    make = lambda: make_groupby(df, key, sort, dropna, as_index, group_keys,  # noqa: E731
                                observed)[selection]
    check_like_pandas(lambda: make().transform(func),
                      lambda: make().parallel(chunk_size=chunk_size).transform(func))


@given(df=grouped_frames(), name=st.sampled_from(sorted(FILTERS)),
       filter_dropna=st.booleans(), **gb_options)
def test_groupby_filter(df, name, filter_dropna, key, sort, dropna, as_index, group_keys,
                        observed, chunk_size):
    func = FILTERS[name]
    make = lambda: make_groupby(df, key, sort, dropna, as_index, group_keys, observed)  # noqa: E731
    check_like_pandas(lambda: make().filter(func, dropna=filter_dropna),
                      lambda: make().parallel(chunk_size=chunk_size).filter(
                          func, dropna=filter_dropna))
    series = lambda: make_groupby(df, key, sort, dropna, True, group_keys, observed)["v"]  # noqa: E731
    check_like_pandas(lambda: series().filter(lambda s: s.sum() > 0),
                      lambda: series().parallel.filter(lambda s: s.sum() > 0))


# -- explicit cases -----------------------------------------------------------
def test_many_small_groups_use_few_chunks():
    df = pd.DataFrame({"k": np.arange(10_000) % 2_000, "v": np.arange(10_000)})
    with pandas_parallel.config(chunk_size=None):
        result = df.groupby("k")[["v"]].parallel.apply(lambda g: g["v"].median())
    pd.testing.assert_series_equal(result, df.groupby("k")[["v"]].apply(lambda g: g["v"].median()))


@pytest.mark.parametrize("as_index", [True, False])
@pytest.mark.parametrize("name", ["head_series", "like_indexed", "head_frame",
                                  "identity_frame"])
def test_apply_orders_rows_by_pandas_test_of_each_group(name, as_index):
    """pandas returns apply's rows in row order only when *every* group's
    result is indexed like the group, by its own test: a Series from a
    frame group never is. A chunk whose groups already lie in row order
    (here: labels "r0", "r1", "r10", ... sorted as strings) must not be
    mistaken for one that was put back in row order."""
    df = pd.DataFrame({"v": np.arange(12), "w": np.arange(12.0)},
                      index=pd.Index([f"r{i}" for i in range(12)], name="row"))
    func = FRAME_APPLY[name]
    make = lambda: df.groupby(level=0, as_index=as_index, group_keys=False)  # noqa: E731
    check_like_pandas(lambda: make().apply(func),
                      lambda: make().parallel(chunk_size=2).apply(func))


def test_one_huge_group_balances_around_it():
    from pandas_parallel.splitting import balanced_cuts

    weights = np.array([1] * 50 + [1000] + [1] * 50)
    cuts = balanced_cuts(weights, 4)
    assert (50, 51) in cuts  # the huge group alone
    assert cuts[0][0] == 0 and cuts[-1][1] == len(weights)
    assert all(a < b for a, b in cuts) and all(
        cuts[i][1] == cuts[i + 1][0] for i in range(len(cuts) - 1))


def test_string_names_and_named_aggregation_go_to_pandas():
    df = pd.DataFrame({"k": list("aab"), "v": [1, 2, 3]})
    gb = df.groupby("k")
    check_like_pandas(lambda: gb.agg("sum"), lambda: gb.parallel.agg("sum"))
    check_like_pandas(lambda: gb.agg(["sum", "max"]), lambda: gb.parallel.agg(["sum", "max"]))
    check_like_pandas(lambda: gb.agg(total=("v", "sum")),
                      lambda: gb.parallel.agg(total=("v", "sum")))
    check_like_pandas(lambda: gb.transform("mean"), lambda: gb.parallel.transform("mean"))


def test_unobserved_categories_and_empty_bins_stay_with_pandas():
    df = pd.DataFrame({"c": pd.Categorical(["x", "x", "z"], categories=["z", "y", "x"]),
                       "t": pd.to_datetime(["2020-01-01 00:10", "2020-01-01 00:20",
                                            "2020-01-01 03:00"]),
                       "v": [1, 2, 3]})
    check_like_pandas(lambda: df.groupby("c", observed=False)["v"].agg(lambda s: s.sum() + 1),
                      lambda: df.groupby("c", observed=False)["v"].parallel.agg(
                          lambda s: s.sum() + 1))
    check_like_pandas(
        lambda: df.groupby(pd.Grouper(key="t", freq="1h"))["v"].apply(len),
        lambda: df.groupby(pd.Grouper(key="t", freq="1h"))["v"].parallel.apply(len))


def test_all_groups_none_with_a_time_grouper_leaves_out_its_column(forced):
    """Found by hypothesis: a ``pd.Grouper(key=..., freq=...)`` groups chunks by
    carried keys, so each chunk's empty frame still held the key column."""
    df = pd.DataFrame({"ts": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 01:00"]),
                       "v": [0, 1], "w": [0.0, 1.0]})  # two hours, no empty bin
    for as_index in (True, False):
        make = lambda: df.groupby(pd.Grouper(key="ts", freq="1h"), as_index=as_index)  # noqa: E731,B023
        check_like_pandas(lambda: make().apply(lambda g: None),  # noqa: B023
                          lambda: make().parallel.apply(lambda g: None))  # noqa: B023
        assert pandas_parallel.last_run().backend != "serial"


CATEGORICAL_KEYS = pd.DataFrame({
    "A": pd.Categorical(["foo", "bar", "foo", "bar", "foo", "bar", "foo", "foo"],
                        categories=["bar", "foo", "qux"]),
    "B": pd.Categorical(["one", "one", "two", "three", "two", "two", "one", "three"],
                        categories=["one", "two", "three", "four"]),
    "C": np.arange(8.0),
})


@pytest.mark.parametrize("observed", [True, False])
@pytest.mark.parametrize("selection, method, func", [
    ("C", "agg", lambda s: s.max() - s.min()),
    (["C"], "agg", lambda s: s.max() - s.min()),
    ("C", "apply", lambda s: {"min": s.min(), "max": s.max()}),
], ids=["series_agg", "frame_agg", "series_apply_dict"])
def test_several_categorical_keys_with_unobserved_combinations(selection, method, func,
                                                                observed):
    """pandas 2.2 adds every unobserved combination of several categorical
    keys with observed=False (pandas' test_seriesgroupby_observed_apply_dict)."""
    def grouped():
        return CATEGORICAL_KEYS.groupby(["A", "B"], observed=observed)[selection]

    check_like_pandas(lambda: getattr(grouped(), method)(func),
                      lambda: getattr(grouped().parallel, method)(func))
