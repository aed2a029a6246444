"""The execution contract, the same on every backend: forked workers, the
warm pool, threads, a real dask LocalCluster, and Ray where installed.

Every case runs in parallel (two workers, small chunks, no serial fallback)
and fails if any call ran on another backend than the one it names.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import re
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from pandas_parallel import UnpicklableResultError, WorkerCrashedError
from tests.conftest import ready_to_fork, recording_runs, worker_processes
from tests.helpers import assert_same, check_calls_from_threads

PROCESS_BACKENDS = ("forked", "pool", "dask", "ray")


def _cluster_param(name: str, module: str):
    marks = [pytest.mark.leaves_threads]
    try:
        __import__(module)
    except ImportError:
        marks.append(pytest.mark.skip(reason=f"{module} is not installed"))
    return pytest.param(name, marks=marks)


@pytest.fixture(scope="module", params=[
    "forked", "pool", "threads",
    _cluster_param("dask", "distributed"), _cluster_param("ray", "ray"),
])
def backend(request):
    """The backend under test, started for this module's cases and stopped
    after them with every process it started."""
    name = request.param
    if name == "forked":
        ready_to_fork()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    stop = _start_cluster(name)
    yield name
    stop()
    # (loky's resource tracker, which joblib starts, stays with this process)
    started = [p for p in worker_processes() if p.pid not in before
               and name in ("dask", "ray")]
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"{name} processes left running: {[p.cmdline() for p in alive]}"


def _start_cluster(name: str):
    if name == "dask":
        import dask
        import distributed

        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=logging.ERROR)
            client = distributed.Client(cluster)
        client.wait_for_workers(2, timeout=60)

        def stop() -> None:
            client.close()
            cluster.close()
        return stop
    if name == "ray":
        import cloudpickle
        import ray

        # Ray's workers do not import this module: its functions and
        # exception classes travel by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

        def stop_ray() -> None:
            ray.shutdown()
            cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        return stop_ray
    return lambda: None


_OPTIONS = {
    "forked": {"fork": True},
    "pool": {"fork": False},
    "threads": {"backend": "threading"},
    "dask": {"backend": "dask"},
    "ray": {"backend": "ray"},
}


@pytest.fixture
def on(backend):
    """Options forcing ``backend``; fails the case if a call ran elsewhere."""
    with (recording_runs() as runs,
          pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=20,
                                 progress=False, **_OPTIONS[backend])):
        yield runs
    assert runs.backends() <= {backend, "serial"}, runs.backends()
    assert backend in runs.backends(), "no call ran in parallel"


@pytest.fixture
def processes(backend):
    """Only for backends whose workers are processes (asked for before
    ``on``, so a skipped case records no calls)."""
    if backend == "threads":
        pytest.skip("threads are this process: nothing is pickled, nothing can die alone")
    return backend


FRAME = pd.DataFrame({"a": np.arange(100.0), "g": np.arange(100) % 7})


# -- results ----------------------------------------------------------------------
def _weigh(row):
    return row["a"] * 2 + row["g"]


def test_results_equal_pandas(on):
    assert_same(FRAME.apply(_weigh, axis=1), FRAME.parallel.apply(_weigh, axis=1))
    assert_same(FRAME["a"].map(str), FRAME["a"].parallel.map(str))
    expected = FRAME.groupby("g").apply(lambda g: g["a"].sum())
    assert_same(expected, FRAME.groupby("g").parallel.apply(lambda g: g["a"].sum()))


def test_last_run_tells_where_each_call_ran(on, backend):
    if backend == "forked":  # forked for the first call, kept for the second
        pandas_parallel.shutdown_pool()
    FRAME.parallel.apply(_weigh, axis=1)
    first = "fork" if backend == "forked" else "warm"
    assert pandas_parallel.last_run() == pandas_parallel.Run(backend, 2, 5, first)
    FRAME.parallel.apply(_weigh, axis=1)
    assert pandas_parallel.last_run() == pandas_parallel.Run(backend, 2, 5, "warm")
    assert_same(FRAME["a"].apply("sqrt"), FRAME["a"].parallel.apply("sqrt"))  # to pandas
    assert pandas_parallel.last_run() == pandas_parallel.Run("serial")
    FRAME["a"].expanding().parallel.apply(sum)  # needs every row before it: to pandas
    assert pandas_parallel.last_run().backend == "serial"


# -- what the function raises ---------------------------------------------------
class NeedsArgs(Exception):
    """An exception whose constructor takes more than its message."""

    def __init__(self, code, msg):
        super().__init__(f"{code}: {msg}")
        self.code = code


def _warns(row):
    warnings.warn("careful with this row", FutureWarning, stacklevel=2)
    return row["a"] * 2


@pytest.fixture
def on_this_machine(backend):
    """Only for backends whose workers are this machine's (asked for before ``on``)."""
    if backend in ("dask", "ray"):
        pytest.skip("warnings in a cluster's workers stay in their logs")


