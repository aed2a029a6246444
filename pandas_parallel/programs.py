"""Ship the program: the user's function, as the caller has it now, to
worker processes.

A call's :class:`Program` (the pandas call on a chunk, the user's function
and its arguments, the initializer, the caller's state) is pickled once per
call, with cloudpickle:

- **The caller's own code travels by value**: functions and classes of
  modules that are not installed packages (the project's files, a
  notebook's helper modules, ``__main__``) are pickled with their code and
  the current values of the globals they use, so a worker started
  yesterday runs today's code: after ``importlib.reload``, ``%autoreload``,
  or a setting changed at run time (``settings.THRESHOLD = 15``). Installed
  packages travel by reference. Where a module's objects cannot be pickled
  by value (a global holding a lock), the call falls back to by reference.
- **Large objects go once**: buffers of 1 MB or more the program holds
  (numpy arrays, the columns of a frame, in a closure, a global, a default
  or an argument) travel beside the pickle (pickle protocol 5), each stored
  once per content in a shared-memory file (:class:`Store`) that workers
  map copy-on-write; a worker keeps what it decoded (:func:`decode`), by
  content, for later chunks and calls, so an unchanged program is not sent
  to it again.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import mmap
import os
import pickle
import shutil
import sys
import sysconfig
import tempfile
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from pandas_parallel.errors import UnpicklableFunctionError

logger = logging.getLogger("pandas_parallel")

__all__ = ["STORE", "Encoded", "Pickled", "Program", "decode", "pickled", "user_module"]

#: Buffers of this size or more travel beside the pickle, once per content.
LARGE_BUFFER_BYTES = 2**20
#: A pickle this large goes into the store too, rather than into each task.
INLINE_PROGRAM_BYTES = 2**16
STORE_PREFIX = "pandas_parallel_store-"
_HASH_BLOCK = 2**26


@dataclasses.dataclass
class Program:
    """What every chunk of one call runs: ``runner(chunk, func, args, kwargs)``,
    after the worker applied ``snapshot`` and ran ``setup``."""

    runner: Callable[..., Any]
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    calls_per_unit: int = 1
    setup: Any = None  # policies.Setup: the initializer option
    snapshot: Any = None  # snapshot.Snapshot: the caller's state


# -- the caller's own modules, by value ---------------------------------------------
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return tuple(os.path.realpath(root) + os.sep for root in roots)


_INSTALLED = _installed_roots()
_OURS = "pandas_parallel"


class _CallerModules:
    """What this process knows of the caller's modules, under one lock:
    ``kinds``, by module name, whether it is the caller's own code;
    ``scan``, the modules found so last time and what ``sys.modules`` looked
    like then; ``refused``, modules whose objects could not be pickled by
    value (a global holding a lock or a connection), by name, with the id
    of the module object then. The lock also covers cloudpickle's
    by-value registry while a program is pickled."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.kinds: dict[str, bool] = {}
        self.scan: tuple[Any, list[str]] = (None, [])
        self.refused: dict[str, int] = {}


CALLER_MODULES = _CallerModules()


def user_module(module: Any) -> bool:
    """Whether ``module`` is the caller's own code: ``__main__``, or a
    module from a Python file outside the interpreter's and its installed
    packages' directories (a project's files, an editable install)."""
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        return False
    if name == "__main__":
        return True
    kinds = CALLER_MODULES.kinds
    if name not in kinds:
        path = getattr(module, "__file__", None)
        kinds[name] = (
            isinstance(path, str) and path.endswith(".py")
            and name.partition(".")[0] != _OURS
            and not os.path.realpath(path).startswith(_INSTALLED))
    return kinds[name]


def _modules_by_value() -> list[Any]:
    """The loaded modules of the caller's own (looked for again once a
    module was imported or removed: the count, or the last one, changed)."""
    with CALLER_MODULES.lock:
        known, names = CALLER_MODULES.scan
        last = next(reversed(sys.modules), None)
        seen = (len(sys.modules), last, id(sys.modules.get(last or "")))
        if seen != known:
            names = [name for name, m in list(sys.modules.items()) if user_module(m)]
            CALLER_MODULES.scan = (seen, names)
    return [m for m in map(sys.modules.get, names) if m is not None]


