"""Benchmark: memory and transfer on large frames.

Usage::

    python benchmarks/memory.py [--gigabytes 1.0] [--output docs/memory.md]

1. Peak memory (PSS of this process and all its children, plus this
   call's shared-memory files, sampled every 20 ms) of a column-wise
   ``df.apply(fn)`` on a frame of ``--gigabytes`` of float64 columns:
   serial pandas against ``.parallel`` on workers forked for the call
   and on the warm pool, each in a fresh process.
2. Transfer: a 10M-row numeric frame sent to the workers and back
   (``map_partitions`` with the identity, forced parallel), in GB/s of
   frame data moved each way, median of ``--repeat``: on workers forked
   for the call and on the warm pool.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _frame(gigabytes: float):
    import numpy as np
    import pandas as pd

    columns = 10
    rows = int(gigabytes * 1e9 / 8 / columns)
    rng = np.random.default_rng(0)
    return pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(columns)})


def scale_column(column):
    return column * 2.0 + 1.0


def _one(kind: str, gigabytes: float) -> dict[str, float]:
    from peak_memory import PeakMemory

    import pandas_parallel

    df = _frame(gigabytes)
    options = dict(serial_fallback=False, progress=False, fork=kind == "parallel")
    if kind != "serial":
        with pandas_parallel.config(**options):
            df.iloc[:1000].parallel.apply(scale_column)  # workers up and warm
    with PeakMemory() as memory:
        began = time.perf_counter()
        if kind == "serial":
            df.apply(scale_column)
        else:
            df.parallel(**options).apply(scale_column)
        seconds = time.perf_counter() - began
    return {"peak": memory.peak, "seconds": seconds, "bytes": float(df.memory_usage().sum())}


def _transfer(repeat: int) -> dict[str, dict[str, float]]:
    """Seconds and GB/s, on workers forked for the call (what a script gets)
    and on the warm pool (what a notebook gets: its threads rule out forking)."""
    import numpy as np
    import pandas as pd

    import pandas_parallel

    df = pd.DataFrame(np.random.default_rng(0).normal(size=(10_000_000, 4)),
                      columns=list("abcd"))
    nbytes = float(df.memory_usage().sum())
    identity = lambda part: part  # noqa: E731
    measured = {}
    for path, fork in (("forked", True), ("pool", False)):
        options = dict(serial_fallback=False, progress=False, chunk_size=1_250_000, fork=fork)
        with pandas_parallel.config(**options):
            df.iloc[:1000].parallel.map_partitions(identity)
            times = []
            for _ in range(repeat):
                began = time.perf_counter()
                df.parallel.map_partitions(identity)
                times.append(time.perf_counter() - began)
        seconds = statistics.median(times)
        measured[path] = {"seconds": seconds, "gb_per_s": nbytes / seconds / 1e9}
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", default=None)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], float(args.one[1]))))
        return
    runs = {}
    for kind in ("serial", "parallel", "pool"):
        done = subprocess.run([sys.executable, __file__, "--one", kind, str(args.gigabytes)],
                              capture_output=True, text=True, check=True, cwd=HERE)
        runs[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    transfer = _transfer(args.repeat)
    serial = runs["serial"]
    text = (
        "| measure | serial pandas | pandas_parallel |\n|---|---|---|\n"
        + "".join(
            f"| peak memory, `df.apply(scale_column)` on {serial['bytes'] / 1e9:.2f} GB, "
            f"{label} | {serial['peak'] / 2**30:.2f} GiB | {runs[kind]['peak'] / 2**30:.2f} "
            f"GiB ({runs[kind]['peak'] / serial['peak']:.2f}x) |\n"
            f"| time of that call | {serial['seconds']:.2f} s | "
            f"{runs[kind]['seconds']:.2f} s |\n"
            for kind, label in (("parallel", "workers forked for the call"),
                                ("pool", "warm pool")))
        + "".join(
            f"| 10M x 4 float64 frame to the workers and back (`map_partitions`, identity), "
            f"{label} | | {transfer[path]['seconds']:.2f} s: "
            f"{transfer[path]['gb_per_s']:.2f} GB/s of frame each way |\n"
            for path, label in (("forked", "workers forked for the call"),
                                ("pool", "warm pool (no fork: notebooks)"))))
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