def test_a_warning_in_the_workers_is_issued_once_at_the_callers_line(on_this_machine, on):
    df = pd.DataFrame({"a": np.arange(60.0)})
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        actual = df.parallel.apply(_warns, axis=1)
    with pytest.warns(FutureWarning, match="careful"):
        expected = df.apply(_warns, axis=1)
    assert_same(expected, actual)
    ours = [w for w in issued if "careful" in str(w.message)]
    assert [(w.category, w.filename, w.lineno) for w in ours] == [
        (FutureWarning, __file__, line)]


def _raise_needs_args(row):
    if row["a"] == 50:
        raise NeedsArgs(7, "no such customer")
    return row["a"]


def test_exception_keeps_its_type_args_and_attributes(on):
    with pytest.raises(NeedsArgs) as info:
        FRAME.parallel.apply(_raise_needs_args, axis=1)
    assert info.value.code == 7 and info.value.args == ("7: no such customer",)
    notes = "\n".join(info.value.__notes__)
    assert "apply(axis=1) failed on chunk 3 of 5: rows [40 ... 59]" in notes


def _raise_key_error(value):
    if value == 33:
        raise KeyError("customer 33")
    return value


def test_builtin_exception_names_the_value_and_its_label(on):
    with pytest.raises(KeyError) as info:
        FRAME["a"].parallel.map(_raise_key_error)
    assert info.value.args == ("customer 33",)
    assert "value 33.0 (at index label 33)" in "\n".join(info.value.__notes__)


def _exit_3(row):
    if row["a"] == 50:
        sys.exit(3)
    return row["a"]


def test_system_exit_raised_by_the_function_is_system_exit(on):
    with pytest.raises(SystemExit) as expected:
        FRAME.apply(_exit_3, axis=1)
    with pytest.raises(SystemExit) as info:
        FRAME.parallel.apply(_exit_3, axis=1)
    assert info.value.code == expected.value.code == 3


def _interrupt(row):
    if row["a"] == 50:
        raise KeyboardInterrupt
    return row["a"]


def test_keyboard_interrupt_raised_by_the_function_is_keyboard_interrupt(on):
    with pytest.raises(KeyboardInterrupt):
        FRAME.parallel.apply(_interrupt, axis=1)
    assert_same(FRAME.apply(_weigh, axis=1), FRAME.parallel.apply(_weigh, axis=1))


def _raise_with_a_lock(row):
    if row["a"] == 50:
        raise ValueError(threading.Lock())
    return row["a"]


def test_exception_that_cannot_travel_is_a_clear_error_naming_its_type_and_row(on, backend):
    expected = ValueError if backend == "threads" else RuntimeError
    with pytest.raises(expected) as info:
        FRAME.parallel.apply(_raise_with_a_lock, axis=1)
    if backend != "threads":  # threads hand over the exception itself
        assert "the function raised a ValueError, which cannot be pickled" in str(info.value)
    assert "rows [40 ... 59]" in "\n".join(info.value.__notes__)


# -- what the function returns ----------------------------------------------------
def _return_a_lock(row):
    return threading.Lock() if row["a"] == 45 else row["a"]


