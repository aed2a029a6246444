"""Cluster backends against a real ``distributed.LocalCluster`` (separate
worker processes on 127.0.0.1, started and closed here), and a local Ray
runtime when Ray is installed."""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, given, settings

import pandas_parallel
from pandas_parallel import transport
from pandas_parallel.backends import clusters, names
from pandas_parallel.planning import costs
from tests.conftest import recording_runs
from tests.helpers import assert_same, check_like_pandas
from tests.strategies import frames

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
dask = pytest.importorskip("dask")
pytestmark = pytest.mark.leaves_threads


def _child_processes() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())]


def test_without_a_client_the_error_says_how_to_make_one():
    if distributed.client._get_global_client() is not None:
        pytest.skip("a dask client from another test is still the default")
    df = pd.DataFrame({"a": range(10)})
    with pytest.raises(RuntimeError, match="Client"):
        df.parallel(backend="dask", serial_fallback=False).apply(lambda r: r.a, axis=1)


@pytest.fixture(scope="module")
def dask_client():
    # One failure per task: a worker killed by the function fails the call
    # at once instead of taking down a replacement worker three more times.
    before = {p.pid for p in _child_processes()}  # e.g. the local pool's workers
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    started = [p for p in _child_processes() if p.pid not in before]
    assert len(started) >= 2, "the cluster runs its workers in their own processes"
    yield client
    client.close()
    cluster.close()
    # Nannies and workers, including any the cluster started to replace one.
    cluster_processes = [p for p in _child_processes() if p.pid not in before]
    _, alive = psutil.wait_procs(cluster_processes, timeout=30)
    assert not alive, f"dask worker processes left running: {alive}"


@pytest.fixture
def on_dask(dask_client):
    dask_client.wait_for_workers(2, timeout=60)
    with pandas_parallel.config(backend="dask", chunk_size=3, serial_fallback=False,
                                progress=False):
        yield dask_client


def row_sum(row):
    return sum(len(repr(v)) for v in row)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=frames(max_rows=12))
def test_apply_rows_like_pandas(on_dask, df):
    check_like_pandas(lambda: df.apply(row_sum, axis=1),
                      lambda: df.parallel.apply(row_sum, axis=1))


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=frames(max_rows=12, max_cols=1))
def test_map_like_pandas(on_dask, df):
    s = df.iloc[:, 0]
    check_like_pandas(lambda: s.map(repr), lambda: s.parallel.map(repr))


def test_groupby_apply_and_transform_like_pandas(on_dask):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"k": rng.integers(0, 9, 200), "v": rng.normal(size=200),
                       "s": [f"s{i % 5}" for i in range(200)]})
    gb = df.groupby("k")
    check_like_pandas(lambda: gb.apply(lambda g: g.v.max() - g.v.min()),
                      lambda: gb.parallel.apply(lambda g: g.v.max() - g.v.min()))
    check_like_pandas(lambda: gb["v"].transform(lambda v: v - v.mean()),
                      lambda: gb["v"].parallel.transform(lambda v: v - v.mean()))


def test_joblib_parallel_config_sends_chunks_to_the_cluster(dask_client):
    dask_client.wait_for_workers(2, timeout=60)
    df = pd.DataFrame({"a": range(40)})

    def where(row):
        return os.getpid()

    with joblib.parallel_config(backend="dask"), pandas_parallel.config(
            chunk_size=5, serial_fallback=False):
        pids = set(df.parallel.apply(where, axis=1))
    workers = {info["pid"] for info in
               dask_client.run(lambda: {"pid": os.getpid()}).values()}
    assert pids <= workers and os.getpid() not in pids


def fails_on_17(row):
    if row["a"] == 17:
        raise KeyError("no such customer")
    return 1


