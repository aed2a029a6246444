"""Never hang, never leave processes behind: Ctrl-C, a killed parent, and
workers forked for each call, each checked in a Python process of its own
(these tests set their own options, so they run once, not on each pool)."""

from __future__ import annotations

import ctypes.util
import glob
import importlib.util
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.helpers import ctrl_c_reaches_python


# -- Ctrl-C -----------------------------------------------------------------------------
def _read_lines_until(proc, predicate, timeout):
    """Read the subprocess's stdout until ``predicate(lines)``, or fail.

    Reads the raw descriptor: a buffered reader could hold lines that
    ``select`` no longer reports.
    """
    fd = proc.stdout.fileno()
    lines, pending, deadline = [], b"", time.monotonic() + timeout
    while not predicate(lines):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; output so far: {lines}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 65536)
            assert data, f"subprocess ended early: {lines}"
            *complete, pending = (pending + data).split(b"\n")
            lines.extend(line.decode().strip() for line in complete)
    return lines


def stop_leftover(proc) -> None:
    """After a failed run: kill the subprocess only. Its workers exit when it
    dies, and loky's resource tracker then removes its semaphores from
    /dev/shm, which killing the whole process group would prevent."""
    if proc.poll() is not None:
        return
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()


@pytest.mark.parametrize("pool", ["processes", "warm-processes", "warm-pool"])
@pytest.mark.parametrize("target", ["process", "process-group"])
def test_ctrl_c_stops_everything_within_two_seconds(target, pool, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, script, pool], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=ctrl_c_reaches_python)
    try:
        lines = _read_lines_until(
            proc, lambda ls: sum(x.startswith("worker") for x in ls) >= 2, timeout=60)
        parent = int(next(x for x in lines if x.startswith("parent")).split()[1])
        workers = [psutil.Process(int(x.split()[1])) for x in lines if x.startswith("worker")]
        sent = time.monotonic()
        if target == "process":
            os.kill(proc.pid, signal.SIGINT)
        else:  # what a terminal's Ctrl-C does
            os.killpg(proc.pid, signal.SIGINT)
        returncode = proc.wait(timeout=10)
        elapsed = time.monotonic() - sent
        out = proc.stdout.read()
        assert returncode == 130, out
        assert "interrupted" in out
        assert elapsed < 2.0, f"took {elapsed:.2f}s to stop"
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers still running: {alive}"
        leftovers = [name for base in ("/dev/shm", "/tmp") for name in os.listdir(base)
                     if name.startswith(f"pandas_parallel-{parent}-")]
        assert leftovers == []
    finally:
        stop_leftover(proc)


@pytest.mark.parametrize("mode", ["stuck", "stuck-server", "stuck-pool"],
                         ids=["forked", "forkserver", "pool"])
