"""The planner: sampling, the serial fallback, and costs remembered between calls."""

from __future__ import annotations

import dataclasses
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
from pandas_parallel import planning, routing
from pandas_parallel.operation import Operation
from pandas_parallel.planning import MEMORY, Plan, Spent, costs, learn
from pandas_parallel.planning.costs import Estimate, ProgramCost, ResultCost, Transfer, Work
from pandas_parallel.splitting import Units
from tests.conftest import ready_to_fork


def _busy(row: pd.Series) -> float:
    """About 30 microseconds of Python work per row."""
    value, total = int(row["a"]), 0.0
    for i in range(300):
        total += (value * i) % 7
    return total


def _key(obj, method, func, *args, **kwargs):
    """What the memory knows a call ``obj.parallel.<method>(func, ...)`` by."""
    return routing.Call(obj.parallel, method, (func, *args), kwargs, None).memory_key


def _plan_of(func, key="key", family="family", rows=1000, **fields) -> Plan:
    """A serial plan of a call of ``func`` over ``rows`` rows (made by hand,
    to drive learn())."""
    return Plan("test", func, key, family, rows, rows, rows, **fields)


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
    # What a first call measured (made by hand: a busy machine could make
    # a real first call lose to pandas, and the next ones then serial).
    learn(_plan_of(work, _key(frame, "apply", work, axis=1), rows=20_000), Spent(0.6, 0.6))
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
    assert MEMORY.known(tiny, _key(s, "map", tiny)).per_row is None
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
    assert MEMORY.known(work, _key(s, "map", work)).cheap_up_to == 300
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

    learn(_plan_of(work), Spent(1.0, 1.0))
    assert MEMORY.known(work, "key").per_row == pytest.approx(1e-3)
    ref = weakref.ref(work)
    del work
    gc.collect()
    assert ref() is None


def test_mappings_are_not_remembered_and_still_work(planned):
    mapping = {i: i * 2 for i in range(1000)}
    learn(_plan_of(mapping), Spent(1.0, 1.0))  # not weakly referenceable
    assert MEMORY.known(mapping, "key") == planning.Known()
    s = pd.Series(np.arange(1000))
    pd.testing.assert_series_equal(s.parallel.map(mapping), s.map(mapping))


def _straight_to_pandas(caplog) -> bool:
    return "clearly too cheap" in caplog.text and "sampled" not in caplog.text


def test_a_repeated_small_call_goes_to_pandas_before_any_other_work(planned, caplog,
                                                                    monkeypatch):
    """Once a call was clearly too cheap for workers, the next one no larger
    is pandas' own call: not even bound, grouped or planned."""
    from pandas_parallel import pipeline

    def add(v):
        return v + 1

    s = pd.Series(np.arange(1000.0), name="x")
    frame = pd.DataFrame({"k": np.arange(1000) % 7, "v": np.arange(1000.0)})
    s.parallel.map(add)
    frame.groupby("k")["v"].parallel.transform(add)

    def no_work(*args, **kwargs):
        raise AssertionError("the library did work of its own")

    monkeypatch.setattr(routing, "bind_like_pandas", no_work)
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
    count = costs.chunk_count(seconds / units, units, n_workers, 0)
    assert count % n_workers == 0
    assert count >= n_workers * 2


def test_a_samples_cost_discounts_pandas_fixed_cost_per_call():
    """Each sample pays pandas' fixed cost per call; the slope between two
    samples does not, within bounds that keep timing noise harmless."""
    fixed, per_row = 0.0002, 1e-5
    samples = [(rows, fixed + per_row * rows) for rows in (10, 20, 40)]
    assert costs.cost_per_row(samples[:1]) == pytest.approx(fixed / 10 + per_row)
    assert costs.cost_per_row(samples[:2]) == pytest.approx(per_row)
    assert costs.cost_per_row(samples) == pytest.approx(per_row)
    # A large fixed cost: never below half the last sample's average.
    heavy = [(rows, 0.005 + per_row * rows) for rows in (10, 20)]
    assert costs.cost_per_row(heavy) == pytest.approx((0.005 / 20 + per_row) / 2)
    # Noise: a first sample slower than the second, or a second far slower.
    assert costs.cost_per_row([(10, 0.002), (20, 0.001)]) == pytest.approx(0.001 / 20 / 2)
    assert costs.cost_per_row([(10, 0.0001), (20, 0.002)]) == pytest.approx(0.002 / 20)


