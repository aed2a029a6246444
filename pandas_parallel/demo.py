"""``python -m pandas_parallel demo``: serial pandas vs ``.parallel`` on a
CPU-heavy row-wise apply, with the result checked for equality."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd


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


def run(rows: int, n_jobs: int | None) -> int:
    """Time serial pandas, then ``.parallel`` twice (the first call in this
    process, and a later one); 0 when all results are equal."""
    import pandas_parallel

    frame = make_frame(rows)
    print(f"pandas {pd.__version__}, pandas_parallel {pandas_parallel.__version__}: "
          f"risk_score over {rows:,} rows")
    began = time.perf_counter()
    expected = frame.apply(risk_score, axis=1)
    serial = time.perf_counter() - began
    print(f"serial pandas    df.apply(risk_score, axis=1)            {serial:7.2f} s")
    equal = True
    timings: list[float] = []
    for when in ("first call", "later call"):
        if timings:
            # Where workers are not forked for each call, the first call
            # starts a warm pool as it returns: let its workers finish
            # importing pandas before timing a later call.
            frame.iloc[:100].parallel(n_jobs=n_jobs, progress=False,
                                      serial_fallback=False).apply(risk_score, axis=1)
        began = time.perf_counter()
        actual = frame.parallel(n_jobs=n_jobs, progress=True).apply(risk_score, axis=1)
        seconds = time.perf_counter() - began
        timings.append(seconds)
        equal = equal and expected.equals(actual) and expected.dtype == actual.dtype
        print(f"pandas_parallel  df.parallel.apply(risk_score, axis=1)   {seconds:7.2f} s"
              f"  ({when})", flush=True)
    cold, warm = timings
    print(f"speed-up: {serial / cold:.2f}x on the first call, {serial / warm:.2f}x on a "
          f"later call; results equal: {equal}")
    return 0 if equal else 1
