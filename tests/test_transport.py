"""Transport: Arrow round trips are exact, fallbacks happen, nothing leaks."""

from __future__ import annotations

import mmap
import os
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pandas_parallel
from pandas_parallel import transport
from tests.conftest import scratch_dirs
from tests.helpers import assert_same
from tests.strategies import DTYPES, PANDAS_3, make_column

# Under pandas 2.2 "str" columns are object dtype and hold None: not exact.
ARROW_EXACT = [k for k in DTYPES if k != "object_mixed" and (PANDAS_3 or k != "str")]


@pytest.mark.parametrize("kind", DTYPES)
def test_round_trip_is_exact_or_pickled(tmp_path, kind):
    column = make_column(kind, [3, -1, 0, 7, 2], [False, True, False, False, True])
    frame = pd.DataFrame({"x": column.array, 0: np.arange(5)},
                         index=pd.date_range("2020", periods=5, freq="D", name="t"))
    frame.attrs = {"unit": "kg"}
    shipment = transport.Shipment(frame, [(0, 1), (1, 4), (4, 5)], str(tmp_path), "arrow")
    payloads = [shipment.payload(i) for i in range(len(shipment))]
    assert isinstance(payloads[0], transport.ArrowSlice) == (kind in ARROW_EXACT)
    for payload, (a, b) in zip(payloads, [(0, 1), (1, 4), (4, 5)]):
        loaded = payload.load()
        pd.testing.assert_frame_equal(loaded, frame.iloc[a:b])
        assert loaded.attrs == frame.attrs
        assert loaded.index.freq == frame.index.freq


def test_small_input_chunks_are_pickled_into_their_task(tmp_path):
    """With ``transport="auto"``, a chunk smaller than INLINE_INPUT_BYTES
    travels inside its task (an Arrow file would cost this process more
    than pickling it); larger ones go by Arrow."""
    rows = transport.INLINE_INPUT_BYTES // 16 * 4  # two float columns: 16 bytes a row
    frame = pd.DataFrame({"a": np.arange(rows, dtype=float), "b": 1.0})
    small = rows // 8
    bounds = [(0, small), (small, rows)]
    shipment = transport.Shipment(frame, bounds, str(tmp_path), "auto")
    payloads = [shipment.payload(i) for i in range(2)]
    assert isinstance(payloads[0], transport.Inline)
    assert isinstance(payloads[1], transport.ArrowSlice)
    for payload, (a, b) in zip(payloads, bounds):
        pd.testing.assert_frame_equal(payload.load(), frame.iloc[a:b])


@pytest.mark.parametrize("kind", ARROW_EXACT)
def test_results_come_back_exactly(tmp_path, kind):
    column = make_column(kind, [1, 2, 3], [False, True, False]).rename("r")
    payload = transport.ship_result(column, str(tmp_path), "result.arrow", "arrow")
    assert isinstance(payload, transport.ArrowSlice)
    pd.testing.assert_series_equal(transport.fetch_result(payload), column)
    assert os.listdir(tmp_path) == []  # the parent deletes what it has read


PLAIN_COLUMNS = {
    "float64": np.array([np.nan, -0.0, np.inf, 1.5]),
    "float32": np.array([np.nan, 1, -0.0, 2], dtype=np.float32),
    "float16": np.array([np.nan, 1, 2, 3], dtype=np.float16),
    "int8": np.array([-128, 0, 1, 127], dtype=np.int8),
    "uint64": np.array([0, 1, 2, 2**64 - 1], dtype=np.uint64),
    "bool": np.array([True, False, True, True]),
    "datetime64[s]": np.array(["NaT", "2020-01-01", "1700-01-01", "2262-05-01"],
                              dtype="datetime64[s]"),
    "timedelta64[ms]": np.array([1, "NaT", -5, 0], dtype="timedelta64[ms]"),
}


def test_plain_numeric_results_come_back_bit_for_bit_and_writable(tmp_path):
    """Numeric columns go to Arrow straight from numpy (NaN stays NaN, not
    a null) and are read back as views of the mapped file; what the caller
    finally gets owns its memory, as pandas' own result does."""
    frame = pd.DataFrame(PLAIN_COLUMNS, index=pd.Index(list("wxyz"), name="k"))
    payload = transport.ship_result(frame, str(tmp_path), "r.arrow", "arrow")
    assert isinstance(payload, transport.ArrowSlice)
    loaded = transport.fetch_result(payload)
    assert os.listdir(tmp_path) == []  # unlinked; the mapping lives on
    pd.testing.assert_frame_equal(loaded, frame)
    for name in ("float64", "float32"):  # -0.0 and the NaN payload, bit for bit
        assert loaded[name].to_numpy().tobytes() == frame[name].to_numpy().tobytes()
    assert transport._borrows(loaded["float64"])  # zero-copy: a view of the file
    owned = transport.detach(loaded)
    assert not any(transport._borrows(owned[c]) for c in owned.columns)
    owned.iloc[0, 0] = 7.0  # writable, as pandas' own result
    pd.testing.assert_frame_equal(owned.iloc[1:], frame.iloc[1:])
    already = frame.copy()
    assert transport.detach(already) is already  # nothing borrowed: no copy


