"""The execution contract, the same on every backend: forked workers, the
fork server's, the warm pool (Python's start method forced to "spawn", as on
macOS and Windows), threads, a real dask LocalCluster, and Ray where
installed.

Every case runs in parallel (two workers, small chunks, no serial fallback)
and fails if any call ran on another backend than the one it names.
"""

from __future__ import annotations

import contextlib
import decimal
import importlib
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
from pandas_parallel import UnpicklableResultError, WorkerCrashedError, programs
from pandas_parallel.backends.forkserver import CREW as server_crew
from pandas_parallel.forkserver import SERVER
from tests.conftest import ready_to_fork, recording_runs, worker_processes
from tests.helpers import assert_same, check_calls_from_threads, spawn_only

PROCESS_BACKENDS = ("forked", "forkserver", "pool", "dask", "ray")
LOCAL_PROCESSES = ("forked", "forkserver", "pool")


def _cluster_param(name: str, module: str):
    marks = [pytest.mark.leaves_threads]
    try:
        __import__(module)
    except ImportError:
        marks.append(pytest.mark.skip(reason=f"{module} is not installed"))
    return pytest.param(name, marks=marks)


@pytest.fixture(scope="module", params=[
    "forked", "forkserver", "pool", "threads",
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
    "forkserver": {"fork": False},
    "pool": {"fork": False},
    "threads": {"backend": "threading"},
    "dask": {"backend": "dask"},
    "ray": {"backend": "ray"},
}


@pytest.fixture(autouse=True)
def spawn_for_the_pool(request):
    """The pool's cases run with Python's start method forced to "spawn"
    (set for each case: other modules' tests may run between them)."""
    pool = getattr(request.node, "callspec", None) and \
        request.node.callspec.params.get("backend") == "pool"
    with spawn_only() if pool else contextlib.nullcontext():
        yield


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
    if backend in ("forked", "forkserver"):  # forked for the first call, kept for the second
        pandas_parallel.shutdown_pool()
    if backend == "forkserver":
        assert SERVER.wait_ready(timeout=60)
    FRAME.parallel.apply(_weigh, axis=1)
    first = {"forked": "fork", "forkserver": "server"}.get(backend, "warm")
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
        pytest.skip("a cluster's workers run other tasks under their own warnings filters")


def test_a_warning_in_the_workers_is_issued_once_at_the_callers_line(on):
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


def test_a_worker_dying_while_the_workers_start_is_worker_crashed_error(backend):
    """On a cold pool or a fork server still starting, this process runs
    chunks itself while workers start; one that dies then is a
    WorkerCrashedError too (it was loky's raw TerminatedWorkerError when
    the pool broke as chunks were submitted)."""
    if backend not in ("pool", "forkserver"):
        pytest.skip("only the pool and the fork server start while the call runs")
    pandas_parallel.shutdown_pool()
    with (recording_runs() as runs,
          pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=20,
                                 progress=False, fork=False)):
        # Slow here, so that the workers start (the fork server takes a second).
        _check_worker_death(backend, _die_in_a_worker_slow_here)
    assert runs.backends() == {backend}


def _die_in_a_worker_slow_here(row, parent):
    if os.getpid() == parent:
        time.sleep(0.02)
    return _die_in_a_worker(row, parent)


def _check_worker_death(backend, func=_die_in_a_worker):
    started = time.monotonic()
    with pytest.raises(WorkerCrashedError) as info:
        FRAME.parallel.apply(func, axis=1, args=(os.getpid(),))
    assert time.monotonic() - started < 30
    if backend in LOCAL_PROCESSES:  # a cluster does not say which chunk
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


# -- workers see what the caller sees ------------------------------------------------
# Each case changes the caller's state between two calls (the first forks
# workers or starts the pool, the second finds them kept or warm), or before
# the first, and compares both calls with plain pandas.
SERIES = pd.Series(np.arange(200))


