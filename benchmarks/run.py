"""The benchmark suite: pandas_parallel against serial pandas and every peer,
side by side in one run.

Usage::

    pip install -e ".[bench]"                               # the peers, the chart
    python benchmarks/run.py                                # everything
    python benchmarks/run.py --workloads string_map --peers pandarallel dask
    python benchmarks/run.py --scale 0.1 --repeat 1         # a quick look

Contenders: serial pandas (the baseline), pandas_parallel (on its fork path,
and on its no-fork path: ``pandas_parallel_no_fork``), pandarallel,
mapply, swifter, parallel-pandas, dask (``dask.dataframe`` on its process
scheduler) and a hand-written ``multiprocessing.Pool`` over row chunks.

Each (contender, workload) runs in a fresh Python process, so every
contender's cold first call starts its own workers. In that process: one
cold call, then ``--repeat`` warm calls interleaved with serial pandas (same
machine load), medians. Every result is compared with pandas' own; a
contender that returns something else is marked, not hidden. Peak memory is
the proportional set size (PSS) summed over the process and all of its
children, plus what the call added to ``/dev/shm``, sampled every 20 ms by a
process of its own (a thread would stop pandas_parallel from forking), in
one more call after the timed ones (sampling costs CPU). ``--memory-only``
measures just that again, keeping the times.

A peer that cannot import with this interpreter's pandas runs in a virtual
environment with the newest pandas 2.2 (``benchmarks/.venvs/pandas-2.2``,
made and filled on first use; ``--fallback-python`` names another), and the
table says which pandas it ran on, against serial pandas on that same
interpreter. A peer that fails is reported with its error.

Writes ``docs/peers.md``, ``docs/peers.json`` and, when matplotlib is
installed, ``docs/peers.png``. ``pandas_alone.py`` measures pandas_parallel
alone in more detail (forked workers and the warm pool, cold and warm).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

N_WORKERS = os.cpu_count() or 2
CONTENDERS = ["pandas_parallel", "pandas_parallel_no_fork", "pandarallel", "mapply",
              "swifter", "parallel_pandas", "dask", "mp_pool"]
WORKLOAD_ORDER = ["rowwise_heavy", "string_map", "groupby_apply", "groupby_transform",
                  "cheap_map", "rolling_apply", "wide_columns"]


# --------------------------------------------------------------------------
# Each contender's way of running each workload (None: it has no such call)
# --------------------------------------------------------------------------
# A contender whose first call takes this many times serial pandas' time gets
# one warm call, not --repeat: at 20x slower, repeats cost the suite an hour.
SLOW_FACTOR = 5.0
# A speed-up this far beyond the worker count cannot come from running
# pandas' own calls on more cores: the contender computed something else
# (swifter, for one, first calls the function on the whole Series).
BEYOND_CORES = 1.1
FALLBACK_PANDAS = "pandas>=2.2,<2.3"
FALLBACK_VENV = os.path.join(HERE, ".venvs", "pandas-2.2")
# What each peer installs as, in the fallback environment.
PEER_PACKAGES = {"pandarallel": "pandarallel", "mapply": "mapply", "swifter": "swifter",
                 "parallel_pandas": "parallel-pandas", "dask": "dask[dataframe]"}


def _setup(name: str) -> dict[str, Callable[[Any], Any] | None]:
    import numpy as np
    import pandas as pd
    import workloads as w

    G = ["price", "qty"]
    if name in ("pandas_parallel", "pandas_parallel_no_fork"):
        import pandas_parallel

        # The no-fork path, as in a notebook, a threaded service, or after
        # a tqdm bar: workers forked from the fork server, not this process.
        pandas_parallel.config(progress=False, fork=name == "pandas_parallel")
        return {k: v.parallel for k, v in w.WORKLOADS.items()}
    if name == "pandarallel":
        from pandarallel import pandarallel

        pandarallel.initialize(nb_workers=N_WORKERS, progress_bar=False, verbose=0)
        return {
            "rowwise_heavy": lambda df: df.parallel_apply(w.heavy_row, axis=1),
            "string_map": lambda s: s.parallel_map(w.parse_line),
            "groupby_apply": lambda df: df.groupby("store")[G].parallel_apply(
                w.weighted_median),
            "groupby_transform": None,
            "cheap_map": lambda s: s.parallel_map(w.cheap),
            "rolling_apply": lambda s: s.rolling(100).parallel_apply(
                w.range_position, raw=True),
            "wide_columns": lambda df: df.parallel_apply(w.rank_column),
        }
    if name == "mapply":
        import mapply

        mapply.init(n_workers=N_WORKERS, progressbar=False)
        return {
            "rowwise_heavy": lambda df: df.mapply(w.heavy_row, axis=1),
            "string_map": lambda s: s.mapply(w.parse_line),
            "groupby_apply": None, "groupby_transform": None,
            "cheap_map": lambda s: s.mapply(w.cheap),
            "rolling_apply": None,
            "wide_columns": lambda df: df.mapply(w.rank_column),
        }
    if name == "swifter":
        import swifter  # noqa: F401

        return {
            "rowwise_heavy": lambda df: df.swifter.progress_bar(False).apply(
                w.heavy_row, axis=1),
            "string_map": lambda s: s.swifter.progress_bar(False).apply(w.parse_line),
            "groupby_apply": lambda df: df.swifter.progress_bar(False).groupby(
                "store")[G].apply(w.weighted_median),
            "groupby_transform": None,
            "cheap_map": lambda s: s.swifter.progress_bar(False).apply(w.cheap),
            "rolling_apply": lambda s: s.swifter.progress_bar(False).rolling(100).apply(
                w.range_position, raw=True),
            "wide_columns": lambda df: df.swifter.progress_bar(False).apply(w.rank_column),
        }
    if name == "parallel_pandas":
        from parallel_pandas import ParallelPandas

        ParallelPandas.initialize(n_cpu=N_WORKERS, disable_pr_bar=True)
        return {
            "rowwise_heavy": lambda df: df.p_apply(w.heavy_row, axis=1),
            "string_map": lambda s: s.p_map(w.parse_line),
            "groupby_apply": lambda df: df.groupby("store")[G].p_apply(w.weighted_median),
            "groupby_transform": lambda df: df.groupby("store")["price"].p_transform(
                w.weighted_demean),
            "cheap_map": lambda s: s.p_map(w.cheap),
            "rolling_apply": lambda s: s.rolling(100).p_apply(w.range_position, raw=True),
            "wide_columns": lambda df: df.p_apply(w.rank_column),
        }
    if name == "dask":
        import dask
        import dask.dataframe as dd

        dask.config.set(scheduler="processes", num_workers=N_WORKERS)
        parts = 4 * N_WORKERS

        def by_group(df, call):
            # dask shuffles groups: sort back into pandas' order.
            return call(dd.from_pandas(df, npartitions=parts).groupby("store")).compute()

        return {
            "rowwise_heavy": lambda df: dd.from_pandas(df, npartitions=parts).apply(
                w.heavy_row, axis=1, meta=(None, "float64")).compute(),
            "string_map": lambda s: dd.from_pandas(s, npartitions=parts).map(
                w.parse_line, meta=(s.name, "int64")).compute(),
            "groupby_apply": lambda df: by_group(df, lambda g: g[G].apply(
                w.weighted_median, meta=(None, "float64"))).sort_index(),
            "groupby_transform": lambda df: by_group(df, lambda g: g["price"].transform(
                w.weighted_demean, meta=("price", "float64"))).sort_index(),
            "cheap_map": lambda s: dd.from_pandas(s, npartitions=parts).map(
                w.cheap, meta=(s.name, "float64")).compute(),
            "rolling_apply": lambda s: dd.from_pandas(s, npartitions=parts).rolling(
                100).apply(w.range_position, raw=True).compute(),
            "wide_columns": None,  # dask has no column-wise apply (axis=0)
        }
    if name == "mp_pool":
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(N_WORKERS)
        parts = 4 * N_WORKERS

        def rows(obj):
            edges = np.linspace(0, len(obj), parts + 1).astype(int)
            return [obj.iloc[a:b] for a, b in itertools.pairwise(edges)]

        def by_key(df):
            return [df[df["store"] % parts == i] for i in range(parts)]

        return {
            "rowwise_heavy": lambda df: pd.concat(pool.map(w.apply_heavy_rows, rows(df))),
            "string_map": lambda s: pd.concat(pool.map(w.map_parse_line, rows(s))),
            "groupby_apply": lambda df: pd.concat(
                pool.map(w.group_weighted_median, by_key(df))).sort_index(),
            "groupby_transform": lambda df: pd.concat(
                pool.map(w.group_weighted_demean, by_key(df))).sort_index(),
            "cheap_map": lambda s: pd.concat(pool.map(w.map_cheap, rows(s))),
            "rolling_apply": None,  # needs overlapping chunks: not a one-liner
            "wide_columns": lambda df: pd.concat(
                pool.map(w.rank_columns, [df.iloc[:, i::parts] for i in range(parts)]),
                axis=1)[df.columns],
        }
    raise ValueError(name)


# --------------------------------------------------------------------------
# One contender on one workload, in this (fresh) process
# --------------------------------------------------------------------------
def _same(expected: Any, actual: Any) -> bool:
    import pandas as pd

    try:
        if isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(actual, expected)
        else:
            pd.testing.assert_frame_equal(actual, expected)
        return True
    except AssertionError:
        return False


def _timed(call: Callable[[Any], Any], data: Any) -> tuple[float, int, Any]:
    """Seconds, peak memory and result of one call."""
    from peak_memory import PeakMemory

    with PeakMemory() as memory:
        began = time.perf_counter()
        result = call(data)
        seconds = time.perf_counter() - began
    return seconds, memory.peak, result


def _seconds(call: Callable[[Any], Any], data: Any) -> float:
    began = time.perf_counter()
    call(data)
    return time.perf_counter() - began


def run_one(contender: str, workload: str, repeat: int, scale: float,
            memory_only: bool = False) -> dict[str, Any]:
    import pandas as pd
    import workloads as w

    spec = w.WORKLOADS[workload]
    data = spec.make(max(1, int(spec.size * scale)))
    out: dict[str, Any] = {"pandas": pd.__version__}
    if memory_only:
        return {**out, **_peak_only(contender, workload, spec, data)}
    if contender == "serial":
        times = [_seconds(spec.serial, data) for _ in range(repeat)]
        return {**out, "warm": statistics.median(times), "cold": times[0],
                "peak": _timed(spec.serial, data)[1]}
    try:
        call = _setup(contender).get(workload)
    except Exception as exc:
        return {**out, "error": f"setup: {type(exc).__name__}: {exc}"}
    if call is None:
        return {**out, "unsupported": True}
    try:
        expected = spec.serial(data)
        began = time.perf_counter()
        result = call(data)
        cold = time.perf_counter() - began
        serial, parallel = [], []
        if cold > SLOW_FACTOR * _seconds(spec.serial, data):
            repeat = 1  # far slower than pandas: one warm call says enough
            out["timed_once"] = True
        for _ in range(repeat):
            serial.append(_seconds(spec.serial, data))
            parallel.append(_seconds(call, data))
        # Memory in a run of its own: sampling /proc costs CPU time.
        peak = _timed(call, data)[1]
    except Exception as exc:
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {**out, "error": tail[:300]}
    return {**out, "cold": cold, "warm": statistics.median(parallel),
            "serial_warm": statistics.median(serial), "peak": peak,
            "same": _same(expected, result)}


# --------------------------------------------------------------------------
# The orchestrator
# --------------------------------------------------------------------------
def _peak_only(contender: str, workload: str, spec: Any, data: Any) -> dict[str, Any]:
    """Peak memory of a warm call (after a first call), and nothing else."""
    try:
        call = spec.serial if contender == "serial" else _setup(contender).get(workload)
        if call is None:
            return {"unsupported": True}
        call(data)
        return {"peak": _timed(call, data)[1]}
    except Exception as exc:
        return {"error": traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]}


def _import_error(python: str, contender: str) -> str | None:
    """Why ``contender`` does not import and initialize under ``python``
    (the error's last line), or ``None`` when it does."""
    probe = subprocess.run([python, __file__, "--probe", contender], capture_output=True,
                           text=True, cwd=HERE, timeout=300)
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["failed"])[-1][:300]


