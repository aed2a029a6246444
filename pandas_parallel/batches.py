"""One batch of a file's rows through the pandas call: the operation, its
row failures (``errors="coerce"``), and what a run reports."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

import pandas_parallel  # noqa: F401  (registers .parallel)
from pandas_parallel.errors import RowErrorsWarning
from pandas_parallel.progress import progress_bar
from pandas_parallel.reading import InputError

OPERATIONS = ("apply", "map", "partitions")


@dataclasses.dataclass
class Summary:
    """What a run did: rows in and out, seconds, and where the output went."""

    rows_in: int
    rows_out: int
    seconds: float
    output: str

    def __str__(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.rows_in:,} rows in, {self.rows_out:,} rows out in "
                f"{self.seconds:.1f} s ({rate:,.0f} rows/s) -> {self.output}")


def operation(kind: str, func: Callable[..., Any], column: str | None, into: str | None,
               options: dict[str, Any], source: str
               ) -> Callable[[pd.DataFrame], pd.DataFrame | pd.Series]:
    if kind == "apply":
        return lambda frame: frame.parallel(**options).apply(func, axis=1)
    if kind == "map":
        if column is None:
            raise ValueError("map needs the column to map (column=... / --column)")

        def map_column(frame: pd.DataFrame) -> pd.DataFrame:
            if column not in frame.columns:
                raise InputError(f"no column {column!r} in {source!r}; it has "
                               f"{', '.join(map(str, frame.columns))}")
            frame[into or column] = frame[column].parallel(**options).map(func)
            return frame
        return map_column
    if kind == "partitions":
        return lambda frame: frame.parallel(**options).map_partitions(func)
    raise ValueError(f"unknown operation {kind!r}; choose one of {', '.join(OPERATIONS)}")


def warn_row_errors(operation: str, source: str, destination: str,
                     failures: list[tuple[Any, BaseException]]) -> None:
    """One RowErrorsWarning for the whole run (``errors="coerce"``)."""
    if not failures:
        return
    from pandas_parallel._compat import caller_stack_level

    label, first = failures[0]
    warnings.warn(RowErrorsWarning(
        f"{operation} over {source}: the function raised for {len(failures)} rows "
        f"(errors='coerce'); they are missing values in {destination}. The first: row "
        f"{label!r} ({type(first).__name__}: {first}); this warning's .failures "
        "lists (label, exception) for each.", failures), stacklevel=caller_stack_level())


@contextlib.contextmanager
def collecting_failures(failures: list[tuple[Any, BaseException]]) -> Iterator[None]:
    """Collect the failures of each batch's RowErrorsWarning into
    ``failures`` (one warning for the whole file follows); other warnings
    are issued as they were."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in caught:
        if isinstance(message.message, RowErrorsWarning):
            failures.extend(message.message.failures)
        else:
            warnings.warn_explicit(message.message, message.category, message.filename,
                                   message.lineno, source=message.source)


def release_freed_memory() -> None:
    """Give memory freed by the last batch back to the system (glibc keeps
    freed heap memory for reuse, so without this a stream's footprint creeps
    up to several batches' worth of fragments)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, ...)
        return None


_libc = _load_libc()


def file_progress_bar(show: bool, total: int | None) -> Any:
    if not show:
        return None
    return progress_bar(total=total, unit="rows", unit_scale=True, desc="pandas-parallel")
