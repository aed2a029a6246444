"""Exceptions raised by pandas_parallel itself."""

from __future__ import annotations

__all__ = [
    "RemoteTraceback",
    "UnpicklableFunctionError",
    "UnpicklableResultError",
    "WorkerCrashedError",
]


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
