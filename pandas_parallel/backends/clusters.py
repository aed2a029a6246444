"""What the cluster backends (``dask.distributed`` and Ray) need beyond running
tasks: whether their package is installed, how many workers they have, and
whether an exception means a worker was lost.

Nothing here imports dask or Ray until a call asks for them, so the core
package works without either. Chunks and results travel in-band (Arrow IPC
bytes, or pickle), never as paths to this machine's shared memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from pandas_parallel.errors import WorkerCrashedError

logger = logging.getLogger("pandas_parallel")

def capacity(backend: str, n_jobs: int | None) -> int:
    """Workers ``n_jobs`` means on the cluster: all of its threads (dask) or
    CPUs (Ray) for ``None`` or ``-1``; at least 1."""
    if backend == "dask":
        try:
            from distributed import get_client

            client = get_client()
        except ValueError as exc:
            raise RuntimeError(
                "backend='dask' sends chunks to the workers of the active "
                "dask.distributed Client, and there is none: create one first, "
                "e.g. `from distributed import Client; client = Client(address)`"
            ) from exc
        total = sum(client.nthreads().values())
    else:
        import ray

        if not ray.is_initialized():
            ray.init()
        total = int(ray.cluster_resources().get("CPU", 1))
    if n_jobs is None:
        return max(1, total)
    return n_jobs if n_jobs > 0 else max(1, total + 1 + n_jobs)


class _Measured:
    """What was measured of each cluster, by scheduler address, once:

    ``rates``, bytes a second a chunk and its result travel at (a
    LocalCluster on loopback moves hundreds of MB/s, a real network a tenth
    of that: no one constant prices both); ``direct``, whether chunks go
    from this process straight to the dask workers. dask's default routes
    scattered data through the scheduler: every byte travels twice and the
    scheduler's one event loop, which also hands out the tasks, handles it
    (a 1M-row groupby took 0.79 s that way against 0.70 s straight, medians
    of 11 on a LocalCluster)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # one measurement per scheduler
        self.rates: dict[str, float] = {}
        self.direct: dict[str, bool] = {}

    def forget(self) -> None:
        with self.lock:
            self.rates.clear()
            self.direct.clear()


MEASURED = _Measured()
_PROBE_BYTES = 8 * 2**20
_DIRECT_CONNECT_TIMEOUT = "5s"


def dask_bytes_per_second() -> float | None:
    """How fast data makes the round trip between this process and the
    active Client's workers, as a task argument there and a result back
    (how chunks travel): measured once per scheduler, ``None`` without a
    Client."""
    try:
        from distributed import get_client

        client = get_client()
    except ValueError:
        return None
    address = str(getattr(client.scheduler, "address", id(client)))
    with MEASURED.lock:
        if address not in MEASURED.rates:
            MEASURED.rates[address] = _measure_round_trip(client)
            logger.debug("dask: %.0f MB/s between this process and the workers of %s",
                         MEASURED.rates[address] / 1e6, address)
        return MEASURED.rates[address]


def ray_bytes_per_second() -> float | None:
    """As :func:`dask_bytes_per_second`, for the Ray runtime this process
    is connected to."""
    import ray

    if not ray.is_initialized():
        return None
    address = f"ray:{ray.get_runtime_context().gcs_address}"
    with MEASURED.lock:
        if address not in MEASURED.rates:
            echo = ray.remote(max_retries=0)(_echo)
            MEASURED.rates[address] = _measure(
                lambda probe: ray.get(echo.remote(ray.put(probe))))
            logger.debug("ray: %.0f MB/s between this process and the workers of %s",
                         MEASURED.rates[address] / 1e6, address)
        return MEASURED.rates[address]


def dask_scatters_direct(client: Any) -> bool:
    """Whether to scatter chunks straight to ``client``'s workers: as the
    Client says if it was made with ``direct_to_workers``; otherwise if this
    process can reach them (tried once per scheduler: a client outside the
    cluster's network, behind a gateway, cannot)."""
    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)
    address = str(getattr(client.scheduler, "address", id(client)))
    with MEASURED.lock:
        if address not in MEASURED.direct:
            MEASURED.direct[address] = _can_reach_workers(client)
        return MEASURED.direct[address]


