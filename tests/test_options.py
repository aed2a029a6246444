"""Options: validation before any work, scoping, per-call overrides."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import joblib
import pandas as pd
import pytest

import pandas_parallel
from pandas_parallel.backends import names
from pandas_parallel.options import resolve_n_jobs


@pytest.mark.parametrize("options, error, match", [
    ({"n_jobs": 0}, ValueError, "n_jobs=0"),
    ({"n_jobs": 1.5}, TypeError, "n_jobs"),
    ({"n_jobs": True}, TypeError, "n_jobs"),
    ({"chunk_size": -1}, ValueError, "chunk_size"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"chunk_size": "big"}, TypeError, "chunk_size"),
    ({"backend": "fork-bomb"}, ValueError, "backend"),
    ({"transport": "zip"}, ValueError, "transport"),
    ({"partition": "diagonal"}, ValueError, "partition"),
    ({"progress": "sometimes"}, ValueError, "progress"),
    ({"serial_fallback": "no"}, TypeError, "serial_fallback"),
    ({"n_job": 2}, TypeError, "unknown pandas_parallel option 'n_job'"),
])
def test_bad_options_fail_before_any_work(options, error, match):
    calls = []
    df = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(error, match=match):
        df.parallel(**options).apply(lambda r: calls.append(r), axis=1)
    with pytest.raises(error, match=match):
        pandas_parallel.config(**options)
    assert calls == []
    assert pandas_parallel.get_options() == pandas_parallel.Options()


def test_cluster_backend_without_its_package_says_what_to_install(monkeypatch):
    missing = dataclasses.replace(names.REGISTRY["ray"], package="a_module_that_is_not_installed")
    monkeypatch.setitem(names.REGISTRY, "ray", missing)
    with pytest.raises(ImportError, match=r'pip install ray \(or, in the source checkout, '
                                          r'pip install "\.\[ray\]"\)'):
        pandas_parallel.config(backend="ray")
    with pytest.raises(ImportError, match="a_module_that_is_not_installed"):
        pd.DataFrame({"a": [1]}).parallel(backend="ray")


def test_config_scopes_and_restores():
    before = pandas_parallel.get_options()
    with pandas_parallel.config(n_jobs=2, chunk_size=5) as inside:
        assert inside.n_jobs == 2 and inside.chunk_size == 5
        with pandas_parallel.config(chunk_size=7):
            assert pandas_parallel.get_options().chunk_size == 7
            assert pandas_parallel.get_options().n_jobs == 2
        assert pandas_parallel.get_options().chunk_size == 5
    assert pandas_parallel.get_options() == before


def test_config_without_with_sets_globally():
    try:
        pandas_parallel.config(progress=False)
        assert pandas_parallel.get_options().progress is False
    finally:
        pandas_parallel.config(progress="auto")


def test_config_blocks_in_two_threads_neither_see_nor_leak_each_other():
    """Overlapping ``with config(...)`` blocks in two threads: each sees its
    own setting inside, and none is left set once both end."""
    entered, leave = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    seen: dict[int, list[int | None]] = {}

    def block(size: int) -> None:
        with pandas_parallel.config(chunk_size=size):
            entered.wait()  # both blocks are open now
            seen[size] = [pandas_parallel.get_options().chunk_size]
            leave.wait()
        seen[size].append(pandas_parallel.get_options().chunk_size)

    threads = [threading.Thread(target=block, args=(size,)) for size in (7, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {7: [7, None], 9: [9, None]}
    assert pandas_parallel.get_options() == pandas_parallel.Options()


def test_config_blocks_are_scoped_per_asyncio_task():
    async def block(size: int, other_entered: asyncio.Event, entered: asyncio.Event) -> int:
        with pandas_parallel.config(chunk_size=size):
            entered.set()
            await asyncio.wait_for(other_entered.wait(), timeout=10)
            return pandas_parallel.get_options().chunk_size

    async def both() -> list[int]:
        first, second = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(block(3, second, first), block(4, first, second))

    assert asyncio.run(both()) == [3, 4]
    assert pandas_parallel.get_options() == pandas_parallel.Options()


def test_config_without_with_is_seen_by_other_threads():
    seen = []
    try:
        pandas_parallel.config(chunk_size=11)
        thread = threading.Thread(target=lambda: seen.append(
            pandas_parallel.get_options().chunk_size))
        thread.start()
        thread.join(timeout=10)
    finally:
        pandas_parallel.config(chunk_size=None)
    assert seen == [11]
    assert pandas_parallel.get_options() == pandas_parallel.Options()


def test_per_call_options_override_config():
    df = pd.DataFrame({"a": [1]})
    with pandas_parallel.config(n_jobs=3):
        assert df.parallel(n_jobs=1).options.n_jobs == 1
        assert df.parallel.options.n_jobs == 3
        assert df.a.parallel(chunk_size=2)(n_jobs=4).options.chunk_size == 2


def test_default_n_jobs_is_the_usable_cpu_count():
    assert resolve_n_jobs(None) == joblib.cpu_count()
    assert resolve_n_jobs(-1) == joblib.cpu_count()
    assert resolve_n_jobs(-2) == max(1, joblib.cpu_count() - 1)
    assert resolve_n_jobs(3) == 3


def test_accessor_signatures_bind_like_pandas():
    df = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(TypeError):
        df.parallel.apply()  # pandas: missing 'func'
    with pytest.raises(TypeError):
        df.parallel.map(str, "ignore", "extra-positional")
