"""The planner: sampling, the serial fallback, and costs remembered between calls."""

from __future__ import annotations

import gc
import math
import os
import threading
import time
import weakref

import numpy as np
import pandas as pd
import pytest

import pandas_parallel
from pandas_parallel import planning
from tests.conftest import ready_to_fork


def _busy(row: pd.Series) -> float:
    """About 30 microseconds of Python work per row."""
    value, total = int(row["a"]), 0.0
    for i in range(300):
        total += (value * i) % 7
    return total


@pytest.fixture
def planned():
    """The planner decides (the default); two workers, forked from this
    process (no thread left by an earlier test rules that out)."""
    ready_to_fork()
    with pandas_parallel.config(n_jobs=2, serial_fallback=True, chunk_size=None,
                                progress=False) as options:
        yield options


def test_sampled_rows_are_computed_once(planned, tmp_path, caplog):
    """Sampled rows' results are kept: every row reaches the function once."""
    log = str(tmp_path / "calls")

    def noted(row):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{int(row['a'])}\n".encode())  # one atomic append per call
        finally:
            os.close(fd)
        return _busy(row)

    frame = pd.DataFrame({"a": np.arange(8000)})
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        result = frame.parallel.apply(noted, axis=1)
    assert "sampled" in caplog.text and "parallel on 2" in caplog.text
    with open(log) as fh:
        calls = sorted(int(line) for line in fh.read().split())
    assert calls == list(range(8000))
    pd.testing.assert_series_equal(result, frame.apply(_busy, axis=1))


def test_a_function_called_again_reuses_its_measured_cost(planned, caplog):
    frame = pd.DataFrame({"a": np.arange(20_000)})

    def work(row):
        return _busy(row)

    expected = frame.apply(work, axis=1)
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        first = frame.parallel.apply(work, axis=1)
        assert "sampled" in caplog.text and "remembered" not in caplog.text
        caplog.clear()
        second = frame.parallel.apply(work, axis=1)
        assert "remembered" in caplog.text and "sampled" not in caplog.text
    pd.testing.assert_series_equal(first, expected)
    pd.testing.assert_series_equal(second, expected)
    # Another kind of call (a frame with more columns) measures afresh.
    wider = frame.assign(b=1)
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(wider.parallel.apply(work, axis=1),
                                       wider.apply(work, axis=1))
    assert "sampled" in caplog.text
    # So does the same call on another backend: threads cost what processes do not.
    caplog.clear()
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(frame.parallel(backend="threading").apply(work, axis=1),
                                       expected)
    assert "sampled" in caplog.text and "remembered" not in caplog.text


def test_a_remembered_serial_decision_is_plain_pandas(planned, caplog):
    def cheap(v):
        return v + 1

    pd.Series(np.arange(2_000_000.0)).parallel.map(cheap)  # long enough to measure
    # Small enough to stay serial even if the cost above was measured on a
    # busy machine (several times too high), as on a shared CI host.
    small = pd.Series(np.arange(5_000.0), name="x")
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        result = small.parallel.map(cheap)
    assert "remembered" in caplog.text and "serial (parallel would not" in caplog.text
    assert "combined" not in caplog.text  # no pieces: pandas' own call
    pd.testing.assert_series_equal(result, small.map(cheap))


def test_a_call_planned_from_a_remembered_cost_pickles_only_to_go_parallel(planned):
    """Nothing of the function runs before a remembered cost decides, so
    pickling waits for that decision: a serial call does not pay for it, and
    a parallel one still fails before any work when pickling fails."""
    held: list[object] = [None]

    def work(row):
        return _busy(row) if held else None  # held travels with work, pickled

    frame = pd.DataFrame({"a": np.arange(20_000)})
    expected = frame.apply(_busy, axis=1)
    pd.testing.assert_series_equal(frame.parallel.apply(work, axis=1), expected)
    held[0] = threading.Lock()  # no longer picklable
    small = frame.iloc[:100]
    pd.testing.assert_series_equal(small.parallel.apply(work, axis=1), expected.iloc[:100])
    with pytest.raises(pandas_parallel.UnpicklableFunctionError, match="cannot pickle"):
        frame.parallel.apply(work, axis=1)


def test_costs_of_tiny_work_are_not_remembered(planned, caplog):
    def tiny(v):
        return v * 2

    s = pd.Series(np.arange(500))
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        s.parallel.map(tiny)
        assert "sampled" in caplog.text
        caplog.clear()
        pd.testing.assert_series_equal(s.parallel.map(tiny), s.map(tiny))
    # Measured on so little work, pandas' fixed cost per call would have
    # inflated the cost per row: no cost is kept, under any operation or
    # backend. What is kept is that calls this small are clearly serial: the
    # second call is pandas' own, without sampling.
    assert not planning._costs.get(tiny)
    assert "clearly too cheap" in caplog.text and "sampled" not in caplog.text
    assert "combined" not in caplog.text


