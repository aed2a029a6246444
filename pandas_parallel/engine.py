"""pandas 3's execution-engine interface: ``engine=pandas_parallel.engine``.

pandas 3.0 lets a third party run ``DataFrame.apply(..., engine=E)`` and
``Series.map(..., engine=E)``: pandas calls ``E.__pandas_udf__.apply`` /
``.map`` with the data and the function, and passes ``E`` itself as
``decorator``. Here ``E`` carries pandas_parallel options, and the call runs
through the same pipeline as the ``.parallel`` accessor, so it returns what
the default engine returns.

On pandas 2.2 the engine object exists, but pandas 2.2 does not know the
interface: use the ``.parallel`` accessor there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel.options import validate

try:
    from pandas.api.executors import BaseExecutionEngine
except ImportError:  # pandas < 3.0 has no engine interface
    BaseExecutionEngine = object  # type: ignore[assignment,misc]


def _options(decorator: Any) -> dict[str, Any]:
    return dict(getattr(decorator, "options", {}))


def _frame(data: Any, method: str) -> pd.DataFrame | pd.Series:
    if isinstance(data, (pd.DataFrame, pd.Series)):
        return data
    if isinstance(data, np.ndarray) and data.ndim in (1, 2):
        return pd.DataFrame(data) if data.ndim == 2 else pd.Series(data)
    raise NotImplementedError(
        f"pandas_parallel.engine cannot run {method} on {type(data).__name__} data; "
        "it runs DataFrame.apply (raw or not) and Series.map. Use the default "
        "engine for this call.")


class ParallelExecutionEngine(BaseExecutionEngine):
    """What pandas calls for ``engine=pandas_parallel.engine``."""

    @staticmethod
    def map(data: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
            decorator: Any, skip_na: bool) -> Any:
        """Elementwise ``func`` over ``data`` (``Series.map(..., engine=...)``)."""
        obj = _frame(data, "map")
        if args:
            raise NotImplementedError(
                "pandas_parallel.engine: positional arguments for map are not part "
                "of pandas' Series.map; pass keyword arguments instead.")
        accessor = obj.parallel(**_options(decorator))
        result = accessor.map(func, na_action="ignore" if skip_na else None, **kwargs)
        return result if isinstance(data, (pd.DataFrame, pd.Series)) else result.to_numpy()

    @staticmethod
    def apply(data: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              decorator: Any, axis: Any) -> Any:
        """``func`` over rows or columns (``DataFrame.apply(..., engine=...)``).

        ``data`` is an ndarray when the caller asked for ``raw=True``; the
        result is then an ndarray too, which pandas labels.
        """
        raw = isinstance(data, np.ndarray)
        obj = _frame(data, "apply")
        accessor = obj.parallel(**_options(decorator))
        result = accessor.apply(func, axis=axis, raw=raw, args=args, **kwargs)
        return result.to_numpy() if raw else result


class Engine:
    """An execution engine for pandas 3's ``engine=`` parameter.

    ``pandas_parallel.engine`` uses the current options; call it to set some
    for the calls that use it: ``engine=pandas_parallel.engine(n_jobs=4)``.
    Requires pandas >= 3.0 (pandas 2.2 has no engine interface; use
    ``df.parallel.apply`` there).

    Examples
    --------
    >>> import pandas as pd, pandas_parallel
    >>> df = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    >>> df.apply(lambda row: row.a * row.b, axis=1,  # doctest: +PANDAS3
    ...          engine=pandas_parallel.engine)
    0    3
    1    8
    dtype: int64
    """

    __pandas_udf__ = ParallelExecutionEngine

    def __init__(self, **options: Any) -> None:
        validate(options)
        self.options = options

    def __call__(self, **options: Any) -> Engine:
        """A new engine with these options added (validated now)."""
        return Engine(**{**self.options, **options})

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"pandas_parallel.engine({settings})"


engine = Engine()
