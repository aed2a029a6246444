"""I/O-bound functions against a real HTTP server on 127.0.0.1: many
threads, and ``async def`` functions with bounded concurrency."""

from __future__ import annotations

import asyncio
import threading
import time

import joblib
import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from tests.helpers import ctrl_c_reaches_python
from tests.slow_server import get, get_async, slow_server

LATENCY = 0.05  # seconds the server takes per request
ROWS = 400


@pytest.fixture(scope="module")
def server():
    with slow_server(LATENCY) as base:
        yield base


def _client_sockets(base: str) -> int:
    """Open client-side connections to the server (the server, running in
    this process too, has its own side, which it closes in its own time)."""
    port = int(base.rsplit(":", 1)[1])
    return sum(1 for c in psutil.Process().net_connections(kind="inet")
               if c.raddr and c.raddr.port == port)


def _library_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pandas_parallel")]


def _expected(keys: pd.Series) -> pd.Series:
    """What fetching each key one by one returns (the server echoes it)."""
    return keys.map(lambda k: f"echo:{k}")


@pytest.fixture
def keys():
    return pd.Series([f"item-{i}" for i in range(ROWS)], name="key")


def test_serial_fetch_matches_the_expected_echo(server, keys):
    subset = keys.head(10)
    pd.testing.assert_series_equal(subset.map(lambda k: get(server, k)), _expected(subset))


def test_many_threads_fetch_concurrently(server, keys):
    started = time.monotonic()
    result = keys.parallel(backend="threading", n_jobs=50).map(lambda k: get(server, k))
    elapsed = time.monotonic() - started
    pd.testing.assert_series_equal(result, _expected(keys))
    assert elapsed < ROWS * LATENCY / 10, f"{elapsed:.2f}s is not under a tenth of serial"
    assert _library_threads() == []
    assert _client_sockets(server) == 0


def test_joblib_parallel_config_selects_threads(server, keys):
    started = time.monotonic()
    with joblib.parallel_config(backend="threading", n_jobs=50):
        result = keys.parallel.map(lambda k: get(server, k))
    assert time.monotonic() - started < ROWS * LATENCY / 10
    pd.testing.assert_series_equal(result, _expected(keys))


def test_threads_need_no_pickling(server, keys):
    lock = threading.Lock()  # unpicklable, fine for threads

    def guarded(key):
        with lock:
            return f"echo:{key}"

    pd.testing.assert_series_equal(
        keys.parallel(backend="threading", n_jobs=8).map(guarded), _expected(keys))


def test_async_functions_run_with_bounded_concurrency(server, keys):
    in_flight = peak = 0

    async def fetch(key):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await get_async(server, key)
        finally:
            in_flight -= 1

    started = time.monotonic()
    result = keys.parallel.map(fetch, concurrency=100)
    elapsed = time.monotonic() - started
    pd.testing.assert_series_equal(result, _expected(keys))
    assert pandas_parallel.last_run() == pandas_parallel.Run("async", 100)
    assert elapsed < ROWS * LATENCY / 10, f"{elapsed:.2f}s is not under a tenth of serial"
    assert peak == 100
    assert _library_threads() == []
    assert _client_sockets(server) == 0


def test_async_apply_and_groupby_apply(server):
    df = pd.DataFrame({"store": ["a", "b", "a", "c"], "sku": ["x1", "x2", "x3", "x4"]})

    async def row(r):
        return await get_async(server, r["sku"])

    async def group(g):
        return len(await get_async(server, g.name))

    pd.testing.assert_series_equal(df.parallel.apply(row, axis=1),
                                   df.apply(lambda r: f"echo:{r['sku']}", axis=1))
    pd.testing.assert_series_equal(
        df.groupby("store")[["sku"]].parallel.apply(group),
        df.groupby("store")[["sku"]].apply(lambda g: len(f"echo:{g.name}")))
    assert pandas_parallel.last_run().backend == "async"