def _can_reach_workers(client: Any) -> bool:
    import dask

    try:
        with dask.config.set({"distributed.comm.timeouts.connect": _DIRECT_CONNECT_TIMEOUT}):
            [sent] = client.scatter([b"pandas_parallel"], direct=True, hash=False)
        client.cancel([sent])
        return True
    except (OSError, TimeoutError) as exc:
        logger.info("dask: this process cannot reach the workers directly (%s); chunks "
                    "go through the scheduler", exc)
        return False


def _measure_round_trip(client: Any) -> float:
    direct = dask_scatters_direct(client)

    def there_and_back(probe: Any) -> Any:
        [sent] = client.scatter([probe], hash=False, direct=direct)
        return client.submit(_echo, sent, pure=False).result()

    return _measure(there_and_back)


def _measure(there_and_back: Any) -> float:
    """Bytes a second through ``there_and_back(probe)``. Chunks travel as
    pandas objects, which the cluster serializes itself (and may compress):
    the probe is one, of random numbers, which do not compress (zeros
    would, and look much faster than data travels)."""
    import numpy as np
    import pandas as pd

    probe = pd.Series(np.random.default_rng(0).random(_PROBE_BYTES // 8))
    there_and_back(probe.iloc[:10])  # the first task pays for starting up
    seconds = []
    for _ in range(2):
        began = time.perf_counter()
        there_and_back(probe)
        seconds.append(time.perf_counter() - began)
    return 2 * _PROBE_BYTES / max(min(seconds), 1e-6)


def _echo(value: Any) -> Any:
    return value


def cancel_ray(refs: list[Any]) -> None:
    """Cancel Ray tasks that have not finished, leaving their workers alive.

    Not ``force=True``: that kills the worker process, and this process may
    still hold its lease and hand it the next call's first task, which then
    fails as a crashed worker (seen once in about 30 runs of the contract
    tests). Without force, a running task is interrupted (KeyboardInterrupt
    in its Python code) and its worker serves the next call."""
    import ray

    for ref in refs:
        ray.cancel(ref)


def lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` is a cluster's way of saying a worker died mid-task."""
    module = type(exc).__module__.split(".")[0]
    names = {cls.__name__ for cls in type(exc).__mro__}
    if module == "distributed":
        # A chunk scattered to a worker that died is lost with it: the task
        # that needed it is cancelled rather than retried.
        # A worker gone between the scheduler's word and a scatter to it
        # closes the connection.
        return bool(names & {"KilledWorker", "FutureCancelledError", "CommClosedError"})
    if module == "ray":
        return bool(names & {"WorkerCrashedError", "RayActorError", "ActorDiedError",
                             "NodeDiedError", "OutOfMemoryError"})
    return False


@contextlib.contextmanager
def worker_losses(label: str, backend: str) -> Iterator[None]:
    """Turn a cluster's "worker died" exception into :class:`WorkerCrashedError`."""
    try:
        yield
    except Exception as exc:
        if not lost_worker(exc):
            raise
        raise WorkerCrashedError(
            f"{label}: a {backend} worker died while running a chunk "
            f"({type(exc).__name__}: {exc}). The function may have crashed the "
            "process or used too much memory; smaller chunks (chunk_size=) use "
            "less memory per task.") from exc


@contextlib.contextmanager
def connected(backend: str, scheduler: str) -> Iterator[None]:
    """Connected to the cluster at ``scheduler`` for the block (the command
    line's ``--scheduler``); ``ValueError`` for a backend with none,
    ``OSError`` when it cannot be reached."""
    if backend == "dask":
        from distributed import Client

        with Client(scheduler, timeout=30):
            yield
    elif backend == "ray":
        import ray

        ray.init(address=scheduler, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
    else:
        raise ValueError("--scheduler goes with --backend dask or --backend ray")
