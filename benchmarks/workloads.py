"""Benchmark workloads: data, the user function, and the pandas call.

Each workload is measured with plain pandas and with ``.parallel``; the data
and functions are shared so peers can be measured on exactly the same work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def heavy_row(row: pd.Series) -> float:
    """Pure-Python per-row work (~20 us) that pandas cannot vectorize."""
    total = 0.0
    x, y = row["x"], row["y"]
    for k in range(1, 60):
        total += math.sin(x * k) * math.cos(y / k)
    return total


def parse_line(line: str) -> int:
    """Per-string parsing work, as in log processing."""
    fields = line.split("|")
    return sum(len(f) * (i + 1) for i, f in enumerate(fields)) + sum(map(ord, fields[1]))


def weighted_median(group: pd.DataFrame) -> float:
    """A weighted median: per-group work pandas cannot vectorize."""
    values = group["price"].to_numpy()
    weights = group["qty"].to_numpy()
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def weighted_demean(prices: pd.Series) -> pd.Series:
    """Per-group transform pandas cannot vectorize as one call."""
    values = prices.to_numpy()
    ranks = values.argsort().argsort()
    return pd.Series(values - np.median(values) + ranks / len(values), index=prices.index)


def range_position(window: np.ndarray) -> float:
    """Pure-Python per-window work: where the last value sits in the
    window's range (a stochastic-oscillator-like feature)."""
    low = high = window[0]
    for value in window:
        if value < low:
            low = value
        elif value > high:
            high = value
    return (window[-1] - low) / (high - low) if high > low else 0.0


def cheap(x: float) -> float:
    return x + 1


def rank_column(column: pd.Series) -> pd.Series:
    """Column-wise work on a wide frame: moving the data costs about as much
    as the work."""
    return column.rank(pct=True)


# Chunk runners for the hand-written multiprocessing.Pool contender
# (top-level, so the pool can pickle them).
def apply_heavy_rows(chunk: pd.DataFrame) -> pd.Series:
    return chunk.apply(heavy_row, axis=1)


def map_parse_line(chunk: pd.Series) -> pd.Series:
    return chunk.map(parse_line)


def map_cheap(chunk: pd.Series) -> pd.Series:
    return chunk.map(cheap)


def group_weighted_median(part: pd.DataFrame) -> pd.Series:
    return part.groupby("store")[["price", "qty"]].apply(weighted_median)


def group_weighted_demean(part: pd.DataFrame) -> pd.Series:
    return part.groupby("store")["price"].transform(weighted_demean)


def rank_columns(part: pd.DataFrame) -> pd.DataFrame:
    return part.apply(rank_column)


@dataclasses.dataclass
class Workload:
    name: str
    description: str
    make: Callable[[int], Any]
    serial: Callable[[Any], Any]
    parallel: Callable[[Any], Any]
    size: int


def _rows(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=n), "y": rng.uniform(1, 2, n),
                         "k": rng.integers(0, 100, n)})


def _lines(n: int) -> pd.Series:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 10_000, n)
    return pd.Series([f"2024-01-01T00:00:{i % 60:02d}|user{u}|GET /api/v1/items/{i % 977}|200"
                      for i, u in enumerate(users)], name="line")


def _sales(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame({"store": rng.integers(0, 20_000, n),
                         "price": rng.gamma(2.0, 10.0, n).round(2),
                         "qty": rng.integers(1, 20, n)})


def _wide(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame(rng.normal(size=(n, 32)), columns=[f"x{i}" for i in range(32)])


def _walk(n: int) -> pd.Series:
    rng = np.random.default_rng(3)
    return pd.Series(rng.normal(size=n).cumsum(), name="price",
                     index=pd.date_range("2024-01-01", periods=n, freq="min"))


WORKLOADS = {
    w.name: w for w in [
        Workload("rowwise_heavy", "df.apply(heavy_row, axis=1), 100k rows",
                 _rows, lambda df: df.apply(heavy_row, axis=1),
                 lambda df: df.parallel.apply(heavy_row, axis=1), 100_000),
        Workload("string_map", "s.map(parse_line), 1M strings",
                 _lines, lambda s: s.map(parse_line),
                 lambda s: s.parallel.map(parse_line), 1_000_000),
        Workload("groupby_apply", "df.groupby('store').apply(weighted_median), "
                 "1M rows, 20k groups", _sales,
                 lambda df: df.groupby("store")[["price", "qty"]].apply(weighted_median),
                 lambda df: df.groupby("store")[["price", "qty"]].parallel.apply(
                     weighted_median), 1_000_000),
        Workload("groupby_transform", "df.groupby('store')['price'].transform(...), "
                 "1M rows, 20k groups", _sales,
                 lambda df: df.groupby("store")["price"].transform(weighted_demean),
                 lambda df: df.groupby("store")["price"].parallel.transform(
                     weighted_demean), 1_000_000),
        Workload("rolling_apply", "s.rolling(100).apply(range_position, raw=True), "
                 "1M rows", _walk,
                 lambda s: s.rolling(100).apply(range_position, raw=True),
                 lambda s: s.rolling(100).parallel.apply(range_position, raw=True),
                 1_000_000),
        Workload("wide_columns", "df.apply(rank_column), 1M rows x 32 float columns "
                 "(256 MB)", _wide, lambda df: df.apply(rank_column),
                 lambda df: df.parallel.apply(rank_column), 1_000_000),
        Workload("cheap_map", "s.map(lambda x: x + 1), 1M floats",
                 lambda n: pd.Series(np.arange(n, dtype=float)),
                 lambda s: s.map(cheap), lambda s: s.parallel.map(cheap), 1_000_000),
    ]
}


def write_table(header: str, rows: list[str], output: str | None) -> None:
    """Print a Markdown table under ``header``; also write it to ``output``."""
    table = header + "\n\n" + "\n".join(rows) + "\n"
    print("\n" + table)
    if output:
        with open(output, "w") as fh:
            fh.write(table)

