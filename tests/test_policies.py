"""The ETL options: per-worker setup (``initializer``), row-level errors
(``errors="coerce"``), timeouts in worker processes, and retries.

Each is checked against plain pandas on the real backends (forked, pool,
threads), with the backend that ran asserted by the ``forced`` fixture or
by ``last_run()``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings

import numpy as np
import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pandas_parallel
from pandas_parallel import InitializerError, RowErrorsWarning
from pandas_parallel.backends import forked
from tests.conftest import worker_processes
from tests.helpers import assert_same

PARENT = os.getpid()
fixture_settings = settings(max_examples=15,
                            suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- per-worker setup ----------------------------------------------------------------
MODEL: dict = {}
THREAD_MODEL = threading.local()


def load_model(directory, scale):
    """Writes one file per run, named by process and thread, so the test
    can count where the initializer ran."""
    MODEL.update(scale=scale, pid=os.getpid())
    THREAD_MODEL.scale = scale
    name = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    open(os.path.join(directory, name), "w").close()


def score(row):
    # The model this process loaded itself, not one inherited by a fork.
    if MODEL.get("pid") != os.getpid():
        raise RuntimeError("the initializer did not run in this process")
    return row["a"] * MODEL["scale"] + os.getpid() * 0


def score_in_thread(row):
    return row["a"] * THREAD_MODEL.scale  # AttributeError if not set up in this thread


def runs_of_setup(directory) -> list[tuple[int, int]]:
    return [tuple(map(int, name.split("-")[:2])) for name in os.listdir(directory)]


def test_initializer_runs_once_in_each_worker_process(forced, forced_backend, tmp_path):
    df = pd.DataFrame({"a": range(40)})
    expected = df.apply(lambda row: row["a"] * 3, axis=1)
    got = df.parallel(initializer=load_model, initargs=(str(tmp_path), 3)).apply(score, axis=1)
    assert pandas_parallel.last_run().backend == forced_backend
    assert_same(expected, got)
    runs = runs_of_setup(tmp_path)
    processes = [pid for pid, _ in runs]
    assert len(processes) == len(set(processes)), "ran twice in one process"
    assert PARENT in processes  # this process runs it before any row of its own
    assert len(set(processes) - {PARENT}) >= 1  # and each worker that ran chunks


def test_kept_workers_keep_their_setup_for_the_next_call(forced, forced_backend, tmp_path):
    """The warm pool's workers, and forked ones kept from the first call."""
    df = pd.DataFrame({"a": range(20)})
    call = df.parallel(initializer=load_model, initargs=(str(tmp_path), 2))
    call.apply(score, axis=1)
    first = sorted(runs_of_setup(tmp_path))
    assert_same(df.apply(lambda row: row["a"] * 2, axis=1), call.apply(score, axis=1))
    assert sorted(runs_of_setup(tmp_path)) == first
    # Other arguments are another setup: it runs again.
    df.parallel(initializer=load_model, initargs=(str(tmp_path), 5)).apply(score, axis=1)
    assert len(runs_of_setup(tmp_path)) > len(first)


NOTEBOOK_CELL = """
MODEL = {}

def load(weight):
    MODEL["weight"] = weight

def score(row):
    return row["a"] * MODEL["weight"]
"""


def test_setup_of_functions_defined_in_a_notebook_holds_on_every_call(forced):
    """Functions from a notebook or ``__main__`` reach workers by value, with
    a new copy of their globals on each call: the setup runs again."""
    cell = {"__name__": "__main__"}
    exec(NOTEBOOK_CELL, cell)
    df = pd.DataFrame({"a": range(12)})
    expected = df.apply(lambda row: row["a"] * 1.5, axis=1)
    for _ in range(3):
        got = df.parallel(initializer=cell["load"], initargs=(1.5,)).apply(
            cell["score"], axis=1)
        assert_same(expected, got)