@pytest.fixture
def first_call(backend):
    """The case's first call forks new workers (from this process, or from
    the fork server, up) or starts the pool cold; its later calls find them
    kept or warm. (The fork server's start is the workers' start case.)"""
    if backend in ("forked", "pool"):
        pandas_parallel.shutdown_pool()
    if backend == "forkserver":
        server_crew.retire()
        assert SERVER.wait_ready(timeout=60)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Write and import modules of the caller's own project (a directory on
    ``sys.path``, as a script's or notebook's helper modules are)."""
    directory = tmp_path / "project"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))

    def write(name: str, source: str):
        (directory / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)

    yield write
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "")).startswith(str(directory)):
            del sys.modules[name]


def test_a_module_setting_changed_after_a_call_reaches_the_workers(first_call, on, project):
    settings = project("pp_settings", "THRESHOLD = 10\n\ndef over(x):\n    return x > THRESHOLD\n")
    assert_same(SERIES.map(settings.over), SERIES.parallel.map(settings.over))
    settings.THRESHOLD = 150
    assert_same(SERIES.map(settings.over), SERIES.parallel.map(settings.over))


def test_a_module_setting_loaded_at_run_time_reaches_the_workers(first_call, on, project):
    config = project("pp_config", "LOOKUP = None\n\ndef look(x):\n    return LOOKUP[x % 3]\n")
    config.LOOKUP = {0: "zero", 1: "one", 2: "two"}  # as main() would load it
    assert_same(SERIES.map(config.look), SERIES.parallel.map(config.look))


def test_reloaded_code_reaches_the_workers(first_call, on, project):
    helper = project("pp_helper", "def scale(x):\n    return x * 3\n")
    assert_same(SERIES.map(helper.scale), SERIES.parallel.map(helper.scale))
    helper = project("pp_helper", "def scale(x):\n    return x * 300 + 1\n")  # reloaded
    assert_same(SERIES.map(helper.scale), SERIES.parallel.map(helper.scale))


def _times_factor(x):
    return x * int(os.environ.get("PP_FACTOR", "1"))


def _read_relative(x):
    with open("pp_data.txt") as file:
        return f"{file.read()}-{x}"


def _local_hour(x):
    return time.localtime(x * 3600).tm_hour


def _depth(n):
    return 0 if n == 0 else 1 + _depth(n - 1)


def _import_late(x):
    return importlib.import_module("pp_late").VALUE + x


def test_environment_changed_after_a_call_reaches_the_workers(first_call, on, monkeypatch):
    assert_same(SERIES.map(_times_factor), SERIES.parallel.map(_times_factor))
    monkeypatch.setenv("PP_FACTOR", "3")
    assert_same(SERIES.map(_times_factor), SERIES.parallel.map(_times_factor))
    monkeypatch.delenv("PP_FACTOR")
    assert_same(SERIES.map(_times_factor), SERIES.parallel.map(_times_factor))


def test_working_directory_changed_after_a_call_reaches_the_workers(first_call, on, tmp_path,
                                                                     monkeypatch):
    SERIES.parallel.map(str)
    (tmp_path / "pp_data.txt").write_text("found")
    monkeypatch.chdir(tmp_path)
    assert_same(SERIES.map(_read_relative), SERIES.parallel.map(_read_relative))


@pytest.fixture
def time_zone(monkeypatch):
    """Set the time zone as a program does (``TZ``, then ``time.tzset``)."""
    def set_zone(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_time_zone_changed_after_a_call_reaches_the_workers(first_call, on, time_zone):
    time_zone("UTC")
    assert_same(SERIES.map(_local_hour), SERIES.parallel.map(_local_hour))
    time_zone("Asia/Kolkata")
    assert_same(SERIES.map(_local_hour), SERIES.parallel.map(_local_hour))


@pytest.fixture
def recursion_limit():
    before = sys.getrecursionlimit()
    yield sys.setrecursionlimit
    sys.setrecursionlimit(before)


def test_recursion_limit_raised_after_a_call_reaches_the_workers(first_call, on, recursion_limit):
    deep = pd.Series([5, 2500, 10] * 10)
    SERIES.parallel.map(str)
    recursion_limit(10_000)
    assert_same(deep.map(_depth), deep.parallel.map(_depth))


def test_a_path_added_after_a_call_reaches_the_workers(first_call, on, tmp_path, monkeypatch):
    SERIES.parallel.map(str)
    (tmp_path / "pp_late.py").write_text("VALUE = 1000\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert_same(SERIES.map(_import_late), SERIES.parallel.map(_import_late))
    finally:
        sys.modules.pop("pp_late", None)


def _reciprocal(x):
    return np.float64(1.0) / np.float64(x)


def _decimal_seventh(x):
    return str(decimal.Decimal(int(x) + 1) / decimal.Decimal(7))


def _printed(x):
    return str(np.array([x / 3]))


def test_numpy_error_state_reaches_the_workers(first_call, on):
    SERIES.parallel.map(str)  # workers up, under numpy's defaults
    with np.errstate(divide="raise"):
        with pytest.raises(FloatingPointError):
            SERIES.map(_reciprocal)
        with pytest.raises(FloatingPointError):
            SERIES.parallel.map(_reciprocal)


def test_decimal_context_and_numpy_print_options_reach_the_workers(first_call, on):
    SERIES.parallel.map(str)
    with decimal.localcontext() as context, np.printoptions(precision=3):
        context.prec = 5
        assert_same(SERIES.map(_decimal_seventh), SERIES.parallel.map(_decimal_seventh))
        assert_same(SERIES.map(_printed), SERIES.parallel.map(_printed))


def _divide_by_zero(row):
    return row["a"] / 0


def test_pandas_options_changed_after_a_call_reach_the_workers(first_call, on):
    frame = pd.DataFrame({"a": [1, 2, 3] * 20})
    SERIES.parallel.map(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # future.infer_string is deprecated on pandas 3
        with pd.option_context("future.infer_string", not pd.get_option(
                "future.infer_string"), "display.precision", 2):
            assert_same(SERIES.map(str), SERIES.parallel.map(str))
            assert_same(SERIES.map(lambda x: repr(pd.Series([x / 3]))),
                        SERIES.parallel.map(lambda x: repr(pd.Series([x / 3]))))
        if "future.python_scalars" in pd.describe_option("future", _print_desc=False):
            with pd.option_context("future.python_scalars", True):
                with pytest.raises(ZeroDivisionError):
                    frame.apply(_divide_by_zero, axis=1)
                with pytest.raises(ZeroDivisionError):
                    frame.parallel.apply(_divide_by_zero, axis=1)


def _log_or_minus_one(x):
    try:
        return float(np.log(np.float64(x)))
    except RuntimeWarning:
        return -1.0


def test_the_callers_warnings_filters_hold_in_the_workers(on_this_machine, first_call, on):
    SERIES.parallel.map(str)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        expected = SERIES.map(_log_or_minus_one)
        assert expected.iloc[0] == -1.0
        assert_same(expected, SERIES.parallel.map(_log_or_minus_one))


def _log_some(x):
    if x % 10 == 3:
        logging.getLogger("tests.caller_state").warning("row %d is odd", x)
    logging.getLogger("tests.caller_state").debug("row %d", x)  # below the level
    return x


def test_log_records_reach_the_callers_handlers(first_call, on, backend, caplog):
    big = pd.Series(np.arange(400))
    with caplog.at_level(logging.INFO, logger="tests.caller_state"):
        big.map(_log_some)
        # (Only this logger's: a cluster's client logs as it tidies up after
        # the last call, at any moment.)
        expected = sorted(r.getMessage() for r in caplog.records
                          if r.name == "tests.caller_state")
        for _ in range(2):  # workers started by the call, then kept or warm
            caplog.clear()
            big.parallel.map(_log_some)
            records = [r for r in caplog.records if r.name == "tests.caller_state"]
            assert sorted(r.getMessage() for r in records) == expected
    assert len(expected) == 40
    assert {(r.levelname, r.funcName, r.pathname) for r in records} == {
        ("WARNING", "_log_some", __file__)}
    from_workers = [r for r in records if r.process != os.getpid()]
    assert all(r.pandas_parallel_worker.endswith(f"worker process {r.process}")
               for r in from_workers)
    if backend != "threads":  # threads log in this process: their records are its own
        assert from_workers
    caplog.clear()
    logging.getLogger("tests.caller_state").setLevel(logging.ERROR)
    try:
        big.parallel.map(_log_some)
    finally:
        logging.getLogger("tests.caller_state").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name == "tests.caller_state"]


def _set_weight(value):
    sys.pandas_parallel_test_weight = value  # set where it ran: nothing carries it


def _weighted(x):
    return x * sys.pandas_parallel_test_weight


def test_the_initializer_runs_again_when_its_arguments_go_back(first_call, on):
    try:
        for weight in (0.5, 2.0, 0.5):  # a loop over regions, say
            _set_weight(weight)
            expected = SERIES.map(_weighted)
            got = SERIES.parallel(initializer=_set_weight, initargs=(weight,)).map(_weighted)
            assert_same(expected, got)
    finally:
        del sys.pandas_parallel_test_weight


TABLE = np.arange(2**20, dtype=np.float64)  # 8 MB: travels apart from the pickle


def test_a_large_object_the_function_holds_is_current_on_every_call(first_call, on, backend):
    table = TABLE.copy()

    def look_up(x):
        return table[x * 1000]

    assert_same(SERIES.map(look_up), SERIES.parallel.map(look_up))
    table[::1000] *= -1  # changed in place: same object, new content
    assert_same(SERIES.map(look_up), SERIES.parallel.map(look_up))
    if backend in LOCAL_PROCESSES:  # stored once per content, then reused
        written = len(programs.STORE.files)
        assert_same(SERIES.map(look_up), SERIES.parallel.map(look_up))
        assert len(programs.STORE.files) == written
