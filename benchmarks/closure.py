"""Benchmark: a function that holds a large object (a 500 MB lookup table in
its closure), on every local backend: time and peak memory against pandas.

Usage::

    python benchmarks/closure.py [--repeat 5] [--rows 12000] [--inner 240]
    python benchmarks/closure.py --baseline /path/to/an/older/checkout

Each backend runs ``--runs`` times, each in a fresh process: its first call
(workers forked for it, the pool started cold), then ``--repeat`` warm calls
interleaved with serial pandas; then the peak memory of one serial call and
of one warm call, each under a sampler (PSS of the process tree, plus what
``/dev/shm`` gained, shared memory counted once). Ratios are against the
serial median of the same process; the table shows medians and ranges over
all runs. ``--baseline`` runs another checkout of pandas_parallel the same
way in the same session (versions alternate, run by run), for a
before/after on one machine load. Every result is checked against pandas.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = {
    "forked": {"fork": True},
    "pool": {"fork": False},
    "threads": {"backend": "threading"},
}
TABLE_BYTES = 500 * 2**20


def make_score(table, inner: int):
    n = len(table)

    def score(x):
        i = (int(x) * 7919) % n
        total = 0.0
        for j in range(inner):
            total += table[(i + j * 104729) % n]
        return total

    return score


def child(backend: str, rows: int, inner: int, repeat: int) -> dict:
    import numpy as np
    import pandas as pd
    from peak_memory import PeakMemory

    import pandas_parallel

    table = np.random.default_rng(0).random(TABLE_BYTES // 8)
    score = make_score(table, inner)
    data = pd.Series(np.arange(rows))
    options = BACKENDS[backend]

    def parallel():
        return data.parallel(**options).map(score)

    began = time.perf_counter()
    first = parallel()
    first_seconds = time.perf_counter() - began
    ran = pandas_parallel.last_run()
    serial, warm = [], []
    for _ in range(repeat):
        began = time.perf_counter()
        expected = data.map(score)
        serial.append(time.perf_counter() - began)
        began = time.perf_counter()
        actual = parallel()
        warm.append(time.perf_counter() - began)
        pd.testing.assert_series_equal(actual, expected)
    pd.testing.assert_series_equal(first, expected)
    with PeakMemory() as serial_memory:
        data.map(score)
    with PeakMemory() as parallel_memory:
        parallel()
    return {"first": first_seconds, "serial": serial, "warm": warm,
            "ran": f"{ran.backend} ({ran.start})" if ran else "?",
            "warm_ran": pandas_parallel.last_run().backend,
            "peak_serial": serial_memory.peak, "peak_parallel": parallel_memory.peak}


def run(backend: str, args: argparse.Namespace, source: str | None) -> dict:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = source + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", backend, "--rows",
         str(args.rows), "--inner", str(args.inner), "--repeat", str(args.repeat)],
        capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(values: list[float], unit: str = "x") -> str:
    values = sorted(values)
    return (f"{statistics.median(values):.2f}{unit} "
            f"({values[0]:.2f}-{values[-1]:.2f})")


def row(name: str, results: list[dict]) -> str:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return f"| {name} | error: {errors[0]} | | | |"
    serial = [statistics.median(r["serial"]) for r in results]
    first = [s / r["first"] for s, r in zip(serial, results)]
    warm = [s / w for r in results for s, w in zip(r["serial"], r["warm"])]
    extra = [(r["peak_parallel"] - r["peak_serial"]) / TABLE_BYTES for r in results]
    how = sorted({r["ran"] for r in results})
    return (f"| {name} | {statistics.median(serial):.2f} | {_spread(first)} "
            f"({', '.join(how)}) | {_spread(warm)} | {_spread(extra, 'x')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5,
                        help="warm calls in each process")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per backend")
    parser.add_argument("--rows", type=int, default=12_000)
    parser.add_argument("--inner", type=int, default=240,
                        help="table lookups per row (about 100 us per row at 240)")
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    parser.add_argument("--baseline", default=None,
                        help="a checkout of another version to run the same way")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        print(json.dumps(child(args.child, args.rows, args.inner, args.repeat)))
        return
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print("| backend | serial pandas (s) | first call | warm (range) | extra peak memory "
          "(x the table) |")
    print("|---|---|---|---|---|")
    for backend in args.backends:
        versions = [("", None)]
        if args.baseline:
            versions.append((" (baseline)", args.baseline))
        results: dict[str, list[dict]] = {suffix: [] for suffix, _ in versions}
        for _ in range(args.runs):
            for suffix, source in versions:
                results[suffix].append(run(backend, args, source))
        for suffix, _ in versions:
            print(row(backend + suffix, results[suffix]), flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
