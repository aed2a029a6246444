"""Shared fixtures: forced parallel execution, and leak checks."""

from __future__ import annotations

import glob
import os

import psutil
import pytest
from hypothesis import HealthCheck, settings

import pandas_parallel

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


@pytest.fixture(params=["forked", "pool"])
def forced(request):
    """Real parallel execution: two workers, one-row chunks, no fallback;
    on workers forked for each call, and on the warm loky pool. Results
    come back through Arrow (``"auto"`` would pickle such small ones)."""
    with pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=1,
                                progress=False, transport="arrow",
                                fork=request.param == "forked") as options:
        yield options


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