def test_pandas_fixed_cost_learned_once_discounts_a_single_sample():
    """Learned from two samples of one call (whatever the function), pandas'
    fixed cost is taken off the first sample of later calls of that kind, so
    one sample can tell that a small call is too cheap for workers."""
    family = ("fixed", "test", object())
    fixed, per_row = 0.0008, 2e-5

    def sampled(samples):
        learn(dataclasses.replace(_plan_of(len, family=family), samples=tuple(samples)),
              Spent(0.0, 0.0))

    assert MEMORY.fixed_cost(family) == 0.0
    sampled([(rows, fixed + per_row * rows) for rows in (20, 40)])
    assert MEMORY.fixed_cost(family) == pytest.approx(fixed)
    one = [(20, fixed + per_row * 20)]
    assert costs.cost_per_row(one) == pytest.approx(fixed / 20 + per_row)  # unknown
    assert costs.cost_per_row(one, MEMORY.fixed_cost(family)) == pytest.approx(per_row)
    # A sample no slower than the fixed cost: still a tenth of its average.
    assert costs.cost_per_row([(20, fixed)], fixed) == pytest.approx(fixed / 20 / 10)
    # A noisy estimate that would raise it is not kept; a smaller one is.
    sampled([(20, 0.004), (40, 0.0041)])
    assert MEMORY.fixed_cost(family) == pytest.approx(fixed)
    sampled([(20, 0.0005), (40, 0.0006)])
    assert MEMORY.fixed_cost(family) == pytest.approx(0.0004)


@pytest.mark.parametrize("seconds", [0.5, 2.0, 3.5])
def test_a_cold_pool_is_not_started_for_calls_it_would_slow(seconds):
    """Starting two workers costs about 2 CPU-seconds on a slow machine
    (importing pandas and pyarrow): on a 2 s call that went parallel, the
    first call in a notebook took 2.2 s against pandas' 2.0 s."""
    rows = 100_000
    work = Work(seconds / rows, rows, 2, 8 * rows)
    assert not costs.estimate(work, workers="cold").parallel_wins
    assert costs.estimate(work, workers="warm").parallel_wins



def test_results_that_cost_more_to_send_back_than_parallel_saves_stay_serial():
    # 20,000 rows of 40 us each, results at 25 us to encode, 21 us to decode
    # per row (lists of strings, measured): the parent's decoding alone would
    # take longer than half the work.
    results = ResultCost(encode=2.5e-5, decode=2.1e-5)
    plain = costs.estimate(Work(4e-5, 20_000, 2), "fork")
    priced = costs.estimate(Work(4e-5, 20_000, 2), "fork", results=results)
    assert plain.parallel_wins and not priced.parallel_wins
    assert priced.term("results") > plain.term("results")  # the term that decided
    # Cheap to send (packed numpy scalars): parallel still wins.
    cheap = ResultCost(encode=6.6e-5 / 1000, decode=5.3e-5 / 1000)
    assert costs.estimate(Work(1.6e-3, 4000, 2), "fork", results=cheap).parallel_wins


def list_of_strings(row):
    return [str(i) for i in range(50)]


def test_the_sample_measures_what_object_results_cost_to_send(planned, caplog):
    df = pd.DataFrame({"a": np.arange(20_000.0)})
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
    work = Work(2.3e-6, 1_000_000, 2, 62_000_000)
    assert not costs.estimate(work, "warm", cluster=True).parallel_wins
    assert costs.estimate(work, "warm", cluster=True, transfer=Transfer(5e8)).parallel_wins


