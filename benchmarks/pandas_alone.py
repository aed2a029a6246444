"""Benchmark: plain pandas vs pandas_parallel alone, side by side in one run
(``run.py`` adds every peer).

Usage::

    python benchmarks/pandas_alone.py                     # all workloads
    python benchmarks/pandas_alone.py --workloads rowwise_heavy --repeat 5
    python benchmarks/pandas_alone.py --no-fork           # on the warm loky pool, as in Jupyter

For each workload it reports the median of ``--repeat`` warm runs (workers
already started) of serial pandas and of ``.parallel``, interleaved so both
see the same machine load, and the median of ``--cold-repeat`` cold first
calls, each in a fresh Python process. Results are checked for equality.
Writes a Markdown table (``--output``) and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import WORKLOADS, write_table

import pandas_parallel


def _timed(func, data):
    began = time.perf_counter()
    result = func(data)
    return time.perf_counter() - began, result


def warm(name: str, repeat: int) -> dict:
    workload = WORKLOADS[name]
    data = workload.make(workload.size)
    with pandas_parallel.config(serial_fallback=False):
        workload.parallel(data)  # start the workers
    serial, parallel = [], []
    for _ in range(repeat):
        seconds, expected = _timed(workload.serial, data)
        serial.append(seconds)
        seconds, actual = _timed(workload.parallel, data)
        parallel.append(seconds)
        if isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(actual, expected)
        else:
            pd.testing.assert_frame_equal(actual, expected)
    return {"serial": statistics.median(serial), "parallel": statistics.median(parallel)}


def cold_once(name: str, kind: str) -> float:
    """In a fresh process: the first call of one kind (serial or parallel)."""
    workload = WORKLOADS[name]
    data = workload.make(workload.size)
    seconds, _ = _timed(getattr(workload, kind), data)
    return seconds


def cold(name: str, repeat: int, fork: bool) -> dict:
    """Each first call in its own fresh process, so neither is measured
    while the other's workers start or pandas warms up."""
    runs: dict[str, list[float]] = {"serial": [], "parallel": []}
    for _ in range(repeat):
        for kind in runs:
            out = subprocess.run([sys.executable, __file__, "--cold-once", name, kind,
                                  *([] if fork else ["--no-fork"])],
                                 capture_output=True, text=True, check=True)
            runs[kind].append(float(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(v) for k, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-repeat", type=int, default=3)
    parser.add_argument("--output", default=None, help="write the Markdown table here")
    parser.add_argument("--no-fork", action="store_true",
                        help="use the warm loky pool (as in a process with threads, "
                             "e.g. Jupyter) instead of workers forked for each call")
    parser.add_argument("--cold-once", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    pandas_parallel.config(progress=False, fork=not args.no_fork)
    if args.cold_once:
        print(cold_once(*args.cold_once))
        return
    rows = ["| workload | serial pandas (s) | parallel warm (s) | speed-up warm | "
            "parallel cold (s) | speed-up cold |", "|---|---|---|---|---|---|"]
    for name in args.workloads:
        w = warm(name, args.repeat)
        c = cold(name, args.cold_repeat, fork=not args.no_fork)
        rows.append(f"| {WORKLOADS[name].description} | {w['serial']:.2f} | "
                    f"{w['parallel']:.2f} | {w['serial'] / w['parallel']:.2f}x | "
                    f"{c['parallel']:.2f} | {c['serial'] / c['parallel']:.2f}x |")
        print(rows[-1], flush=True)
    workers = ("a warm loky pool (fork=False)" if args.no_fork
               else "forked for each call")
    write_table(f"pandas {pd.__version__}, {os.cpu_count()} CPUs, workers {workers}; "
                f"medians of {args.repeat} warm and {args.cold_repeat} cold runs",
                rows, args.output)


if __name__ == "__main__":
    main()
