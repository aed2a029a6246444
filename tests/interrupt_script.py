"""Run by tests/test_reliability.py in a subprocess: a long parallel apply,
interrupted with SIGINT by the test."""

import multiprocessing
import os
import sys
import threading
import time

import pandas as pd

import pandas_parallel

_announced: set[int] = set()


def slow(row):
    if threading.get_ident() not in _announced:  # once per worker process or thread
        _announced.add(threading.get_ident())
        # One write of a short line to a pipe is atomic: lines from the two
        # workers cannot interleave.
        os.write(1, f"worker {os.getpid()}\n".encode())
    time.sleep(0.02)  # the work being interrupted
    return row["a"]


def stuck(row):
    slow(row)
    threading.Event().wait()  # never returns: only a signal ends it


async def slow_async(value):
    import asyncio

    if not getattr(slow_async, "announced", False):
        slow_async.announced = True
        os.write(1, b"worker async\n")
        os.write(1, b"worker async-2\n")
    await asyncio.sleep(0.05)  # the work being interrupted
    return value


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "processes"
    pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=50, progress=False)
    print(f"parent {os.getpid()}", flush=True)
    frame = pd.DataFrame({"a": range(20_000)})
    try:
        if mode == "async":
            frame["a"].parallel.map(slow_async, concurrency=10)
        elif mode == "threads":
            frame.parallel(backend="threading").apply(slow, axis=1)
        elif mode in ("warm-processes", "warm-pool"):
            # Without forking this process, a first call starts the fork
            # server (or the warm loky pool, "spawn" forced); this one runs
            # on its workers.
            if mode == "warm-pool":
                multiprocessing.set_start_method("spawn", force=True)
            pandas_parallel.config(fork=False)
            frame.iloc[:4].parallel.apply(lambda row: row["a"], axis=1)
            frame.parallel.apply(slow, axis=1)
        elif mode == "stuck":
            frame.parallel.apply(stuck, axis=1)
        elif mode == "stuck-server":
            from pandas_parallel.forkserver import SERVER

            SERVER.wait_ready(60)  # up: its workers take the chunks from the start
            frame.parallel(fork=False).apply(stuck, axis=1)
        elif mode == "stuck-pool":
            multiprocessing.set_start_method("spawn", force=True)
            frame.parallel(fork=False).apply(stuck, axis=1)
        else:  # workers forked from this process for the call
            frame.parallel.apply(slow, axis=1)
    except KeyboardInterrupt:
        print(f"interrupted {time.monotonic()}", flush=True)
        sys.exit(130)
    print("finished without interruption", flush=True)