@contextlib.contextmanager
def _registered(modules: list[Any]) -> Iterator[None]:
    """While pickling: ``modules`` travel by value (registered with
    cloudpickle for the block; those registered already stay so)."""
    with CALLER_MODULES.lock:
        registered = set(cloudpickle.list_registry_pickle_by_value())
        added = []
        for module in modules:
            # Once per name: __main__ is listed under "__mp_main__" too, where
            # multiprocessing ran, and a second unregister would fail (and
            # format the module, which warns for `python -c`'s).
            name = module.__name__
            if name not in registered and sys.modules.get(name) is module:
                cloudpickle.register_pickle_by_value(module)
                registered.add(name)
                added.append(module)
        try:
            yield
        finally:
            for module in added:
                with contextlib.suppress(ValueError):
                    cloudpickle.unregister_pickle_by_value(module)


def _dumps(obj: Any, modules: list[Any], out_of_band: bool
           ) -> tuple[bytes, list[pickle.PickleBuffer]]:
    buffers: list[pickle.PickleBuffer] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < LARGE_BUFFER_BYTES:
            return True  # in the pickle
        buffers.append(buffer)
        return False

    with _registered(modules):
        blob = cloudpickle.dumps(obj, protocol=5,
                                 buffer_callback=keep_large if out_of_band else None)
    return blob, buffers