def test_unpicklable_result_is_a_clear_error_naming_the_row_and_type(on, backend):
    if backend == "threads":  # nothing is pickled: the locks are the result
        result = FRAME.parallel.apply(_return_a_lock, axis=1)
        assert type(result[45]) is type(threading.Lock())
        return
    started = time.monotonic()
    with pytest.raises(UnpicklableResultError) as info:
        FRAME.parallel.apply(_return_a_lock, axis=1)
    assert time.monotonic() - started < 10
    assert "returned a _thread.lock at index label 45" in str(info.value)
    assert "rows [40 ... 59]" in "\n".join(info.value.__notes__)


# -- random numbers ---------------------------------------------------------------
GROUPS = pd.DataFrame({"g": np.repeat(np.arange(200), 3)})
DRAWS = {
    "numpy global": lambda g: np.random.random(),
    "random": lambda g: random.random(),
    "unseeded default_rng": lambda g: np.random.default_rng().random(),
}


@pytest.mark.parametrize("draw", DRAWS.values(), ids=DRAWS.keys())
def test_no_two_chunks_share_a_random_stream(on, draw):
    assert GROUPS.groupby("g").parallel.apply(draw).nunique() == 200


@pytest.fixture(params=["numpy global", "random"])
def seeded_draw(request, processes):
    """(Threads share this process's generators: the order of draws is theirs.)"""
    if processes == "dask" and request.param == "random":
        pytest.skip("a dask worker's own threads draw from `random` too (numpy's is private)")
    return DRAWS[request.param]


def test_seeded_parent_gives_the_same_numbers_run_after_run(seeded_draw, on):
    draw = seeded_draw

    def seeded_twice():
        np.random.seed(12)
        random.seed(12)
        return (GROUPS.groupby("g").parallel.apply(draw),
                GROUPS.groupby("g").parallel.apply(draw))

    first, second = seeded_twice()
    assert_same(first, seeded_twice()[0])
    assert not first.equals(second)  # the next call draws new numbers


# -- a worker dies ------------------------------------------------------------------
def _die_in_a_worker(row, parent):
    if os.getpid() != parent and row["a"] >= 40:
        os.kill(os.getpid(), signal.SIGKILL)
    return row["a"]


def test_a_dying_worker_is_worker_crashed_error_naming_its_chunk(processes, on):
    FRAME.parallel.apply(_weigh, axis=1)  # workers up
    _check_worker_death(processes)


def test_a_worker_dying_while_the_pool_starts_is_worker_crashed_error(backend):
    """On a cold pool this process runs chunks itself while workers start;
    one that dies then is a WorkerCrashedError too (it was loky's raw
    TerminatedWorkerError when the pool broke as chunks were submitted)."""
    if backend != "pool":
        pytest.skip("only the pool starts while the call runs")
    pandas_parallel.shutdown_pool()
    with (recording_runs() as runs,
          pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=20,
                                 progress=False, fork=False)):
        _check_worker_death("pool")
    assert runs.backends() == {"pool"}


def _check_worker_death(backend):
    started = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        FRAME.parallel.apply(_die_in_a_worker, axis=1, args=(os.getpid(),))
    assert time.monotonic() - started < 30
    if backend in ("forked", "pool"):  # a cluster does not say which chunk
        assert re.search(r"while running chunk \d of 5: rows", str(info.value)), info.value
    assert_same(FRAME.apply(_weigh, axis=1), FRAME.parallel.apply(_weigh, axis=1))


# -- concurrent calls ---------------------------------------------------------------
@pytest.fixture
def not_forked(backend):
    if backend == "forked":
        pytest.skip("with threads running, calls share the kept forked workers or use the "
                    "pool: see test_forked.py")


def test_concurrent_calls_from_threads_each_get_their_own_result(not_forked, on):
    check_calls_from_threads(FRAME, _weigh)
    FRAME.parallel.apply(_weigh, axis=1)  # a call on this thread, for `on`
