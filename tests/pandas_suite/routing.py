"""A pytest plugin that routes pandas' own methods through ``.parallel``.

Loaded into a run of pandas' own test modules (see ``run.py``). With
``PANDAS_SUITE_ROUTE=parallel``, each routed method (``DataFrame.apply``,
``SeriesGroupBy.transform``, ``Rolling.apply``...) calls the same method of
``obj.parallel(...)``, forced parallel with one-row chunks on the backend
``PANDAS_SUITE_BACKEND`` names. With ``PANDAS_SUITE_ROUTE=identity`` the same
wrapper calls pandas' own method: the reference run, so that what routing
itself changes (a frame in the traceback, a wrapped signature) cancels out.

Calls made while a routed call runs (pandas calling its own methods, the
library's serial paths, the function calling ``apply`` again, worker
threads) go straight to pandas. Every test's outcome is written, with how
many routed calls it made and how many ran in parallel, to the JSON file
``PANDAS_SUITE_OUT`` names.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import pandas as pd
import pytest
from pandas.api.typing import DataFrameGroupBy, Expanding, Rolling, SeriesGroupBy

import pandas_parallel

ROUTED = {
    pd.DataFrame: ("apply", "map", "transform", "agg", "aggregate"),
    pd.Series: ("apply", "map", "transform", "agg", "aggregate"),
    DataFrameGroupBy: ("apply", "transform", "agg", "aggregate", "filter"),
    SeriesGroupBy: ("apply", "transform", "agg", "aggregate", "filter"),
    Rolling: ("apply",),
    Expanding: ("apply",),
}
BACKEND_OPTIONS = {
    "forked": {"fork": True},
    "pool": {"fork": False},
    "threads": {"backend": "threading"},
}


class Routing:
    """What the routed methods do and what they counted, for one test run."""

    def __init__(self, route: str, backend: str) -> None:
        if route not in ("identity", "parallel") or backend not in BACKEND_OPTIONS:
            raise pytest.UsageError(f"PANDAS_SUITE_ROUTE={route!r}, "
                                    f"PANDAS_SUITE_BACKEND={backend!r}")
        self.route = route
        self.options = dict(n_jobs=2, chunk_size=1, serial_fallback=False,
                            progress=False, **BACKEND_OPTIONS[backend])
        self.active = 0  # routed calls running in this process, in any thread
        self.calls = 0
        self.backends: set[str] = set()
        self.results: dict[str, dict[str, Any]] = {}

    def wrap(self, cls: type, name: str) -> None:
        original = getattr(cls, name)
        routing = self

        @functools.wraps(original)
        def routed(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if routing.active:
                return original(obj, *args, **kwargs)
            routing.active += 1
            routing.calls += 1
            try:
                if routing.route == "identity":
                    return original(obj, *args, **kwargs)
                method = getattr(obj.parallel(**routing.options), name, None)
                if method is None:  # no such accessor method: pandas', unrouted
                    return original(obj, *args, **kwargs)
                return method(*args, **kwargs)
            finally:
                routing.active -= 1

        # pandas names, in each warning, the first frame outside its own
        # package (its tests aside): this wrapper's is made to look like
        # pandas', so the frame named is the test's, routed or not.
        routed.__code__ = routed.__code__.replace(  # type: ignore[attr-defined]
            co_filename=os.path.join(os.path.dirname(pd.__file__), "_routed_by_pandas_suite.py"))
        setattr(cls, name, routed)


class RunRecorder(logging.Handler):
    """The backend of every call the library ran (its per-call log record)."""

    def __init__(self, routing: Routing) -> None:
        super().__init__(logging.DEBUG)
        self.routing = routing

    def emit(self, record: logging.LogRecord) -> None:
        run = getattr(record, "pandas_parallel_run", None)
        if run is not None and run.backend != "serial":
            self.routing.backends.add(run.backend)


_routing: Routing | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _routing
    _routing = Routing(os.environ.get("PANDAS_SUITE_ROUTE", "identity"),
                       os.environ.get("PANDAS_SUITE_BACKEND", "forked"))
    for cls, names in ROUTED.items():
        for name in names:
            _routing.wrap(cls, name)
    logger = logging.getLogger("pandas_parallel")
    logger.addHandler(RunRecorder(_routing))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the per-call records are for the recorder only


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    assert _routing is not None
    _routing.calls, _routing.backends = 0, set()
    outcome = yield
    return outcome


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    assert _routing is not None
    entry = _routing.results.setdefault(report.nodeid, {"outcome": "passed"})
    if report.when == "call" or report.outcome != "passed":
        entry["outcome"] = _outcome(report)
    if report.when == "call" and report.failed:
        entry["error"] = report.longreprtext.strip().splitlines()[-1][:300]
    entry.update(calls=_routing.calls, backends=sorted(_routing.backends))


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return str(report.outcome)


def pytest_sessionfinish(session: pytest.Session) -> None:
    assert _routing is not None
    path = os.environ.get("PANDAS_SUITE_OUT")
    if path:
        with open(path, "w") as fh:
            json.dump({"pandas": pd.__version__, "route": _routing.route,
                       "pandas_parallel": pandas_parallel.__version__,
                       "tests": _routing.results}, fh, indent=0)