def test_initializer_runs_once_per_thread(tmp_path):
    df = pd.DataFrame({"a": range(60)})
    got = df.parallel(backend="threading", n_jobs=3, chunk_size=2, serial_fallback=False,
                      initializer=load_model, initargs=(str(tmp_path), 4)
                      ).apply(score_in_thread, axis=1)
    assert pandas_parallel.last_run().backend == "threads"
    assert_same(df.apply(lambda row: row["a"] * 4, axis=1), got)
    threads = [thread for _, thread in runs_of_setup(tmp_path)]
    assert len(threads) == len(set(threads)) and len(threads) >= 2


def broken_model(directory):
    raise FileNotFoundError(f"no model in {directory}")


def only_in_this_process(parent):
    if os.getpid() != parent:
        raise FileNotFoundError("the model is on this machine's disk only")


def record_row(row, directory):
    open(os.path.join(directory, f"row-{row.name}"), "w").close()
    return row["a"]


def test_a_failing_initializer_is_a_clear_error_before_any_row(tmp_path):
    df = pd.DataFrame({"a": range(20)})
    with pytest.raises(InitializerError, match=r"broken_model.*FileNotFoundError") as info:
        df.parallel(initializer=broken_model, initargs=(str(tmp_path),)
                    ).apply(record_row, axis=1, args=(str(tmp_path),))
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert os.listdir(tmp_path) == []


def test_an_initializer_failing_in_a_worker_names_the_worker(forced, forced_backend,
                                                             tmp_path):
    df = pd.DataFrame({"a": range(20)})
    with pytest.raises(InitializerError, match=r"only_in_this_process.*worker process \d+"):
        df.parallel(initializer=only_in_this_process, initargs=(os.getpid(),)
                    ).apply(record_row, axis=1, args=(str(tmp_path),))
    if forced_backend == "forked":  # a cold pool runs some chunks here while it starts
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad, error", [
    (dict(initializer=3), TypeError), (dict(initargs=[1]), TypeError),
    (dict(errors="ignore"), ValueError), (dict(retries=-1), ValueError),
    (dict(retries=1.5), TypeError), (dict(retry_on=OSError), TypeError),
    (dict(retry_on=(OSError, 3)), TypeError), (dict(retry_delay=-1), ValueError),
])
def test_options_are_checked_when_given(bad, error):
    with pytest.raises(error):
        pd.DataFrame({"a": [1]}).parallel(**bad)
    with pytest.raises(error):
        pandas_parallel.config(**bad)


# -- errors="coerce" -----------------------------------------------------------------
def fails_on(value) -> bool:
    return int(value) % 7 == 3


def row_or_fail(row):
    if fails_on(row["a"]):
        raise ValueError(f"bad row {row.name}")
    return row["a"] * 2 + row["b"]


def value_or_fail(x):
    if fails_on(x):
        raise KeyError(x)
    return f"<{x}>"


def stands_in(func, missing=None):
    """``func`` with the failing calls returning ``missing``: pandas' own
    answer for what errors="coerce" gives."""
    def instead(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:
            return missing
    return instead


def coerced(call):
    """Run ``call``; return its result and the RowErrorsWarnings issued."""
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        result = call()
    found = [w.message for w in issued if issubclass(w.category, RowErrorsWarning)]
    assert len(found) <= 1, "one warning per call"
    return result, (found[0] if found else None)


frames = st.integers(0, 30).flatmap(lambda n: st.builds(
    lambda a, b, start: pd.DataFrame({"a": a, "b": b}, index=range(start, start + n)),
    st.lists(st.integers(0, 50), min_size=n, max_size=n),
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n),
    st.integers(-5, 5)))


