"""``s.rolling(...).parallel`` and ``s.expanding(...).parallel``, plain and
after a groupby (``df.groupby(k).rolling(...).parallel``).

Plain rolling windows split by rows with overlap: each chunk carries the
rows its first windows reach back to (a window's width for an integer
window, the offset's span for a time window) and, for centred windows, the
rows its last windows reach forward to. pandas runs the same rolling call
on the padded chunk; only the chunk's own rows are kept, so every window
is exactly the one pandas sees on the whole input.

Grouped windows (rolling and expanding) split by group: windows never cross
groups, so each chunk of whole groups is independent. An expanding window
without groups grows from the first row: every row needs all rows before
it, so it runs serially in pandas.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd

from pandas_parallel import _compat, combine, registration
from pandas_parallel.operation import Operation, Piece
from pandas_parallel.routing import (
    EMPTY,
    EXPANDING,
    NO_REACH,
    WINDOW_ENGINE,
    Call,
    Configurable,
    Reason,
    route,
)
from pandas_parallel.splitting import Carrier, PaddedRows, Units, WindowGroups
from pandas_parallel.transport import Tagged

logger = logging.getLogger("pandas_parallel")

# At most this share of the rows may be computed twice (as padding).
_PADDING_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Rewindow:
    """Makes the same window object on a chunk. Sent to workers once per call.

    A chunk is a :class:`Carrier` frame: the data columns, then, for grouped
    windows, one column per group key holding each row's key value, then
    each row's position in the input.
    """

    kind: str
    params: dict[str, Any]
    selection: Any
    layout: Carrier
    key_names: tuple[Any, ...] = ()
    observed: bool = True
    sort: bool = True
    dropna: bool = True

    @property
    def grouped(self) -> bool:
        return bool(self.key_names)

    def window(self, carrier: pd.DataFrame) -> Any:
        """The window object on ``carrier``, as the user made it on the whole."""
        data: Any = self.layout.data(carrier)
        # pandas keeps a window's selection when the selected column is all
        # it holds (a Series): selecting again would look for a column.
        select = self.selection is not None and isinstance(data, pd.DataFrame)
        if self.grouped:
            keys = [self.layout.extra(carrier, i).rename(name)
                    for i, name in enumerate(self.key_names)]
            data = data.groupby(keys if len(keys) > 1 else keys[0], sort=self.sort,
                                dropna=self.dropna, observed=self.observed)
        window = getattr(data, self.kind)(**self.params)
        return window[self.selection] if select else window


def apply_padded(rewindow: Rewindow, chunk: Tagged, func: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    """``window(chunk).apply(func, ...)`` on padded rows, keeping the chunk's
    own rows (runs in workers)."""
    head, keep = chunk.tag
    result = rewindow.window(chunk.value).apply(func, *args, **kwargs)
    # The padding starts on a multiple of `step`, so outputs stay aligned.
    step = rewindow.params.get("step") or 1
    return result.iloc[-(-head // step): -(-(head + keep) // step)]


def apply_grouped(rewindow: Rewindow, carrier: pd.DataFrame, func: Any,
                  args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tagged:
    """``window(chunk).apply(func, ...)`` on whole groups, tagged with the
    input position of each output row (runs in workers)."""
    window = rewindow.window(carrier)
    result = window.apply(func, *args, **kwargs)
    positions = carrier.iloc[:, -1].to_numpy()
    groups = _compat.grouped_window_rows(window)
    order = np.concatenate(groups) if groups else np.empty(0, dtype=np.int64)
    return Tagged(result, positions[order])


def _grouped_reason(spec: _compat.WindowSpec, raw: bool) -> str | None:
    """Why a grouped window must stay with pandas: pandas fails on these in
    ways that depend on the whole input, or labels the windows it passes
    in a way chunks cannot reproduce."""
    if not spec.as_index:
        return "as_index=False"
    if sum(len(rows) for rows in spec.groups or []) != len(spec.obj):
        return "rows without a group (NaN keys with dropna=True)"
    if spec.params.get("on") is not None and spec.obj.index.has_duplicates:
        return "on= with duplicate index labels"
    window = spec.params.get("window")
    if not raw and (spec.params.get("on") is not None
                    or not (window is None or isinstance(window, (int, np.integer)))):
        # pandas labels each window's values (in group order) with the labels
        # of the rows in their original order (its issue 49878); a time
        # window's bounds read those same labels, so no relabelling of a
        # chunk can give both.
        return "a time window or on= with raw=False, whose windows' labels pandas mismatches"
    return None


def _int_window_pad(n: int, window: int, center: bool, step: int
                    ) -> tuple[Any, int]:
    after = (window - 1) // 2 + 1 if center else 0

    def pad(start: int, stop: int) -> tuple[int, int]:
        lo = max(0, start - window)
        return lo - lo % step, min(n, stop + after)

    return pad, n // max(1, 10 * (window + after))


def _time_window_pad(times: pd.Index, window: Any, center: bool) -> tuple[Any, int] | None:
    if not isinstance(times, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        return None
    try:
        span = pd.tseries.frequencies.to_offset(window).nanos
    except (ValueError, TypeError):
        return None
    ticks = np.asarray(times.as_unit("ns").asi8)
    if len(ticks) > 1 and ticks[-1] < ticks[0]:
        ticks = -ticks  # a decreasing index: windows still reach back in rows
    n = len(ticks)

    def pad(start: int, stop: int) -> tuple[int, int]:
        lo = int(np.searchsorted(ticks, ticks[start] - span, side="left"))
        hi = (int(np.searchsorted(ticks, ticks[stop - 1] + span, side="right"))
              if center else stop)
        return lo, hi

    sample = np.linspace(0, n - 1, num=min(n, 64)).astype(np.int64)
    reach = float(np.mean([start - pad(int(start), int(start) + 1)[0] for start in sample]))
    return pad, int(n * _PADDING_SHARE / max(1.0, 2 * reach if center else reach))


class WindowParallelAccessor(Configurable):
    """``window.parallel``: ``apply`` on rolling and expanding windows,
    spread over all cores.

    Examples
    --------
    >>> import pandas as pd, pandas_parallel
    >>> s = pd.Series([1.0, 2.0, 4.0, 8.0])
    >>> s.rolling(2).parallel.apply(lambda w: w.max() - w.min())
    0    NaN
    1    1.0
    2    2.0
    3    4.0
    dtype: float64
    """

    kind = "Window"

    def _failure_kind(self, call: Call) -> tuple[str, Any]:
        return "windows", None

    def _label(self, name: str) -> str:
        return f"{_compat.window_spec(self._obj).kind}.{name}"

    def _labels_source(self) -> Any:
        return None

    def _async_placeholder(self, name: str) -> Callable[[Any], Any]:
        return lambda _: 0.0

    def _input(self) -> tuple[int, Hashable]:
        window = self._obj
        return len(window.obj), (type(window), window.obj.shape[1:], window.min_periods,
                                 getattr(window, "window", None),
                                 getattr(window, "center", None))

    def apply(self, func: Any, raw: bool = False, engine: Any = None,
              engine_kwargs: dict[str, Any] | None = None, args: tuple[Any, ...] | None = None,
              kwargs: dict[str, Any] | None = None) -> pd.DataFrame | pd.Series:
        """Parallel :meth:`pandas.core.window.rolling.Rolling.apply` (and
        ``Expanding.apply``): same parameters, same result.

        Parameters
        ----------
        func : callable
            Called on each window: a Series, or an ndarray with ``raw=True``;
            must return a single value.
        raw : bool, default False
        engine, engine_kwargs
            ``engine="numba"`` is pandas' own compiled path: handed to pandas.
        args, kwargs
            Extra arguments for ``func``.

        Returns
        -------
        Series or DataFrame
            Exactly what the same call without ``.parallel`` returns.
        """
        given = dict(raw=raw, engine=engine, engine_kwargs=engine_kwargs, args=args,
                     kwargs=kwargs)
        return route(Call(self, "apply", (func,), given, self._build))

    def _build(self, call: Call) -> Operation | Reason:
        params = call.params
        spec = _compat.window_spec(self._obj)
        raw = params["raw"]
        why = spec.supported
        if why is None and (params["engine"] not in (None, "cython")
                            or params["engine_kwargs"] is not None
                            or not isinstance(raw, bool)):
            return WINDOW_ENGINE
        if why is None and (len(spec.obj) == 0 or spec.groups == []):
            return EMPTY
        if why is None and spec.groups is not None:
            why = _grouped_reason(spec, raw)
        if why is None and spec.kind == "expanding" and not spec.groupings:
            return EXPANDING
        if why is not None:
            return Reason(why)
        plan = self._plan(spec, raw)
        if plan is None:
            return NO_REACH
        rewindow, units, combine_pieces = plan
        obj = spec.obj
        return call.operation(
            call.label, units, combine_pieces,
            runner=functools.partial(apply_grouped if spec.groupings else apply_padded,
                                     rewindow),
            calls_per_unit=1 if isinstance(obj, pd.Series) else max(1, obj.shape[1]))

    # -- machinery ----------------------------------------------------------------
    def _plan(self, spec: _compat.WindowSpec, raw: bool
              ) -> tuple[Rewindow, Units, Any] | None:
        obj = spec.obj
        if spec.groupings:
            return self._grouped_units(spec, raw)
        layout, carrier = Carrier.wrap(obj)
        padding = self._padding(spec)
        if padding is None:
            return None
        pad, max_chunks = padding
        expected_index = obj.index[:: spec.params.get("step") or 1]

        def combine_padded(pieces: list[Piece]) -> Any:
            result = combine.concat_rows([p.result for p in pieces], _TRUST_CONCAT)
            if len(result) != len(expected_index):
                raise combine.CannotCombine("chunks returned a different number of rows")
            result.index = expected_index  # pandas' own object (keeps a freq)
            return result

        rewindow = Rewindow(spec.kind, spec.params, spec.selection, layout)
        return rewindow, PaddedRows(carrier, pad, max_chunks), combine_padded

    @staticmethod
    def _padding(spec: _compat.WindowSpec) -> tuple[Any, int] | None:
        obj = spec.obj
        params = spec.params
        window = params["window"]
        if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
            return _int_window_pad(len(obj), int(window), bool(params["center"]),
                                   params.get("step") or 1)
        if isinstance(window, pd.api.indexers.BaseIndexer):
            return None  # its windows are whatever its code says
        on = params.get("on")
        if on is None:
            times = obj.index
        elif isinstance(obj, pd.DataFrame) and on in obj.columns:
            times = pd.Index(obj[on])
        else:
            return None
        return _time_window_pad(times, window, bool(params["center"]))

    @staticmethod
    def _grouped_units(spec: _compat.WindowSpec, raw: bool) -> tuple[Rewindow, Units, Any]:
        n = len(spec.obj)
        layout, carrier = Carrier.wrap(
            spec.obj, [*(pd.Index(g.values).array for g in spec.groupings),
                       np.arange(n, dtype=np.int64)])
        groups = spec.groups or []
        # Units are groups, numbered in the order pandas returns them.
        order = np.concatenate(groups).astype(np.int64)
        codes = np.full(n, -1, dtype=np.int64)
        codes[order] = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        rewindow = Rewindow(spec.kind, spec.params, spec.selection, layout,
                            key_names=tuple(g.name for g in spec.groupings),
                            observed=all(g.observed for g in spec.groupings),
                            sort=spec.sort, dropna=spec.dropna)

        def combine_grouped(pieces: list[Piece]) -> Any:
            results = [p.result.value for p in pieces]
            positions = np.concatenate([p.result.tag for p in pieces])
            result = combine.concat_rows(results, _TRUST_CONCAT)
            if len(positions) != len(order):
                raise combine.CannotCombine("chunks returned a different number of rows")
            if not np.array_equal(positions, order):
                # Chunks may order groups differently (several keys with
                # sort=False): put rows where pandas puts them.
                where = np.empty(n, dtype=np.int64)
                where[positions] = np.arange(len(positions))
                result = result.iloc[where[order]]
            result.index = spec.index  # pandas' own group levels (dtypes, categories)
            return result

        units = (Units.groups(carrier, codes, len(groups)) if raw
                 else WindowGroups(carrier, codes, len(groups), spec.obj.index))
        return rewindow, units, combine_grouped


_TRUST_CONCAT = combine.Inference(combine.trust_concat, combine.trust_concat)

_compat.register_window_accessor(registration.NAMES, WindowParallelAccessor)