def test_results_are_priced_by_their_own_bytes():
    """A map of 62 MB of strings to 8 MB of integers: the trip back costs an
    eighth of the trip there, not as much (the estimate assumed the input's
    size until results were measured)."""
    work = Work(1.55e-6, 1_000_000, 2, 62_000_000)
    unknown = costs.estimate(work, "warm", cluster=True, transfer=Transfer(2.5e8))
    measured = costs.estimate(work, "warm", cluster=True, results=ResultCost(0.0, 0.0, 8.0),
                              transfer=Transfer(2.5e8))
    assert measured.parallel == pytest.approx(unknown.parallel - 54_000_000 / 2.5e8)
    assert measured.parallel_wins and not unknown.parallel_wins


def as_float(value):
    return float(value) * 2


def test_a_call_remembers_its_results_bytes_for_the_next(planned):
    s = pd.Series(np.arange(20_000, dtype=np.int16))
    with pandas_parallel.config(chunk_size=5_000):
        s.parallel.map(as_float)
    assert pandas_parallel.last_run().backend != "serial"
    known = MEMORY.known(as_float, _key(s, "map", as_float))
    assert known.results is not None and known.results.bytes == 8.0  # float64 from int16


@pytest.mark.parametrize("n_workers", [2, 16, 64])
def test_many_workers_get_fewer_chunks_each_but_one_at_least(n_workers):
    """This process handles chunks one after another: with many workers, each
    gets fewer, so that handling them stays a small share of the call; never
    fewer than one each."""
    units, seconds = 25 * n_workers, 0.25 * n_workers  # 0.25 s of work per worker
    count = costs.chunk_count(seconds / units, units, n_workers, 0)
    affordable = costs.PARENT_SHARE * seconds / n_workers / costs.PARENT_SECONDS_PER_CHUNK
    assert count >= n_workers
    # At most what this process can afford, rounded up to a whole number each.
    assert count <= n_workers * math.ceil(max(affordable, n_workers) / n_workers)
    if n_workers == 2:
        assert count == 2 * costs.CHUNKS_PER_WORKER  # two workers: as before


def test_samples_shrink_with_the_workers_that_wait_for_them():
    """1% of the work is 2% of what two workers take for all of it, but 64%
    of what 64 take: the first sample shrinks in proportion."""
    assert costs.probe_sizes(1600, 2)[0] == 16 and sum(costs.probe_sizes(1600, 2)) <= 160
    assert costs.probe_sizes(1600, 64) == [1, 2]
    assert costs.probe_sizes(100, 64) == [1]


# --------------------------------------------------------------------------
# What calls really cost corrects the next: plan() and learn() directly
# --------------------------------------------------------------------------
def _identity(chunk, func, args, kwargs):
    return chunk


def _operation(func, rows=4000, key="learned", **options) -> Operation:
    """A call of ``func`` over ``rows`` rows, as the accessors build one."""
    s = pd.Series(np.arange(float(rows)))
    return Operation(
        label="test", unit="rows", units=Units.rows(s), runner=_identity, func=func,
        args=(), kwargs={}, combine=lambda pieces: None, serial=lambda: s,
        options=pandas_parallel.get_options().replace(n_jobs=2, **options),
        memory_key=key)


