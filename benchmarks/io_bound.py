"""I/O-bound benchmark: per-row HTTP requests to a local server that takes
50 ms per request. Serial pandas vs threads vs ``async def``, side by side.

Usage::

    python benchmarks/io_bound.py [--rows 400] [--output docs/io_benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pandas_parallel
from tests.slow_server import get, get_async, slow_server

LATENCY = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    with slow_server(LATENCY) as base:
        table = _measure(base, args.rows)
    print(table)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(table)


def _measure(base: str, n_rows: int) -> str:
    """Serial vs processes vs threads vs async on ``n_rows`` requests."""

    def fetch(key):
        return get(base, key)

    async def fetch_async(key):
        return await get_async(base, key)

    keys = pd.Series([f"k{i}" for i in range(n_rows)])
    sample = keys.head(max(1, n_rows // 10))
    began = time.perf_counter()
    expected = sample.map(fetch)
    serial = (time.perf_counter() - began) * len(keys) / len(sample)
    rows = [("serial pandas `s.map(fetch)`", serial)]
    for label, call in [
        ("processes (default loky, 2 workers)", lambda: keys.parallel.map(fetch)),
        ("threads `s.parallel(backend='threading', n_jobs=50).map(fetch)`",
         lambda: keys.parallel(backend="threading", n_jobs=50).map(fetch)),
        ("async `s.parallel.map(fetch_async, concurrency=100)`",
         lambda: keys.parallel.map(fetch_async, concurrency=100)),
    ]:
        began = time.perf_counter()
        result = call()
        rows.append((label, time.perf_counter() - began))
        pd.testing.assert_series_equal(result.head(len(sample)), expected)
    lines = [f"{n_rows} requests, {LATENCY * 1000:.0f} ms each, to a server on "
             "127.0.0.1 (serial time extrapolated from a tenth of the rows)", "",
             "| how | seconds | speed-up |", "|---|---|---|"]
    lines += [f"| {label} | {seconds:.2f} | {serial / seconds:.1f}x |" for label, seconds in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    pandas_parallel.config(progress=False)
    main()
