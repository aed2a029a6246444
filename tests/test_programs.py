"""Shipping the program: the caller's own code by value, large objects
once per content through the store, and what a worker keeps."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import psutil
import pytest

import pandas_parallel
from pandas_parallel import programs
from pandas_parallel.programs import Program
from tests.helpers import assert_same


@pytest.fixture
def project(tmp_path, monkeypatch):
    """Modules of the caller's own project, in a directory on ``sys.path``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield write
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "")).startswith(str(tmp_path)):
            del sys.modules[name]


def test_the_callers_modules_are_user_code_and_installed_packages_are_not(project):
    helper = project("pp_kind", "X = 1\n")
    assert programs.user_module(helper)
    assert programs.user_module(sys.modules["tests.helpers"])
    assert not programs.user_module(np) and not programs.user_module(pd)
    assert not programs.user_module(os)
    assert not programs.user_module(pandas_parallel)  # this library travels by reference


def test_a_function_of_the_callers_module_travels_with_its_globals_current(project):
    helper = project("pp_values", """
        LIMIT = 3

        def over(x):
            return x > LIMIT
        """)
    helper.LIMIT = 7
    blob = programs.pickled(Program(None, helper.over, (), {})).blob
    del sys.modules["pp_values"]  # as in a worker that never imported it
    program = programs.decode(programs.Encoded("test-values", blob))
    assert program.func(5) is False and program.func(8) is True
    assert program.func.__globals__ is not helper.__dict__


def test_a_module_that_cannot_travel_by_value_travels_by_reference(project, forced):
    helper = project("pp_locked", """
        import threading
        LOCK = threading.Lock()

        def guarded(x):
            with LOCK:
                return x * 2
        """)
    s = pd.Series(np.arange(40))
    assert_same(s.map(helper.guarded), s.parallel.map(helper.guarded))
    assert_same(s.map(helper.guarded), s.parallel.map(helper.guarded))  # kept / warm
    assert programs.CALLER_MODULES.refused.get("pp_locked") == id(helper)


def test_a_large_buffer_is_stored_once_per_content_and_removed_when_unused():
    table = np.arange(2**19, dtype=np.float64)  # 4 MB: apart from the pickle
    first = programs.STORE.publish(programs.pickled(Program(None, len, (table,), {})))
    again = programs.STORE.publish(programs.pickled(Program(None, len, (table,), {})))
    assert [r.key for r in first.buffers] == [r.key for r in again.buffers]
    assert first.digest == again.digest
    path = first.buffers[0].path
    programs.STORE.release(first)
    programs.STORE.release(again)
    assert os.path.exists(path)  # kept for the next call
    table[0] = -1.0
    changed = programs.STORE.publish(programs.pickled(Program(None, len, (table,), {})))
    assert changed.buffers[0].key != first.buffers[0].key
    programs.STORE.release(changed)
    assert not os.path.exists(path)  # the old content: used by no call any more
    pandas_parallel.shutdown_pool()
    assert not os.path.exists(os.path.dirname(changed.buffers[0].path))


def test_a_worker_decodes_a_program_once_and_maps_its_buffers_copy_on_write():
    table = np.arange(2**19, dtype=np.float64)
    encoded = programs.STORE.publish(programs.pickled(Program(None, len, (table,), {})))
    try:
        program = programs.decode(encoded)
        assert programs.decode(encoded.known()) is program  # kept, by content
        shipped = program.args[0]
        np.testing.assert_array_equal(shipped, table)
        shipped[0] = 99.0  # the function may write: copy-on-write, its own
        assert table[0] == 0.0
        with open(encoded.buffers[0].path, "rb") as file:
            assert np.frombuffer(file.read(8), dtype=np.float64)[0] == 0.0
    finally:
        programs.STORE.release(encoded)
        pandas_parallel.shutdown_pool()


KILLED_PARENT = """
import os, sys, numpy as np, pandas as pd, pandas_parallel
table = np.arange(2**20, dtype=np.float64)
s = pd.Series(np.arange(100))
s.parallel(fork=False, serial_fallback=False, n_jobs=2, chunk_size=10).map(
    lambda x: table[x])
print("STORE", pandas_parallel.programs.STORE.directory, flush=True)
sys.stdin.read()
"""


def test_a_killed_parents_store_is_removed_by_the_next_process(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    workers: list[psutil.Process] = []
    try:
        line = process.stdout.readline()
        assert line.startswith("STORE "), line
        directory = line.split()[1]
        assert os.path.isdir(directory)
        workers = psutil.Process(process.pid).children(recursive=True)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=30)  # they end with their parent
    assert not alive
    subprocess.run([sys.executable, "-c", "import pandas_parallel"], check=True, timeout=120)
    assert not os.path.exists(directory)
