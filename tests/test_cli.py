"""The ``pandas-parallel`` command and the streaming engine behind it.

Outputs are compared with pandas on the same data read whole. The
out-of-core test measures the peak memory of the command and its workers
on a file five times larger than the budget it imposes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pandas_parallel import writing
from pandas_parallel.__main__ import main
from tests.helpers import ctrl_c_reaches_python

FUNCTIONS = textwrap.dedent('''
    import time
    import numpy as np
    import pandas as pd

    def score(row):
        return row["amount"] * 2 + len(str(row.name)) + len(row["name"])

    def shout(value):
        return value.upper() + "!"

    def spread(group):
        return group["amount"].max() - group["amount"].min()

    def add_tax(frame):
        return frame.assign(tax=frame["amount"] * 0.2)

    def fails_on_7(row):
        if row.name == 7:
            raise KeyError("customer 7 is missing")
        return 1.0

    def slow(row):
        time.sleep(0.05)
        return 1.0

    def logged(row):
        """Logs each row it is called with; hangs on row PP_HANG_AT."""
        import os
        with open(os.environ["PP_LOG"], "a") as log:
            log.write(f"{row.name}\\n")
        if os.environ.get("PP_HANG_AT") == str(row.name):
            print(f"hanging on {row.name}", flush=True)
            time.sleep(600)
        return row["amount"] * 3

    def fails_on_7_and_11(row):
        if row.name in (7, 11):
            raise KeyError(f"customer {row.name} is missing")
        return row["amount"]

    def describe(row):
        """Reads each value as pd.read_csv gives it: a text ID, a date string."""
        return f"{row['id']}|{row['t'][:10]}|{type(row['id']).__name__}"

    def grows(row):
        """Short results, then long ones from row 600 on."""
        return "x" * (10 if row.name < 600 else 5000)

    def dies_on_3(row):
        time.sleep(0.02)
        if row.name == 3:
            import os
            os._exit(7)
        return 1.0
''')


@pytest.fixture
def funcs(tmp_path):
    path = tmp_path / "jobs.py"
    path.write_text(FUNCTIONS)
    return str(path)


def _frame(n):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"amount": rng.gamma(2.0, 10.0, n).round(2),
                         "name": [f"customer-{i % 13}" for i in range(n)],
                         "store": rng.integers(0, 7, n)})


def _load(module_path, name):
    namespace: dict = {}
    with open(module_path) as fh:
        exec(compile(fh.read(), module_path, "exec"), namespace)
    return namespace[name]


def check_shouted(source, out, funcs) -> None:
    """``out`` (a file or a directory of parts) is ``source`` with a ``loud``
    column of ``shout(name)``, as pandas makes it, its Arrow types kept."""
    written = pq.read_table(out)
    assert written.schema.field("amount").type == pa.float32()
    assert written.schema.field("store").type == pa.int16()
    whole = pd.read_parquet(source)
    whole["loud"] = whole["name"].map(_load(funcs, "shout"))
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole)


def _run(*argv):
    return main([str(a) for a in argv])


def _changing_csv(path, rows, text_from):
    """An ID column that is numbers, then alphanumeric from row
    ``text_from`` on; ISO timestamps; a number column with a gap."""
    ids = [str(i) for i in range(text_from)] + [f"A{i}" for i in range(text_from, rows)]
    times = pd.date_range("2024-01-01", periods=rows, freq="min").strftime("%Y-%m-%dT%H:%M:%S")
    amount = [float(i) if i % 1000 else "" for i in range(rows)]
    flags = ["True" if i % 3 else ("" if i > text_from else "False") for i in range(rows)]
    pd.DataFrame({"id": ids, "t": times, "amount": amount, "flag": flags}).to_csv(
        path, index=False)


@pytest.mark.parametrize("command", ["apply", "partitions"])
def test_csv_values_reach_the_function_as_pd_read_csv_gives_them(tmp_path, funcs, command):
    """Types over the whole file: the ID is text throughout (a batch alone
    would read numbers), timestamps stay strings, and nothing fails midway."""
    source, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    _changing_csv(source, 5000, text_from=3000)
    function = "describe" if command == "apply" else "add_tax"
    if command == "partitions":
        (tmp_path / "jobs.py").write_text(FUNCTIONS + textwrap.dedent('''
            def add_tax(frame):
                return frame.assign(kinds=frame["id"].map(lambda v: type(v).__name__),
                                    day=frame["t"].str[:10])
        '''))
    code = _run(command, source, "-f", f"{funcs}:{function}", "-o", out,
                "--batch-rows", 1000, "--no-progress", "--jobs", 2)
    assert code == 0
    whole = pd.read_csv(source, low_memory=False)
    expected = (whole.apply(_load(funcs, function), axis=1).to_frame("result")
                if command == "apply" else _load(funcs, function)(whole))
    # As pandas' own result would be written (a text ID, string dates).
    assert pq.read_table(out).equals(writing.to_arrow(expected, None))


@pytest.mark.parametrize("fmt, writer", [
    ("parquet", lambda df, p: df.to_parquet(p, index=False)),
    ("csv", lambda df, p: df.to_csv(p, index=False)),
    ("arrow", lambda df, p: df.to_feather(p)),
])
def test_apply_streams_each_format_like_pandas(tmp_path, funcs, fmt, writer):
    df = _frame(1000)
    source = tmp_path / f"in.{fmt}"
    writer(df, source)
    out = tmp_path / "out.parquet"
    code = _run("apply", source, "-f", f"{funcs}:score", "-o", out, "--batch-rows", 130,
                "--chunk-size", 40, "--jobs", 2, "--no-progress")
    assert code == 0
    whole = pd.read_parquet(source) if fmt == "parquet" else (
        pd.read_csv(source) if fmt == "csv" else pd.read_feather(source))
    expected = whole.apply(_load(funcs, "score"), axis=1).to_frame("result")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_map_keeps_the_input_schema_and_adds_a_column(tmp_path, funcs):
    df = _frame(500)
    table = pa.Table.from_pandas(df, preserve_index=False).cast(pa.schema([
        ("amount", pa.float32()), ("name", pa.string()), ("store", pa.int16())]))
    source = tmp_path / "in.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out.parquet"
    assert _run("map", source, "-f", f"{funcs}:shout", "--column", "name", "--into", "loud",
                "-o", out, "--batch-rows", 77, "--chunk-size", 20, "--no-progress") == 0
    check_shouted(source, out, funcs)


def test_partitions_into_a_directory_and_from_a_dataset(tmp_path, funcs):
    df = _frame(900)
    dataset = tmp_path / "in"
    dataset.mkdir()
    for i, part in enumerate(np.array_split(np.arange(900), 3)):
        df.iloc[part].to_parquet(dataset / f"part-{i}.parquet", index=False)
    out = tmp_path / "out"
    assert _run("partitions", dataset, "-f", f"{funcs}:add_tax", "-o", f"{out}/",
                "--batch-rows", 200, "--chunk-size", 50, "--no-progress") == 0
    expected = _load(funcs, "add_tax")(pd.read_parquet(dataset))
    got = pd.read_parquet(out)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)


def test_groupby_reads_whole_groups(tmp_path, funcs):
    df = _frame(800)
    source = tmp_path / "in.parquet"
    df.to_parquet(source, index=False)
    out = tmp_path / "out.csv"
    assert _run("groupby", source, "-f", f"{funcs}:spread", "--by", "store", "-o", out,
                "--chunk-size", 2, "--no-progress") == 0
    expected = df.groupby("store").apply(_load(funcs, "spread")).rename("result")
    got = pd.read_csv(out).set_index("store")["result"]
    pd.testing.assert_series_equal(got, expected, check_names=False)


def test_module_function_spec(tmp_path, monkeypatch, funcs):
    monkeypatch.syspath_prepend(str(tmp_path))
    df = _frame(50)
    source = tmp_path / "in.parquet"
    df.to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    assert _run("apply", source, "-f", "jobs:score", "-o", out, "--no-progress") == 0
    assert len(pd.read_parquet(out)) == 50


def test_failing_function_exits_1_names_the_row_and_leaves_the_target(tmp_path, funcs,
                                                                       capsys):
    df = _frame(100)
    source = tmp_path / "in.parquet"
    df.to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    out.write_bytes(b"the previous output")
    code = _run("apply", source, "-f", f"{funcs}:fails_on_7", "-o", out, "--chunk-size", 5,
                "--jobs", 2, "--no-progress")
    assert code == 1
    err = capsys.readouterr().err
    assert "KeyError" in err and "customer 7" in err and "labelled 7" in err
    assert out.read_bytes() == b"the previous output"
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


@pytest.mark.parametrize("argv, message", [
    (["apply", "{src}", "-f", "no_colon", "-o", "{out}"], "module:function"),
    (["apply", "{src}", "-f", "{funcs}:missing", "-o", "{out}"], "no function"),
    (["apply", "{src}", "-f", "no_such_module_xyz:f", "-o", "{out}"], "cannot import"),
    (["apply", "{tmp}/absent.parquet", "-f", "{funcs}:score", "-o", "{out}"], "no such"),
    (["apply", "{src}", "-f", "{funcs}:score", "-o", "{tmp}/out.xlsx"], "format"),
    (["apply", "{src}", "-f", "{funcs}:score", "-o", "{out}", "--jobs", "0"], "n_jobs"),
    (["groupby", "{src}", "-f", "{funcs}:spread", "--by", "nope", "-o", "{out}"], "nope"),
])
def test_usage_errors_exit_2(tmp_path, funcs, capsys, argv, message):
    source = tmp_path / "in.parquet"
    _frame(10).to_parquet(source, index=False)
    values = {"src": source, "out": tmp_path / "o.parquet", "funcs": funcs, "tmp": tmp_path}
    assert _run(*[a.format(**values) for a in argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def _write_malformed_csv(path, good_rows):
    with open(path, "w") as fh:
        fh.write("amount,name\n")
        fh.writelines(f"{i},customer-{i}\n" for i in range(good_rows))
        fh.write("1,2,3\n")


@pytest.mark.parametrize("case", ["malformed csv", "malformed csv past the first block",
                                  "not parquet", "map --column nocol", "no output directory",
                                  "groupby --by nocol"])
def test_input_problems_exit_2_with_one_line_naming_the_culprit(tmp_path, funcs, capsys,
                                                                 case):
    source, out = tmp_path / "in.parquet", tmp_path / "o.parquet"
    _frame(10).to_parquet(source, index=False)
    command, extra, culprit = "map", ["--column", "name"], None
    if case.startswith("malformed csv"):
        source = tmp_path / "in.csv"
        # pyarrow parses CSV in 4 MiB blocks: the second case fails mid-stream.
        _write_malformed_csv(source, 3 if case == "malformed csv" else 300_000)
        culprit = "in.csv"
    elif case == "not parquet":
        (tmp_path / "in.parquet").write_bytes(b"PAR1 but not really")
        culprit = "in.parquet"
    elif case == "map --column nocol":
        extra, culprit = ["--column", "nocol"], "'nocol'"
    elif case == "no output directory":
        out, culprit = tmp_path / "nowhere" / "o.parquet", "nowhere"
    else:
        command, extra, culprit = "groupby", ["--by", "nocol"], "'nocol'"
    function = "spread" if command == "groupby" else "shout"
    code = _run(command, source, "-f", f"{funcs}:{function}", "-o", out, *extra,
                "--no-progress")
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"pandas-parallel {command}: error: ")
    assert culprit in err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_a_dying_worker_exits_3_not_1(tmp_path, funcs):
    """Exit 1 means the function raised; a worker that died is another failure."""
    source = tmp_path / "in.parquet"
    _frame(40).to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "pandas_parallel", "apply", str(source), "-f",
         f"{funcs}:dies_on_3", "-o", str(out), "--chunk-size", "5", "--jobs", "2",
         "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "pandas-parallel apply: the run failed: WorkerCrashedError" in done.stderr
    assert not out.exists()


def test_help_and_version():
    for command in ("apply", "map", "groupby", "partitions", "demo"):
        done = subprocess.run([sys.executable, "-m", "pandas_parallel", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout
    done = subprocess.run([sys.executable, "-m", "pandas_parallel", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "pandas-parallel" in done.stdout


def test_ctrl_c_exits_130_and_writes_nothing(tmp_path, funcs):
    source = tmp_path / "in.parquet"
    _frame(400).to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    process = subprocess.Popen(
        [sys.executable, "-m", "pandas_parallel", "apply", str(source), "-f",
         f"{funcs}:slow", "-o", str(out), "--jobs", "2", "--chunk-size", "5",
         "--progress"], stderr=subprocess.PIPE, text=True,
         preexec_fn=ctrl_c_reaches_python)
    # Wait for the progress bar to appear: the work is under way.
    seen = ""
    while "rows" not in seen:
        char = process.stderr.read(1)
        assert char, f"the command ended before its progress bar appeared: {seen!r}"
        seen += char
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _scratch_bytes(pids: set[int]) -> int:
    """Bytes in the shared-memory scratch files of these processes."""
    total = 0
    for path in glob.glob("/dev/shm/pandas_parallel-*"):
        if int(os.path.basename(path).split("-")[1]) in pids:
            for root, _, files in os.walk(path):
                for name in files:
                    with contextlib.suppress(OSError):  # removed meanwhile
                        total += os.path.getsize(os.path.join(root, name))
    return total


def _peak_memory(process: psutil.Process, stop: threading.Event, peak: list[int]) -> None:
    """Proportional memory of the process tree, plus its shared-memory files."""
    while not stop.wait(0.02):
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        used = sum(_pss(p.pid) for p in tree) + _scratch_bytes({p.pid for p in tree})
        peak[0] = max(peak[0], used)


def _run_measured(argv: list[str]) -> tuple[int, int]:
    process = psutil.Popen([sys.executable, "-m", "pandas_parallel", *argv])
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=_peak_memory, args=(process, stop, peak))
    watcher.start()
    code = process.wait(timeout=600)
    stop.set()
    watcher.join()
    return code, peak[0]


@pytest.mark.slow
def test_out_of_core_file_five_times_the_memory_budget(tmp_path, funcs):
    """A 1.05 GB (in memory) Parquet file through `partitions` with a 200 MiB
    budget: the peak of the command and its workers, above what the same
    command needs for a tiny file, stays within the budget."""
    budget = 200 * 2**20
    rows, columns = 13_200_000, 10  # 10 float64 columns: 1.05 GB in memory
    source = tmp_path / "big.parquet"
    with pq.ParquetWriter(source, pa.schema([(f"x{i}", pa.float64())
                                             for i in range(columns)])) as writer:
        rng = np.random.default_rng(1)
        for _ in range(12):
            block = rng.normal(size=(rows // 12, columns))
            writer.write_table(pa.table({f"x{i}": block[:, i] for i in range(columns)}),
                               row_group_size=100_000)
    in_memory = rows * columns * 8
    assert in_memory >= 5 * budget
    (tmp_path / "big_fn.py").write_text(
        "def double(frame):\n    return frame * 2\n")
    # Chunks of a fixed size: both runs use the workers (forked for each
    # batch), whatever the machine's load makes the planner think of so
    # cheap a function.
    common = ["-f", f"{tmp_path}/big_fn.py:double", "--jobs", "2", "--batch-rows",
              "25000", "--chunk-size", "12500", "--no-progress"]
    tiny = tmp_path / "tiny.parquet"  # a few batches: the baseline includes the pool
    pq.write_table(pq.read_table(source).slice(0, 100_000), tiny)
    code, baseline = _run_measured(["partitions", str(tiny), "-o",
                                    str(tmp_path / "tiny_out.parquet"), *common])
    assert code == 0
    out = tmp_path / "big_out.parquet"
    code, peak = _run_measured(["partitions", str(source), "-o", str(out), *common])
    assert code == 0
    print(f"out-of-core: baseline {baseline / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB")
    assert peak - baseline <= budget, (
        f"streaming used {(peak - baseline) / 2**20:.0f} MB above its baseline "
        f"for a {in_memory / 2**20:.0f} MB file (budget {budget / 2**20:.0f} MB)")
    # Same rows, same order, same values as pandas on the whole file (two
    # columns at a time, to keep this test's own memory small).
    for names in (["x0", "x1"], ["x8", "x9"]):
        expected = _load(f"{tmp_path}/big_fn.py", "double")(
            pd.read_parquet(source, columns=names))
        pd.testing.assert_frame_equal(pd.read_parquet(out, columns=names), expected)


# -- ETL runs: resume, row errors, timeouts ----------------------------------------------
def _logged_expected(frame):
    return frame.apply(lambda row: row["amount"] * 3, axis=1).to_frame("result")


def _logged_rows(log):
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_resume_after_sigkill_continues_from_the_last_finished_batch(tmp_path, funcs):
    from tests.test_subprocesses import _read_lines_until

    frame = _frame(1000)
    source, out, log = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "log"
    frame.to_parquet(source, index=False)
    argv = [sys.executable, "-m", "pandas_parallel", "apply", str(source), "-f",
            f"{funcs}:logged", "-o", str(out), "--batch-rows", "200", "--chunk-size", "20",
            "--jobs", "2", "--no-progress", "--resume"]
    env = dict(os.environ, PP_LOG=str(log), PP_HANG_AT="650")
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    try:
        _read_lines_until(process, lambda lines: any("hanging on 650" in line
                                                     for line in lines), timeout=120)
        workers = psutil.Process(process.pid).children(recursive=True)
        process.kill()  # SIGKILL: nothing runs in the parent after this
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(workers, timeout=10)  # they die with their parent
        assert not alive
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.stdout.close()
    assert not out.exists()
    kept = tmp_path / ".out.parquet.resume"
    assert sorted(p.name for p in kept.glob("batch-*.arrow")) == [
        "batch-000000.arrow", "batch-000001.arrow", "batch-000002.arrow"]
    before = len(_logged_rows(log))

    env.pop("PP_HANG_AT")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = _logged_rows(log)[before:]
    assert min(resumed) >= 600  # the three finished batches were not run again
    assert sorted(set(resumed)) == list(range(600, 1000))
    pd.testing.assert_frame_equal(pd.read_parquet(out), _logged_expected(frame))
    again = tmp_path / "again.parquet"
    subprocess.run([*argv[:8], str(again), *argv[9:-1]], env=env, check=True, timeout=300)
    assert pq.read_table(out).equals(pq.read_table(again))  # as an uninterrupted run
    # Neither the kept batches nor the killed run's partial output are left.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "resume"])
def test_a_second_run_on_the_same_target_is_refused_at_once(tmp_path, funcs, resume):
    """Two runs writing one target would interleave (a short target with
    exit 0): the second exits 2 at once, naming the first's process."""
    from tests.test_subprocesses import _read_lines_until

    source, out, log = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "log"
    _frame(600).to_parquet(source, index=False)
    argv = [sys.executable, "-m", "pandas_parallel", "apply", str(source), "-f",
            f"{funcs}:logged", "-o", str(out), "--batch-rows", "200", "--jobs", "2",
            "--no-progress", *(["--resume"] if resume else [])]
    env = dict(os.environ, PP_LOG=str(log), PP_HANG_AT="250")
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
    try:
        _read_lines_until(first, lambda lines: any("hanging on 250" in line
                                                   for line in lines), timeout=120)
        env.pop("PP_HANG_AT")
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"process {first.pid}" in second.stderr and "another run" in second.stderr
        workers = psutil.Process(first.pid).children(recursive=True)
    finally:
        first.kill()
        first.wait(timeout=30)
        first.stdout.close()
    psutil.wait_procs(workers, timeout=10)
    # The killed run's lock is the system's to release: the next run takes it.
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert pq.read_metadata(out).num_rows == 600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _file_size_limit(limit: int):
    def limited() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails instead
    return limited


