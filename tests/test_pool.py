"""The warm loky pool (Python's start method "spawn", as on macOS and
Windows): a call that finds it stopped, while its workers start."""

from __future__ import annotations

import os
import select
import socket

import numpy as np
import pandas as pd
import pytest

import pandas_parallel
from tests.helpers import spawn_only

# This process's end of the line workers signal on; set by the test.
_signals: socket.socket | None = None


def _note_where_it_ran(part: pd.DataFrame, parent: int, port: int) -> pd.DataFrame:
    """Tag rows with the process that ran them. A worker signals that it
    finished a chunk; a chunk run here waits for one such signal, so this
    process can never run more chunks than the workers finished."""
    if os.getpid() == parent:
        assert _signals is not None
        ready, _, _ = select.select([_signals], [], [], 20)
        if not ready:
            raise AssertionError("no worker finished a chunk: the pool never took over")
        _signals.accept()[0].close()
    else:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    return part.assign(pid=os.getpid())


@pytest.fixture
def signals():
    global _signals
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        _signals = server
        try:
            yield server.getsockname()[1]
        finally:
            _signals = None


def test_a_starting_pool_takes_over_once_it_finishes_a_chunk(signals):
    """While a stopped pool starts again, this process runs waiting chunks
    itself, and stops as soon as the pool has finished one: the pool runs
    the rest. (Before, this process ran every chunk not yet submitted: a
    first call in a notebook ran nearly serially.)"""
    frame = pd.DataFrame({"a": np.arange(120.0)})
    pandas_parallel.shutdown_pool()  # known stopped, though earlier calls used it
    with spawn_only(), pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False,
                                              chunk_size=5, progress=False):
        result = frame.parallel.map_partitions(_note_where_it_ran, os.getpid(), signals)
    pd.testing.assert_frame_equal(result.drop(columns="pid"), frame)
    ran_here = (result["pid"] == os.getpid()).to_numpy().reshape(24, 5).all(axis=1).sum()
    # At least the first chunk (workers take a good part of a second to
    # import pandas); at most one per chunk in flight on the pool (2 each).
    assert 1 <= ran_here <= 4, f"this process ran {ran_here} of 24 chunks"
    assert pandas_parallel.last_run().backend == "pool"
