"""pandas_parallel: ``df.parallel.apply(fn)`` on all cores, pandas-identical.

Importing the package registers the ``.parallel`` accessor on DataFrame,
Series, GroupBy and window objects, and the same under a name no other
library uses, ``.pandas_parallel``.
"""

from __future__ import annotations

import sys

from pandas_parallel import _compat
from pandas_parallel import accessor as _accessor  # noqa: F401  (registers .parallel)
from pandas_parallel import backends as _backends
from pandas_parallel import groupby as _groupby  # noqa: F401  (GroupBy .parallel)
from pandas_parallel import windows as _windows  # noqa: F401  (rolling/expanding .parallel)
from pandas_parallel.backends import forkserver as _forkserver
from pandas_parallel.backends.forked import CREW as _CREW
from pandas_parallel.backends.pool import POOL as _POOL
from pandas_parallel.engine import Engine, engine
from pandas_parallel.errors import (
    AccessorClashWarning,
    InitializerError,
    RowErrorsWarning,
    UnpicklableFunctionError,
    UnpicklableResultError,
    WorkerCrashedError,
)
from pandas_parallel.options import Options, config, get_options
from pandas_parallel.pipeline import Run, last_run
from pandas_parallel.programs import STORE as _STORE
from pandas_parallel.transport import sweep_stale_scratch as _sweep

_compat.attribute_warnings_to_callers()


_backends.stop_at_exit_first()
if "ipykernel" in sys.modules:  # a notebook: its calls take the no-fork path
    _forkserver.start_early()



def __getattr__(name: str) -> str:
    """``__version__``, read from the installed distribution on first use
    (importlib.metadata takes 25 ms to import: every worker's start)."""
    if name != "__version__":
        raise AttributeError(f"module 'pandas_parallel' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pandas-parallel-accessor")
    except PackageNotFoundError:  # running from a source tree
        return "0.0.0+unknown"

__all__ = [
    "AccessorClashWarning",
    "Engine",
    "InitializerError",
    "Options",
    "RowErrorsWarning",
    "Run",
    "UnpicklableFunctionError",
    "UnpicklableResultError",
    "WorkerCrashedError",
    "__version__",
    "config",
    "engine",
    "get_options",
    "last_run",
    "shutdown_pool",
]


def shutdown_pool() -> None:
    """Stop the worker processes kept between calls now (the warm pool's,
    those forked from this process, the fork server and its workers), and
    remove the large objects kept for them in shared memory; the next call
    that needs workers starts or forks new ones."""
    _POOL.shutdown()
    _CREW.retire()
    _forkserver.stop()
    _STORE.clear()


_sweep()