@fixture_settings
@given(df=frames)
def test_coerce_rows_like_pandas_with_missing_values(forced, df):
    # An empty frame has no row to fail: pandas' own answer.
    expected = df.apply(stands_in(row_or_fail) if len(df) else row_or_fail, axis=1)
    got, warning = coerced(lambda: df.parallel(errors="coerce").apply(row_or_fail, axis=1))
    assert_same(expected, got)
    failing = [label for label, a in zip(df.index, df["a"]) if fails_on(a)]
    if not failing:
        assert warning is None
        return
    assert [label for label, _ in warning.failures] == failing
    assert all(isinstance(exc, ValueError) for _, exc in warning.failures)
    assert f"raised for {len(failing)} row" in str(warning)


@fixture_settings
@given(df=frames)
def test_coerce_elements_like_pandas(forced, df):
    s = df["a"]
    got, warning = coerced(lambda: s.parallel(errors="coerce").map(value_or_fail))
    assert_same(s.map(stands_in(value_or_fail)), got)
    failing = [label for label, a in s.items() if fails_on(a)]
    assert [label for label, _ in (warning.failures if warning else [])] == failing
    got, warning = coerced(lambda: df.parallel(errors="coerce").map(value_or_fail))
    assert_same(df.map(stands_in(value_or_fail)), got)
    cells = [(row, column) for row, values in df.iterrows() for column, v in values.items()
             if fails_on(v)]
    assert [label for label, _ in (warning.failures if warning else [])] == cells


def column_or_fail(column):
    if column.name == "b":
        raise ArithmeticError("column b")
    return column.sum()


def test_coerce_columns_names_the_column(forced):
    df = pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5, 6]})
    got, warning = coerced(lambda: df.parallel(errors="coerce").apply(column_or_fail))
    assert_same(df.apply(stands_in(column_or_fail)), got)
    assert [label for label, _ in warning.failures] == ["b"]


def group_total(group):
    if group.name % 5 == 0:
        raise ZeroDivisionError(f"group {group.name}")
    return group["v"].sum()


def group_frame(group):
    if group.name % 5 == 0:
        raise ZeroDivisionError(f"group {group.name}")
    return group[["v"]] * 2


def group_rows(column):
    if (column.index % 10 == 0).any():  # the groups holding rows 0, 10, ...
        raise LookupError("no")
    return column * 2


@pytest.fixture
def grouped():
    return pd.DataFrame({"k": np.arange(60) % 12, "v": np.arange(60.0)})


@pytest.mark.parametrize("func", [group_total, group_frame])
def test_coerce_groupby_apply_missing_or_left_out(forced, grouped, func):
    gb = grouped.groupby("k")
    got, warning = coerced(lambda: gb.parallel(errors="coerce").apply(func))
    assert_same(gb.apply(stands_in(func)), got)
    assert [label for label, _ in warning.failures] == [0, 5, 10]
    if func is group_frame:
        assert "left out of it" in str(warning)


def test_coerce_groupby_transform_agg_and_filter(forced, grouped):
    gb = grouped.groupby("k")["v"]
    got, warning = coerced(lambda: gb.parallel(errors="coerce").transform(group_rows))
    assert_same(gb.transform(stands_in(group_rows)), got)
    failing = sorted({k for i, k in enumerate(grouped["k"]) if i % 10 == 0})
    assert [label for label, _ in warning.failures] == failing
    got, warning = coerced(lambda: gb.parallel(errors="coerce").agg(group_rows_sum))
    assert_same(gb.agg(stands_in(group_rows_sum)), got)
    assert [label for label, _ in warning.failures] == failing
    got, warning = coerced(lambda: grouped.groupby("k").parallel(errors="coerce")
                           .filter(keep_group))
    assert_same(grouped.groupby("k").filter(stands_in(keep_group, False)), got)
    assert [label for label, _ in warning.failures] == [0, 5, 10]
    assert "as if it returned False" in str(warning)


def group_rows_sum(column):
    return group_rows(column).sum()


def keep_group(group):
    if group.name % 5 == 0:
        raise ValueError("cannot tell")
    return group["v"].mean() > 20


