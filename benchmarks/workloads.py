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


def cheap(x: float) -> float:
    return x + 1


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


WORKLOADS = {
    w.name: w for w in [
        Workload("rowwise_heavy", "df.apply(heavy_row, axis=1), 100k rows",
                 _rows, lambda df: df.apply(heavy_row, axis=1),
                 lambda df: df.parallel.apply(heavy_row, axis=1), 100_000),
        Workload("string_map", "s.map(parse_line), 1M strings",
                 _lines, lambda s: s.map(parse_line),
                 lambda s: s.parallel.map(parse_line), 1_000_000),
        Workload("cheap_map", "s.map(lambda x: x + 1), 1M floats",
                 lambda n: pd.Series(np.arange(n, dtype=float)),
                 lambda s: s.map(cheap), lambda s: s.parallel.map(cheap), 1_000_000),
    ]
}
