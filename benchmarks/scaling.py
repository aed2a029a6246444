"""Benchmark: past two cores, simulated. How far the speed-up scales with the
worker count when the library's own serial work is all that limits it.

Usage::

    python benchmarks/scaling.py                      # 4, 16 and 64 workers
    python benchmarks/scaling.py --workers 4 16 --repeat 3 --output -
    python benchmarks/scaling.py --fork-rss 1 5 10    # fork time against RSS (GB)

Functions that *wait* (``time.sleep``) instead of compute let 64 workers run
at once on a 2-core machine, so a speed-up below the worker count shows
what the library does serially: planning, forking or feeding workers,
collecting results. Each shape is sized so that the ideal parallel time is
0.25 s at every worker count (rows = 25 x workers, 10 ms each; groups =
6.25 x workers, 40 ms each): serial takes 0.25 s x workers. Efficiency =
speed-up / workers (1.0 is perfect).

Every contender runs in a process of its own (pandarallel and mapply set
their worker counts globally; a multiprocessing.Pool's threads would stop
pandas_parallel from forking): a first call of a new function, then
``--repeat`` warm calls of the same one, medians. Serial pandas is measured
once per shape and size (waits do not depend on the machine's load).
Contenders that cannot run with the installed pandas are reported as such.
``--fork-rss`` times ``os.fork()`` (and the child's exit) from a process
holding that much resident memory: what forking a worker costs on a large
frame.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

ROW_WAIT, GROUP_WAIT = 0.010, 0.040
SHAPES = ["apply", "map", "groupby.apply", "groupby.transform"]
CONTENDERS = ["pandas_parallel", "pandarallel", "mapply", "mp_pool"]


# -- the work ------------------------------------------------------------------------
def wait_row(row: pd.Series) -> int:
    time.sleep(ROW_WAIT)
    return int(row["a"]) * 2


def wait_value(x: int) -> int:
    time.sleep(ROW_WAIT)
    return x + 1


def wait_group(group: pd.DataFrame) -> float:
    time.sleep(GROUP_WAIT)
    return float(group["a"].sum())


def wait_transform(values: pd.Series) -> pd.Series:
    time.sleep(GROUP_WAIT)
    return values - values.mean()


def data(shape: str, workers: int) -> Any:
    if shape in ("apply", "map"):
        frame = pd.DataFrame({"a": np.arange(25 * workers), "b": 1.0})
        return frame if shape == "apply" else frame["a"]
    groups = max(2, round(6.25 * workers))
    rows = 4 * groups
    return pd.DataFrame({"k": np.arange(rows) % groups, "a": np.arange(rows, dtype=float)})


SERIAL: dict[str, Callable[[Any], Any]] = {
    "apply": lambda df: df.apply(wait_row, axis=1),
    "map": lambda s: s.map(wait_value),
    "groupby.apply": lambda df: df.groupby("k")[["a"]].apply(wait_group),
    "groupby.transform": lambda df: df.groupby("k")["a"].transform(wait_transform),
}


# -- the contenders (each in a process of its own) -------------------------------------
def _pool_part(args: tuple[str, Any]) -> Any:
    shape, part = args
    return SERIAL[shape](part)


def contender(name: str, workers: int) -> dict[str, Callable[[Any], Any] | None]:
    """Each shape's call for ``name`` with ``workers`` workers (None: the
    contender has no such call)."""
    if name == "pandas_parallel":
        import pandas_parallel

        pandas_parallel.config(n_jobs=workers, progress=False)
        return {
            "apply": lambda df: df.parallel.apply(wait_row, axis=1),
            "map": lambda s: s.parallel.map(wait_value),
            "groupby.apply": lambda df: df.groupby("k")[["a"]].parallel.apply(wait_group),
            "groupby.transform": lambda df: df.groupby("k")["a"].parallel.transform(
                wait_transform),
        }
    if name == "pandarallel":
        from pandarallel import pandarallel

        pandarallel.initialize(nb_workers=workers, progress_bar=False, verbose=0)
        return {
            "apply": lambda df: df.parallel_apply(wait_row, axis=1),
            "map": lambda s: s.parallel_map(wait_value),
            "groupby.apply": lambda df: df.groupby("k")[["a"]].parallel_apply(wait_group),
            "groupby.transform": None,
        }
    if name == "mapply":
        import mapply

        mapply.init(n_workers=workers, progressbar=False, chunk_size=1)
        return {"apply": lambda df: df.mapply(wait_row, axis=1),
                "map": lambda s: s.mapply(wait_value),
                "groupby.apply": None, "groupby.transform": None}
    if name == "mp_pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
        pool.map(abs, range(workers))  # warm: started before the first call

        def by_pool(shape: str) -> Callable[[Any], Any]:
            def run(obj: Any) -> Any:
                parts = np.array_split(np.arange(len(obj)), workers)
                return pd.concat(pool.map(_pool_part, [(shape, obj.iloc[p]) for p in parts]))
            return run
        return {"apply": by_pool("apply"), "map": by_pool("map"),
                "groupby.apply": None, "groupby.transform": None}
    raise ValueError(name)


def _first_call(shape: str, call: Callable[[Any], Any], obj: Any) -> float:
    """A new function object, so nothing is known of it (pandas_parallel
    samples and plans; the peers start their workers)."""
    began = time.perf_counter()
    call(obj)
    return time.perf_counter() - began


def child(name: str, workers: int, repeat: int) -> dict[str, Any]:
    try:
        calls = contender(name, workers)
    except Exception as exc:  # a peer that cannot import with this pandas
        return {"error": f"{type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {}
    for shape in SHAPES:
        call = calls.get(shape)
        if call is None:
            continue
        obj = data(shape, workers)
        first = _first_call(shape, call, obj)
        warm = []
        for _ in range(repeat):
            began = time.perf_counter()
            result = call(obj)
            warm.append(time.perf_counter() - began)
        out[shape] = {"first": first, "warm": warm, "rows": len(obj),
                      "checked": _same(SERIAL[shape], obj, result)}
    return out


def _same(serial: Callable[[Any], Any], obj: Any, result: Any) -> bool:
    """Compared with pandas on the same input, computed once (the waits
    do not change the values, so the check runs without them)."""
    global ROW_WAIT, GROUP_WAIT
    saved = ROW_WAIT, GROUP_WAIT
    ROW_WAIT = GROUP_WAIT = 0.0
    try:
        expected = serial(obj)
    finally:
        ROW_WAIT, GROUP_WAIT = saved
    try:
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(result, expected)
        else:
            pd.testing.assert_series_equal(result, expected, check_names=False)
        return True
    except AssertionError:
        return False


# -- fork time against resident memory -----------------------------------------------
def fork_seconds(gigabytes: float, repeat: int = 5) -> float:
    """Median seconds of fork + the child's exit, holding ``gigabytes`` of
    touched memory (page tables grow with it)."""
    ballast = np.ones(int(gigabytes * 2**30 // 8))  # written: resident
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - began)
    del ballast
    return statistics.median(times)


# -- the report ----------------------------------------------------------------------
def serial_seconds(shape: str, workers: int) -> float:
    obj = data(shape, workers)
    began = time.perf_counter()
    SERIAL[shape](obj)
    return time.perf_counter() - began


def run_child(name: str, workers: int, repeat: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", name, str(workers),
                           str(repeat)], capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def report(worker_counts: list[int], repeat: int) -> tuple[str, dict[str, Any]]:
    serial = {(s, n): serial_seconds(s, n) for n in worker_counts for s in SHAPES}
    results = {(c, n): run_child(c, n, repeat) for n in worker_counts for c in CONTENDERS}
    lines = [
        "| workers | shape | serial (s) | " + " | ".join(
            f"{c} warm / first" for c in CONTENDERS) + " |",
        "|---|---|---|" + "---|" * len(CONTENDERS),
    ]
    table: dict[str, Any] = {}
    for n in worker_counts:
        for shape in SHAPES:
            cells = []
            for c in CONTENDERS:
                found = results[(c, n)]
                if "error" in found:
                    cells.append("could not run")
                    continue
                if shape not in found:
                    cells.append("n/a")
                    continue
                figures = found[shape]
                warm = statistics.median(figures["warm"])
                speed, first = serial[(shape, n)] / warm, serial[(shape, n)] / figures["first"]
                table[f"{c}|{n}|{shape}"] = {"warm": speed / n, "first": first / n}
                mark = "" if figures["checked"] else " (result differs!)"
                cells.append(f"{speed:.1f}x / {speed / n:.2f}; first {first / n:.2f}{mark}")
            lines.append(f"| {n} | {shape} | {serial[(shape, n)]:.1f} | "
                         + " | ".join(cells) + " |")
    errors = {f"{c} ({n} workers)": r["error"] for (c, n), r in results.items() if "error" in r}
    for where, error in errors.items():
        lines.append(f"\n{where}: {error}")
    return "\n".join(lines), table


def chart(table: dict[str, Any], worker_counts: list[int], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no chart (run --chart {path[:-4]}.json "
              "where it is)", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(SHAPES), figsize=(14, 4.0), sharey=True)
    colors = dict(zip(CONTENDERS, ["#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"]))
    for ax, shape in zip(axes, SHAPES):
        for c in CONTENDERS:
            points = [(n, table[f"{c}|{n}|{shape}"]["warm"]) for n in worker_counts
                      if f"{c}|{n}|{shape}" in table]
            if points:
                ax.plot(*zip(*points), marker="o", label=c, color=colors[c],
                        linestyle="--" if c == "mp_pool" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(worker_counts, [str(n) for n in worker_counts])
        ax.set_title(shape)
        ax.set_xlabel("workers")
        ax.axhline(0.8, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("efficiency, warm (speed-up / workers)")
    labels = {c: c.replace("mp_pool", "warm multiprocessing.Pool (hand-written)")
              for c in CONTENDERS}
    handles = [plt.Line2D([], [], color=colors[c], marker="o",
                          linestyle="--" if c == "mp_pool" else "-") for c in CONTENDERS]
    figure.legend(handles, [labels[c] for c in CONTENDERS], loc="upper center",
                  ncol=len(CONTENDERS), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.savefig(path, dpi=110)


def fork_table(sizes: list[float]) -> str:
    if not sizes:
        return "(not measured: --fork-rss given no sizes)"
    rows = [f"| {gb:g} GB | {fork_seconds(gb) * 1e3:.1f} ms |" for gb in sizes]
    return "| resident memory | one fork and its exit |\n|---|---|\n" + "\n".join(rows)


BOUNDS = """## What bounds it

