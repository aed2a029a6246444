"""Run by tests/test_reliability.py in a subprocess: a long parallel apply,
interrupted with SIGINT by the test."""

import os
import sys
import time

import pandas as pd

import pandas_parallel


def slow(row):
    if not getattr(slow, "announced", False):
        slow.announced = True
        # One write of a short line to a pipe is atomic: lines from the two
        # workers cannot interleave.
        os.write(1, f"worker {os.getpid()}\n".encode())
    time.sleep(0.02)  # the work being interrupted
    return row["a"]


if __name__ == "__main__":
    pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=50, progress=False)
    print(f"parent {os.getpid()}", flush=True)
    frame = pd.DataFrame({"a": range(20_000)})
    try:
        frame.parallel.apply(slow, axis=1)
    except KeyboardInterrupt:
        print(f"interrupted {time.monotonic()}", flush=True)
        sys.exit(130)
    print("finished without interruption", flush=True)