def test_a_full_disk_under_resume_leaves_no_partial_batch(tmp_path, funcs):
    """The fourth batch's output cannot be written (as on a full disk): the
    run fails, the three batches kept before it stay valid, nothing partial
    remains, and the next run resumes from them."""
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    _frame(1000).to_parquet(source, index=False)
    argv = [sys.executable, "-m", "pandas_parallel", "apply", str(source), "-f",
            f"{funcs}:grows", "-o", str(out), "--batch-rows", "200", "--jobs", "2",
            "--no-progress", "--resume"]
    failed = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            preexec_fn=_file_size_limit(200_000))
    assert failed.returncode == 3, failed.stderr
    kept = tmp_path / ".out.parquet.resume"
    assert sorted(p.name for p in kept.iterdir()) == [
        "batch-000000.arrow", "batch-000001.arrow", "batch-000002.arrow", "identity.json"]
    assert not out.exists()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = pd.read_parquet(source).apply(_load(funcs, "grows"), axis=1).to_frame("result")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_continues_only_the_same_run(tmp_path, funcs, monkeypatch):
    from pandas_parallel.io import process_file

    frame = _frame(500)
    source, out, log = tmp_path / "in.parquet", tmp_path / "out.csv", tmp_path / "log"
    frame.to_parquet(source, index=False)
    monkeypatch.setenv("PP_LOG", str(log))
    logged = _load(funcs, "logged")

    def fails_from_300(row):
        if row.name >= 300:
            raise RuntimeError("the service went away")
        return logged(row)

    run = dict(batch_rows=100, n_jobs=2, chunk_size=25, progress=False, resume=True)
    with pytest.raises(RuntimeError, match="went away"):
        process_file(str(source), fails_from_300, str(out), **run)
    assert not out.exists() and len(_logged_rows(log)) == 300
    # Another function: the kept batches are not its own, and are removed.
    process_file(str(source), lambda row: logged(row) * 1, str(out), **run)
    assert len(_logged_rows(log)) == 800
    pd.testing.assert_frame_equal(pd.read_csv(out), _logged_expected(frame))
    assert not (tmp_path / ".out.csv.resume").exists()
    # Without resume, nothing is kept.
    log.unlink()
    with pytest.raises(RuntimeError):
        process_file(str(source), fails_from_300, str(out), **{**run, "resume": False})
    assert not (tmp_path / ".out.csv.resume").exists()