def test_last_run_says_async_after_each_kind_of_async_call(server):
    """Whatever ran before, an async call is recorded as one (a rolling
    apply's and a map's used to report the call before, or serial)."""
    async def first(window):
        await asyncio.sleep(0)
        return float(window.iloc[0])

    s = pd.Series(np.arange(40.0))
    s.parallel(n_jobs=2, chunk_size=10, serial_fallback=False).map(lambda v: v)
    assert pandas_parallel.last_run().backend != "serial"
    pd.testing.assert_series_equal(s.rolling(3).parallel.apply(first),
                                   s.rolling(3).apply(lambda w: float(w.iloc[0])))
    assert pandas_parallel.last_run() == pandas_parallel.Run("async", 100)
    s.parallel.map(lambda v: v)
    assert pandas_parallel.last_run().backend == "serial"

    async def fetch(v):
        return await get_async(server, str(v))

    s.parallel(concurrency=7).map(fetch)
    assert pandas_parallel.last_run() == pandas_parallel.Run("async", 7)
    s.parallel.map(fetch, concurrency=3)
    assert pandas_parallel.last_run() == pandas_parallel.Run("async", 3)


def test_async_works_inside_a_running_event_loop(server, keys):
    async def fetch(key):
        return await get_async(server, key)

    async def notebook_cell():  # like a Jupyter cell: a loop is already running
        return keys.head(20).parallel.map(fetch)

    pd.testing.assert_series_equal(asyncio.run(notebook_cell()), _expected(keys.head(20)))


def test_async_errors_name_the_row_and_cancel_the_rest(server, keys):
    started_calls = []

    async def fetch(key):
        started_calls.append(key)
        if key == "item-3":
            raise ConnectionError("refused")
        return await get_async(server, key)

    with pytest.raises(ConnectionError) as info:
        keys.parallel.map(fetch, concurrency=4)
    assert "item-3" in "\n".join(info.value.__notes__)
    assert len(started_calls) < 20  # the rest were never started


def test_async_timeout_fails_the_call_that_never_returns(keys):
    async def sometimes_hangs(key):
        if key == "item-7":
            await asyncio.Event().wait()  # never set: never returns
        return key

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=0\.3.*item-7"):
        keys.head(20).parallel(timeout=0.3).map(sometimes_hangs)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="timeout"):
        pandas_parallel.config(timeout=-1)


def test_thread_timeout_fails_the_call_that_never_returns(keys):
    release = threading.Event()

    def sometimes_hangs(key):
        if key == "item-5":
            release.wait(timeout=30)  # stands in for a call that never returns
        return key

    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"timeout=0\.3"):
            keys.head(40).parallel(backend="threading", n_jobs=4, timeout=0.3,
                                   serial_fallback=False, chunk_size=1).map(sometimes_hangs)
        assert time.monotonic() - started < 5
    finally:
        release.set()  # let the stuck thread finish


def test_async_progress_bar_counts_completed_calls(capsys):
    async def quick(value):
        await asyncio.sleep(0)
        return value

    pd.Series(range(50)).parallel(progress=True).map(quick)
    err = capsys.readouterr().err
    assert "map (async)" in err and "50/50" in err


@pytest.mark.parametrize("mode", ["async", "threads"])
def test_ctrl_c_stops_async_and_thread_runs(mode):
    import os
    import signal
    import subprocess
    import sys

    from tests.test_subprocesses import _read_lines_until, stop_leftover

    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, script, mode], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=ctrl_c_reaches_python)
    try:
        _read_lines_until(proc, lambda ls: sum(x.startswith("worker") for x in ls) >= 2,
                          timeout=60)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - sent < 2.0
        assert "interrupted" in proc.stdout.read()
    finally:
        stop_leftover(proc)


async def _reciprocal_async(x):
    await asyncio.sleep(0)
    return np.float64(1.0) / np.float64(x)


def test_async_calls_see_the_callers_numpy_error_state():
    """The calls run on an event loop in a thread of its own, which starts
    with numpy's defaults unless it is given the caller's context."""
    s = pd.Series([1.0, 0.0, 2.0])
    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            s.map(lambda x: np.float64(1.0) / np.float64(x))
        with pytest.raises(FloatingPointError):
            s.parallel.map(_reciprocal_async)
