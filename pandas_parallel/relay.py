"""Warnings and log records: made in a worker, issued again in the caller's
process, to the caller's filters and handlers.

In a worker, a chunk runs inside :func:`relaying`, which keeps:

- the warnings the caller's filters let through (a worker process applies
  the caller's filters with its :mod:`~pandas_parallel.snapshot`: a filter
  that turns a warning into an error raises it in the worker, where the
  function may catch it, as in pandas);
- the log records the caller's loggers would make at their levels, instead
  of handing them to the worker's handlers (a forked worker holds copies of
  the caller's: a file would be written twice).

Back in the caller, :class:`Relay` issues each distinct warning once per
call at the line that made the call, and hands each log record to the
logger of its name, whose filters and handlers (``caplog``, a file) then
treat it as one of the caller's own. A record keeps its logger name, level,
message, and where it was made; ``record.pandas_parallel_worker`` names the
worker process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.machinery
import logging
import os
import pickle
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from typing import Any

from pandas_parallel import _compat
from pandas_parallel.snapshot import LogLevels

__all__ = ["Relay", "Relayed", "Warned", "relaying"]

_MAX_WARNINGS = 20  # distinct ones per chunk: a warning per row is one warning


@dataclasses.dataclass(frozen=True)
class Warned:
    """A warning issued in a worker: what the caller's filters match it by."""

    category: type[Warning]
    message: str
    module: str  # the module that issued it, as filters see it


@dataclasses.dataclass
class Relayed:
    """What one chunk made that goes back to the caller."""

    warnings: list[Warned] = dataclasses.field(default_factory=list)
    logs: list[dict[str, Any]] = dataclasses.field(default_factory=list)


# -- in a worker ----------------------------------------------------------------------
@contextlib.contextmanager
def relaying(record_warnings: bool, logs: LogLevels | None) -> Iterator[Relayed]:
    """Keep the block's warnings (``record_warnings``) and, with the
    caller's ``logs`` levels, the log records made in this thread."""
    relayed = Relayed()
    with _warnings_kept(record_warnings) as issued, _logs_kept(logs, relayed.logs):
        try:
            yield relayed
        finally:
            relayed.warnings = _distinct(issued)


@contextlib.contextmanager
def _warnings_kept(record: bool) -> Iterator[list[warnings.WarningMessage]]:
    """Warnings shown in the block, kept rather than shown.

    A worker process's only thread keeps them with ``catch_warnings``,
    under the filters in force (the caller's). A worker thread shares the
    warnings machinery of its process: it keeps only its own, through one
    hook installed for good, so no thread swaps the machinery under another."""
    if not record:
        yield []
    elif threading.current_thread() is threading.main_thread():
        with warnings.catch_warnings(record=True) as issued:
            yield issued
    else:
        _install_thread_collector()
        issued = []
        HOOKS.collected.messages = issued
        try:
            yield issued
        finally:
            HOOKS.collected.messages = None


