"""``python -m pandas_parallel demo``: serial pandas vs ``.parallel`` on a
CPU-heavy row-wise apply, with the result checked for equality, the
machine described, and a low speed-up explained."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

SLOW_SPEED_UP = 1.2
T = TypeVar("T")


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Generated orders: amounts, rates, customer names and categories."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "amount": rng.gamma(2.0, 50.0, rows).round(2),
        "rate": rng.uniform(0.01, 0.2, rows),
        "customer": [f"customer-{i % 9973}" for i in range(rows)],
        "segment": pd.Categorical(rng.choice(["retail", "pro", "bulk"], rows)),
    })


def risk_score(row: pd.Series) -> float:
    """Pure-Python scoring that pandas cannot vectorize (a small series sum)."""
    amount, rate = row["amount"], row["rate"]
    total = 0.0
    for k in range(1, 120):
        total += math.sin(amount * k * rate) / k
    bonus = sum(ord(c) for c in row["customer"]) % 7
    return round(total * (2.0 if row["segment"] == "bulk" else 1.0) + bonus, 6)


# --------------------------------------------------------------------------
# CPU time: this process and its workers, and the whole machine (Linux /proc)
# --------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have used since boot, or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _descendants_seconds() -> float:
    """CPU-seconds used by live descendants of this process (pool workers)."""
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                # The command name, in parentheses, may hold spaces.
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    pending, total = list(children.get(os.getpid(), [])), 0.0
    while pending:
        pid = pending.pop()
        total += seconds[pid]
        pending.extend(children.get(pid, []))
    return total


def _own_seconds() -> float:
    """CPU-seconds of this process, its reaped children and its live workers."""
    times = os.times()
    return (times.user + times.system + times.children_user + times.children_system
            + _descendants_seconds())


@dataclasses.dataclass
class Timed:
    """A timed call: wall seconds, and the CPU-seconds other processes used."""

    seconds: float
    others_cpu: float | None


def _timed(call: Callable[[], T]) -> tuple[T, Timed]:
    busy, own = _machine_busy_seconds(), _own_seconds()
    began = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - began
    after = _machine_busy_seconds()
    others = None if busy is None or after is None else max(
        0.0, (after - busy) - (_own_seconds() - own))
    return result, Timed(seconds, others)


# --------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------
def explain_slow(speed_up: float, cpus: int, backend: str, serial_seconds: float,
                 call: Timed) -> str | None:
    """Why a speed-up is below 1.2x, from what was measured; None when it is not."""
    if speed_up >= SLOW_SPEED_UP:
        return None
    if cpus < 2:
        return ("this process may use only 1 CPU (its affinity mask or cgroup quota), "
                "so there is nothing to run in parallel on")
    if backend == "serial":
        return (f"the call ran serially: {serial_seconds:.2f} s of work is too little "
                "to gain from starting workers; try more --rows")
    if call.others_cpu is not None and call.others_cpu > 0.25 * cpus * call.seconds:
        share = call.others_cpu / (cpus * call.seconds)
        return (f"the machine is busy: other processes used {call.others_cpu:.1f} "
                f"CPU-seconds during the {call.seconds:.1f} s call, {share:.0%} of its "
                f"{cpus} CPUs; run it again when the machine is idle")
    return ("other processes left the CPUs idle, so the workers' start-up and the "
            "data sent to them outweighed the work; try more --rows")


def _how(ran: Any) -> str:
    """How a call ran, for a person: ``2 workers, forked for it``."""
    from pandas_parallel import backends

    if ran.backend == "serial":
        return "serially"
    return f"{ran.workers} workers, " + backends.describe(ran.backend, ran.start)


def path_of(fork: bool) -> str:
    """Which path calls take in this process now, for a person."""
    from pandas_parallel import backends
    from pandas_parallel.options import get_options

    return backends.path_of(dataclasses.replace(get_options(), fork=fork))


def run(rows: int, n_jobs: int | None, fork: bool = True) -> int:
    """Time serial pandas, then ``.parallel`` twice (the first call in this
    process, and a later one); 0 when all results are equal. ``fork=False``:
    the no-fork path, as in a notebook or a threaded program."""
    import pandas_parallel

    with pandas_parallel.config(fork=fork):
        return _run(rows, n_jobs, fork)


def _run(rows: int, n_jobs: int | None, fork: bool) -> int:
    import pandas_parallel
    from pandas_parallel.options import resolve_n_jobs

    frame = make_frame(rows)
    cpus = resolve_n_jobs(None)
    print(f"pandas {pd.__version__}, pandas_parallel {pandas_parallel.__version__}: "
          f"risk_score over {rows:,} rows")
    print(f"this machine: {cpus} usable CPUs (of {os.cpu_count()}); "
          f"{resolve_n_jobs(n_jobs)} workers; {path_of(fork)}")
    print("running serially first (plain pandas, no progress bar)...", flush=True)
    expected, serial = _timed(lambda: frame.apply(risk_score, axis=1))
    print(f"serial pandas    df.apply(risk_score, axis=1)            {serial.seconds:7.2f} s")
    equal, calls = True, list[tuple[Timed, pandas_parallel.Run]]()
    for when in ("first call", "later call"):
        if calls:
            # Where workers are not forked for each call, the first call
            # starts a warm pool as it returns: let its workers finish
            # importing pandas before timing a later call.
            frame.iloc[:100].parallel(n_jobs=n_jobs, progress=False,
                                      serial_fallback=False).apply(risk_score, axis=1)
        actual, call = _timed(
            lambda: frame.parallel(n_jobs=n_jobs, progress=True).apply(risk_score, axis=1))
        ran = pandas_parallel.last_run() or pandas_parallel.Run("serial")
        calls.append((call, ran))
        equal = equal and expected.equals(actual) and expected.dtype == actual.dtype
        how = _how(ran)
        print(f"pandas_parallel  df.parallel.apply(risk_score, axis=1)   {call.seconds:7.2f} s"
              f"  ({when}: {how})", flush=True)
    (cold, _), (warm, warm_run) = calls
    speed_up = serial.seconds / warm.seconds
    print(f"speed-up: {serial.seconds / cold.seconds:.2f}x on the first call, "
          f"{speed_up:.2f}x on a later call; results equal: {equal}")
    why = explain_slow(speed_up, cpus, warm_run.backend, serial.seconds, warm)
    if why:
        print(f"why below {SLOW_SPEED_UP}x: {why}")
    return 0 if equal else 1
