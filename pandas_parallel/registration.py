"""Where the accessors are attached, and living beside other libraries that
attach their own ``.parallel`` (parallel-pandas does, when imported, and
silences pandas' warning about it).

``.parallel`` reaches whichever library registered it last; the second name,
``.pandas_parallel``, always reaches this one (on DataFrame, Series, GroupBy
and window objects alike). Whichever of the two libraries is imported last,
an :class:`~pandas_parallel.errors.AccessorClashWarning` names both and says
what to do: at this library's import when the other came first, and at the
other's import (watched for, once) when it comes after.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pandas as pd

from pandas_parallel.errors import AccessorClashWarning

#: The names this library's accessors answer to: the usual one, and one no
#: other library uses.
NAMES = ("parallel", "pandas_parallel")
#: Libraries known to register a ``.parallel`` accessor of their own.
KNOWN_OTHERS = ("parallel_pandas",)


def register_frame_accessors(frame: type, series: type) -> None:
    """Attach ``frame`` and ``series`` under both names, saying so if that
    replaces another library's ``.parallel``; then watch for the known
    others' import."""
    other = _owner_of_parallel()
    with warnings.catch_warnings():  # pandas' own warning names neither library
        warnings.simplefilter("ignore", UserWarning)
        for name in NAMES:
            pd.api.extensions.register_dataframe_accessor(name)(frame)
            pd.api.extensions.register_series_accessor(name)(series)
    if other is not None:
        own = " (`df.p_apply(...)` and the like)" if other == "parallel_pandas" else ""
        warnings.warn(
            f"pandas_parallel replaced {other}'s `.parallel` accessor on DataFrame and "
            f"Series: `df.parallel` now reaches pandas_parallel. {other}'s own methods"
            f"{own} still work; `df.pandas_parallel` always reaches pandas_parallel, "
            "whatever the import order.", AccessorClashWarning, stacklevel=_importer())
    WATCH.install([name for name in KNOWN_OTHERS if name not in sys.modules])


def _owner_of_parallel() -> str | None:
    """The top-level package whose accessor ``.parallel`` is on DataFrame or
    Series, when not this library's (``None`` otherwise)."""
    for cls in (pd.DataFrame, pd.Series):
        accessor = getattr(cls.__dict__.get("parallel"), "_accessor", None)
        module = getattr(accessor, "__module__", "") or ""
        if accessor is not None and not module.startswith("pandas_parallel"):
            return module.partition(".")[0]
    return None


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched package, it wraps the loader the
    other finders give, so that once the package has run its import, this
    library checks who owns ``.parallel`` (and warns if it lost it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: set[str] = set()

    def install(self, names: Sequence[str]) -> None:
        with self.lock:
            self.watched.update(names)
            if self.watched and self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        with self.lock:
            if fullname not in self.watched:
                return None
            self.watched.discard(fullname)
            if not self.watched and self in sys.meta_path:
                sys.meta_path.remove(self)
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CheckAfter(spec.loader)
                return spec
        return None


class _CheckAfter(importlib.abc.Loader):
    """A loader that runs another's, then checks the accessor's owner."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        other = _owner_of_parallel()
        if other is not None:
            warnings.warn(
                f"{other} replaced pandas_parallel's `.parallel` accessor on DataFrame and "
                f"Series: `df.parallel` now reaches {other}. `df.pandas_parallel` (and "
                "`s.pandas_parallel`, `df.groupby(...).pandas_parallel`) always reaches "
                f"pandas_parallel; or import pandas_parallel after {other} to have "
                "`.parallel` back.", AccessorClashWarning, stacklevel=_importer())

    def __getattr__(self, name: str) -> Any:  # resources, source, ... as the loader has them
        return getattr(self.loader, name)


def _importer() -> int:
    """The ``stacklevel`` of the import statement that led here: the first
    frame outside this package and importlib's machinery (whose frames
    ``warnings`` does not count)."""
    frame, level = sys._getframe(2), 2
    while (back := frame.f_back) is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE):
            level += 1
        elif not name.startswith("<frozen importlib"):
            break
        frame = back
    return level


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
WATCH = _ImportWatch()