def test_tiny_cheap_work_stays_serial_on_a_warm_pool(planned, caplog):
    """A warm pool needs the least work to win, and a tiny sample's cost per
    row is inflated by pandas' fixed cost per call: a projection from it
    that stops sampling must also keep the call serial."""
    with pandas_parallel.config(fork=False):
        s = pd.Series(np.arange(500))
        s.parallel(serial_fallback=False).map(lambda v: v)  # the pool is up, warm

        def double(v):
            return v * 2

        with caplog.at_level("DEBUG", logger="pandas_parallel"):
            pd.testing.assert_series_equal(s.parallel.map(double), s.map(double))
    assert "sampled" in caplog.text and "serial (parallel would not" in caplog.text
    assert "parallel on" not in caplog.text


def test_a_small_call_that_turns_out_slow_samples_again(planned, caplog):
    """What made small calls go straight to pandas is unlearned as soon as
    one of them is slow, so the next such call can use workers again."""
    slow = []

    def work(v):
        if slow:
            time.sleep(0.001)  # the work this row does, not a wait for an event
        return v + 1

    s = pd.Series(np.arange(300.0))
    s.parallel.map(work)
    assert planning.cheap_up_to(work, next(iter(planning._cheap[work]))) == 300
    slow.append(True)
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(s.parallel.map(work), s + 1)  # 0.3 s, direct
        assert "clearly too cheap" in caplog.text
        caplog.clear()
        pd.testing.assert_series_equal(s.parallel.map(work), s + 1)
    assert "sampled" in caplog.text and "parallel on 2" in caplog.text


def test_remembered_costs_do_not_keep_functions_alive():
    def work(v):
        return v

    planning.remember(work, "kind", 1.0, 1000)
    assert planning.recall(work, "kind") == pytest.approx(1e-3)
    ref = weakref.ref(work)
    del work
    gc.collect()
    assert ref() is None


def test_mappings_are_not_remembered_and_still_work(planned):
    mapping = {i: i * 2 for i in range(1000)}
    planning.remember(mapping, "kind", 1.0, 1000)  # not weakly referenceable
    assert planning.recall(mapping, "kind") is None
    s = pd.Series(np.arange(1000))
    pd.testing.assert_series_equal(s.parallel.map(mapping), s.map(mapping))


def _straight_to_pandas(caplog) -> bool:
    return "clearly too cheap" in caplog.text and "sampled" not in caplog.text


def test_a_repeated_small_call_goes_to_pandas_before_any_other_work(planned, caplog,
                                                                    monkeypatch):
    """Once a call was clearly too cheap for workers, the next one no larger
    is pandas' own call: not even bound, grouped or planned."""
    from pandas_parallel import accessor, pipeline

    def add(v):
        return v + 1

    s = pd.Series(np.arange(1000.0), name="x")
    frame = pd.DataFrame({"k": np.arange(1000) % 7, "v": np.arange(1000.0)})
    s.parallel.map(add)
    frame.groupby("k")["v"].parallel.transform(add)

    def no_work(*args, **kwargs):
        raise AssertionError("the library did work of its own")

    monkeypatch.setattr(accessor, "bind_like_pandas", no_work)
    monkeypatch.setattr(pipeline, "execute", no_work)
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(s.parallel.map(add), s.map(add))
        pd.testing.assert_series_equal(s.iloc[:10].parallel.map(add), s.iloc[:10].map(add))
        pd.testing.assert_series_equal(frame.groupby("k")["v"].parallel.transform(add),
                                       frame.groupby("k")["v"].transform(add))
    assert caplog.text.count("clearly too cheap") == 3


def test_known_cheap_calls_are_told_apart_by_their_shape(planned, caplog):
    """What is remembered is one shape of call: other arguments, more rows,
    other columns or another method are planned afresh."""
    def add(v, by=1):
        return v + by

    s = pd.Series(np.arange(1000.0))
    s.parallel.map(add)
    for call, expected in [
        (lambda: s.parallel.map(add, na_action="ignore"), s.map(add, na_action="ignore")),
        (lambda: s.parallel.apply(add, by=2), s.apply(add, by=2)),
        (lambda: pd.concat([s, s]).parallel.map(add), pd.concat([s, s]).map(add)),
        (lambda: s.to_frame().parallel.map(add), s.to_frame().map(add)),
    ]:
        caplog.clear()
        with caplog.at_level("DEBUG", logger="pandas_parallel"):
            result = call()
        assert "sampled" in caplog.text and "clearly too cheap" not in caplog.text
        if isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(result, expected)
        else:
            pd.testing.assert_frame_equal(result, expected)
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        caplog.clear()
        pd.testing.assert_series_equal(s.parallel.apply(add, by=2), s.apply(add, by=2))
    assert _straight_to_pandas(caplog)


