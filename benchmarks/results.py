"""Benchmark: functions whose results are heavy Python objects (lists).

Usage::

    python benchmarks/results.py [--repeat 5] [--output docs/object_results.md]

Sending such results back from a worker can cost more than computing them:
a list of numpy floats pickles one scalar at a time (about 2 us each). The
library packs lists of numpy scalars into arrays while they travel, and
prices what results cost to send in its plan, running serially when that
costs more than parallel saves. Each workload is timed, interleaved and
with default options, for serial pandas, ``.parallel`` and a hand-written
warm ``multiprocessing.Pool`` over ``np.array_split`` chunks (what a user
would write instead); medians and ranges of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

import pandas_parallel


def numpy_floats(row: pd.Series) -> list[float]:
    return [row["a"] + i for i in range(1000)]  # numpy floats: row["a"] is one


def python_floats(row: pd.Series) -> list[float]:
    a = float(row["a"])
    return [a + i for i in range(200)]


def strings(row: pd.Series) -> list[str]:
    return [str(i) for i in range(300)]  # cheap to make, costly to send


@dataclass
class Case:
    title: str
    func: Callable[[pd.Series], object]
    rows: int


CASES = [
    Case("lists of 1,000 numpy floats per row, 4,000 rows", numpy_floats, 4000),
    Case("lists of 200 Python floats per row, 20,000 rows", python_floats, 20_000),
    Case("lists of 300 short strings per row, 20,000 rows", strings, 20_000),
]


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.arange(rows) * 1.5, "b": 1.0})


def _apply_part(args: tuple[pd.DataFrame, Callable[[pd.Series], object]]) -> pd.Series:
    part, func = args
    return part.apply(func, axis=1)


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    began = time.perf_counter()
    result = call()
    return time.perf_counter() - began, result


def measure(case: Case, repeat: int, workers: int) -> dict[str, list]:
    df = _frame(case.rows)
    runs: dict[str, list] = {"serial": [], "parallel": [], "pool": [], "ran": []}

    def by_pool() -> pd.Series:
        # A warm pool, timed from the map; closed after, so that its threads
        # (which rule out forking) do not change how .parallel runs.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(abs, range(workers))
            began = time.perf_counter()
            parts = np.array_split(np.arange(len(df)), workers * 4)
            result = pd.concat(pool.map(_apply_part, [(df.iloc[p], case.func) for p in parts]))
            by_pool.seconds = time.perf_counter() - began  # type: ignore[attr-defined]
        return result

    for _ in range(repeat):
        seconds, expected = _timed(lambda: df.apply(case.func, axis=1))
        runs["serial"].append(seconds)
        seconds, actual = _timed(lambda: df.parallel.apply(case.func, axis=1))
        runs["parallel"].append(seconds)
        pd.testing.assert_series_equal(actual, expected)
        runs["ran"].append(pandas_parallel.last_run().backend)
        actual = by_pool()
        runs["pool"].append(by_pool.seconds)  # type: ignore[attr-defined]
        pd.testing.assert_series_equal(actual, expected)
    return runs


def _cell(times: list[float], serial: float) -> str:
    median = statistics.median(times)
    return (f"{median:.2f} ({min(times):.2f}-{max(times):.2f}) | "
            f"{serial / median:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", default="docs/object_results.md")
    args = parser.parse_args()
    workers = len(os.sched_getaffinity(0))
    lines = [
        "# Heavy object results",
        "",
        f"pandas {pd.__version__}, {workers} CPUs; default options; medians (and ranges) of "
        f"{args.repeat} interleaved runs, seconds; speed-up over serial pandas. The pool is "
        f"`multiprocessing.Pool({workers})`, warm, mapping `part.apply(fn, axis=1)` over "
        f"`np.array_split` chunks ({workers * 4}) and concatenating. Made by "
        "`python benchmarks/results.py`.",
        "",
        "| workload | serial pandas (s) | `.parallel` (s) | speed-up | ran on | "
        "`multiprocessing.Pool` (s) | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        runs = measure(case, args.repeat, workers)
        serial = statistics.median(runs["serial"])
        ran = "/".join(sorted(set(runs["ran"])))
        lines.append(f"| {case.title} | {serial:.2f} ({min(runs['serial']):.2f}-"
                     f"{max(runs['serial']):.2f}) | {_cell(runs['parallel'], serial)} | "
                     f"{ran} | {_cell(runs['pool'], serial)} |")
        print(lines[-1], file=sys.stderr)
    lines += [
        "",
        "Lists of numpy scalars travel packed as one array each and come back as lists "
        "of the same scalar objects; lists of strings cost more to send back (encoded in "
        "the workers, decoded one by one in the calling process) than two workers save, "
        "and the plan, which measures that cost on its sample, keeps such calls serial.",
    ]
    text = "\n".join(lines) + "\n"
    if args.output == "-":
        print(text)
    else:
        with open(args.output, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