With waits instead of work, nothing limits the speed-up but what each library does
one step after another in the calling process, and the CPU that 64 processes share
on this machine's 2 cores. For pandas_parallel on forked workers (the default in a
script), at 64 workers:

- **Warm calls** use the workers the first call forked, kept between calls: no
  fork, no copy-on-write faults. The calling process plans, hands out one chunk per
  worker (with many workers it cuts fewer chunks each, so that handing them out
  and reading their results stays under about 5% of the call: 20-30 ms of its CPU
  here), and combines. What is left is this machine's: pandas' own CPU per row or
  group (which serial pandas spends too), plus each chunk's fixed cost (about 2 ms
  for a groupby of a chunk), all on 2 cores that 64 processes waking from their
  waits queue for. A hand-written `multiprocessing.Pool`, started before the call
  and doing no planning, is a few points ahead at 4 and 16 workers on `apply` and
  `map`, and level at 64.
- **The first call** forks the 64 workers ({one:.1f} ms a fork from an idle process
  of this size, {many:.2f} s for 64; about twice that while workers already run,
  so all are forked before any is handed a chunk), after a sample of a single row
  or group (samples shrink in proportion to the workers waiting for them). Each new
  worker's first writes to the memory it shares with this process then copy pages
  (copy-on-write: about 1,700 page faults, 12 ms of CPU per worker on its first
  chunk, 0.8 CPU-seconds for 64), which 2 cores take 0.4 s to get through; a
  64-core machine spreads them over its cores. A fork also costs more as the
  process holds more memory (its page tables are copied):