def test_options_that_decide_keep_a_known_cheap_call_planned(planned, caplog):
    """A chunk size, serial_fallback=False or a progress bar is the user's
    decision: such calls never take the shortcut."""
    def add(v):
        return v + 1

    s = pd.Series(np.arange(1000.0))
    s.parallel.map(add)
    for options in [{"chunk_size": 500}, {"serial_fallback": False}, {"progress": True}]:
        caplog.clear()
        with caplog.at_level("DEBUG", logger="pandas_parallel"):
            pd.testing.assert_series_equal(s.parallel(**options).map(add), s.map(add))
        assert "clearly too cheap" not in caplog.text, options
    with pandas_parallel.config(chunk_size=500):
        caplog.clear()
        with caplog.at_level("DEBUG", logger="pandas_parallel"):
            s.parallel.map(add)
        assert "parallel on" in caplog.text


def test_calls_with_unhashable_arguments_are_planned_every_time(planned, caplog):
    def scaled(row, factors):
        return row["a"] * factors[0]

    frame = pd.DataFrame({"a": np.arange(200.0)})
    expected = frame.apply(scaled, axis=1, args=([2.0],))
    for _ in range(2):
        caplog.clear()
        with caplog.at_level("DEBUG", logger="pandas_parallel"):
            pd.testing.assert_series_equal(
                frame.parallel.apply(scaled, axis=1, args=([2.0],)), expected)
        assert "sampled" in caplog.text



@pytest.mark.parametrize("n_workers", [2, 3, 4])
@pytest.mark.parametrize("seconds", [0.3, 4.8, 23.0, 101.0])
def test_every_worker_gets_as_many_chunks(n_workers, seconds):
    """Equal chunks in a whole number per worker, so all finish together."""
    units = 1_000_000
    count = planning.chunk_count(seconds / units, units, n_workers, 0)
    assert count % n_workers == 0
    assert count >= n_workers * 2


def test_a_samples_cost_discounts_pandas_fixed_cost_per_call():
    """Each sample pays pandas' fixed cost per call; the slope between two
    samples does not, within bounds that keep timing noise harmless."""
    fixed, per_row = 0.0002, 1e-5
    samples = [(rows, fixed + per_row * rows) for rows in (10, 20, 40)]
    assert planning.cost_per_row(samples[:1]) == pytest.approx(fixed / 10 + per_row)
    assert planning.cost_per_row(samples[:2]) == pytest.approx(per_row)
    assert planning.cost_per_row(samples) == pytest.approx(per_row)
    # A large fixed cost: never below half the last sample's average.
    heavy = [(rows, 0.005 + per_row * rows) for rows in (10, 20)]
    assert planning.cost_per_row(heavy) == pytest.approx((0.005 / 20 + per_row) / 2)
    # Noise: a first sample slower than the second, or a second far slower.
    assert planning.cost_per_row([(10, 0.002), (20, 0.001)]) == pytest.approx(0.001 / 20 / 2)
    assert planning.cost_per_row([(10, 0.0001), (20, 0.002)]) == pytest.approx(0.002 / 20)


def test_pandas_fixed_cost_learned_once_discounts_a_single_sample():
    """Learned from two samples of one call (whatever the function), pandas'
    fixed cost is taken off the first sample of later calls of that kind, so
    one sample can tell that a small call is too cheap for workers."""
    kind = ("fixed", "test", object())
    fixed, per_row = 0.0008, 2e-5
    assert planning.fixed_cost(kind) == 0.0
    planning.learn_fixed_cost(kind, [(rows, fixed + per_row * rows) for rows in (20, 40)])
    assert planning.fixed_cost(kind) == pytest.approx(fixed)
    one = [(20, fixed + per_row * 20)]
    assert planning.cost_per_row(one) == pytest.approx(fixed / 20 + per_row)  # unknown
    assert planning.cost_per_row(one, planning.fixed_cost(kind)) == pytest.approx(per_row)
    # A sample no slower than the fixed cost: still a tenth of its average.
    assert planning.cost_per_row([(20, fixed)], fixed) == pytest.approx(fixed / 20 / 10)
    # A noisy estimate that would raise it is not kept; a smaller one is.
    planning.learn_fixed_cost(kind, [(20, 0.004), (40, 0.0041)])
    assert planning.fixed_cost(kind) == pytest.approx(fixed)
    planning.learn_fixed_cost(kind, [(20, 0.0005), (40, 0.0006)])
    assert planning.fixed_cost(kind) == pytest.approx(0.0004)


