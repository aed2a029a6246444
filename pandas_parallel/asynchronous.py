"""``async def`` functions: many calls in flight on an event loop.

For I/O-bound work (per-row API calls, file reads, database lookups) the
library runs coroutines concurrently instead of spreading rows over
processes. It works in three steps, which keeps the result exactly what
pandas would give had the function been synchronous:

1. **record**: run the pandas call with a stand-in function that notes the
   arguments pandas passes (rows, values, groups) in order;
2. **compute**: await ``func(*arguments)`` for every recorded call, at most
   ``concurrency`` at once, on a private event loop in its own thread (so it
   also works where a loop is already running, as in a Jupyter cell);
3. **replay**: run the same pandas call with a function that returns the
   computed values in order, so pandas assembles and infers the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from pandas_parallel import policies

logger = logging.getLogger("pandas_parallel")

_POLL_SECONDS = 0.25


def is_async(func: Any) -> bool:
    """Whether calling ``func`` returns a coroutine (``async def``, a partial
    of one, or an object whose ``__call__`` is one)."""
    while isinstance(func, functools.partial):
        func = func.func
    call = type(func).__call__ if not inspect.isroutine(func) else None
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


@dataclasses.dataclass
class _Call:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _describe(value: Any) -> str:
    from pandas_parallel.worker import show_label

    if isinstance(value, (pd.Series, pd.DataFrame)):
        name = getattr(value, "name", None)
        kind = type(value).__name__
        return f"the {kind} labelled {show_label(name)}" if name is not None else f"a {kind}"
    text = repr(value)
    return "value " + (text if len(text) <= 80 else text[:77] + "...")


def _keep(value: Any) -> Any:
    """A copy of a pandas argument: pandas may reuse one Series object for
    every row. The group key pandas attaches to a DataFrame group as
    ``.name`` is kept too."""
    if not isinstance(value, (pd.Series, pd.DataFrame)):
        return value
    kept = value.copy()
    if isinstance(value, pd.DataFrame) and "name" in value.__dict__:
        object.__setattr__(kept, "name", value.__dict__["name"])
    return kept


def run(pandas_call: Callable[[Callable[..., Any]], Any], func: Callable[..., Any],
        placeholder: Callable[[Any], Any], label: str, concurrency: int,
        timeout: float | None, progress: bool | str,
        policy: policies.CallPolicy | None = None) -> Any:
    """Record, compute concurrently, replay (see the module docstring).

    Parameters
    ----------
    pandas_call : callable
        ``pandas_call(f)`` runs the user's pandas call with ``f`` in place of
        the function (other arguments unchanged).
    func : async callable
        The user's function.
    placeholder : callable
        What the recording stand-in returns for an argument; must be
        something pandas accepts from the function (e.g. ``True`` for filter).
    policy : CallPolicy, optional
        Retries and ``errors="coerce"`` for each call (its timeout is
        ``timeout``, applied to each try).
    """
    calls: list[_Call] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(_Call((_keep(args[0]), *args[1:]), kwargs))
        return placeholder(args[0])

    pandas_call(record)
    if policy is not None and policy.errors == "coerce":
        policy.coercing = policies.Coercing(func, policy.kind, policy.missing)
        policy.coercing.counted(len(calls))
    values = _compute(func, calls, label, concurrency, timeout, progress, policy)
    results = iter(values)
    return pandas_call(lambda *args, **kwargs: next(results))


def _compute(func: Callable[..., Any], calls: list[_Call], label: str, concurrency: int,
             timeout: float | None, progress: bool | str,
             policy: policies.CallPolicy | None = None) -> list[Any]:
    """Await every call, ``concurrency`` at a time, on a loop in its own thread."""
    from pandas_parallel.executor import interactive
    from pandas_parallel.progress import progress_bar

    results: list[Any] = [None] * len(calls)
    loop = asyncio.new_event_loop()
    show = progress is True or (progress == "auto" and interactive() and len(calls) > 100)
    bar = None
    if show:  # a bar without tqdm's monitor thread, which would rule out forking
        bar = progress_bar(total=len(calls), desc=f"{label} (async)", unit="calls")

    retries = policy.retries if policy is not None else 0
    retry_on = policy.retry_on if policy is not None else ()
    delay = policy.retry_delay if policy is not None else 0.0
    coercing = policy.coercing if policy is not None else None

    async def attempt(call: _Call) -> Any:
        coroutine = func(*call.args, **call.kwargs)
        try:
            return await (asyncio.wait_for(coroutine, timeout) if timeout else coroutine)
        except TimeoutError:
            raise TimeoutError(
                f"{label}: a call did not return within timeout={timeout} s; it was "
                f"called with {_describe(call.args[0])}") from None

    async def one(i: int) -> None:
        call = calls[i]
        for tried in range(retries + 1):
            try:
                results[i] = await attempt(call)
                break
            except Exception as exc:
                if tried < retries and isinstance(exc, retry_on):
                    await asyncio.sleep(delay * 2 ** tried)
                    continue
                if coercing is not None:
                    coercing.record(i, call.args[0] if call.args else None, exc)
                    results[i] = coercing.missing
                    break
                if hasattr(exc, "add_note") and not isinstance(exc, TimeoutError):
                    exc.add_note(f"pandas_parallel: {label} failed when the function was "
                                 f"called with {_describe(call.args[0])}")
                raise
        if bar is not None:
            bar.update(1)

    async def main() -> None:
        indices = iter(range(len(calls)))

        async def worker() -> None:
            for i in indices:  # shared: each index is taken by one worker
                await one(i)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(calls)))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()
    main_task: list[asyncio.Future[None]] = []

    def drive() -> None:
        asyncio.set_event_loop(loop)
        task = asyncio.ensure_future(main(), loop=loop)
        main_task.append(task)
        try:
            loop.run_until_complete(task)
            outcome.set_result(None)
        except BaseException as exc:
            outcome.set_exception(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    # The loop runs in a copy of the caller's context: numpy's error state
    # and print options and the decimal context are context variables, which
    # a new thread would otherwise start without.
    caller = contextvars.copy_context()
    thread = threading.Thread(target=caller.run, args=(drive,), name="pandas_parallel-async",
                              daemon=True)
    ok = False
    thread.start()
    try:
        # Wait in short steps so Ctrl-C reaches this thread. (Not by catching
        # TimeoutError from result(): the calls' own timeouts are TimeoutErrors.)
        while not concurrent.futures.wait([outcome], timeout=_POLL_SECONDS).done:
            pass
        outcome.result()
        ok = True
    except KeyboardInterrupt:
        logger.debug("%s: interrupted; cancelling outstanding calls", label)
        if main_task and not loop.is_closed():
            loop.call_soon_threadsafe(main_task[0].cancel)
        thread.join(timeout=5)
        raise
    finally:
        if bar is not None:
            if ok:
                bar.update(bar.total - bar.n)
            bar.close()
    thread.join()
    return results