def _double(part):
    return part * 2


@pytest.mark.parametrize("method, options, kwargs", [
    ("map_partitions", {"chunk_size": 10**6}, {}),
    ("apply", {}, {}),  # columns, set side by side
    ("apply", {}, {"axis": 1}),
], ids=["one-chunk", "columns", "rows"])
def test_results_own_their_memory(forced, method, options, kwargs):
    """Where combining does not copy (one chunk, columns set side by side),
    the result is still writable in place and leaves no file mapped."""
    frame = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40)})
    result = getattr(frame.parallel(**options), method)(_double, **kwargs)
    expected = _double(frame) if method == "map_partitions" else frame.apply(_double, **kwargs)
    pd.testing.assert_frame_equal(result, expected)
    assert not any(transport._borrows(result[c]) for c in result.columns)
    result.iloc[0, 0] = -1.0
    result.loc[result.index[1], "b"] = -1
    assert result.iloc[0, 0] == -1.0 and result["b"].iloc[1] == -1


def _mark_first(part):
    part.iloc[0, 0] = -1.0  # writes into the chunk it was handed
    return part


def test_chunks_handed_to_functions_are_writable(forced):
    """A chunk read from its Arrow file is writable, even a single column
    (which Arrow would otherwise share read-only), as the frame pandas
    hands a function is."""
    frame = pd.DataFrame({"a": np.arange(40.0)})
    result = frame.parallel(chunk_size=10).map_partitions(_mark_first)
    expected = pd.concat([_mark_first(frame.iloc[i:i + 10].copy()) for i in range(0, 40, 10)])
    pd.testing.assert_frame_equal(result, expected)


def _mapped_from_file(column: pd.Series) -> bool:
    root = column.to_numpy()
    while isinstance(root.base, np.ndarray):
        root = root.base
    return isinstance(root.base, memoryview) and isinstance(root.base.obj, mmap.mmap)


def test_workers_read_numeric_chunks_without_copying(tmp_path):
    """A worker's chunk of numeric columns is a private mapping of its
    file, not a copy: equal to the rows sent, writable, and what the
    function writes stays in its own copy."""
    plain = {k: v for k, v in PLAIN_COLUMNS.items() if k != "bool"}
    frame = pd.DataFrame(plain, index=pd.Index(list("wxyz"), name="k"))
    shipment = transport.Shipment(frame, [(0, 1), (1, 4)], str(tmp_path), "arrow")
    for i, (a, b) in enumerate([(0, 1), (1, 4)]):
        chunk = transport.load_input(shipment.payload(i))
        pd.testing.assert_frame_equal(chunk, frame.iloc[a:b])
        viewed = [c for c in chunk.columns if _mapped_from_file(chunk[c])]
        assert viewed == [c for c in chunk.columns if not frame[c].iloc[a:b].isna().any()
                          or frame[c].dtype.kind == "f"]  # NaT is an Arrow null
        chunk.iloc[0, 0] = 7.0
        chunk.loc[chunk.index[0], "int8"] = 5
        again = transport.load_input(shipment.payload(i))
        pd.testing.assert_frame_equal(again, frame.iloc[a:b])
    tagged = transport.load_input(transport.Tagged(shipment.payload(1), "padding"))
    assert tagged.tag == "padding" and _mapped_from_file(tagged.value["float64"])


@pytest.mark.parametrize("kind", ["bool", "Int64", "category"])
def test_chunks_arrow_cannot_lend_are_copied(tmp_path, kind):
    column = make_column(kind, [1, 0, 1], [False, True, False])
    frame = pd.DataFrame({"x": column.array, "y": [1.5, 2.5, 3.5]})
    payload = transport.Shipment(frame, [(0, 3)], str(tmp_path), "arrow").payload(0)
    chunk = transport.load_input(payload)
    pd.testing.assert_frame_equal(chunk, frame)
    assert not _mapped_from_file(chunk["y"])


def test_a_chunks_input_file_is_deleted_once_its_result_is_back(tmp_path):
    frame = pd.DataFrame({"a": np.arange(6.0)})
    rows = transport.Shipment(frame, [(0, 3), (3, 6)], str(tmp_path), "arrow")
    first, second = rows.payload(0), rows.payload(1)
    transport.release_input(first)
    assert os.listdir(tmp_path) == ["input-1.arrow"]
    pd.testing.assert_frame_equal(transport.load_input(second), frame.iloc[3:])
    os.unlink(second.path)
    wide = frame.assign(b=1)
    columns = transport.Shipment(wide, [], str(tmp_path), "arrow", columns=[[0], [1]])
    transport.release_input(columns.payload(0))  # the file is every chunk's
    assert os.listdir(tmp_path) == ["input.arrow"]
    pd.testing.assert_series_equal(transport.load_input(columns.payload(1))["b"], wide["b"])


