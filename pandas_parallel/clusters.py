"""What the cluster backends (``dask.distributed`` and Ray) need beyond running
tasks: whether their package is installed, how many workers they have, and
whether an exception means a worker was lost.

Nothing here imports dask or Ray until a call asks for them, so the core
package works without either. Chunks and results travel in-band (Arrow IPC
bytes, or pickle), never as paths to this machine's shared memory.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

logger = logging.getLogger("pandas_parallel")

CLUSTER_BACKENDS = ("dask", "ray")
_EXTRAS = {"dask": "distributed", "ray": "ray"}
# What to install from the package index (this package is not published
# there yet: from its source checkout, pip install ".[dask]" does it too).
_INSTALL = {"dask": '"dask[distributed]"', "ray": "ray"}


def is_cluster(backend: str | None) -> bool:
    return backend in CLUSTER_BACKENDS


def check_installed(backend: str) -> None:
    """Raise ``ImportError`` with the install command when ``backend``'s
    package is missing (called when the option is set, before any work)."""
    module = _EXTRAS[backend]
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"backend={backend!r} needs the {module!r} package: pip install "
            f'{_INSTALL[backend]} (or, in the source checkout, pip install ".[{backend}]")')


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


# Bytes a second a chunk and its result travel at, measured once per dask
# scheduler (a LocalCluster on loopback moves hundreds of MB/s, a real
# network a tenth of that: no one constant prices both).
_rates: dict[str, float] = {}
_PROBE_BYTES = 8 * 2**20


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
    if address not in _rates:
        _rates[address] = _measure_round_trip(client)
        logger.debug("dask: %.0f MB/s between this process and the workers of %s",
                     _rates[address] / 1e6, address)
    return _rates[address]


def ray_bytes_per_second() -> float | None:
    """As :func:`dask_bytes_per_second`, for the Ray runtime this process
    is connected to."""
    import ray

    if not ray.is_initialized():
        return None
    address = f"ray:{ray.get_runtime_context().gcs_address}"
    if address not in _rates:
        echo = ray.remote(max_retries=0)(_echo)
        _rates[address] = _measure(lambda probe: ray.get(echo.remote(ray.put(probe))))
        logger.debug("ray: %.0f MB/s between this process and the workers of %s",
                     _rates[address] / 1e6, address)
    return _rates[address]


# Whether chunks go from this process straight to the dask workers, per
# scheduler. dask's default routes scattered data through the scheduler:
# every byte travels twice and the scheduler's one event loop, which also
# hands out the tasks, handles it (a 1M-row groupby took 0.79 s that way
# against 0.70 s straight, medians of 11 on a LocalCluster).
_direct: dict[str, bool] = {}
_DIRECT_CONNECT_TIMEOUT = "5s"


def dask_scatters_direct(client: Any) -> bool:
    """Whether to scatter chunks straight to ``client``'s workers: as the
    Client says if it was made with ``direct_to_workers``; otherwise if this
    process can reach them (tried once per scheduler: a client outside the
    cluster's network, behind a gateway, cannot)."""
    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)
    address = str(getattr(client.scheduler, "address", id(client)))
    if address not in _direct:
        _direct[address] = _can_reach_workers(client)
    return _direct[address]


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
        return bool(names & {"KilledWorker", "FutureCancelledError"})
    if module == "ray":
        return bool(names & {"WorkerCrashedError", "RayActorError", "ActorDiedError",
                             "NodeDiedError", "OutOfMemoryError"})
    return False