def _fallback_environment(contenders: list[str]) -> str | None:
    """The interpreter of a virtual environment with the newest pandas 2.2
    and the peers, made (or completed) now for ``contenders``, which cannot
    import here; ``None`` if it cannot be made (the reason is printed)."""
    python = os.path.join(FALLBACK_VENV, "bin", "python")
    if not any(c in PEER_PACKAGES for c in contenders):
        return None
    # Every peer, not just these: one that imports here but fails on a
    # workload is measured again there.
    packages = sorted(PEER_PACKAGES.values())
    print(f"{', '.join(contenders)} cannot import here: installing them with "
          f"{FALLBACK_PANDAS} in {FALLBACK_VENV}", file=sys.stderr, flush=True)
    try:
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", FALLBACK_VENV], check=True)
        # And this checkout's dependencies: pandas_parallel is measured there
        # too, against the peers on their own pandas (imported from this
        # checkout: see _measure).
        subprocess.run([python, "-m", "pip", "install", "-q", FALLBACK_PANDAS, "psutil",
                        *packages, ROOT], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"could not make {FALLBACK_VENV}: {exc}", file=sys.stderr)
        return None
    return python


def _setup_name(contender: str) -> str:
    """The contender's entry in :func:`_setup`: ``"pandas_parallel"`` for
    ``"pandas_parallel on pandas 2.2"`` too."""
    return contender.split(" ")[0]


