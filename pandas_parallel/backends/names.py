"""The ``backend=`` option's names and what each needs: the one registry.

Imports nothing of the package, so options can be checked against it the
moment they are given. joblib's own registered backends (``joblib.
register_parallel_backend``) are valid names too: they run through
:mod:`.joblib` with the traits of :data:`OTHER_JOBLIB`.
"""

from __future__ import annotations

import dataclasses
import importlib.util

__all__ = ["DEFAULT", "OTHER_JOBLIB", "REGISTRY", "SEQUENTIAL", "Traits", "check", "is_cluster",
           "traits_of"]


@dataclasses.dataclass(frozen=True)
class Traits:
    """What a call needs to know of its backend before one is chosen (the
    choice waits for the sample, which may start threads): whether chunks
    all run here, one after another (``sequential``); whether workers are
    threads of this process (nothing is pickled) or a cluster's; whether a
    program's large buffers travel apart from its pickle (workers on this
    machine map them from shared memory); for a cluster, the package it
    needs and how to install it."""

    sequential: bool = False
    in_process: bool = False
    cluster: bool = False
    apart: bool = True
    package: str | None = None
    install: str | None = None


DEFAULT = "loky"
SEQUENTIAL = "sequential"
REGISTRY: dict[str, Traits] = {
    DEFAULT: Traits(),
    "multiprocessing": Traits(),
    "threading": Traits(in_process=True),
    SEQUENTIAL: Traits(sequential=True, in_process=True),
    # What to install from the package index (this package is not published
    # there yet: from its source checkout, pip install ".[dask]" does it too).
    "dask": Traits(cluster=True, apart=False, package="distributed",
                   install='"dask[distributed]"'),
    "ray": Traits(cluster=True, apart=False, package="ray", install="ray"),
}
OTHER_JOBLIB = Traits(apart=False)


def traits_of(name: str | None) -> Traits:
    """The :class:`Traits` of backend ``name`` (``None``: the default)."""
    return REGISTRY.get(name or DEFAULT, OTHER_JOBLIB)


def is_cluster(name: str | None) -> bool:
    return traits_of(name).cluster


def check(name: object) -> None:
    """Raise ``TypeError``/``ValueError`` for a name no backend has, and
    ``ImportError`` with the install command when a cluster backend's package
    is missing (called when the option is set, before any work)."""
    if name is None:
        return
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {name!r}")
    from joblib.parallel import BACKENDS

    known = sorted(set(REGISTRY) | set(BACKENDS))
    if name not in known:
        raise ValueError(f"unknown backend {name!r}; available backends: {', '.join(known)}")
    package = traits_of(name).package
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(
            f"backend={name!r} needs the {package!r} package: pip install "
            f'{traits_of(name).install} (or, in the source checkout, pip install ".[{name}]")')