def test_coerce_on_threads_and_serially(grouped):
    df = grouped
    expected = df.apply(stands_in(row_or_fail_v), axis=1)
    for options in (dict(backend="threading", chunk_size=7, serial_fallback=False),
                    dict(backend="sequential"), dict()):
        call = df.parallel(errors="coerce", **options)
        got, warning = coerced(lambda: call.apply(row_or_fail_v, axis=1))  # noqa: B023
        assert_same(expected, got)
        assert [label for label, _ in warning.failures] == [3, 10, 17, 24, 31, 38, 45, 52, 59]


def row_or_fail_v(row):
    if fails_on(row["v"]):
        raise ValueError("v")
    return row["v"]


def test_coerce_keeps_no_failures_between_calls(forced):
    df = pd.DataFrame({"a": range(10), "b": 0.0})
    _, first = coerced(lambda: df.parallel(errors="coerce").apply(row_or_fail, axis=1))
    _, second = coerced(lambda: df.parallel(errors="coerce").apply(row_or_fail, axis=1))
    assert [label for label, _ in first.failures] == [3]
    assert [label for label, _ in second.failures] == [3]
    _, none = coerced(lambda: df.head(3).parallel(errors="coerce").apply(row_or_fail, axis=1))
    assert none is None


def test_coerce_is_refused_where_pandas_has_no_missing_value():
    s = pd.Series(np.arange(10.0))
    with pytest.raises(ValueError, match="errors='coerce' is not available for rolling"):
        s.rolling(3).parallel(errors="coerce").apply(lambda w: w.sum())
    with pytest.raises(ValueError, match="not available for map_partitions"):
        s.parallel(errors="coerce").map_partitions(lambda part: part)


async def async_value_or_fail(x):
    await asyncio.sleep(0.001 * (x % 3))
    return value_or_fail(x)


def test_coerce_async_functions():
    s = pd.Series(range(25))
    got, warning = coerced(lambda: s.parallel(errors="coerce").map(async_value_or_fail))
    assert_same(s.map(stands_in(value_or_fail)), got)
    assert [label for label, _ in warning.failures] == [3, 10, 17, 24]


def test_the_warning_points_at_the_callers_line(forced):
    df = pd.DataFrame({"a": range(5), "b": 0.0})
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        df.parallel(errors="coerce").apply(row_or_fail, axis=1)
    [warning] = [w for w in issued if w.category is RowErrorsWarning]
    assert warning.filename == __file__


# -- timeouts in worker processes ----------------------------------------------------
def hangs_on_13(row):
    if row["a"] == 13:
        time.sleep(60)
    return row["a"]


def stuck_on_13(row, parent):
    """Stuck where the timer cannot reach it (as native code that does not
    return to Python would be); never in the test process itself."""
    if row["a"] == 13:
        if os.getpid() == parent:
            raise AssertionError("meant for a worker process: warm the pool first")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return row["a"]


def warm_pool(forced_backend):
    """A pool that is starting runs chunks in this process: start it first."""
    if forced_backend == "pool":
        pd.DataFrame({"a": range(4)}).parallel().apply(lambda r: r["a"], axis=1)
        assert pandas_parallel.last_run().backend == "pool"


def no_stray_workers():
    """Forked workers are all stopped, or kept for the next call (those
    only: the stuck one is gone)."""
    if pandas_parallel.last_run().backend == "forked":
        kept = {w.pid for w in forked.CREW.workers}
        assert len(kept) <= 2
        _, alive = psutil.wait_procs(
            [p for p in worker_processes() if p.pid not in kept], timeout=10)
        assert not alive


def test_timeout_names_the_row_and_fails_fast(forced, forced_backend):
    df = pd.DataFrame({"a": range(20)})
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=0\.5") as info:
        df.parallel(timeout=0.5).apply(hangs_on_13, axis=1)
    assert time.monotonic() - began < 10
    assert "the Series labelled 13" in "".join(info.value.__notes__)
    no_stray_workers()


