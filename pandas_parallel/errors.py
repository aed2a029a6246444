"""Exceptions raised by pandas_parallel itself."""

from __future__ import annotations

__all__ = [
    "AccessorClashWarning",
    "InitializerError",
    "RemoteTraceback",
    "RowErrorsWarning",
    "UnpicklableFunctionError",
    "UnpicklableResultError",
    "WorkerCrashedError",
]


class AccessorClashWarning(UserWarning):
    """Another library took ``.parallel`` from pandas_parallel, or gave it up
    to it (parallel-pandas registers its own at import). ``.pandas_parallel``
    always reaches pandas_parallel."""


class WorkerCrashedError(RuntimeError):
    """A worker process died (segfault, ``os._exit``, killed for memory)
    while running a chunk. The pool is replaced; the next call works."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as an exception's ``__cause__``,
    so Python prints it under the re-raised original exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nWorker traceback:\n" + self.text


class UnpicklableFunctionError(TypeError):
    """The function or its arguments cannot be sent to worker processes."""


class UnpicklableResultError(TypeError):
    """A result the function returned cannot be sent back from a worker
    process (a lock, an open connection, ...)."""


class InitializerError(RuntimeError):
    """The ``initializer`` option's function raised; its exception is the
    ``__cause__``. No row of the call ran in the worker that raised it."""


class RowErrorsWarning(UserWarning):
    """Issued once per call run with ``errors="coerce"`` whose function
    raised for some rows, elements or groups.

    Attributes
    ----------
    failures : list of (label, exception)
        Every failure, in the order of the input: the row or column label,
        the element's ``(row, column)`` labels (``DataFrame.map``) or index
        label, or the group key; ``None`` where it cannot be told.
    """

    def __init__(self, message: str, failures: list[tuple[object, BaseException]]) -> None:
        super().__init__(message)
        self.failures = failures
