"""Forked workers kept between calls: the first call forks them, later calls
send them their chunks; each case compares with pandas and checks which
workers ran (forked for the call, or kept) and that none is left astray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from pandas_parallel.backends import crew as crew_module
from pandas_parallel.backends import forked
from tests.conftest import ready_to_fork, recording_runs, worker_processes
from tests.helpers import assert_same, check_calls_from_threads

FRAME = pd.DataFrame({"a": np.arange(60.0), "g": np.arange(60) % 7})


def weigh(row):
    return row["a"] * 2 + row["g"]


@pytest.fixture
def crew():
    """No kept workers at the start; forced parallel on forked workers;
    afterwards only the kept ones may be left."""
    ready_to_fork()
    with (recording_runs() as runs,
          pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=7,
                                 progress=False, fork=True)):
        yield runs
    assert runs.backends() <= {"forked", "forkserver", "serial"}, runs.backends()
    kept = kept_pids()
    forked_ones = [p for p in worker_processes() if p.pid not in kept and not other_kind(p)]
    _, alive = psutil.wait_procs(forked_ones, timeout=10)
    assert not alive, f"forked workers neither kept nor stopped: {alive}"
    pandas_parallel.shutdown_pool()
    _, alive = psutil.wait_procs(worker_processes(), timeout=10)
    assert not alive, f"shutdown_pool() left workers running: {alive}"


def other_kind(process: psutil.Process) -> bool:
    """A worker of the fork server (or the server), not forked here."""
    try:
        return process.ppid() != os.getpid() or "forkserver" in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False


def kept_pids() -> set[int]:
    return {w.pid for w in forked.CREW.workers}


def call_and_check() -> pandas_parallel.Run:
    assert_same(FRAME.apply(weigh, axis=1), FRAME.parallel.apply(weigh, axis=1))
    run = pandas_parallel.last_run()
    assert run.backend == "forked"
    return run


def test_the_first_call_forks_and_later_calls_use_the_same_workers(crew):
    assert call_and_check().start == "fork"
    first = kept_pids()
    assert len(first) == 2 and first == {p.pid for p in worker_processes()}
    for _ in range(3):
        assert call_and_check().start == "warm"
        assert kept_pids() == first
    # Other operations, other functions, a Series, a groupby: the same workers.
    s = pd.Series(np.arange(50.0), name="s")
    assert_same(s.map(lambda v: v * 3), s.parallel.map(lambda v: v * 3))
    expected = FRAME.groupby("g")["a"].transform(lambda v: v - v.mean())
    assert_same(expected, FRAME.groupby("g")["a"].parallel.transform(lambda v: v - v.mean()))
    assert pandas_parallel.last_run().start == "warm" and kept_pids() == first


def test_an_input_that_cannot_be_pickled_goes_to_a_worker_forked_for_it(crew):
    """Kept workers are sent their chunks pickled; a chunk holding a lock
    cannot be: a worker forked in the call holds it already."""
    frame = FRAME.assign(lock=[threading.Lock() for _ in range(len(FRAME))])
    call_and_check()
    assert_same(frame.apply(weigh, axis=1), frame.parallel.apply(weigh, axis=1))
    assert pandas_parallel.last_run() == pandas_parallel.Run("forked", 2, 9, "warm")
    assert len(kept_pids()) == 2


def test_a_kept_worker_killed_while_idle_is_replaced(crew):
    call_and_check()
    victim, survivor = sorted(kept_pids())
    os.kill(victim, signal.SIGKILL)
    psutil.Process(victim).wait(timeout=10)
    assert call_and_check().start == "warm"
    assert survivor in kept_pids() and victim not in kept_pids()
    assert len(kept_pids()) == 2


def test_a_failure_stops_the_workers_and_the_next_call_forks_anew(crew):
    call_and_check()
    with pytest.raises(ZeroDivisionError):
        FRAME.parallel.apply(lambda row: 1 // (int(row["a"]) - 30), axis=1)
    assert kept_pids() == set()
    assert call_and_check().start == "fork"


def test_idle_workers_are_retired(crew, monkeypatch):
    call_and_check()
    monkeypatch.setattr(crew_module, "IDLE_SECONDS", 0.0)
    before = kept_pids()
    assert call_and_check().start == "fork"  # retired before the call, forked anew
    assert not before & kept_pids()


def test_workers_forked_from_a_large_process_are_not_kept(crew, monkeypatch):
    """They would pin every page the process held when they forked."""
    monkeypatch.setattr(forked, "KEEP_RSS_BYTES", 0)
    assert call_and_check().start == "fork"
    assert kept_pids() == set()
    assert call_and_check().start == "fork"


def test_calls_from_threads_share_the_kept_workers_one_at_a_time(crew):
    """With threads running nothing is forked: one call at a time uses the
    kept workers, the others the fork server's; every result is its own."""
    call_and_check()
    check_calls_from_threads(FRAME, weigh)
    assert "forked" in crew.backends()


def test_a_large_input_is_not_sent_to_kept_workers(crew):
    """Forking new workers, which hold the input already, is cheaper than
    sending a large one to the kept ones (here without pricing the work)."""
    call_and_check()
    kept = kept_pids()
    large = pd.DataFrame({"a": np.arange(4_000_000.0), "b": 1.0})  # 64 MB
    with pandas_parallel.config(chunk_size=1_000_000):
        got = large.parallel.map_partitions(lambda part: part * 2)
    assert_same(large * 2, got)
    assert pandas_parallel.last_run().start == "fork"
    assert not kept & kept_pids()  # the kept ones were replaced by those
    small = FRAME.parallel.apply(weigh, axis=1)
    assert_same(FRAME.apply(weigh, axis=1), small)
    assert pandas_parallel.last_run().start == "warm"


def test_kept_workers_do_not_hold_another_programs_input_open(crew):
    """A subprocess started before a call reads its input to the end once
    this process closes it, while the workers forked by the call live on
    (they inherited the pipe's write end; holding it, they would keep the
    subprocess waiting for as long as they live)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read(); print('end of input')"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert_same(FRAME.apply(weigh, axis=1), FRAME.parallel.apply(weigh, axis=1))
        assert pandas_parallel.last_run().backend == "forked" and kept_pids()
        out, _ = child.communicate(timeout=30)  # closes its input, then reads
        assert out == "end of input\n" and child.returncode == 0
    finally:
        child.kill()
        child.wait()