def _hangs_on_5(row):
    if row.name == 5:
        time.sleep(60)
    return row["a"]


def test_a_timeout_in_rows_run_in_this_process_names_the_row():
    """The first rows run here, timed, before any worker is asked: a call
    stuck there fails as it would in a worker, naming its row."""
    df = pd.DataFrame({"a": np.arange(200)})
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=1\.0") as info:
        df.parallel(timeout=1.0, n_jobs=2).apply(_hangs_on_5, axis=1)
    assert time.monotonic() - began < 10
    notes = "".join(info.value.__notes__)
    assert "(run in this process)" in notes and "the Series labelled 5" in notes


def test_timeout_with_coerce_goes_on(forced, forced_backend):
    df = pd.DataFrame({"a": range(20)})
    got, warning = coerced(lambda: df.parallel(timeout=0.5, errors="coerce")
                           .apply(hangs_on_13, axis=1))
    assert_same(df.apply(lambda r: None if r["a"] == 13 else r["a"], axis=1), got)
    [(label, exc)] = warning.failures
    assert label == 13 and isinstance(exc, TimeoutError)


def test_a_call_the_timer_cannot_interrupt_stops_its_worker(forced, forced_backend):
    df = pd.DataFrame({"a": range(20)})
    warm_pool(forced_backend)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"could not be interrupted.*rows \[13\]"):
        df.parallel(timeout=0.3).apply(stuck_on_13, axis=1, args=(os.getpid(),))
    assert time.monotonic() - began < 15
    _, alive = psutil.wait_procs(
        [p for p in worker_processes() if forced_backend == "forked"], timeout=10)
    assert not alive
    # The next call works (a pool is started anew).
    assert_same(df.apply(lambda r: r["a"], axis=1), df.parallel().apply(lambda r: r["a"], axis=1))


def test_a_stuck_forked_worker_is_replaced_with_coerce(forced, forced_backend):
    if forced_backend != "forked":
        pytest.skip("the pool's workers cannot be replaced one by one: the call fails")
    df = pd.DataFrame({"a": range(20)})
    began = time.monotonic()
    got, warning = coerced(lambda: df.parallel(timeout=0.3, errors="coerce")
                           .apply(stuck_on_13, axis=1, args=(os.getpid(),)))
    assert time.monotonic() - began < 15
    assert_same(df.apply(lambda r: None if r["a"] == 13 else r["a"], axis=1), got)
    [(label, exc)] = warning.failures
    assert label == 13 and isinstance(exc, TimeoutError)
    assert "could not be interrupted" in str(exc)
    no_stray_workers()


def test_a_timeout_here_puts_another_timer_back():
    """pytest-timeout, or the user's own code, may have a timer running in
    this process: a call's timeout interrupts the call and leaves it running."""
    fired = []
    handler = lambda *_: fired.append(True)  # noqa: E731
    saved_timer = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's
    saved_handler = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 50)
    try:
        with pytest.raises(TimeoutError):
            pd.Series([1, 2]).parallel(backend="sequential", timeout=0.2).map(
                lambda x: time.sleep(5))
        assert 45 < signal.getitimer(signal.ITIMER_REAL)[0] < 50
        assert signal.getsignal(signal.SIGALRM) is handler and not fired
    finally:
        signal.signal(signal.SIGALRM, saved_handler)
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)


def test_timeout_is_refused_on_a_cluster_backend():
    pytest.importorskip("dask.distributed")
    with pytest.raises(ValueError, match="timeout= is not available on the dask"):
        pd.DataFrame({"a": [1, 2]}).parallel(backend="dask", timeout=1).apply(
            lambda r: r, axis=1)