def test_errors_coerce_and_timeout_on_the_command_line(tmp_path, funcs, capsys):
    frame = _frame(30)
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    frame.to_parquet(source, index=False)
    assert _run("apply", source, "-f", f"{funcs}:fails_on_7_and_11", "-o", out,
                "--errors", "coerce", "--chunk-size", "4", "--no-progress") == 0
    expected = frame.apply(lambda row: None if row.name in (7, 11) else row["amount"],
                           axis=1).to_frame("result")
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    err = capsys.readouterr().err
    assert ("2 rows failed and are missing in the output (--errors coerce); the first, "
            "row 7: KeyError") in err
    assert _run("apply", source, "-f", f"{funcs}:slow", "-o", out, "--timeout", "0.01",
                "--chunk-size", "4", "--no-progress") == 1
    assert "TimeoutError" in capsys.readouterr().err
    assert _run("apply", source, "-f", f"{funcs}:slow", "-o", out, "--timeout", "-1") == 2


# -- a newcomer's first hour: the console script, the bar, the failing row ----------
def _script() -> str:
    """The ``pandas-parallel`` console script the install made, beside this
    interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "pandas-parallel")
    if not os.path.exists(script):
        pytest.skip("the pandas-parallel script is not installed (pip install -e .)")
    return script


def test_the_console_script_imports_modules_from_the_working_directory(tmp_path, funcs):
    """`pandas-parallel apply small.parquet -f fns:row_fn` works where
    `python -m pandas_parallel` does: the working directory is importable."""
    os.rename(funcs, tmp_path / "fns.py")
    _frame(50).to_parquet(tmp_path / "small.parquet", index=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in ([_script()], [sys.executable, "-m", "pandas_parallel"]):
        done = subprocess.run([*command, "apply", "small.parquet", "-f", "fns:score",
                               "--axis", "1", "-o", "out.parquet", "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        expected = pd.read_parquet(tmp_path / "small.parquet").apply(
            _load(str(tmp_path / "fns.py"), "score"), axis=1)
        assert pd.read_parquet(tmp_path / "out.parquet").iloc[:, 0].tolist() == \
            expected.tolist()


def test_a_module_that_does_not_import_suggests_the_file_form(tmp_path, funcs, capsys,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    _frame(5).to_parquet(tmp_path / "in.parquet", index=False)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "steps.py").write_text("def f(row):\n    return 1\n")
    (tmp_path / "needs.py").write_text("import a_missing_dependency_xyz\n")
    assert _run("apply", "in.parquet", "-f", "steps:f", "-o", "out.parquet") == 2
    err = capsys.readouterr().err
    assert "ModuleNotFoundError" in err
    assert f"use -f {os.path.join('path', 'to', 'steps.py')}:f" in err
    # Found, but what it imports is not: the file form would not help.
    assert _run("apply", "in.parquet", "-f", "needs:f", "-o", "out.parquet") == 2
    err = capsys.readouterr().err
    assert "a_missing_dependency_xyz" in err and "use -f" not in err
    # A package in the working directory imports, as under python -m.
    assert _run("apply", "in.parquet", "-f", "pipeline.steps:f", "-o", "out.parquet",
                "--no-progress") == 0


class _CountingBar:
    """A bar that records each move (what the command line's tqdm is told)."""

    def __init__(self, **kwargs):
        self.total, self.moves = kwargs.get("total"), []

    def update(self, n=1):
        self.moves.append(n)

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("jobs", [1, 2], ids=["in this process", "on workers"])
def test_the_bar_moves_per_chunk_on_a_file_of_one_batch(tmp_path, funcs, monkeypatch, jobs):
    """A file under one batch (250,000 rows) used to move the bar once, at
    the end; it moves as the call's chunks (or pieces run here) finish."""
    from pandas_parallel import batches

    bars: list[_CountingBar] = []
    monkeypatch.setattr(batches, "progress_bar", lambda **kw: bars.append(
        _CountingBar(**kw)) or bars[-1])
    _frame(2_000).to_parquet(tmp_path / "in.parquet", index=False)
    code = _run("apply", tmp_path / "in.parquet", "-f", f"{funcs}:score", "-o",
                tmp_path / "out.parquet", "--progress", "--jobs", jobs, "--chunk-size", 200)
    assert code == 0
    [bar] = bars
    assert bar.total == 2_000 and sum(bar.moves) == 2_000
    assert len([m for m in bar.moves if m > 0]) >= 5, bar.moves


def test_a_row_failing_in_this_process_is_named_and_traceback_offered(tmp_path, funcs,
                                                                       capsys):
    """A small file runs in this process (too little work for workers): the
    failing row is named as on a worker, and --traceback prints where."""
    _frame(100).to_parquet(tmp_path / "in.parquet", index=False)
    argv = ["apply", tmp_path / "in.parquet", "-f", f"{funcs}:fails_on_7", "-o",
            tmp_path / "out.parquet", "--no-progress"]
    assert _run(*argv) == 1
    err = capsys.readouterr().err
    assert "customer 7 is missing" in err and "labelled 7" in err, err
    assert "(run in this process)" in err and "--traceback shows where" in err
    assert _run(*argv, "--traceback") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise KeyError' in err


def test_float_results_written_to_csv_read_back_as_floats(tmp_path, funcs):
    """pyarrow writes 2.0 as "2", which pd.read_csv reads as an integer: a
    float result must read back as the floats pandas computed."""
    df = _frame(300).assign(amount=lambda d: d["amount"].round(0))  # whole numbers
    source = tmp_path / "in.parquet"
    df.to_parquet(source, index=False)
    out = tmp_path / "out.csv"
    assert _run("apply", source, "-f", f"{funcs}:score", "-o", out, "--no-progress",
                "--batch-rows", 100) == 0
    expected = df.apply(_load(funcs, "score"), axis=1)
    assert expected.dtype == "float64" and (expected % 1 == 0).all()
    pd.testing.assert_series_equal(pd.read_csv(out).iloc[:, 0], expected, check_names=False)
