"""Never hang, never lose data: errors, crashes, bad input, clean-up, and a
progress bar that tells the truth. (Ctrl-C and a killed parent are in
test_subprocesses.py.)"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

import pandas_parallel
from pandas_parallel import UnpicklableFunctionError, WorkerCrashedError
from tests.conftest import fork_server_pid, worker_processes

pytestmark = pytest.mark.usefixtures("forced")


def _worker_pids() -> set[int]:
    """Worker processes (not the fork server, which outlives its workers)."""
    return {p.pid for p in worker_processes()} - {fork_server_pid()}


# -- the user's function raises ---------------------------------------------------
def test_error_has_original_type_the_failing_row_and_the_users_line():
    df = pd.DataFrame({"a": [1, 2, 0, 4]}, index=["w", "x", "y", "z"])

    def invert(row):
        return 1 / int(row["a"])  # the user's own line

    with pytest.raises(ZeroDivisionError) as info:
        df.parallel.apply(invert, axis=1)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "apply(axis=1) failed on chunk" in notes
    assert "'y'" in notes  # the failing row's label
    assert "return 1 / int(row[\"a\"])  # the user's own line" in str(info.value.__cause__)


def test_error_in_map_names_the_value_and_its_label():
    s = pd.Series([3, 5, 7], index=pd.Index([10, 20, 30], name="id"))
    with pytest.raises(KeyError) as info:
        s.parallel.map(lambda v: {3: "a", 7: "c"}[v])
    notes = "\n".join(info.value.__notes__)
    assert "value 5" in notes and "index label 20" in notes


def test_error_in_groupby_names_the_group():
    df = pd.DataFrame({"store": ["a", "b", "b", "c"], "v": [1, 2, 3, 4]})

    def check(group):
        if group.name == "b":
            raise ValueError("bad store")
        return len(group)

    with pytest.raises(ValueError, match="bad store") as info:
        df.groupby("store").parallel.apply(check)
    assert "DataFrame labelled 'b'" in "\n".join(info.value.__notes__)


def test_error_is_raised_without_waiting_for_other_chunks_and_pool_stays_warm(
        forced_backend):
    df = pd.DataFrame({"a": range(4)})
    df.parallel.apply(lambda row: row.a, axis=1)  # warm
    before = _worker_pids()

    def fail_fast_or_work(row):
        if row.a == 0:
            raise RuntimeError("boom")
        time.sleep(3)  # other chunks are slow
        return row.a

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="boom"), pandas_parallel.config(chunk_size=1):
        df.parallel.apply(fail_fast_or_work, axis=1)
    assert time.monotonic() - started < 2.5
    if forced_backend == "pool":
        assert _worker_pids() == before  # the same warm workers, not restarted
    else:  # workers still running a chunk are stopped; the next call forks anew
        assert _worker_pids() == set()
    pd.testing.assert_series_equal(df.parallel.apply(lambda r: r.a * 2, axis=1),
                                   df.apply(lambda r: r.a * 2, axis=1))


# -- a worker dies --------------------------------------------------------------------
def _crash_exit(value):
    os._exit(3)


def _crash_kill(value):
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_segfault(value):
    import ctypes
    import faulthandler

    # pytest's faulthandler, inherited by the worker, would print a fatal
    # error and every thread's stack over a passing run: the crash is meant.
    faulthandler.disable()
    ctypes.string_at(0)


@pytest.mark.parametrize("crash", [_crash_exit, _crash_kill, _crash_segfault],
                         ids=["os._exit", "SIGKILL", "segfault"])
def test_worker_death_is_a_clear_error_within_seconds(crash):
    """Run alone, the pool case starts cold: this process runs chunks itself
    while the workers start, so every chunk a worker takes dies."""
    parent = os.getpid()
    s = pd.Series(range(6))

    def maybe_crash(value):
        if os.getpid() != parent:
            crash(value)
        return value

    started = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        s.parallel.map(maybe_crash)
    assert time.monotonic() - started < 10
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "worker process died while running chunk" in message
    assert "smaller chunk_size or fewer n_jobs" in message
    pd.testing.assert_series_equal(s.parallel.map(lambda v: v + 1), s + 1)


# -- bad input ------------------------------------------------------------------------
def test_unpicklable_function_fails_before_any_work():
    lock = threading.Lock()
    calls = []

    def uses_lock(value):
        calls.append(value)
        with lock:
            return value

    with (pandas_parallel.config(serial_fallback=True, chunk_size=None),
          pytest.raises(UnpicklableFunctionError, match="backend='threading'") as info):
        pd.Series(range(5000)).parallel.map(uses_lock)
    assert calls == []  # not even the sampling ran
    assert "cannot pickle" in str(info.value) and "uses_lock" in str(info.value)


def test_unpicklable_argument_is_named():
    lock = threading.Lock()
    with pytest.raises(UnpicklableFunctionError, match="keyword argument guard="):
        pd.Series(range(5)).parallel.apply(lambda v, guard: v, guard=lock)


# -- progress bar -----------------------------------------------------------------------
def test_progress_bar_counts_rows_and_moves_inside_a_long_chunk(capsys):
    df = pd.DataFrame({"a": range(64)})

    def slow(row):
        time.sleep(0.04)  # 2.5 s of work in one chunk
        return row.a

    with pandas_parallel.config(chunk_size=64, progress=True):
        df.parallel.apply(slow, axis=1)
    err = capsys.readouterr().err
    assert "apply(axis=1)" in err
    counts = {int(n) for n in re.findall(r"(\d+)/64", err)}
    assert 64 in counts
    assert len(counts - {0, 64}) >= 2, f"the bar did not move during the chunk: {counts}"


def test_progress_bar_shows_when_the_planner_runs_serially(capsys):
    s = pd.Series(np.arange(200_000.0))
    with pandas_parallel.config(serial_fallback=True, chunk_size=None, progress=True,
                                n_jobs=2):
        pd.testing.assert_series_equal(s.parallel.map(lambda v: v + 1), s + 1)
    err = capsys.readouterr().err
    assert "map" in err and "200000/200000" in err


def test_progress_bar_closes_on_error(capsys):
    with pandas_parallel.config(progress=True), pytest.raises(ZeroDivisionError):
        pd.Series(range(10)).parallel.map(lambda v: 1 // (v - 9))
    err = capsys.readouterr().err
    assert "map" in err and "/10" in err


def test_progress_auto_shows_only_for_people_and_long_work(monkeypatch):
    from pandas_parallel import executor

    monkeypatch.setattr(executor, "interactive", lambda: False)
    assert not executor.show_progress("auto", 60.0)
    monkeypatch.setattr(executor, "interactive", lambda: True)
    assert executor.show_progress("auto", 60.0)
    assert not executor.show_progress("auto", 0.5)
    assert executor.show_progress(True, 0.1)


def test_debug_log_tells_the_plan(caplog, forced_backend):
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.Series(np.arange(8.0)).parallel.map(lambda v: v)
    text = caplog.text
    assert f"parallel on 2 {forced_backend} workers, 8 chunks" in text
    assert f"ran on {forced_backend}" in text and "combined" in text
    # Workers forked for the call cut their chunks from their copy of memory:
    # nothing is shipped. Kept ones (and the pool's) are sent their chunks.
    assert ("transport:" in text) == (pandas_parallel.last_run().start != "fork")