def test_no_process_outlives_a_killed_parent(mode):
    """SIGKILL (an OOM-killed kernel) leaves the parent no chance to clean
    up: its workers, forked, the fork server's or the pool's, the fork
    server and the pool's resource trackers end within seconds, and the next
    call removes its scratch directory."""
    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    # The workers' function never returns.
    proc = subprocess.Popen([sys.executable, script, mode], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    workers: list[psutil.Process] = []
    try:
        def workers_started(lines: list[str]) -> bool:
            # A cold pool's first chunk may run in the parent: count workers only.
            parent = next((x.split()[1] for x in lines if x.startswith("parent")), None)
            return sum(x.startswith("worker") and x.split()[1] != parent for x in lines) >= 2

        lines = _read_lines_until(proc, workers_started, timeout=60)
        parent = int(next(x for x in lines if x.startswith("parent")).split()[1])
        workers = psutil.Process(parent).children(recursive=True)
        pids = {int(x.split()[1]) for x in lines if x.startswith("worker")} - {parent}
        assert pids <= {w.pid for w in workers}
        if mode == "stuck":  # forked: no other process
            assert {w.pid for w in workers} == pids
        elif mode == "stuck-server":  # its workers, and the server
            assert any("pandas_parallel.forkserver" in " ".join(w.cmdline()) for w in workers)
        else:  # the pool's workers, and its resource trackers
            assert any("resource_tracker" in " ".join(w.cmdline()) for w in workers)
        proc.kill()
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"processes outlived their parent: {alive}"
        from pandas_parallel import transport

        transport.sweep_stale_scratch()
        leftovers = [name for base in ("/dev/shm", "/tmp") for name in os.listdir(base)
                     if name.startswith(f"pandas_parallel-{parent}-")]
        assert leftovers == []
    finally:
        stop_leftover(proc)
        for stray in psutil.wait_procs(workers, timeout=0)[1]:
            stray.kill()


# -- workers forked for each call -----------------------------------------------------------
FIRST_CALL = """
import os, sys
import pandas as pd, pandas_parallel

def where(row):
    if row["a"] == CRASH_AT:
        os._exit(3)
    with open("/proc/self/cmdline", "rb") as fh:
        return fh.read().replace(b"\\0", b" ").decode()

frame = pd.DataFrame({"a": range(400)})
with pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=40, progress=False):
    try:
        commands = frame.parallel.apply(where, axis=1)
    except pandas_parallel.WorkerCrashedError as exc:
        print("crashed:", exc)
        sys.exit(0)
    pd.testing.assert_series_equal(commands, frame.apply(where, axis=1))
print(commands.nunique(), "loky" in " ".join(commands))
"""


def _run_script(tmp_path, text: str) -> str:
    script = tmp_path / "script.py"
    script.write_text(text)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = psutil.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # hung: end it and its workers
            for child in proc.children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out


@pytest.mark.parametrize("crash_at", [-1, 123])
def test_first_call_forks_its_workers_and_survives_their_death(tmp_path, crash_at):
    """In a fresh single-threaded process, the first call's workers are forked
    (they run this very script: same command line), results are exact, and a
    worker's death is a WorkerCrashedError with no process left behind."""
    out = _run_script(tmp_path, FIRST_CALL.replace("CRASH_AT", str(crash_at)))
    if crash_at >= 0:
        assert out.startswith("crashed: a worker process died while running chunk 4 of "
                              "10: rows [120 ... 159]"), out
        assert "it exited with status 3" in out, out
    else:
        assert out.split() == ["1", "False"], out  # one command line: the parent's


START_METHODS = """
import ctypes, ctypes.util, threading
import pandas as pd, pandas_parallel, psutil

def where(row):
    with open("/proc/self/cmdline", "rb") as fh:
        return fh.read().replace(b"\\0", b" ").decode()

frame = pd.DataFrame({"a": range(100)})

def workers():
    from pandas_parallel.forkserver import SERVER

    commands = " ".join(frame.parallel.apply(where, axis=1))
    if pandas_parallel.last_run().start == "starting":  # ran here while the server started
        SERVER.wait_ready(60)
        commands = " ".join(frame.parallel.apply(where, axis=1))
    return ("pool" if "loky" in commands else "forkserver"
            if "pandas_parallel.forkserver" in commands else "forked")

pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=10, progress=False)
seen = [workers(), pandas_parallel.last_run().start, workers(), pandas_parallel.last_run().start,
        str(len(psutil.Process().children()))]
CHANGE
seen.append(workers())
pandas_parallel.shutdown_pool()  # the kept workers too: the next call must fork
seen.append(workers())
print(*seen)
"""


@pytest.mark.parametrize("change, then", [
    ("pass", ["forked", "forked"]),
    # A progress bar leaves no thread behind (tqdm's monitor would).
    ("frame.parallel(progress=True).apply(where, axis=1)", ["forked", "forked"]),
    ("pandas_parallel.config(fork=False)", ["forkserver", "forkserver"]),
    # Workers forked while it was safe are still used: nothing is forked.
    ("threading.Thread(target=threading.Event().wait, daemon=True).start()",
     ["forked", "forkserver"]),
    pytest.param("ctypes.CDLL(ctypes.util.find_library('gomp'))", ["forked", "forkserver"],
                 marks=pytest.mark.skipif(ctypes.util.find_library("gomp") is None,
                                          reason="needs GNU OpenMP")),
])
def test_calls_fork_only_while_it_is_safe(tmp_path, change, then):
    """The first call forks its workers and the second uses them again (two
    live children), while the process has a single thread and no OpenMP
    runtime. Kept workers serve later calls whatever the process starts
    since (no fork is needed); with them stopped, another thread running or
    libgomp loaded (its thread pool hangs in a forked child) means the fork
    server's workers, as ``fork=False`` always does."""
    out = _run_script(tmp_path, START_METHODS.replace("CHANGE", change))
    assert out.split() == ["forked", "fork", "forked", "warm", "2", *then]


POLARS = """
import numpy as np, pandas as pd, polars as pl, pandas_parallel

def total(row):
    return pl.DataFrame({"x": [row["a"], 1.0]}).select(pl.col("x").sum()).item()

frame = pd.DataFrame({"a": np.arange(200.0)})
options = dict(n_jobs=2, serial_fallback=False, chunk_size=20, progress=False)
before = frame.parallel(**options).apply(total, axis=1)
print(pandas_parallel.last_run().backend)
# polars' thread pool starts on first use in this process:
pl.DataFrame({"k": np.arange(300_000) % 100, "v": 1.0}).group_by("k").agg(pl.col("v").sum())
after = frame.parallel(**options).apply(total, axis=1)
print(pandas_parallel.last_run().backend)
expected = frame.apply(total, axis=1)
pd.testing.assert_series_equal(before, expected)
pd.testing.assert_series_equal(after, expected)
pandas_parallel.shutdown_pool()
"""


def test_no_fork_while_a_native_thread_pool_runs(tmp_path):
    """Forked children of a process running polars' threads can deadlock
    (the threads are gone in the child, their locks stay taken): with
    polars imported (it starts threads of its own) and after its thread
    pool ran, calls use the fork server's workers, finish and equal pandas."""
    if importlib.util.find_spec("polars") is None:  # not imported here: its threads
        pytest.skip("polars is not installed")     # would rule out forking in this process
    assert _run_script(tmp_path, POLARS).split() == ["forkserver", "forkserver"]


FORKED_CHILD = """
import os, sys
import pandas as pd, pandas_parallel

frame = pd.DataFrame({"a": range(60)})
double = lambda row: row["a"] * 2
options = dict(n_jobs=2, serial_fallback=False, chunk_size=10, progress=False)
frame.parallel(**options).apply(double, axis=1)  # this process keeps two workers
parent_workers = sorted(w.pid for w in pandas_parallel.backends.forked.CREW.workers)
pid = os.fork()
if pid == 0:  # a child of this process (the user's own fork): it must not use them
    got = frame.parallel(**options).apply(double, axis=1)
    ok = got.equals(frame.apply(double, axis=1))
    start = pandas_parallel.last_run().start
    mine = sorted(w.pid for w in pandas_parallel.backends.forked.CREW.workers)
    pandas_parallel.shutdown_pool()
    print("child", ok, start, not set(mine) & set(parent_workers), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
got = frame.parallel(**options).apply(double, axis=1)
print("parent", got.equals(frame.apply(double, axis=1)), pandas_parallel.last_run().start,
      sorted(w.pid for w in pandas_parallel.backends.forked.CREW.workers) == parent_workers)
"""


def test_a_process_forked_from_one_with_kept_workers_forks_its_own(tmp_path):
    """Kept workers belong to the process that forked them: a child of it
    (the user's own ``os.fork``) forks workers of its own, and the parent's
    keep serving the parent."""
    out = _run_script(tmp_path, FORKED_CHILD).split("\n")
    assert out[0].split() == ["child", "True", "fork", "True"], out
    assert out[1].split() == ["parent", "True", "warm", "True"], out


DAEMON_CALL = """
import os, sys, threading, time, numpy as np, pandas as pd, pandas_parallel
df = pd.DataFrame({"a": np.arange(4000)})

def slow(row):
    time.sleep(0.005)
    return row["a"]

def work():
    df.parallel(n_jobs=2, fork=sys.argv[1] == "fork").apply(slow, axis=1)

threading.Thread(target=work, daemon=True).start()
time.sleep(1.0)  # the call is under way, on the pool (a thread runs: no fork)
print("workers", *[c.pid for c in __import__("psutil").Process().children(recursive=True)],
      flush=True)
print("pid", os.getpid())
print("main exits", time.monotonic(), flush=True)
"""


@pytest.mark.parametrize("fork", ["fork", "nofork"])
def test_a_daemon_thread_mid_call_lets_the_program_exit_promptly_and_quietly(tmp_path, fork):
    """pandas in a daemon thread is simply stopped with the program; so is
    a call through .parallel: no traceback, no late exit, nothing left."""
    script = tmp_path / "daemon.py"
    script.write_text(DAEMON_CALL)
    done = subprocess.run([sys.executable, str(script), fork], capture_output=True,
                          text=True, timeout=60)
    ended = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no traceback of the stopped call
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    workers = [int(pid) for pid in lines["workers"].split()]
    assert workers, "the call ran on worker processes"
    assert ended - float(lines["main"].split()[-1]) < 2.0
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in workers
                                  if psutil.pid_exists(pid)], timeout=10)
    assert not alive
    assert not glob.glob(f"/dev/shm/pandas_parallel-{lines['pid']}-*")