{forks}

  Workers forked from a process holding over 2 GB are not kept (they would pin
  every page it had, its frames included, for as long as they live): there, every
  call forks, as all did before.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", default="docs/scaling.md")
    parser.add_argument("--fork-rss", type=float, nargs="*", default=[1, 5, 10], metavar="GB",
                        help="resident sizes to time a fork at (default: 1 5 10; none: skip)")
    parser.add_argument("--fork-only", action="store_true",
                        help="only time forks (at --fork-rss sizes)")
    parser.add_argument("--chart", metavar="JSON", default=None,
                        help="only draw the chart from a run's saved figures")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chart:
        with open(args.chart) as saved:
            figures = json.load(saved)
        chart(figures["table"], figures["workers"], os.path.splitext(args.chart)[0] + ".png")
        return
    if args.child:
        name, workers, repeat = args.child
        print(json.dumps(child(name, int(workers), int(repeat))))
        return
    forks = fork_table(args.fork_rss)
    if args.fork_only:
        print(forks)
        return
    text, table = report(args.workers, args.repeat)
    here = fork_seconds(0)
    text += "\n\n" + BOUNDS.format(forks=forks, one=here * 1e3, many=64 * here)
    header = (f"pandas {pd.__version__}, {len(os.sched_getaffinity(0))} CPUs; waits of "
              f"{ROW_WAIT * 1e3:g} ms per row, {GROUP_WAIT * 1e3:g} ms per group; each cell: "
              f"warm speed-up over serial / efficiency (speed-up / workers), and the first "
              f"call's efficiency; medians of {args.repeat} warm calls. Made by "
              "`python benchmarks/scaling.py`.")
    if args.output == "-":
        print(header + "\n\n" + text)
        return
    stem = os.path.splitext(args.output)[0]
    with open(args.output, "w") as out:
        out.write("# Scaling past two cores (simulated)\n\n" + header + "\n\n"
                  + f"![Efficiency by worker count]({os.path.basename(stem)}.png)\n\n"
                  + text + "\n")
    with open(stem + ".json", "w") as saved:
        json.dump({"table": table, "workers": args.workers}, saved, indent=1)
    chart(table, args.workers, stem + ".png")


if __name__ == "__main__":
    main()