# -- retries -------------------------------------------------------------------------
class Flaky:
    """Fails the first ``times`` tries of each element, counting tries in
    files (so worker processes count alike)."""

    def __init__(self, directory, times, error=ConnectionError):
        self.directory, self.times, self.error = directory, times, error

    def __call__(self, x):
        path = os.path.join(self.directory, f"{x}-{time.monotonic_ns()}-{os.getpid()}")
        tries = sum(name.startswith(f"{x}-") for name in os.listdir(self.directory))
        open(path, "w").close()
        if tries < self.times:
            raise self.error(f"try {tries + 1} of {x}")
        return x * 10


@pytest.mark.parametrize("backend", ["forked", "threads"])
def test_retries_until_it_succeeds(tmp_path, backend):
    if backend == "forked":
        from tests.conftest import ready_to_fork

        ready_to_fork()
    s = pd.Series(range(12))
    options = dict(backend="threading") if backend == "threads" else {}
    got = s.parallel(n_jobs=2, chunk_size=3, serial_fallback=False, retries=2,
                     retry_delay=0.001, **options).map(Flaky(str(tmp_path), 2))
    assert pandas_parallel.last_run().backend == backend
    assert_same(s * 10, got)
    assert len(os.listdir(tmp_path)) == 12 * 3


def test_retries_give_up_with_the_last_error_and_only_on_retry_on(tmp_path):
    s = pd.Series(range(4))
    with pytest.raises(ConnectionError, match=r"try 2 of \d"):
        s.parallel(backend="threading", chunk_size=1, serial_fallback=False, retries=1,
                   retry_delay=0).map(Flaky(str(tmp_path), 5))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(KeyError):
        s.parallel(backend="threading", chunk_size=1, serial_fallback=False, retries=3,
                   retry_on=(ConnectionError,), retry_delay=0
                   ).map(Flaky(str(other), 1, KeyError))
    tried = [name.split("-")[0] for name in os.listdir(other)]
    assert tried and len(tried) == len(set(tried))  # each at most once: not retried


def test_retries_show_in_the_progress_bar(tmp_path, capsys):
    s = pd.Series(range(8))
    s.parallel(backend="threading", n_jobs=2, chunk_size=2, serial_fallback=False,
               retries=1, retry_delay=0, progress=True).map(Flaky(str(tmp_path), 1))
    assert "retries=8" in capsys.readouterr().err


def test_retries_then_coerce(tmp_path):
    s = pd.Series(range(6))
    got, warning = coerced(lambda: s.parallel(
        backend="threading", chunk_size=2, serial_fallback=False, retries=1,
        retry_delay=0, errors="coerce").map(Flaky(str(tmp_path), 3)))
    assert_same(s.map(lambda x: None), got)
    assert len(warning.failures) == 6


class AsyncFlaky:
    def __init__(self, times):
        self.times, self.tries = times, {}

    async def __call__(self, x):
        self.tries[x] = self.tries.get(x, 0) + 1
        await asyncio.sleep(0)
        if self.tries[x] <= self.times:
            raise ConnectionError(x)
        return x + 0.5


def test_retries_for_async_functions():
    s = pd.Series(range(10))
    flaky = AsyncFlaky(2)
    got = s.parallel(retries=2, retry_delay=0.001).map(flaky)
    assert_same(s + 0.5, got)
    assert set(flaky.tries.values()) == {3}


def test_engine_takes_the_etl_options(tmp_path):
    if not pandas_parallel._compat.PANDAS_3:
        pytest.skip("pandas 2.2 has no engine= interface")
    df = pd.DataFrame({"a": range(12), "b": 1.0})
    engine = pandas_parallel.engine(errors="coerce", chunk_size=3, serial_fallback=False,
                                    initializer=load_model, initargs=(str(tmp_path), 1))
    got, warning = coerced(lambda: df.apply(row_or_fail, axis=1, engine=engine))
    assert_same(df.apply(stands_in(row_or_fail), axis=1), got)
    assert [label for label, _ in warning.failures] == [3, 10]
    assert runs_of_setup(tmp_path)
