"""Data that lives on the cluster: the command line and ``process_file`` with
``--backend dask --scheduler ADDRESS`` (and Ray) have each worker read its
own Parquet row groups and write its own output part. Checked on a real
``distributed.LocalCluster`` (and a local Ray runtime) over a dataset of many
files, against pandas on the whole dataset; this process must not read the
input (its streaming reader is made to fail)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import warnings

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pandas_parallel import io, reading
from pandas_parallel.backends import cluster_io
from pandas_parallel.errors import RowErrorsWarning
from tests.test_cli import FUNCTIONS, _frame, _load, _run, check_shouted

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
dask = pytest.importorskip("dask")
pytestmark = pytest.mark.leaves_threads

ROWS = 1000


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of two worker processes; its address. A worker killed
    by the function fails the run at once (no retries)."""
    before = {p.pid for p in _children()}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR)
    yield cluster.scheduler_address
    cluster.close()
    started = [p for p in _children() if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"dask processes left running: {[p.cmdline() for p in alive]}"


def _children() -> list[psutil.Process]:
    """Child processes but the resource trackers (they exit with this one)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
    return found


@pytest.fixture
def funcs(tmp_path):
    path = tmp_path / "jobs.py"
    path.write_text(FUNCTIONS)
    return str(path)


@pytest.fixture
def no_reading_here(monkeypatch):
    """This process must not stream the input itself."""
    def refuse(*args, **kwargs):
        raise AssertionError("the input was read by this process, not the workers")

    monkeypatch.setattr(reading, "read_batches", refuse)
    monkeypatch.setattr(reading, "read_whole", refuse)


@pytest.fixture
def dataset(tmp_path):
    """Seven files of different sizes (one empty), in row groups of 37 rows."""
    df = _frame(ROWS)
    directory = tmp_path / "in"
    directory.mkdir()
    cuts = [0, 90, 90, 300, 410, 640, 777, ROWS]
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        table = pa.Table.from_pandas(df.iloc[a:b], preserve_index=False)
        pq.write_table(table, directory / f"f{i}.parquet", row_group_size=37)
    return directory


def test_pieces_are_whole_row_groups_in_reading_order(dataset):
    found = cluster_io.pieces(str(dataset), 100)
    assert [p.number for p in found] == list(range(len(found)))
    assert sum(p.rows for p in found) == ROWS
    offsets = np.cumsum([0] + [p.rows for p in found])[:-1]
    assert [p.offset for p in found] == list(offsets)
    assert all(p.rows <= 100 + 36 for p in found)
    assert len({p.path for p in found}) == 6  # the empty file has no piece


def test_apply_on_a_dask_scheduler(scheduler, dataset, funcs, tmp_path, no_reading_here):
    out = tmp_path / "out.parquet"
    assert _run("apply", dataset, "-f", f"{funcs}:score", "-o", out, "--backend", "dask",
                "--scheduler", scheduler, "--batch-rows", 100, "--no-progress") == 0
    expected = pd.read_parquet(dataset).apply(_load(funcs, "score"), axis=1).to_frame("result")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert sorted(os.listdir(tmp_path)) == ["in", "jobs.py", "out.parquet"]  # no parts left


def test_map_into_a_directory_of_parts_keeps_the_schema(scheduler, tmp_path, funcs,
                                                        no_reading_here):
    table = pa.Table.from_pandas(_frame(ROWS), preserve_index=False).cast(pa.schema([
        ("amount", pa.float32()), ("name", pa.string()), ("store", pa.int16())]))
    source = tmp_path / "in.parquet"
    pq.write_table(table, source, row_group_size=64)
    out = tmp_path / "out"
    assert _run("map", source, "-f", f"{funcs}:shout", "--column", "name", "--into", "loud",
                "-o", f"{out}/", "--backend", "dask", "--scheduler", scheduler,
                "--batch-rows", 200, "--no-progress") == 0
    parts = sorted(os.listdir(out))
    assert parts == [cluster_io.part_name(i, "parquet") for i in range(len(parts))]
    assert len(parts) == len(cluster_io.pieces(str(source), 200)) > 1
    check_shouted(source, out, funcs)


def test_a_failing_function_leaves_the_target_as_it_was(scheduler, dataset, funcs, tmp_path,
                                                        capsys, no_reading_here):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"the previous output")
    code = _run("apply", dataset, "-f", f"{funcs}:fails_on_7", "-o", f"{out}/",
                "--backend", "dask", "--scheduler", scheduler, "--batch-rows", 100,
                "--no-progress")
    err = capsys.readouterr().err
    assert code == 1, err
    assert "customer 7 is missing" in err and "f0.parquet" in err and "rows 0-" in err
    assert os.listdir(out) == ["old.parquet"]
    assert sorted(os.listdir(tmp_path)) == ["in", "jobs.py", "out"]  # no parts left


def test_a_worker_killed_midway_exits_3(scheduler, dataset, funcs, tmp_path, capsys,
                                        no_reading_here):
    out = tmp_path / "out.parquet"
    code = _run("apply", dataset, "-f", f"{funcs}:dies_on_3", "-o", out, "--backend", "dask",
                "--scheduler", scheduler, "--batch-rows", 100, "--no-progress")
    assert code == 3, capsys.readouterr().err
    assert not out.exists()
    distributed.Client(scheduler).close()  # the nanny restarted the worker


def test_process_file_coerce_with_the_active_client(scheduler, dataset, funcs, tmp_path,
                                                    no_reading_here):
    out = tmp_path / "out.parquet"
    func = _load(funcs, "fails_on_7_and_11")
    with distributed.Client(scheduler), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = io.process_file(str(dataset), func, str(out), backend="dask",
                                  errors="coerce", batch_rows=60, progress=False)
    assert (summary.rows_in, summary.rows_out) == (ROWS, ROWS)
    [warning] = [w.message for w in caught if isinstance(w.message, RowErrorsWarning)]
    assert [label for label, _ in warning.failures] == [7, 11]
    expected = pd.read_parquet(dataset).apply(
        lambda row: None if row.name in (7, 11) else row["amount"], axis=1).to_frame("result")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_resume_is_refused_on_the_cluster_path(scheduler, dataset, funcs, tmp_path):
    with distributed.Client(scheduler), pytest.raises(ValueError, match="resume"):
        io.process_file(str(dataset), _load(funcs, "score"), str(tmp_path / "o.parquet"),
                        backend="dask", resume=True)


def test_on_a_local_ray_runtime(dataset, funcs, tmp_path, no_reading_here):
    ray = pytest.importorskip("ray", reason="Ray is not installed on this machine")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "out"
        summary = io.process_file(str(dataset), _load(funcs, "add_tax"), f"{out}/",
                                  operation="partitions", backend="ray", batch_rows=150,
                                  progress=False)
        assert summary.rows_out == ROWS
        expected = _load(funcs, "add_tax")(pd.read_parquet(dataset))
        pd.testing.assert_frame_equal(pd.read_parquet(out).reset_index(drop=True), expected)
        # A failure cancels the rest (their workers live on): no part is left.
        failed = tmp_path / "failed"
        with pytest.raises(KeyError, match="customer 7"):
            io.process_file(str(dataset), _load(funcs, "fails_on_7"), f"{failed}/",
                            backend="ray", batch_rows=50, progress=False)
        assert sorted(os.listdir(tmp_path)) == ["in", "jobs.py", "out"]
    finally:
        ray.shutdown()
