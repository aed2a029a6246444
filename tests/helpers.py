"""Comparison helpers: the parallel result must be exactly pandas'."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest


def assert_same(expected: Any, actual: Any) -> None:
    """``pandas.testing`` at default strictness, plus ``attrs``."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, pd.Series) and _holds_pandas_objects(expected):
        # pandas.testing cannot compare Series of Series: compare the shell,
        # then each element.
        pd.testing.assert_series_equal(actual.map(type), expected.map(type))
        for left, right in zip(actual, expected):
            assert_same(right, left)
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(actual, expected)
    else:
        assert actual == expected
    if isinstance(expected, (pd.DataFrame, pd.Series)):
        assert actual.attrs == expected.attrs
        if hasattr(expected.index, "freq"):
            assert actual.index.freq == expected.index.freq


def check_like_pandas(serial: Callable[[], Any], parallel: Callable[[], Any]) -> None:
    """``parallel()`` returns what ``serial()`` returns, or raises the same type."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = serial()
        except Exception as exc:
            with pytest.raises(type(exc)):
                parallel()
            return
        actual = parallel()
    assert_same(expected, actual)


def _holds_pandas_objects(series: pd.Series) -> bool:
    return series.dtype == object and any(
        isinstance(v, (pd.Series, pd.DataFrame)) for v in series)


def check_calls_from_threads(frame: pd.DataFrame, func: Callable[..., Any],
                             threads: int = 4, calls: int = 3) -> None:
    """Calls of ``frame * k``'s ``parallel.apply(func, axis=1)`` from
    ``threads`` threads at once, under this thread's options: each gets
    its own result, pandas'."""
    import threading

    import pandas_parallel

    frames = [frame.assign(a=frame["a"] * k) for k in range(threads)]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    options = pandas_parallel.get_options()
    names = ("n_jobs", "serial_fallback", "chunk_size", "progress", "backend", "fork")

    def call(k: int) -> None:
        try:
            with pandas_parallel.config(**{name: getattr(options, name) for name in names}):
                for _ in range(calls):
                    results[k] = frames[k].parallel.apply(func, axis=1)
        except BaseException as exc:
            errors.append(exc)

    running = [threading.Thread(target=call, args=(k,)) for k in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=120)
    assert not errors, errors
    for k in range(threads):
        assert_same(frames[k].apply(func, axis=1), results[k])


@contextlib.contextmanager
def spawn_only() -> Iterator[None]:
    """Worker processes start as fresh interpreters (the warm loky pool), as
    on macOS and Windows: Python's start method set to ``"spawn"``."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(before, force=True)


def ctrl_c_reaches_python() -> None:
    """``preexec_fn`` for a subprocess a test interrupts with SIGINT. A shell
    starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, which
    their children inherit, and Python then installs no KeyboardInterrupt
    handler: the test would wait for an interruption that never comes."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
