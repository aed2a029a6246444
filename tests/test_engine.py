"""pandas 3's ``engine=`` interface: ``engine=pandas_parallel.engine`` returns
what the default engine returns, over the accessor's equivalence cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pandas_parallel
from pandas_parallel import _compat
from tests.helpers import check_like_pandas
from tests.strategies import frames
from tests.test_equivalence import COLUMN_FUNCS, ELEMENT_FUNCS, ROW_FUNCS

pytestmark = pytest.mark.usefixtures("forced")
needs_pandas_3 = pytest.mark.skipif(not _compat.PANDAS_3,
                                    reason="the engine interface is pandas >= 3.0")

engine = pandas_parallel.engine


def _non_empty(frame: pd.DataFrame) -> bool:
    # pandas answers for empty frames itself, before calling any engine,
    # and not as its default engine does: nothing of ours to compare.
    return all(frame.shape)


@needs_pandas_3
@given(frame=frames(), name=st.sampled_from(sorted(ROW_FUNCS)), axis=st.sampled_from([0, 1]))
def test_apply(frame, name, axis):
    func = ROW_FUNCS[name] if axis == 1 else COLUMN_FUNCS.get(name, COLUMN_FUNCS["length"])
    if not _non_empty(frame):
        return
    check_like_pandas(lambda: frame.apply(func, axis=axis),
                      lambda: frame.apply(func, axis=axis, engine=engine))


@needs_pandas_3
@given(frame=frames(dtypes=["int64", "float64", "bool", "int8"]),
       name=st.sampled_from(["sum", "first", "twice"]), axis=st.sampled_from([0, 1]))
def test_apply_raw(frame, name, axis):
    func = {"sum": lambda a: a.sum(), "first": lambda a: a[0], "twice": lambda a: a * 2}[name]
    if not _non_empty(frame):
        return
    check_like_pandas(lambda: frame.apply(func, axis=axis, raw=True),
                      lambda: frame.apply(func, axis=axis, raw=True, engine=engine))


@needs_pandas_3
@given(frame=frames(), name=st.sampled_from(sorted(ELEMENT_FUNCS)),
       na_action=st.sampled_from([None, "ignore"]))
def test_series_map(frame, name, na_action):
    series = frame.iloc[:, 0].rename("values")
    func = ELEMENT_FUNCS[name]
    check_like_pandas(lambda: series.map(func, na_action=na_action),
                      lambda: series.map(func, na_action=na_action, engine=engine))


@needs_pandas_3
def test_extra_arguments_and_options_reach_the_call():
    df = pd.DataFrame({"a": np.arange(30), "b": np.arange(30.0)})

    def weigh(row, factor, shift=0):
        return row.a * factor + row.b + shift

    check_like_pandas(
        lambda: df.apply(weigh, axis=1, args=(2,), shift=1),
        lambda: df.apply(weigh, axis=1, args=(2,), shift=1, engine=engine(chunk_size=7)))
    check_like_pandas(lambda: df.a.map(lambda x, k: x * k, k=3),
                      lambda: df.a.map(lambda x, k: x * k, k=3, engine=engine(n_jobs=2)))


def test_engine_options_are_validated_when_given():
    with pytest.raises(TypeError, match="n_jobs"):
        engine(n_jobs="all")
    with pytest.raises(TypeError, match="unknown pandas_parallel option"):
        engine(jobs=2)
    assert repr(engine(n_jobs=2)) == "pandas_parallel.engine(n_jobs=2)"
    assert "pandas >= 3.0" in pandas_parallel.Engine.__doc__


@needs_pandas_3
def test_combinations_pandas_cannot_pass_are_pandas_errors():
    df = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(NotImplementedError, match="result_type"):
        df.apply(lambda r: r, axis=1, result_type="expand", engine=engine)
    with pytest.raises(NotImplementedError, match=r"pandas_parallel\.engine"):
        engine.__pandas_udf__.apply([1, 2], len, (), {}, engine, 0)


@needs_pandas_3
def test_runs_in_worker_processes():
    df = pd.DataFrame({"a": range(20)})
    import os

    pids = set(df.apply(lambda row: os.getpid(), axis=1, engine=engine))
    assert os.getpid() not in pids