def dumps_by_value(obj: Any, out_of_band: bool = False
                   ) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``obj`` pickled with the caller's own modules by value, and (with
    ``out_of_band``) its large buffers apart. A module whose objects cannot
    travel by value (a global holding a lock) travels by reference, and is
    remembered so; where even that fails, everything travels by reference
    (and what cannot is the caller's error)."""
    refused_before = CALLER_MODULES.refused
    modules = [m for m in _modules_by_value() if refused_before.get(m.__name__) != id(m)]
    try:
        return _dumps(obj, modules, out_of_band)
    except Exception as exc:
        refused = [m for m in modules if not _pickles_with(obj, m)]
        with CALLER_MODULES.lock:
            refused_before.update((m.__name__, id(m)) for m in refused)
        logger.debug("program: %s cannot travel by value (%s: %s); by reference",
                     ", ".join(m.__name__ for m in refused) or "the caller's code",
                     type(exc).__name__, exc)
    try:
        return _dumps(obj, [m for m in modules if m not in refused], out_of_band)
    except Exception:
        return _dumps(obj, [], out_of_band)


def _pickles_with(obj: Any, module: Any) -> bool:
    """Whether ``obj`` pickles with ``module`` alone by value (its large
    buffers left out, not copied)."""
    try:
        with _registered([module]):
            cloudpickle.dumps(obj, protocol=5, buffer_callback=lambda buffer: False)
    except Exception:
        return False
    return True


@dataclasses.dataclass
class Pickled:
    """A program pickled, its large buffers apart (not copied, not hashed yet)."""

    blob: bytes
    buffers: list[pickle.PickleBuffer]

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.buffer_bytes

    @property
    def buffer_bytes(self) -> int:
        return sum(buffer.raw().nbytes for buffer in self.buffers)


def pickled(program: Any, out_of_band: bool = True) -> Pickled:
    """Pickle ``program`` once for the call (``out_of_band``: large buffers
    apart, for workers on this machine).

    Raises
    ------
    UnpicklableFunctionError
        Naming what could not be pickled and how to avoid pickling.
    """
    try:
        blob, buffers = dumps_by_value(program, out_of_band)
    except Exception as exc:
        culprit = _unpicklable_part(program)
        raise UnpicklableFunctionError(
            f"pandas_parallel cannot send {culprit} to the worker processes: {exc}. "
            "Functions and their arguments are pickled (with cloudpickle) to reach "
            "worker processes. Create the object inside the function instead of "
            "capturing it, or use backend='threading', which does not pickle."
        ) from exc
    return Pickled(blob, buffers)


def _unpicklable_part(program: Any) -> str:
    """Name the first part of the call that does not pickle."""
    args, kwargs = getattr(program, "args", ()), getattr(program, "kwargs", {})
    parts: list[tuple[str, Any]] = [(f"the function {program.func!r}", program.func)]
    parts += [(f"positional argument {i} ({a!r})", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k}={v!r}", v) for k, v in kwargs.items()]
    for name, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return name
    return "the call"


@dataclasses.dataclass(frozen=True)
class BufferRef:
    """A large buffer in the store: its content key, size and file."""

    key: str
    nbytes: int
    path: str


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A program as it travels to a worker process: its pickle (inline, or
    in the store at ``path``; ``None`` where the worker has it already) and
    its large buffers, named by ``digest``, which covers all of it."""

    digest: str
    blob: bytes | None
    path: str | None = None
    buffers: tuple[BufferRef, ...] = ()

    @property
    def sent_bytes(self) -> int:
        """What travels with each task that carries it."""
        return len(self.blob) if self.blob is not None else 0

    def known(self) -> Encoded:
        """This program, for a worker that has decoded it already."""
        return dataclasses.replace(self, blob=None, path=None)


def in_band(pickled_program: Pickled) -> Encoded:
    """A program pickled with its buffers inside (for a cluster, whose
    workers cannot read this machine's files)."""
    assert not pickled_program.buffers
    blob = pickled_program.blob
    return Encoded(hashlib.sha1(blob).hexdigest(), blob)


def _content_key(buffer: memoryview) -> str:
    """A buffer's content, as a key: its size and the CRC-32 of each 64 MB
    block (4 GB/s a core, which releases the GIL: 0.06 s for 500 MB on two
    cores, where SHA-1 takes 0.3 s on one)."""
    flat = _bytes_view(buffer)
    blocks = [flat[i:i + _HASH_BLOCK] for i in range(0, len(flat), _HASH_BLOCK)]
    threads = min(len(blocks), os.cpu_count() or 1)
    if threads > 1:
        # Joined before returning: no thread outlives the call (a process
        # with another thread must not fork).
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            crcs = list(pool.map(zlib.crc32, blocks))
    else:
        crcs = [zlib.crc32(block) for block in blocks]
    return f"{len(flat):x}-" + "-".join(f"{crc:08x}" for crc in crcs)


def _bytes_view(buffer: memoryview) -> memoryview:
    return buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer


def _address(buffer: memoryview) -> tuple[int, int]:
    """Where a buffer lies in memory, and its size: what tells, before
    hashing it, that it is most likely one the store holds already."""
    import numpy as np

    flat = _bytes_view(buffer)
    return int(np.frombuffer(flat, dtype=np.uint8).ctypes.data), len(flat)


class Store:
    """This process's large buffers and pickles, one file per content, in
    shared memory (``/dev/shm``; the temp directory when it lacks room),
    written once and kept while a call uses them or the last one did."""

    def __init__(self) -> None:
        self.directory: str | None = None
        self.files: dict[str, int] = {}  # key -> size
        self.places: dict[tuple[int, int], str] = {}  # (address, size) -> key, last seen
        self.leases: collections.Counter[str] = collections.Counter()
        self.last_used: set[str] = set()
        self.lock = threading.Lock()

    def publish(self, program: Pickled) -> Encoded:
        """``program`` ready for worker processes on this machine; its files
        are leased until :meth:`release` with the same object."""
        refs = []
        with self.lock:
            for buffer in program.buffers:
                view = buffer.raw()
                key = _content_key(view)
                refs.append(BufferRef(key, view.nbytes, self._put(key, view)))
                self.places[_address(view)] = key
            digest = hashlib.sha1(
                program.blob + "|".join(r.key for r in refs).encode()).hexdigest()
            if len(program.blob) > INLINE_PROGRAM_BYTES:
                path = self._put(f"program-{digest}", memoryview(program.blob))
                encoded = Encoded(digest, None, path, tuple(refs))
            else:
                encoded = Encoded(digest, program.blob, None, tuple(refs))
            self.leases.update(self._keys(encoded))
        return encoded

    def unstored_bytes(self, program: Pickled) -> int:
        """The bytes of ``program``'s buffers the store would have to write,
        as far as can be told without hashing them: those not where a
        stored one was (an estimate, for the plan; publishing hashes them)."""
        held = {place for place, key in self.places.items() if key in self.files}
        return sum(buffer.raw().nbytes for buffer in program.buffers
                   if _address(buffer.raw()) not in held)

    def release(self, encoded: Encoded) -> None:
        """The call that published ``encoded`` is over: keep its files for
        the next call, and remove what neither uses."""
        with self.lock:
            keys = self._keys(encoded)
            self.leases.subtract(keys)
            self.last_used = set(keys)
            for key in [k for k in self.files if self.leases[k] <= 0 and k not in keys]:
                self._remove(key)
            self.leases = +self.leases

    @staticmethod
    def _keys(encoded: Encoded) -> list[str]:
        keys = [ref.key for ref in encoded.buffers]
        return [*keys, f"program-{encoded.digest}"] if encoded.path else keys

    def _put(self, key: str, data: memoryview) -> str:
        path = os.path.join(self._ensure_directory(data.nbytes), key)
        if key not in self.files:
            partial = f"{path}.partial"
            with open(partial, "wb") as file:
                file.write(data.cast("B") if data.ndim != 1 or data.format != "B" else data)
            os.replace(partial, path)
            self.files[key] = data.nbytes
            logger.debug("program: %d MB stored once for the workers (%s)",
                         data.nbytes >> 20, key)
        return path

    def _ensure_directory(self, nbytes: int) -> str:
        if self.directory is None or not os.path.isdir(self.directory):
            base = tempfile.gettempdir()
            with contextlib.suppress(OSError):
                if shutil.disk_usage("/dev/shm").free > 2 * nbytes + 2**26:
                    base = "/dev/shm"
            self.directory = os.path.join(
                base, f"{STORE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.mkdir(self.directory, 0o700)
            self.files.clear()
        return self.directory

    def _remove(self, key: str) -> None:
        self.files.pop(key, None)
        if self.directory is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, key))

    def clear(self) -> None:
        """Remove every file (no worker will read them again)."""
        with self.lock:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            self.files.clear()
            self.leases.clear()
            self.places.clear()

    def forget_in_child(self) -> None:
        """In a process forked from this one: the store is its parent's."""
        self.directory = None
        self.files = {}
        self.leases = collections.Counter()
        self.places = {}
        self.lock = threading.Lock()


STORE = Store()
atexit.register(STORE.clear)
os.register_at_fork(after_in_child=STORE.forget_in_child)


# -- in a worker -------------------------------------------------------------------------
class _Decoded:
    """The programs this worker decoded, by digest, with the bytes of their
    buffers, oldest first; one lock (chunks of a call may run on threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.programs: collections.OrderedDict[str, tuple[Program, int]] = (
            collections.OrderedDict())


DECODED = _Decoded()
_PROGRAMS_KEPT = 4


def decode(sent: Program | Encoded) -> Program:
    """The call's program, decoded once per worker per content: kept for
    later chunks and calls, while recent (four programs, and buffers no
    larger than twice the newest's)."""
    if isinstance(sent, Program):
        return sent
    decoded = DECODED.programs
    with DECODED.lock:
        kept = decoded.get(sent.digest)
        if kept is not None:
            decoded.move_to_end(sent.digest)
            return kept[0]
        if sent.blob is not None:
            blob: Any = sent.blob
        elif sent.path is not None:
            blob = _mapped(sent.path)
        else:
            raise RuntimeError(f"program {sent.digest}: this worker was not sent it")
        program = pickle.loads(blob, buffers=[_mapped(ref.path) for ref in sent.buffers])
        size = sum(ref.nbytes for ref in sent.buffers)
        decoded[sent.digest] = (program, size)
        _forget_old(decoded, newest=size)
        return program


def _mapped(path: str) -> memoryview:
    """A file mapped copy-on-write: what is read is shared with every process
    that maps it; what the function writes stays this worker's."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY))


def _forget_old(decoded: collections.OrderedDict[str, tuple[Program, int]], newest: int
                ) -> None:
    while len(decoded) > 1 and (
            len(decoded) > _PROGRAMS_KEPT
            or sum(size for _, size in decoded.values()) > 2 * newest + LARGE_BUFFER_BYTES):
        decoded.popitem(last=False)