class _Hooks:
    """What this process installed to catch what its worker threads report,
    and their state, declared in one place: ``lock``, held while a hook is
    installed (once per process); ``collected.messages``, the warnings of
    the chunk a thread runs; ``capturing.levels`` and ``.records``, the
    caller's log levels and the records kept while a thread runs a chunk;
    ``modules_by_file``, module names by file (what a warnings filter's
    ``module`` matches); ``worker``, this process's name in the records it
    sends back."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.collected = threading.local()
        self.capturing = threading.local()
        self.modules_by_file: dict[str, str] = {}
        self.worker = f"worker process {os.getpid()}"


HOOKS = _Hooks()


def _install_thread_collector() -> None:
    """Route warnings shown in a collecting worker thread to its list.
    (``catch_warnings`` saves and restores what it replaces; it does not
    replace ``warnings._showwarnmsg``, which the C ``warn`` looks up.)"""
    with HOOKS.lock:
        shown = warnings._showwarnmsg  # type: ignore[attr-defined]
        if getattr(shown, "pandas_parallel", False):
            return

        def show_or_collect(message: warnings.WarningMessage) -> None:
            messages = getattr(HOOKS.collected, "messages", None)
            if messages is None:
                shown(message)
            else:
                messages.append(message)

        show_or_collect.pandas_parallel = True  # type: ignore[attr-defined]
        warnings._showwarnmsg = show_or_collect  # type: ignore[attr-defined]


def _distinct(issued: list[warnings.WarningMessage]) -> list[Warned]:
    seen: dict[Warned, None] = {}
    for message in issued:
        seen.setdefault(Warned(message.category, str(message.message),
                               _module_of(message.filename)), None)
        if len(seen) == _MAX_WARNINGS:
            break
    return list(seen)


def _module_of(filename: str) -> str:
    """The name of the module whose file is ``filename`` (what a warnings
    filter's ``module`` matches), else one made from the path."""
    if filename not in HOOKS.modules_by_file:
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                HOOKS.modules_by_file.setdefault(path, name)
    if filename in HOOKS.modules_by_file:
        return HOOKS.modules_by_file[filename]
    stem = filename[:-3] if filename.endswith(".py") else filename
    for entry in sorted((p for p in sys.path if p), key=len, reverse=True):
        if stem.startswith(entry.rstrip(os.sep) + os.sep):
            return stem[len(entry.rstrip(os.sep)) + 1:].replace(os.sep, ".")
    return stem


# Log records: while a worker thread runs a chunk, its loggers decide at the
# caller's levels and keep their records (installed once per process; other
# threads, and this one between chunks, log as they did).
def name_worker(kind: str) -> None:
    """Name this process in the records it sends back (``"pool"``...)."""
    HOOKS.worker = f"{kind} worker process {os.getpid()}"


@contextlib.contextmanager
def _logs_kept(levels: LogLevels | None, records: list[dict[str, Any]]) -> Iterator[None]:
    if levels is None:
        yield
        return
    _hook_logging()
    outer = getattr(HOOKS.capturing, "levels", None), getattr(HOOKS.capturing, "records", None)
    HOOKS.capturing.levels, HOOKS.capturing.records = levels, records
    try:
        yield
    finally:
        HOOKS.capturing.levels, HOOKS.capturing.records = outer


def _hook_logging() -> None:
    with HOOKS.lock:
        if getattr(logging.Logger.isEnabledFor, "pandas_parallel", False):
            return
        enabled, handle = logging.Logger.isEnabledFor, logging.Logger.handle

        def is_enabled_for(self: logging.Logger, level: int) -> bool:
            levels = getattr(HOOKS.capturing, "levels", None)
            if levels is None:
                return enabled(self, level)
            return levels.enabled(_name(self), level)

        def keep_or_handle(self: logging.Logger, record: logging.LogRecord) -> None:
            records = getattr(HOOKS.capturing, "records", None)
            if records is None:
                handle(self, record)
            else:
                records.append(_portable(record))

        is_enabled_for.pandas_parallel = True  # type: ignore[attr-defined]
        logging.Logger.isEnabledFor = is_enabled_for  # type: ignore[method-assign]
        logging.Logger.handle = keep_or_handle  # type: ignore[method-assign]


def _name(logger: logging.Logger) -> str:
    return "" if logger is logging.root else logger.name


_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _portable(record: logging.LogRecord) -> dict[str, Any]:
    """A record as it can travel: its message formatted here (its arguments
    may not pickle), its exception as text."""
    state = dict(record.__dict__)
    try:
        state["msg"] = record.getMessage()
    except Exception:  # a format that does not fit its arguments
        state["msg"] = f"{record.msg!r} (arguments {record.args!r})"
    state["args"] = None
    if record.exc_info and not record.exc_text:
        state["exc_text"] = logging.Formatter().formatException(record.exc_info)
    state["exc_info"] = None
    for key in state.keys() - _STANDARD:
        try:
            pickle.dumps(state[key])
        except Exception:
            state[key] = repr(state[key])
    state["pandas_parallel_worker"] = HOOKS.worker
    return state


# -- in the caller ----------------------------------------------------------------------
class Relay:
    """Issues, in the caller's process, what one call's chunks relayed."""

    def __init__(self, func: Any = None) -> None:
        self.func = func
        self.warned: set[Warned] = set()
        self._files: dict[str, str] | None = None

    def issue(self, relayed_warnings: list[Warned], logs: list[dict[str, Any]]) -> None:
        for state in logs:
            name = state.get("name") or ""
            logger = logging.getLogger(None if name in ("", "root") else name)
            logger.handle(logging.makeLogRecord(self._located(state)))
        fresh = [w for w in relayed_warnings if w not in self.warned]
        if not fresh:
            return
        frame = _compat.caller_frame()
        registry = frame.f_globals.setdefault("__warningregistry__", {})
        for warned in fresh:
            self.warned.add(warned)
            # At the line that made the call, matched by filters as the
            # module that issued it.
            warnings.warn_explicit(warned.message, warned.category, frame.f_code.co_filename,
                                   frame.f_lineno, module=warned.module, registry=registry,
                                   module_globals=_with_source(frame.f_globals))

    def _located(self, state: dict[str, Any]) -> dict[str, Any]:
        """A record made by code that travelled by value, whose file
        cloudpickle names ``<dynamic-code>``, with its real file."""
        if state.get("pathname") != _DYNAMIC:
            return state
        if self._files is None:
            self._files = source_files(self.func)
        path = self._files.get(state.get("funcName") or "")
        if path is None:
            return state
        filename = os.path.basename(path)
        return {**state, "pathname": path, "filename": filename,
                "module": os.path.splitext(filename)[0]}


_DYNAMIC = "<dynamic-code>"
_MOST_FUNCTIONS = 200


def source_files(func: Any) -> dict[str, str]:
    """Function name -> source file, for ``func``, the code it contains and
    the functions it calls by global name (and theirs): what restores the
    file names that code pickled by value loses in a worker."""
    from pandas_parallel.policies import unwrap

    found: dict[str, str] = {}
    seen: set[int] = set()
    stack = [unwrap(func)]
    while stack and len(seen) < _MOST_FUNCTIONS:
        current = stack.pop()
        current = getattr(current, "__func__", current)
        code = getattr(current, "__code__", None)
        if code is None or id(code) in seen:
            continue
        seen.add(id(code))
        namespace = getattr(current, "__globals__", {})
        codes = [code]
        while codes:
            inner = codes.pop()
            found.setdefault(inner.co_name, inner.co_filename)
            codes.extend(c for c in inner.co_consts if isinstance(c, types.CodeType))
            stack.extend(v for v in map(namespace.get, inner.co_names)
                         if isinstance(v, types.FunctionType))
    return found


def _with_source(module_globals: dict[str, Any]) -> dict[str, Any] | None:
    """The calling module's globals, for ``warn_explicit`` to read the line
    from; ``None`` where its loader has no source to give (``python -c``
    and the interactive prompt: their ``__loader__`` is BuiltinImporter,
    whose ``get_source`` raises ImportError)."""
    loader = module_globals.get("__loader__")
    if isinstance(loader, type) and issubclass(
            loader, (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)):
        return None
    return module_globals