def _parallel_plan(func, rows=4000, serial=1.0, parallel=0.6) -> Plan:
    """The plan of a call priced from memory to win in parallel."""
    estimate = Estimate(serial, (("compute", parallel),))
    return dataclasses.replace(_plan_of(func, key="learned", rows=rows), parallel=True,
                               priced=True, estimate=estimate,
                               ranges=((0, rows // 2), (rows // 2, rows)))


def test_a_parallel_call_slower_than_pandas_makes_the_next_serial(planned):
    def work(v):
        return v

    learn(_plan_of(work, key="learned", rows=4000), Spent(1.0, 1.0))  # 0.25 ms a row
    op = _operation(work)
    first = planning.plan(op)
    assert first.parallel and first.measured == "cost remembered from the last calls"
    learn(first, Spent(seconds=1.6, compute=1.0))  # 1.6 s, where pandas takes 1.0
    after = planning.plan(op)
    assert not after.parallel and after.paused
    # The next calls like it run serially for a while; then parallel is
    # priced afresh (the overrun that made it lose forgotten).
    for _ in range(memory_pause() - 1):
        learn(after, Spent(1.0, 1.0))
        assert planning.plan(op).paused
    learn(after, Spent(1.0, 1.0))
    again = planning.plan(op)
    assert again.parallel and again.estimate.term("overrun") == 0.0
    # A second loss pauses it for twice as long.
    learn(again, Spent(seconds=1.6, compute=1.0))
    paused = 0
    while planning.plan(op).paused:
        learn(after, Spent(1.0, 1.0))
        paused += 1
    assert paused == 2 * memory_pause()


def memory_pause() -> int:
    return planning.memory.PAUSE_CALLS[0]


def test_calls_that_overran_their_estimate_are_priced_higher(planned):
    def work(v):
        return v

    learn(_plan_of(work, key="learned", rows=4000), Spent(1.0, 1.0))
    op = _operation(work)
    before = planning.plan(op)
    learn(before, Spent(seconds=0.9 * before.estimate.parallel * 1.3, compute=1.0))
    after = planning.plan(op)  # 1.17x the estimate: still a win, priced as measured
    assert after.parallel and not after.paused
    assert after.estimate.term("overrun") == pytest.approx(0.17 * before.estimate.parallel,
                                                           rel=0.05)


def test_one_noisy_call_does_not_decide_the_next():
    def work(v):
        return v

    for _ in range(3):
        learn(_plan_of(work), Spent(0.1, 0.1))  # 0.1 ms a row
    learn(_plan_of(work), Spent(5.0, 5.0))  # a busy machine, once
    assert MEMORY.known(work, "key").per_row == pytest.approx(1e-4)


def test_a_call_priced_wrong_by_its_sample_is_followed_by_pandas_own(planned, caplog):
    """The first group's sample is slow (a first call's warm-up, a busy
    machine): the call goes parallel on little work. What the workers
    report is what the next call is priced from: it goes to pandas."""
    frame = pd.DataFrame({"k": np.arange(5000) % 50, "v": np.arange(5000.0)})
    slow_first = [True]

    def demean(group):
        if slow_first:
            slow_first.clear()
            time.sleep(0.05)  # the inflated sample (the function's own work)
        return group - group.mean()

    expected = frame.groupby("k")["v"].transform(lambda g: g - g.mean())
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(frame.groupby("k")["v"].parallel.transform(demean),
                                       expected)
        assert "parallel on" in caplog.text
        caplog.clear()
        for _ in range(3):
            pd.testing.assert_series_equal(
                frame.groupby("k")["v"].parallel.transform(demean), expected)
            assert pandas_parallel.last_run().backend == "serial"
    assert "parallel on" not in caplog.text and "sampled" not in caplog.text


def _crunch(row):
    """About 60 microseconds of Python work per row (holds the GIL)."""
    total = 0
    for i in range(600):
        total += i % 7
    return total + row["a"]


def _wait(row):
    time.sleep(0.0005)  # the row's work: waiting, as on I/O (releases the GIL)
    return row["a"]


def test_threads_are_priced_with_the_gil(planned, caplog):
    """Python work holds the GIL: on threads it runs one row at a time, so a
    computing function stays serial; one that waits runs on threads."""
    frame = pd.DataFrame({"a": np.arange(4000)})
    threads = frame.parallel(backend="threading")
    with caplog.at_level("DEBUG", logger="pandas_parallel"):
        pd.testing.assert_series_equal(threads.apply(_crunch, axis=1),
                                       frame.apply(_crunch, axis=1))
    assert pandas_parallel.last_run().backend == "serial"
    assert "serial (parallel would not be faster" in caplog.text
    frame = frame.iloc[:2000]
    pd.testing.assert_series_equal(frame.parallel(backend="threading").apply(_wait, axis=1),
                                   frame["a"].rename(None))
    assert pandas_parallel.last_run().backend == "threads"


def test_what_a_call_costs_is_named_term_by_term():
    estimate = costs.estimate(Work(1e-4, 10_000, 2, 8 * 10_000), "fork",
                              program=ProgramCost(1000))
    names = [name for name, _ in estimate.terms]
    assert names[:3] == ["compute", "start", "tasks"] and "input" not in names  # forked
    assert estimate.parallel == pytest.approx(sum(s for _, s in estimate.terms))
    assert "compute 0.500" in str(estimate)
    warm = costs.estimate(Work(1e-4, 10_000, 2, 8 * 10_000), "warm",
                          program=ProgramCost(1000))
    assert warm.term("input") > 0 and warm.term("program") > 0


def test_a_wide_frame_prices_arrows_cost_per_column():
    """Columns of a chunk that travel by Arrow cost each their metadata:
    1,000 columns of 100,000 floats cost more than 10 columns of 10M."""
    rows = 100_000
    wide = costs.estimate(Work(1e-5, rows, 2, 8 * rows * 1000, n_columns=1000), "warm")
    narrow = costs.estimate(Work(1e-5, rows, 2, 8 * rows * 1000, n_columns=10), "warm")
    assert wide.term("input") > narrow.term("input")
    few_rows = Work(1e-5, 5, 2, 8 * 5 * 10_000, n_columns=10_000)
    assert costs.estimate(few_rows, "warm").term("input") < 0.01  # pickled: no Arrow


def test_an_overrun_is_measured_against_the_compute_workers_reported(planned):
    """A call priced from a cost per row that was half the truth takes twice
    its compute estimate: the memory corrects the cost per row from what
    the workers report; the overrun (moving data, starts, load) stays near
    1, so the next call is not priced twice for one mistake."""
    def work(v):
        return v

    learn(_plan_of(work, key="learned", rows=4000), Spent(0.5, 0.5))  # half the truth
    op = _operation(work)
    first = planning.plan(op)
    assert first.parallel
    others = first.estimate.parallel - first.estimate.term("compute")
    learn(first, Spent(seconds=1.0 / 2 + others, compute=1.0))  # as priced, had 1.0 been known
    after = planning.plan(op)
    assert after.parallel
    assert after.estimate.term("overrun") < 0.05 * after.estimate.parallel
    assert after.estimate.serial > first.estimate.serial  # the cost per row corrected


def test_input_holding_objects_is_priced_by_what_sending_it_costs():
    """Object strings (pandas 2.2's) weigh 8 bytes a pointer but cost far
    more to convert and send: measured on the sample, they price kept
    workers above workers forked for the call, which hold the input."""
    work = Work(2e-6, 1_000_000, 2, 8_000_000, inputs=ResultCost(4e-7, 6e-7))
    kept, forked = costs.estimate(work, "warm"), costs.estimate(work, "fork")
    assert kept.term("input") >= 1_000_000 * (4e-7 + 6e-7 / 2)
    assert forked.term("input") == 0.0 and forked.parallel < kept.parallel


def _mapped(chunk, func, args, kwargs):
    return chunk.map(func)


@pytest.mark.parametrize("values, objects", [
    (pd.Series([f"line {i}, x={i * 7}" for i in range(20_000)], dtype=object), True),
    (pd.Series(np.arange(20_000.0)), False),
])
def test_the_sample_measures_what_object_input_costs_to_send(planned, values, objects):
    def slow_enough(value):
        return len(str(value)) + sum(range(3000))

    op = dataclasses.replace(_operation(slow_enough), units=Units.rows(values),
                             runner=_mapped, serial=lambda: values.map(slow_enough))
    plan = planning.plan(op)
    assert (plan.inputs is not None) is objects
    if objects:
        assert plan.inputs.encode > 0 and plan.inputs.decode > 0