def _measure(python: str, contender: str, workload: str, repeat: int,
             scale: float, memory_only: bool = False) -> dict[str, Any]:
    # pandas_parallel comes from this checkout under every interpreter.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([python, __file__, "--run", _setup_name(contender), workload,
                               "--repeat", str(repeat), "--scale", str(scale),
                               *(["--memory-only"] if memory_only else [])],
                              capture_output=True, text=True,
                              cwd=HERE, timeout=1800, env=env)
    except subprocess.TimeoutExpired:
        return {"error": "took more than 30 minutes"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (done.stderr.strip().splitlines() or ["crashed"])[-1][:300]}
    return json.loads(lines[-1])


def _cell(result: dict[str, Any], serial: dict[str, Any]) -> str:
    if "error" in result:
        return "error"
    if result.get("unsupported"):
        return "n/a"
    base = result.get("serial_warm", serial["warm"])
    mark = ("" if result.get("same", True) else " ≠") + (" ¹" if result.get("timed_once") else "")
    if base / result["warm"] > BEYOND_CORES * N_WORKERS:
        mark += " ²"
    return (f"{base / result['warm']:.2f}x / {serial['cold'] / result['cold']:.2f}x / "
            f"{result['peak'] / serial['peak']:.1f}x{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=WORKLOAD_ORDER)
    parser.add_argument("--peers", nargs="*", default=CONTENDERS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="data size relative to the standard workloads (quick runs)")
    parser.add_argument("--fallback-python", default=None,
                        help="interpreter for peers that cannot import here")
    parser.add_argument("--output", default=os.path.join(HERE, "..", "docs", "peers.md"))
    parser.add_argument("--update", action="store_true",
                        help="keep the other workloads' results already in the output's "
                             ".json (run workloads one at a time)")
    parser.add_argument("--render", action="store_true",
                        help="only write the table and chart from the output's .json")
    parser.add_argument("--memory-only", action="store_true",
                        help="measure peak memory again, for the workloads and contenders "
                             "already in the output's .json, keeping their times")
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        _setup(args.probe)
        os._exit(0)  # without waiting for the contender's pools
    if args.run:
        print(json.dumps(run_one(*args.run, args.repeat, args.scale, args.memory_only)),
              flush=True)
        return
    if args.memory_only:
        _measure_memory_again(args)
        return
    if args.render:
        with open(os.path.splitext(args.output)[0] + ".json") as fh:
            render(json.load(fh), args.output)
        return

    pythons: dict[str, str] = {}
    notes: list[str] = []
    import_errors = {c: _import_error(sys.executable, c) for c in args.peers}
    unusable = [c for c, error in import_errors.items() if error is not None]
    if unusable and args.fallback_python is None:
        args.fallback_python = _fallback_environment(unusable)
    for contender in args.peers:
        if contender not in unusable:
            pythons[contender] = sys.executable
        elif args.fallback_python and _import_error(args.fallback_python, contender) is None:
            pythons[contender] = args.fallback_python
        else:
            notes.append(f"- **{contender}** could not be imported here nor under "
                         f"{FALLBACK_PANDAS}; not measured.")
    fallback = args.fallback_python
    if "pandas_parallel" in pythons and fallback and fallback in pythons.values():
        # Like for like with the peers that ran there: the same pandas.
        pythons[f"pandas_parallel on pandas {_pandas_version(fallback)}"] = fallback
    state_path = os.path.splitext(args.output)[0] + ".json"
    state: dict[str, Any] = {"results": {}}
    if args.update and os.path.exists(state_path):
        with open(state_path) as fh:
            state = json.load(fh)
    state.update(pythons=pythons, import_errors=import_errors, not_measured=notes,
                 repeat=args.repeat, pandas=_pandas_version(), executable=sys.executable,
                 machine={"cpus": N_WORKERS, "description": machine_description(),
                          "measured": time.strftime("%Y-%m-%d")})
    for workload in args.workloads:
        state["results"][workload] = _measure_workload(workload, pythons, args)
        with open(state_path, "w") as fh:  # after each workload: a long run's record
            json.dump(state, fh, indent=1)
    render(state, args.output)


def _interpreter(recorded: str) -> str:
    """The interpreter a result was measured with, on this machine: results
    committed to docs/ name them without this machine's directories."""
    if os.path.isabs(recorded) and os.path.exists(recorded):
        return recorded
    fallback = os.path.join(FALLBACK_VENV, "bin", "python")
    if recorded.endswith(os.path.relpath(fallback, ROOT)):
        return fallback
    return sys.executable


def _measure_memory_again(args: argparse.Namespace) -> None:
    """Replace every peak in the output's .json with a new measurement."""
    state_path = os.path.splitext(args.output)[0] + ".json"
    with open(state_path) as fh:
        state = json.load(fh)
    for workload in args.workloads:
        for key, result in state["results"].get(workload, {}).items():
            if "peak" not in result:
                continue
            serial = key.startswith("serial@")
            python = _interpreter(key.split("@", 1)[1] if serial else result["python"])
            again = _measure(python, "serial" if serial else key, workload, 1, args.scale,
                             memory_only=True)
            print(workload, key, again, file=sys.stderr, flush=True)
            if "peak" in again:
                result["peak"] = again["peak"]
        with open(state_path, "w") as fh:
            json.dump(state, fh, indent=1)
    render(state, args.output)


def _pandas_version(python: str | None = None) -> str:
    """The pandas version of this interpreter, or of ``python``."""
    if python is None:
        import pandas as pd

        return str(pd.__version__)
    return subprocess.run([python, "-c", "import pandas; print(pandas.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _measure_workload(workload: str, pythons: dict[str, str],
                      args: argparse.Namespace) -> dict[str, Any]:
    """Every contender on ``workload``, with serial pandas on each interpreter."""
    row: dict[str, Any] = {}
    for python in sorted(set(pythons.values())):
        row[f"serial@{python}"] = _measure(python, "serial", workload, args.repeat,
                                           args.scale)
    for contender, python in pythons.items():
        result = _measure(python, contender, workload, args.repeat, args.scale)
        result["python"] = python
        if "error" in result and args.fallback_python and python != args.fallback_python:
            # Broken on this pandas: measure it where it still works, too.
            retry = _measure(args.fallback_python, contender, workload, args.repeat,
                             args.scale)
            if "error" not in retry:
                fallback = f"serial@{args.fallback_python}"
                if fallback not in row:
                    row[fallback] = _measure(args.fallback_python, "serial", workload,
                                             args.repeat, args.scale)
                retry.update(python=args.fallback_python, first_error=result["error"])
                result = retry
        row[contender] = result
        print(workload, contender, row[contender], file=sys.stderr, flush=True)
    return row


def render(state: dict[str, Any], output: str) -> None:
    """Write the Markdown table (``output``) and the chart from measured state."""
    import workloads as w

    pythons: dict[str, str] = state["pythons"]
    executable: str = state["executable"]
    results = {k: state["results"][k] for k in WORKLOAD_ORDER if k in state["results"]}
    notes = list(state["not_measured"])
    header = ["workload", "serial pandas (s)", *pythons]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for workload, row in results.items():
        serial = row[f"serial@{executable}"] if f"serial@{executable}" in row \
            else next(v for k, v in row.items() if k.startswith("serial@"))
        cells = [w.WORKLOADS[workload].description, f"{serial['warm']:.2f}"]
        for contender in pythons:
            result = row[contender]
            cell = _cell(result, row[f"serial@{result['python']}"])
            if "first_error" in result:
                cell += f" (pandas {result['pandas']})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    for contender, python in pythons.items():
        versions = {row[contender].get("pandas") for row in results.values()}
        if python != executable and contender not in state["import_errors"]:
            notes.append(f"- **{contender}**: pandas_parallel again, on the interpreter "
                         f"of the peers that do not import here (`{_short(python)}`), "
                         "like for like with them.")
        elif python != executable:
            notes.append(f"- **{contender}** does not import with this pandas "
                         f"({_code(_short(state['import_errors'][contender]))}); it ran on "
                         f"pandas {', '.join(sorted(v for v in versions if v))} "
                         f"(`{_short(python)}`), against serial pandas on that same "
                         "interpreter.")
        for workload, row in results.items():
            result = row[contender]
            if "error" in result or "first_error" in result:
                notes.append(f"- **{contender}** failed on `{workload}` with pandas "
                             f"{state['pandas']}: "
                             + _code(_short(result.get('first_error', result.get('error'))))
                             + (f"; measured on pandas {result['pandas']} instead"
                                if "first_error" in result else ""))
    machine = state.get("machine", {})
    cpus = machine.get("cpus", N_WORKERS)
    chart = os.path.basename(os.path.splitext(output)[0] + ".png")
    # The table is wide: the page gives it the table of contents' column.
    text = ("---\nhide:\n  - toc\n---\n\n"
            f"![Warm speed-up of each contender on each workload]({chart})\n\n"
            f"pandas {state['pandas']} (unless noted), "
            f"{machine.get('description', f'{cpus} CPUs')}, measured "
            f"{machine.get('measured', 'earlier')}, {cpus} workers each; "
            "each cell: **warm speed-up / cold speed-up / "
            "peak memory** relative to serial pandas (medians of "
            f"{state['repeat']} warm runs interleaved with serial pandas; cold = first call "
            "in a fresh process, workers starting; peak memory: PSS summed over all "
            "processes plus /dev/shm, sampled from a process of its own). "
            "`n/a`: no such call; `≠`: the result "
            f"differs from pandas'; `¹`: over {SLOW_FACTOR:.0f}x slower than pandas on its "
            "first call, so timed warm once; `²`: faster than "
            f"{cpus} workers can run pandas' calls, so the function was not called "
            "as pandas calls it (swifter calls it on whole Series when that works).\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")
    with open(output, "w") as fh:
        fh.write(text)
    print(text)
    _chart(state, results, pythons, os.path.splitext(output)[0] + ".png")


def _short(text: str) -> str:
    """``text`` without this machine's paths (modules from site-packages,
    interpreters from the suite's environments), terminal colours, or the
    lines of a remote traceback after the first."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[0] if text else text
    text = re.sub(r"[^\s(`]*/site-packages/", "", text)
    return re.sub(r"[^\s(`]*/(benchmarks/\.venvs/)", r"\1", text)


def _code(text: str) -> str:
    """``text`` as Markdown inline code, even when it holds backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def machine_description() -> str:
    """What the chart's title says of this machine."""
    import platform

    return f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"


def _bar(result: dict[str, Any], serial: dict[str, Any]) -> tuple[float | None, str]:
    """A contender's warm speed-up on one workload, and what to write on it."""
    if "error" in result:
        return None, "error"
    if result.get("unsupported") or "warm" not in result:
        return None, "n/a"
    value = result.get("serial_warm", serial["warm"]) / result["warm"]
    return value, "" if result.get("same", True) else "≠"


def _chart(state: dict[str, Any], results: dict[str, dict[str, Any]],
           pythons: dict[str, str], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    workloads, contenders = list(results), list(pythons)
    cpus = state.get("machine", {}).get("cpus", N_WORKERS)
    width = 0.8 / max(1, len(contenders))
    cap = BEYOND_CORES * cpus * 1.2  # bars beyond: clipped, labelled
    fig, ax = plt.subplots(figsize=(13, 6.5))
    legend = []
    for i, contender in enumerate(contenders):
        xs = [x + i * width for x in range(len(workloads))]
        color = f"C{i}"
        label = contender
        if _versions(results, contender) - {state["pandas"]} and "on pandas" not in label:
            label += f" (on pandas {', '.join(sorted(_versions(results, contender)))})"
        legend.append(Patch(color=color, label=label))
        for x, workload in zip(xs, workloads):
            result = results[workload][contender]
            serial = results[workload][f"serial@{result.get('python', pythons[contender])}"]
            value, mark = _bar(result, serial)
            if value is None:
                ax.text(x, 0.05, mark, ha="center", va="bottom", rotation=90, fontsize=7,
                        color="firebrick" if mark == "error" else "dimgray")
                continue
            other_pandas = result.get("pandas", state["pandas"]) != state["pandas"]
            ax.bar(x, min(value, cap), width, color=color,
                   hatch="//" if other_pandas else None, edgecolor="white",
                   linewidth=0)
            top = f"{value:.0f}x²" if value > cap else ""
            if mark or top:
                ax.text(x, min(value, cap), f"{top}{mark}", ha="center", va="bottom",
                        fontsize=9, fontweight="bold",
                        color="firebrick" if mark else "black")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(cpus, color="gray", linewidth=1, linestyle="--")
    ax.text(len(workloads) - 0.45, cpus, f"{cpus} CPUs: the ceiling", ha="right",
            va="bottom", fontsize=8, color="gray")
    legend.append(Patch(facecolor="gray", hatch="//", edgecolor="white",
                        label="hatched: measured on another pandas than the title's"))
    ax.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(workloads))])
    ax.set_xticklabels(workloads, rotation=15)
    ax.set_ylabel("warm speed-up over serial pandas")
    machine = state.get("machine", {}).get("description", f"{cpus} CPUs")
    measured = state.get("machine", {}).get("measured", "")
    ax.set_title(f"Warm speed-up over serial pandas {state['pandas']}, {cpus} workers "
                 f"each, on {machine}{', ' + measured if measured else ''}\n"
                 "≠: result differs from pandas; n/a: no such call; ²: not pandas' calls "
                 "(clipped)", fontsize=10)
    ax.legend(handles=legend, ncol=3, fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_ylim(0, cap * 1.1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}", file=sys.stderr)


def _versions(results: dict[str, dict[str, Any]], contender: str) -> set[str]:
    return {row[contender]["pandas"] for row in results.values()
            if row[contender].get("pandas")}


if __name__ == "__main__":
    main()
