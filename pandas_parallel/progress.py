"""Progress bars: tqdm's in a terminal; in a notebook, one output per call
that updates in place and is saved as it ended.

tqdm's own notebook bar is a widget, and needs ipywidgets: without it tqdm
warns ``IProgress not found`` and writes its text bar to stderr, which a
notebook saves as one output per refresh; with it, the saved notebook holds
the widget's text as it was drawn, at 0%. Here the bar is one display
output, updated in place (a widget while it runs where ipywidgets is
installed, else a line of text), whose saved text is the bar's last state.
None of the bars starts tqdm's monitor thread: it outlives the bar, and a
process with another thread must not fork (see
:func:`pandas_parallel.backends.forked.available`); the calls refresh
their bars themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any

from tqdm.std import tqdm as text_tqdm

WIDGET_HINT = "(a widget bar: pip install ipywidgets, then restart the kernel)"


class _Hints:
    """Whether this process said how to get the widget bar (once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.given = False

    def first(self) -> bool:
        with self.lock:
            first, self.given = not self.given, True
        return first


HINTS = _Hints()


@dataclasses.dataclass
class Share:
    """A run's bar (the command line's, over a file's rows) and the part of
    it, ``size``, the calls made now stand for (a batch's rows); ``moved``,
    how far they moved it."""

    bar: Any
    size: int
    moved: int = 0


_RUNNING: contextvars.ContextVar[Share | None] = contextvars.ContextVar(
    "pandas_parallel_running_bar", default=None)


@contextlib.contextmanager
def share_of(bar: Any, size: int) -> Iterator[Share]:
    """While the block runs, calls move ``bar`` by their progress, as ``size``
    of it: the command line's bar moves per chunk, not per batch. With no bar
    (``None``), calls still run as they would under one: in pieces, each
    failure naming its rows."""
    share = Share(bar, size)
    token = _RUNNING.set(share)
    try:
        yield share
    finally:
        _RUNNING.reset(token)


def running_bar() -> Share | None:
    """The run's bar the calls made now move, if any."""
    return _RUNNING.get()


class _ShareOfRun:
    """Stands for a call's own bar inside a run's bar: each unit of the call
    moves the run's bar by its share."""

    def __init__(self, share: Share, total: int, initial: int = 0, **_: Any) -> None:
        self.share = share
        self.total = max(1, total)
        self.n = 0
        self.update(initial)

    def update(self, n: int = 1) -> None:
        self.n += n
        target = self.share.size * min(self.n, self.total) // self.total
        step = target - self.share.moved
        if step > 0 and self.share.bar is not None:
            self.share.bar.update(step)
        self.share.moved = max(self.share.moved, target)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        if self.share.bar is not None:
            self.share.bar.set_postfix_str(text, refresh=refresh)

    def close(self) -> None:
        pass  # the run's bar closes with the run


def call_bar(**kwargs: Any) -> Any:
    """The bar of one call: its share of the run's bar where a run moves one
    (:func:`share_of`), else a bar of its own."""
    share = running_bar()
    if share is not None:
        return _ShareOfRun(share, **kwargs)
    return progress_bar(**kwargs)


def progress_bar(**kwargs: Any) -> Any:
    """A progress bar for one call: tqdm's in a terminal, a notebook output
    in a Jupyter kernel."""
    if not _in_notebook():
        quiet = type("ProgressBar", (text_tqdm,), {"monitor_interval": 0})
        return quiet(**kwargs)
    if _widgets_installed():
        return _widget_bar(**kwargs)
    return NotebookLine(**kwargs)


class NotebookLine(text_tqdm):  # type: ignore[misc]
    """tqdm's text bar as one notebook output, updated in place: the saved
    notebook holds one line, as the bar ended. The first bar of a session
    also says how to get the widget bar."""

    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handle: Any = None
        self._hint = WIDGET_HINT if HINTS.first() else ""
        kwargs["file"] = io.StringIO()  # nothing to stderr: the output is the bar
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        from IPython.display import display

        text = msg if msg is not None else self.__str__()
        bundle = {"text/plain": text + ("\n" + self._hint if self._hint else "")}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)
        return True


def _widget_bar(**kwargs: Any) -> Any:
    """tqdm's widget bar, shown as a display output whose saved text is
    updated when the bar closes (a widget's own text is what it was when
    drawn)."""
    from IPython.display import display
    from tqdm.notebook import tqdm as widget_tqdm

    class WidgetBar(widget_tqdm):  # type: ignore[misc]
        monitor_interval = 0

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(display=False, **kwargs)
            self._handle = display(self._bundle(), raw=True, display_id=True)

        def _bundle(self) -> dict[str, Any]:
            view = {"version_major": 2, "version_minor": 0,
                    "model_id": self.container.model_id}
            return {"application/vnd.jupyter.widget-view+json": view,
                    "text/plain": text_tqdm.__str__(self)}

        def close(self) -> None:
            super().close()
            if getattr(self, "_handle", None) is not None:
                self._handle.update(self._bundle(), raw=True)

    return WidgetBar(**kwargs)


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel with a notebook front end
    (IPython in a terminal draws tqdm's text bar as a terminal does)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _widgets_installed() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True