def test_the_intentional_segfault_prints_no_crash_report():
    """pytest enables faulthandler, which forked workers inherit: the crash
    test's segfault must not print a fatal error and every thread's stack
    over a passing run."""
    script = textwrap.dedent("""
        import faulthandler, sys
        import pandas as pd, pandas_parallel
        from pandas_parallel import WorkerCrashedError
        from tests.test_reliability import _crash_segfault
        faulthandler.enable(sys.stderr)  # as pytest does
        s = pd.Series(range(6))
        try:
            s.parallel(n_jobs=2, chunk_size=3, serial_fallback=False).map(_crash_segfault)
        except WorkerCrashedError:
            print("CRASHED ON", pandas_parallel.last_run().backend)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    assert "CRASHED ON forked" in done.stdout, done.stdout + done.stderr
    assert "Fatal Python error" not in done.stderr, done.stderr


def test_a_worker_warning_reaches_a_python_c_caller():
    """A warning from a worker is issued again at the caller's line; under
    ``python -c`` (and at the interactive prompt) the caller's module has no
    source to read, and the relay raised ImportError instead of warning."""
    script = textwrap.dedent("""
        import warnings
        import pandas as pd, pandas_parallel
        warnings.simplefilter("always")

        def old(x):
            warnings.warn("old API", DeprecationWarning)
            return x + 1

        s = pd.Series(range(8))
        with warnings.catch_warnings(record=True) as caught:
            got = s.parallel(n_jobs=2, chunk_size=4, serial_fallback=False).map(old)
        pd.testing.assert_series_equal(got, s.map(old))
        print("RAN ON", pandas_parallel.last_run().backend)
        print("WARNED", sorted({str(w.message) for w in caught}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "RAN ON forked" in done.stdout and "WARNED ['old API']" in done.stdout, done.stdout
