"""Benchmark: the no-fork path (a notebook, a threaded program, macOS) beside
the fork path, in one run.

Usage::

    python benchmarks/no_fork.py [--runs 3] [--calls 5] [--output docs/no_fork.md]

Two workloads: a row-wise apply (150k rows, about 20 us a row) and a
``groupby.apply`` (1M rows, 20k groups). For each path:

- **first call**: serial pandas and ``.parallel`` each as the first call of
  a fresh Python process (``--runs`` times, alternating), so neither pays
  for the other's warm-up and the no-fork path starts its fork server;
- **consecutive calls**: in one fresh process, ``--calls`` pairs of serial
  pandas then ``.parallel``, each call's speed-up (the first is the call
  that starts the workers);
- **Jupyter**: a fresh kernel (jupyter_client), whose threads rule out
  forking it: a serial call, then ``.parallel`` ``--calls`` times
  interleaved with serial calls.

The no-fork path in a script is ``pandas_parallel.config(fork=False)``.
Speed-ups are serial time / parallel time; every result is checked against
pandas. Prints the load average before and after.
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
WORKLOADS = {"rowwise_heavy": 150_000, "groupby_apply": 1_000_000}
PATHS = {"fork": True, "no-fork": False}


def _one_call(workload: str, kind: str, fork: bool) -> float:
    """In a fresh process: the first call of ``kind`` (serial or parallel)."""
    sys.path.insert(0, HERE)
    from workloads import WORKLOADS as ALL

    import pandas_parallel

    if kind == "parallel":  # (a serial call's process starts no fork server)
        pandas_parallel.config(fork=fork)
    work = ALL[workload]
    data = work.make(WORKLOADS[workload])
    began = time.perf_counter()
    getattr(work, kind)(data)
    return time.perf_counter() - began


def _consecutive(workload: str, fork: bool, calls: int) -> list[dict]:
    """In a fresh process: serial then parallel, ``calls`` times."""
    sys.path.insert(0, HERE)
    import pandas as pd
    from workloads import WORKLOADS as ALL

    import pandas_parallel

    pandas_parallel.config(fork=fork)
    work = ALL[workload]
    data = work.make(WORKLOADS[workload])
    out = []
    for _ in range(calls):
        began = time.perf_counter()
        expected = work.serial(data)
        serial = time.perf_counter() - began
        began = time.perf_counter()
        actual = work.parallel(data)
        parallel = time.perf_counter() - began
        pd.testing.assert_series_equal(actual, expected)
        ran = pandas_parallel.last_run()
        out.append({"serial": serial, "parallel": parallel,
                    "ran": f"{ran.backend}/{ran.start}" if ran else "?"})
    return out


JUPYTER_SETUP = """
import sys, time
sys.path.insert(0, {here!r})
import pandas as pd, pandas_parallel
from workloads import WORKLOADS
work = WORKLOADS[{workload!r}]
data = work.make({size})
def timed(f):
    began = time.perf_counter()
    result = f(data)
    return time.perf_counter() - began, result
"""

JUPYTER_PAIR = """
s, expected = timed(work.serial)
p, actual = timed(work.parallel)
pd.testing.assert_series_equal(actual, expected)
r = pandas_parallel.last_run()
print("PAIR", s, p, f"{r.backend}/{r.start}")
"""


def _jupyter(workload: str, calls: int) -> list[dict]:
    """A fresh kernel: ``calls`` pairs of serial then parallel calls."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    out: list[dict] = []
    try:
        def run(code: str) -> str:
            printed: list[str] = []

            def keep(message: dict) -> None:
                if message["msg_type"] == "stream":
                    printed.append(message["content"]["text"])
                if message["msg_type"] == "error":
                    raise RuntimeError("\n".join(message["content"]["traceback"]))

            client.execute_interactive(code, timeout=600, output_hook=keep)
            return "".join(printed)

        run(JUPYTER_SETUP.format(here=HERE, workload=workload, size=WORKLOADS[workload]))
        for _ in range(calls):
            _, serial, parallel, ran = run(JUPYTER_PAIR).split()
            out.append({"serial": float(serial), "parallel": float(parallel), "ran": ran})
        run("pandas_parallel.shutdown_pool()")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return out


def _child(argv: list[str]) -> None:
    mode, workload, *rest = argv
    if mode == "one":
        kind, fork = rest
        print(json.dumps(_one_call(workload, kind, fork == "fork")))
    else:
        fork, calls = rest
        print(json.dumps(_consecutive(workload, fork == "fork", int(calls))))


def _spawn(*argv: str) -> object:
    out = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True,
                         text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--no-jupyter", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    rows = ["| workload | path | first call in a fresh process | consecutive calls (each) | "
            "warm (median of later calls) |", "|---|---|---|---|---|"]
    for workload in args.workloads:
        results: dict[str, dict[str, list]] = {p: {"first": [], "calls": []} for p in PATHS}
        for _ in range(args.runs):
            for path in PATHS:  # side by side: the paths alternate, run by run
                serial = _spawn("one", workload, "serial", path)
                parallel = _spawn("one", workload, "parallel", path)
                results[path]["first"].append(serial / parallel)
                results[path]["calls"].append(_spawn("calls", workload, path, str(args.calls)))
        if not args.no_jupyter:
            results["jupyter"] = {"first": [], "calls": [
                _jupyter(workload, args.calls) for _ in range(args.runs)]}
        for path, found in results.items():
            runs = found["calls"]
            each = [statistics.median(r[i]["serial"] / r[i]["parallel"] for r in runs)
                    for i in range(args.calls)]
            warm = [r[i]["serial"] / r[i]["parallel"] for r in runs for i in range(1, args.calls)]
            first = _spread(found["first"]) if found["first"] else (
                f"{_spread([r[0]['serial'] / r[0]['parallel'] for r in runs])} "
                "(first call of the kernel)")
            how = ", ".join(sorted({r[i]["ran"] for r in runs for i in range(args.calls)}))
            rows.append(f"| {workload} | {path} | {first} | "
                        f"{' / '.join(f'{x:.2f}' for x in each)} | {_spread(warm)} ({how}) |")
            print(rows[-1], flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    table = "\n".join(rows) + "\n"
    print("\n" + table)
    if args.output:
        with open(args.output, "w") as file:
            file.write(_PAGE.format(date=time.strftime("%Y-%m-%d"), runs=args.runs,
                                    calls=args.calls) + table + _READING)


_PAGE = """\
# The no-fork path beside the fork path

`python benchmarks/no_fork.py --runs {runs} --calls {calls}`, measured {date} on the
project's machine (see the README). Speed-ups are serial pandas' time over
`.parallel`'s; medians, with the range of the runs in brackets. **First call**: serial
pandas and `.parallel` each as the first call of a fresh Python process, {runs} times,
alternating. **Consecutive calls**: in one fresh process, {calls} pairs of serial
pandas then `.parallel`. **Jupyter**: a fresh kernel driven by jupyter_client (its
threads rule out forking it). The last column names how the calls' workers started
(`forked/fork`: forked from this process for the call; `forkserver/server`: forked
from the fork server; `/warm`: kept from an earlier call). The no-fork path in a
script is `pandas_parallel.config(fork=False)`. Every result equals pandas'.

"""

_READING = """
The first call in a fresh process on the no-fork path pays for the fork server's
start: a fresh interpreter importing pandas, numpy, pyarrow and this library, about
half a CPU-second on the second core, while the call runs its chunks itself. On a
one-second `groupby.apply` that start is most of what two cores could save. In a
notebook the server starts when the library is imported, so the kernel's first call
finds it up.
"""


if __name__ == "__main__":
    main()