def test_error_keeps_its_type_and_names_the_row(on_dask):
    df = pd.DataFrame({"a": range(30)})
    with pytest.raises(KeyError) as info:
        df.parallel.apply(fails_on_17, axis=1)
    notes = "\n".join(info.value.__notes__)
    assert "chunk" in notes and "17" in notes


def killed_on_17(row):
    if row["a"] == 17:
        os.kill(os.getpid(), signal.SIGKILL)
    return 1


def test_worker_killed_mid_run_is_a_clear_error(on_dask):
    df = pd.DataFrame({"a": range(30)})
    with pytest.raises(pandas_parallel.WorkerCrashedError, match="dask worker died"):
        df.parallel.apply(killed_on_17, axis=1)
    # The cluster replaces the worker, and the next call works.
    on_dask.wait_for_workers(2, timeout=60)
    check_like_pandas(lambda: df.apply(row_sum, axis=1),
                      lambda: df.parallel.apply(row_sum, axis=1))


WORKER_MODEL: dict = {}


def load_worker_model(directory):
    WORKER_MODEL["pid"] = os.getpid()
    open(os.path.join(directory, f"{os.getpid()}-{time.monotonic_ns()}"), "w").close()


def scored_by_this_worker(row):
    if WORKER_MODEL.get("pid") != os.getpid():
        raise RuntimeError("not set up in this process")
    return row["a"] * 2


def test_initializer_once_per_dask_worker_and_kept_for_the_next_call(on_dask, tmp_path):
    df = pd.DataFrame({"a": range(30)})
    expected = df.apply(lambda row: row["a"] * 2, axis=1)
    workers = set(on_dask.run(os.getpid).values())
    for _ in range(2):
        got = df.parallel(initializer=load_worker_model, initargs=(str(tmp_path),)).apply(
            scored_by_this_worker, axis=1)
        assert pandas_parallel.last_run().backend == "dask"
        assert_same(expected, got)
    pids = [int(name.split("-")[0]) for name in os.listdir(tmp_path)]
    ran_on = set(pids) & workers
    assert ran_on and len([p for p in pids if p in workers]) == len(ran_on)  # once each


