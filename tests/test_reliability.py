"""Never hang, never lose data: errors, crashes, Ctrl-C, bad input, clean-up,
and a progress bar that tells the truth."""

from __future__ import annotations

import ctypes.util
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from pandas_parallel import UnpicklableFunctionError, WorkerCrashedError
from tests.conftest import worker_processes

pytestmark = pytest.mark.usefixtures("forced")


def _worker_pids() -> set[int]:
    return {p.pid for p in worker_processes()}


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


def test_error_is_raised_without_waiting_for_other_chunks_and_pool_stays_warm():
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
    assert _worker_pids() == before  # the same warm workers, not restarted
    pd.testing.assert_series_equal(df.parallel.apply(lambda r: r.a * 2, axis=1),
                                   df.apply(lambda r: r.a * 2, axis=1))


# -- a worker dies --------------------------------------------------------------------
def _crash_exit(value):
    os._exit(3)


def _crash_kill(value):
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_segfault(value):
    import ctypes

    ctypes.string_at(0)


@pytest.mark.parametrize("crash", [_crash_exit, _crash_kill, _crash_segfault],
                         ids=["os._exit", "SIGKILL", "segfault"])
def test_worker_death_is_a_clear_error_within_seconds(crash):
    parent = os.getpid()
    s = pd.Series(range(6))

    def maybe_crash(value):
        if value == 4 and os.getpid() != parent:
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


@pytest.mark.parametrize("pool", ["processes", "warm-processes"])
@pytest.mark.parametrize("target", ["process", "process-group"])
def test_ctrl_c_stops_everything_within_two_seconds(target, pool, tmp_path):
    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, script, pool], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
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


def test_forked_workers_die_with_a_killed_parent():
    """SIGKILL leaves the parent no chance to clean up: its forked workers
    die with it, and the next call removes its scratch directory."""
    script = os.path.join(os.path.dirname(__file__), "interrupt_script.py")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    # The workers' function never returns.
    proc = subprocess.Popen([sys.executable, script, "stuck"], stdout=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    workers: list[psutil.Process] = []
    try:
        lines = _read_lines_until(
            proc, lambda ls: sum(x.startswith("worker") for x in ls) >= 2, timeout=60)
        parent = int(next(x for x in lines if x.startswith("parent")).split()[1])
        workers = [psutil.Process(int(x.split()[1])) for x in lines if x.startswith("worker")]
        assert all(w.ppid() == parent for w in workers)  # forked, not a pool's
        proc.kill()
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived their parent: {alive}"
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
    out, err = proc.communicate(timeout=120)
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
    commands = frame.parallel.apply(where, axis=1)
    return "pool" if "loky" in " ".join(commands) else "forked"

pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=10, progress=False)
seen = [workers(), workers(), str(len(psutil.Process().children()))]
CHANGE
seen.append(workers())
print(*seen)
"""


@pytest.mark.parametrize("change, then", [
    ("pass", "forked"),
    # A progress bar leaves no thread behind (tqdm's monitor would).
    ("frame.parallel(progress=True).apply(where, axis=1)", "forked"),
    ("pandas_parallel.config(fork=False)", "pool"),
    ("threading.Thread(target=threading.Event().wait, daemon=True).start()", "pool"),
    pytest.param("ctypes.CDLL(ctypes.util.find_library('gomp'))", "pool",
                 marks=pytest.mark.skipif(ctypes.util.find_library("gomp") is None,
                                          reason="needs GNU OpenMP")),
])
def test_calls_fork_only_while_it_is_safe(tmp_path, change, then):
    """Each call forks its workers (none outlive it) while the process has a
    single thread and no OpenMP runtime; with ``fork=False``, another thread
    running, or libgomp loaded (its thread pool hangs in a forked child),
    calls run on the warm loky pool."""
    out = _run_script(tmp_path, START_METHODS.replace("CHANGE", change))
    assert out.split() == ["forked", "forked", "0", then]


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
    from pandas_parallel import executor, pipeline

    auto = pandas_parallel.Options(progress="auto")
    monkeypatch.setattr(executor, "interactive", lambda: False)
    assert not pipeline._show_progress(auto, 60.0)
    monkeypatch.setattr(executor, "interactive", lambda: True)
    assert pipeline._show_progress(auto, 60.0)
    assert not pipeline._show_progress(auto, 0.5)
    assert pipeline._show_progress(pandas_parallel.Options(progress=True), 0.1)


def test_debug_log_tells_the_plan(caplog):
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.Series(np.arange(8.0)).parallel.map(lambda v: v)
    text = caplog.text
    assert "parallel on 2 loky workers" in text and "chunks" in text
    assert "transport:" in text and "combined" in text
