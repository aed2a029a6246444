"""Shared fixtures: forced parallel execution, and leak checks."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
import time

import psutil
import pytest
from hypothesis import HealthCheck, settings

import pandas_parallel
from tests.helpers import spawn_only

settings.register_profile(
    "default", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci" if os.environ.get("CI") else "default")


def scratch_dirs() -> list[str]:
    """This process's scratch directories, wherever they were created."""
    import tempfile

    pattern = f"pandas_parallel-{os.getpid()}-*"
    return [p for base in ("/dev/shm", tempfile.gettempdir())
            for p in glob.glob(os.path.join(base, pattern))]


class Runs(logging.Handler):
    """Collects how each call ran (:class:`pandas_parallel.Run`), from the
    record the pipeline logs for every call."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.runs: list[pandas_parallel.Run] = []

    def emit(self, record: logging.LogRecord) -> None:
        run = getattr(record, "pandas_parallel_run", None)
        if run is not None:
            self.runs.append(run)

    def backends(self) -> set[str]:
        return {run.backend for run in self.runs}


@contextlib.contextmanager
def recording_runs():
    """Record every call's :class:`pandas_parallel.Run` while the block runs."""
    logger = logging.getLogger("pandas_parallel")
    handler, level = Runs(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def ready_to_fork() -> None:
    """Stop the warm pool: its manager thread would rule out forking, and
    a case meant for forked workers would silently run on the pool."""
    pandas_parallel.shutdown_pool()
    deadline = time.monotonic() + 10
    for thread in threading.enumerate():  # the pool's queue feeder ends soon after
        if thread is not threading.main_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert threading.active_count() == 1, threading.enumerate()
    from pandas_parallel.backends import forked

    assert forked.available(), ("an earlier test left a native thread pool or OpenMP "
                                "in this process: forking is unsafe from now on")


@pytest.fixture(scope="module", params=["forked", "forkserver", "pool"])
def forced_backend(request):
    """Module-scoped, so pytest runs each module's forked cases together,
    then its fork-server cases, then its pool cases (Python's start method
    forced to "spawn" for each, as on macOS and Windows): the pool starts
    once per module, not per test."""
    pandas_parallel.shutdown_pool()  # none of another kind's workers are left
    if request.param == "forked":
        ready_to_fork()
    return request.param


@pytest.fixture
def forced(forced_backend):
    """Real parallel execution: two workers, one-row chunks, no fallback;
    on workers forked for each call, on the fork server's (up: its start is
    tested by the contract module) and on the warm loky pool. Results come
    back through Arrow (``"auto"`` would pickle such small ones). Fails the
    test if any call ran on another backend."""
    if forced_backend == "forkserver":
        from pandas_parallel.forkserver import SERVER

        assert SERVER.wait_ready(timeout=60)
    # (Set for each test, not for the module: tests of the module that do
    # not ask for this fixture may run between its cases.)
    with (spawn_only() if forced_backend == "pool" else contextlib.nullcontext(),
          recording_runs() as runs,
          pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=1,
                                 progress=False, transport="arrow",
                                 fork=forced_backend == "forked") as options):
        yield options
    others = runs.backends() - {forced_backend, "serial"}
    assert not others, f"meant for {forced_backend} workers, calls ran on {others}"


@pytest.fixture(autouse=True)
def no_scratch_left_behind():
    """Every test, passing or raising, leaves no scratch directory."""
    yield
    assert scratch_dirs() == [], "a call left its scratch directory behind"


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind():
    """After the session, stopping the pool leaves no child process."""
    yield
    pandas_parallel.shutdown_pool()
    _, alive = psutil.wait_procs(worker_processes(), timeout=10)
    assert not alive, f"worker processes left running: {alive}"
    assert not glob.glob(f"/dev/shm/pandas_parallel_store-{os.getpid()}-*"), \
        "the store of large objects outlived shutdown_pool()"


def fork_server_pid() -> int | None:
    from pandas_parallel.forkserver import SERVER

    return SERVER.process.pid if SERVER.process is not None else None


def worker_processes() -> list[psutil.Process]:
    """Child processes other than the resource trackers, which watch this
    process and exit with it."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def pytest_collection_modifyitems(items):
    """Run tests marked ``leaves_threads`` last: a dask Client leaves a
    thread running for the rest of the process (distributed's offload
    pool), and forking is unsafe with another thread: every forked case
    after it would fail its backend check."""
    items.sort(key=lambda item: item.get_closest_marker("leaves_threads") is not None)