def test_errors_coerce_on_dask(on_dask):
    df = pd.DataFrame({"a": range(30)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = df.parallel(errors="coerce").apply(fails_on_17, axis=1)
    assert pandas_parallel.last_run().backend == "dask"
    expected = df.apply(lambda row: None if row["a"] == 17 else fails_on_17(row), axis=1)
    assert_same(expected, got)
    [warning] = [w.message for w in caught if w.category is pandas_parallel.RowErrorsWarning]
    [(label, exc)] = warning.failures
    assert label == 17 and isinstance(exc, KeyError)


def test_the_transfer_rate_to_the_workers_is_measured_once(on_dask):
    clusters.MEASURED.forget()
    rate = clusters.dask_bytes_per_second()
    assert rate is not None and rate > 1e6  # bytes a second, loopback
    began = time.perf_counter()
    assert clusters.dask_bytes_per_second() == rate  # remembered per scheduler
    assert time.perf_counter() - began < 0.01


def test_chunks_go_straight_to_the_workers_unless_the_client_says_otherwise(on_dask):
    """dask's default scatter hands the data to the scheduler, which passes it
    on: counted here at the scheduler (it runs in this process)."""
    scheduler = on_dask.cluster.scheduler
    original = scheduler.handlers["scatter"]
    through_scheduler = []

    async def counted(*args, **kwargs):
        through_scheduler.append(kwargs.get("data", {}).keys())
        return await original(*args, **kwargs)

    df = pd.DataFrame({"a": np.arange(30.0), "b": list("xyz") * 10})
    scheduler.handlers["scatter"] = counted
    clusters.MEASURED.forget()
    try:
        with recording_runs() as runs:
            assert_same(df.apply(row_sum, axis=1), df.parallel.apply(row_sum, axis=1))
        assert clusters.dask_scatters_direct(on_dask)
        assert through_scheduler == []
        on_dask.direct_to_workers = False  # as Client(direct_to_workers=False) sets it
        with recording_runs() as runs:
            assert_same(df.apply(row_sum, axis=1), df.parallel.apply(row_sum, axis=1))
        assert len(through_scheduler) >= 2  # the program, then the chunks
    finally:
        scheduler.handlers["scatter"] = original
        on_dask.direct_to_workers = None
    assert runs.backends() == {"dask"}


def test_frames_travel_in_band_as_arrow_or_pickle():
    exact = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=pd.Index(["p", "q"], name="i"))
    payload = transport.in_band(exact, "auto")
    assert isinstance(payload, transport.ArrowBytes)
    pd.testing.assert_frame_equal(payload.load(), exact)
    mixed = pd.DataFrame({"a": [1, "x"]})
    assert isinstance(transport.in_band(mixed, "auto"), transport.Inline)
    assert isinstance(transport.in_band(exact, "pickle"), transport.Inline)


def test_cluster_chunks_are_fewer_and_larger():
    local = costs.chunk_count(1e-5, 1_000_000, 4, 0)
    remote = costs.chunk_count(1e-5, 1_000_000, 4, 0, cluster=True)
    assert remote < local
    assert not names.is_cluster("loky") and names.is_cluster("dask")


@pytest.mark.parametrize("n_jobs, expected", [(None, 2), (-1, 2), (1, 1), (-2, 1)])
def test_n_jobs_counts_the_cluster_threads(dask_client, n_jobs, expected):
    dask_client.wait_for_workers(2, timeout=60)
    assert clusters.capacity("dask", n_jobs) == expected


def test_ray_backend():
    ray = pytest.importorskip("ray", reason="Ray is not installed on this machine")
    before = {p.pid for p in _child_processes()}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Ray's workers do not import this test module: functions travel by value.
    weigh = lambda row: sum(len(repr(v)) for v in row)  # noqa: E731

    def fail_on_17(row):
        if row["a"] == 17:
            raise KeyError("no such customer")
        return 1

    try:
        df = pd.DataFrame({"a": range(40), "b": np.arange(40.0)})
        with pandas_parallel.config(backend="ray", chunk_size=10, serial_fallback=False):
            check_like_pandas(lambda: df.apply(weigh, axis=1),
                              lambda: df.parallel.apply(weigh, axis=1))
            check_like_pandas(lambda: df.groupby(df.a % 3).apply(lambda g: g.b.sum()),
                              lambda: df.groupby(df.a % 3).parallel.apply(lambda g: g.b.sum()))
            with pytest.raises(KeyError) as info:
                df.parallel.apply(fail_on_17, axis=1)
            assert "17" in "\n".join(info.value.__notes__)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = df.parallel(errors="coerce").apply(fail_on_17, axis=1)
            assert_same(df.apply(lambda r: None if r["a"] == 17 else 1, axis=1), got)
            assert [label for label, _ in caught[-1].message.failures] == [17]
            model: dict = {}
            set_up = lambda weight: model.update(weight=weight)  # noqa: E731
            weighted = lambda row: row["a"] * model["weight"]  # noqa: E731
            check_like_pandas(lambda: df.apply(lambda row: row["a"] * 3, axis=1),
                              lambda: df.parallel(initializer=set_up, initargs=(3,)).apply(
                                  weighted, axis=1))
            killed = lambda row: os.kill(os.getpid(), signal.SIGKILL) if row.a == 17 else 1  # noqa: E731
            with pytest.raises(pandas_parallel.WorkerCrashedError, match="ray worker died"):
                df.parallel.apply(killed, axis=1)
    finally:
        ray.shutdown()
        started = [p for p in _child_processes() if p.pid not in before]
        _, alive = psutil.wait_procs(started, timeout=30)
        for process in alive:
            process.kill()
        assert not alive, f"Ray processes left running after shutdown: {alive}"
