"""Benchmark: the local workers beside a dask LocalCluster and a local Ray
runtime, side by side in one run.

Usage::

    python benchmarks/cluster.py [--repeat 5] [--output docs/cluster_benchmarks.md]

Starts a ``distributed.LocalCluster`` with 2 worker processes (one thread
each) on 127.0.0.1 and, if Ray is installed, a local Ray runtime with 2
CPUs; then for each workload times serial pandas, the local workers (the
default: forked, kept between calls), ``backend="dask"`` and
``backend="ray"``, interleaved, warm (workers and clusters already up), and
reports medians, speed-ups over serial pandas, and each cluster's share of
the local speed-up. On one machine a cluster can only lose to the local
workers (same cores, plus its scheduler and transfers over sockets): the
figures show what that costs.
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


def measure(name: str, repeat: int, clusters: list[str]) -> dict[str, float]:
    workload = WORKLOADS[name]
    data = workload.make(workload.size)
    backends = {"local": "loky", **{c: c for c in clusters}}
    runs: dict[str, list[float]] = {"serial": [], **{kind: [] for kind in backends}}
    for backend in backends.values():  # start workers, ship the function once
        with pandas_parallel.config(serial_fallback=False, backend=backend):
            workload.parallel(data)
    for _ in range(repeat):
        seconds, expected = _timed(workload.serial, data)
        runs["serial"].append(seconds)
        for kind, backend in backends.items():
            with pandas_parallel.config(backend=backend):
                seconds, actual = _timed(workload.parallel, data)
            _check(expected, actual)
            assert pandas_parallel.last_run().backend != "serial", (name, kind)
            runs[kind].append(seconds)
    return {kind: statistics.median(values) for kind, values in runs.items()}


def start_ray() -> bool:
    try:
        import ray
    except ImportError:
        print("Ray is not installed: no Ray column", file=sys.stderr)
        return False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=DEFAULT_WORKLOADS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    pandas_parallel.config(progress=False)
    clusters = ["dask"] + (["ray"] if start_ray() else [])
    names = {"dask": "dask LocalCluster, 2 workers", "ray": "Ray, local, 2 CPUs"}
    # One row per place the call ran: a wide table per backend overflows the page.
    rows = ["| workload | ran on | seconds | speed-up | share of the local speed-up |",
            "|---|---|---|---|---|"]
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster):
            for name in args.workloads:
                m = measure(name, args.repeat, clusters)
                local = m["serial"] / m["local"]
                rows.append(f"| {WORKLOADS[name].description} | serial pandas | "
                            f"{m['serial']:.2f} | 1.00x | |")
                rows.append(f"| | local workers | {m['local']:.2f} | {local:.2f}x | 100% |")
                for c in clusters:
                    speedup = m["serial"] / m[c]
                    rows.append(f"| | {names[c]} | {m[c]:.2f} | {speedup:.2f}x | "
                                f"{speedup / local:.0%} |")
                print("\n".join(rows[-2 - len(clusters):]), flush=True)
    finally:
        if "ray" in clusters:
            import ray

            ray.shutdown()
    write_table(f"pandas {pd.__version__}, {os.cpu_count()} CPUs; warm medians of "
                f"{args.repeat} interleaved runs", rows, args.output)


if __name__ == "__main__":
    main()
