"""The fork server: the no-fork path's workers (a Jupyter kernel, a threaded
program, after a tqdm bar, ``fork=False``), forked from a small process of
the library's own rather than from the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from pandas_parallel import forkserver as fork_server_module
from pandas_parallel.backends import forkserver
from pandas_parallel.forkserver import SERVER
from tests.helpers import assert_same

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fork server is Linux's")


def _run_script(tmp_path, source: str) -> list[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


WHERE_CALLS_RUN = """
    import sys, threading, numpy as np, pandas as pd, pandas_parallel
    from pandas_parallel.forkserver import SERVER
    df = pd.DataFrame({"a": np.arange(40.0)})
    %s
    with pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=5,
                                progress=False):
        SERVER.wait_ready(60)  # (started by the first call that needs it)
        for _ in range(2):
            got = df.parallel.apply(lambda row: row.a * 2, axis=1)
            assert got.equals(df.apply(lambda row: row.a * 2, axis=1))
            print(pandas_parallel.last_run().backend)
"""


@pytest.mark.parametrize("change, expected", [
    ("pass", "forked"),
    ("threading.Thread(target=threading.Event().wait, daemon=True).start()", "forkserver"),
    ("from tqdm import tqdm; [None for _ in tqdm(range(3), file=sys.stderr)]", "forkserver"),
    ("pandas_parallel.config(fork=False)", "forkserver"),
    ("import multiprocessing; multiprocessing.set_start_method('spawn', force=True)", "pool"),
    ("import multiprocessing; multiprocessing.set_start_method('forkserver', force=True)",
     "forkserver"),
], ids=["one thread", "a thread runs", "after a tqdm bar", "fork=False", "spawn forced",
        "forkserver forced"])
def test_where_calls_run(tmp_path, change, expected):
    """Another thread (one of the program's own, or tqdm's monitor after a
    bar) rules out forking this process: calls go to the fork server's
    workers, not to a raw fork, and not to the pool's fresh interpreters.
    Python's start method, when set, is followed: "spawn" (as on macOS and
    Windows) takes the pool, "forkserver" never forks this process."""
    assert _run_script(tmp_path, WHERE_CALLS_RUN % change) == [expected, expected]


def test_a_server_that_cannot_start_leaves_calls_to_the_pool(monkeypatch, caplog):
    def cannot_start(*args, **kwargs):
        raise OSError("no interpreter to start")

    pandas_parallel.shutdown_pool()
    monkeypatch.setattr(fork_server_module.subprocess, "Popen", cannot_start)
    monkeypatch.setattr(SERVER, "failed", False)
    frame = pd.DataFrame({"a": np.arange(20.0)})
    with pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False, chunk_size=5,
                                progress=False):
        assert_same(frame.apply(lambda r: r.a, axis=1),
                    frame.parallel.apply(lambda r: r.a, axis=1))
        assert SERVER.failed and "no interpreter to start" in caplog.text
        assert_same(frame.apply(lambda r: r.a, axis=1),
                    frame.parallel.apply(lambda r: r.a, axis=1))
        assert pandas_parallel.last_run().backend == "pool"
    pandas_parallel.shutdown_pool()


def _ran_where(part: pd.DataFrame, parent: int) -> pd.DataFrame:
    if os.getpid() == parent:
        time.sleep(0.05)  # this process is slow: the workers take over once up
    return part.assign(pid=os.getpid())


def test_a_starting_server_takes_over_once_up():
    """While the server starts (it imports pandas: about a second), this
    process runs the call's chunks itself, never waiting for it; once it is
    up, its workers run the rest, and this process stops."""
    pandas_parallel.shutdown_pool()
    frame = pd.DataFrame({"a": np.arange(2000.0)})
    with pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False, chunk_size=5,
                                progress=False):
        result = frame.parallel.map_partitions(_ran_where, os.getpid())
    assert pandas_parallel.last_run() == pandas_parallel.Run("forkserver", 2, 400, "starting")
    assert_same(frame, result.drop(columns="pid"))
    here = int((result["pid"] == os.getpid()).sum()) // 5
    assert 1 <= here < 400 and result["pid"].nunique() == 3, f"{here} chunks ran here"
    assert SERVER.start_seconds is not None


KILLED_PARENT = """
import os, sys, time, numpy as np, pandas as pd, pandas_parallel
from pandas_parallel.forkserver import SERVER
df = pd.DataFrame({"a": np.arange(100.0)})
with pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False, chunk_size=10,
                            progress=False):
    SERVER.wait_ready(60)
    df.parallel.apply(lambda row: row.a, axis=1)
    print(SERVER.process.pid, flush=True)
    df.parallel.apply(lambda row: time.sleep(600), axis=1)
"""


def test_a_killed_parent_leaves_no_fork_server_and_no_workers():
    process = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE,
                               text=True)
    family: list[psutil.Process] = []
    try:
        server = int(process.stdout.readline())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the stuck call's workers are up
            family = psutil.Process(process.pid).children(recursive=True)
            if sum(p.ppid() == server for p in family) == 2:
                break
            time.sleep(0.05)
        assert {p.pid for p in family} >= {server}
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left running after their parent was killed: {alive}"


def test_shutdown_stops_the_server_and_its_workers():
    frame = pd.DataFrame({"a": np.arange(20.0)})
    assert SERVER.wait_ready(timeout=60)
    with pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False, chunk_size=5,
                                progress=False):
        frame.parallel.apply(lambda row: row.a, axis=1)
    assert pandas_parallel.last_run().backend == "forkserver"
    family = [psutil.Process(w.pid) for w in forkserver.CREW.workers]
    family.append(psutil.Process(SERVER.process.pid))
    pandas_parallel.shutdown_pool()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive and SERVER.process is None