def test_the_pool_frees_each_input_file_when_its_result_is_back(monkeypatch):
    freed = []

    def release(payload):
        release_input(payload)
        freed.append((payload.path, os.path.exists(payload.path)))

    release_input = transport.release_input
    monkeypatch.setattr(transport, "release_input", release)
    frame = pd.DataFrame({"a": np.arange(40.0)})
    with pandas_parallel.config(n_jobs=2, fork=False, serial_fallback=False, chunk_size=10,
                                transport="arrow", progress=False):
        result = frame.parallel.map_partitions(_double)
    pd.testing.assert_frame_equal(result, _double(frame))
    assert sorted(os.path.basename(path) for path, _ in freed) == [
        f"input-{i}.arrow" for i in range(4)]
    assert not any(exists for _, exists in freed)


def test_small_results_come_back_pickled_and_large_ones_by_arrow(tmp_path):
    small = pd.Series(np.arange(10.0), name="r")
    large = pd.DataFrame({"a": np.arange(transport.INLINE_RESULT_VALUES), "b": 1.5})
    payload = transport.ship_result(small, str(tmp_path), "small.arrow", "auto")
    assert isinstance(payload, transport.Inline) and os.listdir(tmp_path) == []
    payload = transport.ship_result(large, str(tmp_path), "large.arrow", "auto")
    assert isinstance(payload, transport.ArrowSlice)
    pd.testing.assert_frame_equal(transport.fetch_result(payload), large)


@pytest.mark.parametrize("frame", [
    pd.DataFrame({"c": [1 + 2j, 3j]}),
    pd.DataFrame({"o": [1, "a"]}),
    pd.DataFrame({"o": ["a", None]}, dtype=object),
    pd.DataFrame({"s": pd.arrays.SparseArray([0, 1])}),
], ids=["complex", "mixed-object", "object-with-none", "sparse"])
def test_frames_arrow_cannot_carry_are_pickled(tmp_path, frame):
    assert not transport.arrow_exact(frame)
    payloads = [transport.Shipment(frame, [(0, 2)], str(tmp_path), "arrow").payload(0)]
    assert isinstance(payloads[0], transport.Inline)
    pd.testing.assert_frame_equal(payloads[0].load(), frame)


def test_column_labels_of_any_kind_survive(tmp_path):
    frame = pd.DataFrame([[1, 2, 3]], columns=pd.Index(["a", 0, ("t", 1)], name="lbl"))
    frame = pd.concat([frame, frame.rename(columns={"a": 0})], axis=1)  # duplicates
    shipment = transport.Shipment(frame, [], str(tmp_path), "arrow",
                                  columns=[[0, 1], [2, 3, 4, 5]])
    payloads = [shipment.payload(0), shipment.payload(1)]
    assert all(isinstance(p, transport.ArrowSlice) for p in payloads)
    pd.testing.assert_frame_equal(payloads[1].load(), frame.iloc[:, 2:])


def test_small_column_chunks_of_a_wide_frame_travel_in_their_task(tmp_path):
    frame = pd.DataFrame(np.arange(5 * 2000).reshape(5, 2000))
    shipment = transport.Shipment(frame, [], str(tmp_path), "auto",
                                  columns=[range(0, 1000), range(1000, 2000)])
    payloads = [shipment.payload(0), shipment.payload(1)]
    assert all(isinstance(p, transport.Inline) for p in payloads)
    assert os.listdir(tmp_path) == []  # an Arrow file costs each column its metadata
    pd.testing.assert_frame_equal(payloads[1].load(), frame.iloc[:, 1000:])


def test_numbers_travel_by_arrow_only_in_long_columns(tmp_path):
    """Row chunks of a wide frame are pickled (Arrow would cost each of its
    columns more than pickle costs the whole block); long columns, and
    strings however short, go by Arrow."""
    wide = pd.DataFrame(np.ones((400, 2000)))  # 6.4 MB, 3.2 KB a column
    rows = transport.Shipment(wide, [(0, 200), (200, 400)], str(tmp_path), "auto")
    assert isinstance(rows.payload(1), transport.Inline)
    long = pd.DataFrame(np.ones((100_000, 4)))
    rows = transport.Shipment(long, [(0, 50_000), (50_000, 100_000)], str(tmp_path), "auto")
    assert isinstance(rows.payload(1), transport.ArrowSlice)
    assert isinstance(transport.ship_result(wide, str(tmp_path), "r.arrow", "auto"),
                      transport.Inline)