@pytest.mark.parametrize("seconds", [0.5, 2.0, 3.5])
def test_a_cold_pool_is_not_started_for_calls_it_would_slow(seconds):
    """Starting two workers costs about 2 CPU-seconds on a slow machine
    (importing pandas and pyarrow): on a 2 s call that went parallel, the
    first call in a notebook took 2.2 s against pandas' 2.0 s."""
    rows = 100_000
    cold = planning.estimate(seconds / rows, rows, 2, 8 * rows, workers="cold")
    assert not cold.parallel_wins
    assert planning.estimate(seconds / rows, rows, 2, 8 * rows, workers="warm").parallel_wins



def test_results_that_cost_more_to_send_back_than_parallel_saves_stay_serial():
    # 20,000 rows of 40 us each, results at 25 us to encode, 21 us to decode
    # per row (lists of strings, measured): the parent's decoding alone would
    # take longer than half the work.
    results = planning.ResultCost(encode=2.5e-5, decode=2.1e-5)
    plain = planning.estimate(4e-5, 20_000, 2, 0, "fork")
    priced = planning.estimate(4e-5, 20_000, 2, 0, "fork", results=results)
    assert plain.parallel_wins and not priced.parallel_wins
    # Cheap to send (packed numpy scalars): parallel still wins.
    cheap = planning.ResultCost(encode=6.6e-5 / 1000, decode=5.3e-5 / 1000)
    assert planning.estimate(1.6e-3, 4000, 2, 0, "fork", results=cheap).parallel_wins


def list_of_strings(row):
    return [str(i) for i in range(50)]


def test_the_sample_measures_what_object_results_cost_to_send(planned, caplog):
    df = pd.DataFrame({"a": np.arange(3000.0)})
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        df.parallel.apply(list_of_strings, axis=1)
        df.parallel.apply(lambda row: row["a"] * 2, axis=1)
    priced = [r.getMessage() for r in caplog.records if "sampled" in r.getMessage()]
    assert "to send back" in priced[0]  # lists of strings: measured
    assert "to send back" not in priced[1]  # numbers travel as buffers


def test_a_measured_transfer_rate_replaces_the_clusters_constant():
    # 1M strings (62 MB) over 2.3 s of work: at the constant's 100 MB/s the
    # trip there and back would eat the gain; at a LocalCluster's measured
    # few hundred MB/s parallel wins.
    args = (2.3e-6, 1_000_000, 2, 62_000_000, "warm", True)
    assert not planning.estimate(*args).parallel_wins
    assert planning.estimate(*args, bytes_per_second=5e8).parallel_wins


def test_results_are_priced_by_their_own_bytes():
    """A map of 62 MB of strings to 8 MB of integers: the trip back costs an
    eighth of the trip there, not as much (the estimate assumed the input's
    size until results were measured)."""
    args = (1.55e-6, 1_000_000, 2, 62_000_000, "warm", True)
    unknown = planning.estimate(*args, bytes_per_second=2.5e8)
    measured = planning.estimate(*args, results=planning.ResultCost(0.0, 0.0, 8.0),
                                 bytes_per_second=2.5e8)
    assert measured.parallel == pytest.approx(unknown.parallel - 54_000_000 / 2.5e8)
    assert measured.parallel_wins and not unknown.parallel_wins


def as_float(value):
    return float(value) * 2


def test_a_call_remembers_its_results_bytes_for_the_next(planned):
    s = pd.Series(np.arange(20_000, dtype=np.int16))
    with pandas_parallel.config(chunk_size=5_000):
        s.parallel.map(as_float)
    assert pandas_parallel.last_run().backend != "serial"
    [cost] = [v for k, v in planning._costs[as_float].items() if k[0] == "results"]
    assert cost.bytes == 8.0  # float64 results of int16 input


@pytest.mark.parametrize("n_workers", [2, 16, 64])
def test_many_workers_get_fewer_chunks_each_but_one_at_least(n_workers):
    """This process handles chunks one after another: with many workers, each
    gets fewer, so that handling them stays a small share of the call; never
    fewer than one each."""
    units, seconds = 25 * n_workers, 0.25 * n_workers  # 0.25 s of work per worker
    count = planning.chunk_count(seconds / units, units, n_workers, 0)
    affordable = planning.PARENT_SHARE * seconds / n_workers / planning.PARENT_SECONDS_PER_CHUNK
    assert count >= n_workers
    # At most what this process can afford, rounded up to a whole number each.
    assert count <= n_workers * math.ceil(max(affordable, n_workers) / n_workers)
    if n_workers == 2:
        assert count == 2 * planning.CHUNKS_PER_WORKER  # two workers: as before


def test_samples_shrink_with_the_workers_that_wait_for_them():
    """1% of the work is 2% of what two workers take for all of it, but 64%
    of what 64 take: the first sample shrinks in proportion."""
    assert planning.probe_sizes(1600, 2)[0] == 16 and sum(planning.probe_sizes(1600, 2)) <= 160
    assert planning.probe_sizes(1600, 64) == [1, 2]
    assert planning.probe_sizes(100, 64) == [1]
