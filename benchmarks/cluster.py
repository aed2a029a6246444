"""Benchmark: the local pool beside a dask LocalCluster, side by side in one run.

Usage::

    python benchmarks/cluster.py [--repeat 3] [--output docs/cluster_benchmarks.md]

Starts a ``distributed.LocalCluster`` with 2 worker processes (one thread
each) on 127.0.0.1, then for each workload times serial pandas, the local
loky pool and ``backend="dask"``, interleaved, warm (pool and cluster
already up), and reports medians and speed-ups over serial pandas. On one
machine the cluster can only lose to the local pool (same cores, plus the
scheduler and in-band transfer): the figures show what that costs.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS, write_table

import pandas_parallel

DEFAULT_WORKLOADS = ["rowwise_heavy", "string_map", "groupby_apply"]


def _timed(func, data) -> tuple[float, object]:
    began = time.perf_counter()
    result = func(data)
    return time.perf_counter() - began, result


def _check(expected, actual) -> None:
    if isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected)
    else:
        pd.testing.assert_frame_equal(actual, expected)


def measure(name: str, repeat: int) -> dict[str, float]:
    workload = WORKLOADS[name]
    data = workload.make(workload.size)
    runs: dict[str, list[float]] = {"serial": [], "local": [], "dask": []}
    with pandas_parallel.config(serial_fallback=False):
        workload.parallel(data)  # start the local workers
        with pandas_parallel.config(backend="dask"):
            workload.parallel(data)  # ship the function to the cluster once
    for _ in range(repeat):
        seconds, expected = _timed(workload.serial, data)
        runs["serial"].append(seconds)
        for kind, backend in (("local", "loky"), ("dask", "dask")):
            with pandas_parallel.config(backend=backend):
                seconds, actual = _timed(workload.parallel, data)
            _check(expected, actual)
            runs[kind].append(seconds)
    return {kind: statistics.median(values) for kind, values in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=DEFAULT_WORKLOADS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    pandas_parallel.config(progress=False)
    rows = ["| workload | serial pandas (s) | local pool (s) | speed-up | "
            "dask LocalCluster, 2 workers (s) | speed-up |", "|---|---|---|---|---|---|"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster):
        for name in args.workloads:
            m = measure(name, args.repeat)
            rows.append(f"| {WORKLOADS[name].description} | {m['serial']:.2f} | "
                        f"{m['local']:.2f} | {m['serial'] / m['local']:.2f}x | "
                        f"{m['dask']:.2f} | {m['serial'] / m['dask']:.2f}x |")
            print(rows[-1], flush=True)
    write_table(f"pandas {pd.__version__}, {os.cpu_count()} CPUs; warm medians of "
                f"{args.repeat} interleaved runs", rows, args.output)


if __name__ == "__main__":
    main()