def test_scratch_falls_back_when_shared_memory_is_short(monkeypatch):
    real = transport._free_bytes
    monkeypatch.setattr(transport, "_free_bytes",
                        lambda path: 0 if path == "/dev/shm" else real(path))
    with transport.scratch_directory(1000) as directory:
        assert directory is not None and not directory.startswith("/dev/shm")
    monkeypatch.setattr(transport, "_free_bytes", lambda path: 0)
    with transport.scratch_directory(1000) as directory:
        assert directory is None  # nowhere to write: chunks get pickled


def test_calls_work_and_leave_nothing_when_shared_memory_is_short(monkeypatch, forced):
    monkeypatch.setattr(transport, "_free_bytes", lambda path: 0)
    s = pd.Series(np.arange(6.0))
    pd.testing.assert_series_equal(s.parallel.map(lambda v: v / 2), s.map(lambda v: v / 2))


def test_no_scratch_survives_success_or_failure(forced):
    s = pd.Series(np.arange(10))
    s.parallel.map(lambda v: v + 1)
    assert scratch_dirs() == []
    with pytest.raises(ZeroDivisionError):
        s.parallel.map(lambda v: 1 // (v - 5))
    assert scratch_dirs() == []


def test_stale_scratch_of_dead_process_is_swept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = dead.stdout.strip()
    stale = f"/dev/shm/{transport.SCRATCH_PREFIX}{pid}-abc"
    os.makedirs(stale)
    open(os.path.join(stale, "input.arrow"), "wb").close()
    semaphore = f"/dev/shm/sem.loky-{pid}-abcdefgh"
    open(semaphore, "wb").close()
    alive = f"/dev/shm/sem.loky-{os.getpid()}-abcdefgh"  # a live process's: kept
    open(alive, "wb").close()
    try:
        transport.sweep_stale_scratch()
        assert not os.path.exists(stale) and not os.path.exists(semaphore)
        assert os.path.exists(alive)
    finally:
        os.unlink(alive)


def test_transport_option_is_validated():
    with pytest.raises(ValueError, match="transport"):
        pandas_parallel.config(transport="carrier-pigeon")


@given(n=st.integers(0, 300), n_chunks=st.integers(1, 40), data=st.data())
def test_rows_split_into_contiguous_chunks_of_even_size(n, n_chunks, data):
    """One row per unit, weights kept implicit: chunks tile the rows left
    after ``start`` in order, as many as asked (or one per row), sizes within one."""
    from pandas_parallel.splitting import Units

    start = data.draw(st.integers(0, n))
    units = Units.rows(pd.Series(np.arange(n)))
    ranges = units.cut(start, n_chunks, None)
    assert len(ranges) == min(n_chunks, n - start)
    assert [a for a, _ in ranges] + [n] == [start] + [b for _, b in ranges] or not ranges
    sizes = [units.rows_in(a, b) for a, b in ranges]
    assert sum(sizes) == n - start and (not sizes or max(sizes) - min(sizes) <= 1)
    for a, b in ranges:
        assert units.rows_of(a, b) == slice(a, b)


_SCALARS = [np.float64, np.float32, np.int64, np.int8, np.uint16, np.bool_, np.complex128]


@settings(max_examples=40)
@given(st.data())
def test_lists_of_numpy_scalars_come_back_as_the_same_objects(data):
    """Packed into arrays to travel (2 us a scalar otherwise), each list
    comes back a list of scalars of the same type and bits."""
    from pandas_parallel import worker

    def scalar_list(kind):
        values = st.lists(st.integers(0, 100), max_size=6)
        return values.map(lambda v: [kind(x) for x in v])

    kind = data.draw(st.sampled_from(_SCALARS))
    cells = data.draw(st.lists(st.one_of(scalar_list(kind), st.none(),
                                         st.just([1.5, np.float64(2)]), st.just("text"),
                                         st.just([[np.float64(1)]])), min_size=1, max_size=8))
    cells[0] = [kind(1), kind(2)]  # what the check looks at
    series = pd.Series(cells, dtype=object, name="lists",
                       index=pd.Index([f"r{i}" for i in range(len(cells))]))
    series.attrs = {"source": "test"}
    frame = pd.DataFrame({"x": np.arange(len(cells)), "y": series, "z": series})
    for result in (series, frame):
        outcome = worker.Outcome(0, transport.Inline(result))
        back = pickle.loads(worker.dumps_result(outcome)).payload.obj
        assert_same(result, back)
        for got, sent in zip(np.ravel(back.to_numpy(object)), np.ravel(result.to_numpy(object))):
            assert type(got) is type(sent)
            if isinstance(sent, list):
                assert [type(v) for v in got] == [type(v) for v in sent]
