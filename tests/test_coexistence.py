"""Living beside parallel-pandas, which registers its own ``.parallel`` at
import: whichever imports last, the user is told, and ``.pandas_parallel``
always reaches this library.

Run in fresh interpreters (an import order is a process's history). Where
parallel-pandas cannot import (it needs pandas <= 3.0: CI installs 0.8 in
its pandas 2.2 environment), a stand-in package of the same name registers
its accessor exactly as parallel-pandas 0.8 does (silencing pandas'
warning), so the import watch is exercised on every pandas.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

STAND_IN = '''
import warnings
import pandas as pd

class ParallelAccessor:
    """The stand-in's own accessor (parallel-pandas 0.8 dispatches to p_*)."""
    def __init__(self, obj):
        self._obj = obj

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pd.api.extensions.register_dataframe_accessor("parallel")(ParallelAccessor)
    pd.api.extensions.register_series_accessor("parallel")(ParallelAccessor)
'''

CHECK = '''
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    {imports}
import pandas as pd
import pandas_parallel
clashes = [w for w in caught if w.category is pandas_parallel.AccessorClashWarning]
assert len(clashes) == 1, [str(w.message) for w in caught]
print("WARNING:", clashes[0].message)
print("WHERE:", clashes[0].filename)
df = pd.DataFrame({{"k": [i % 3 for i in range(40)], "v": [float(i) for i in range(40)]}})
print("PARALLEL IS:", type(df.parallel).__module__.partition(".")[0])
row = lambda r: r["v"] * 2 + r["k"]
with pandas_parallel.config(n_jobs=2, chunk_size=10, serial_fallback=False):
    got = df.pandas_parallel.apply(row, axis=1)
    print("RAN ON:", pandas_parallel.last_run().backend)
    groups = df.groupby("k").pandas_parallel.apply(lambda g: g["v"].sum())
pd.testing.assert_series_equal(got, df.apply(row, axis=1))
pd.testing.assert_series_equal(groups, df.groupby("k").apply(lambda g: g["v"].sum()))
print("EQUAL")
'''


def _real_parallel_pandas() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import parallel_pandas"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """The directory to put first on sys.path: empty where the real
    parallel-pandas imports, else holding the stand-in."""
    place = tmp_path_factory.mktemp("other")
    if not _real_parallel_pandas():
        package = place / "parallel_pandas"
        package.mkdir()
        (package / "__init__.py").write_text(STAND_IN)
    return place


def _run(other, first: str, second: str) -> str:
    script = CHECK.format(imports=f"import {first}\n    import {second}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(other), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_importing_parallel_pandas_last_is_told_and_the_second_name_still_works(other):
    out = _run(other, "pandas_parallel", "parallel_pandas")
    assert "parallel_pandas replaced pandas_parallel's `.parallel`" in out
    assert "df.pandas_parallel" in out and "import pandas_parallel after" in out
    assert "PARALLEL IS: parallel_pandas" in out
    assert "RAN ON: forked" in out or "RAN ON: forkserver" in out or "RAN ON: pool" in out
    assert "EQUAL" in out


def test_importing_pandas_parallel_last_is_told_too(other):
    out = _run(other, "parallel_pandas", "pandas_parallel")
    assert "pandas_parallel replaced parallel_pandas's `.parallel`" in out
    assert "PARALLEL IS: pandas_parallel" in out
    assert "EQUAL" in out


def test_the_warning_points_at_the_users_import_line(other):
    out = _run(other, "pandas_parallel", "parallel_pandas")
    where = next(line for line in out.splitlines() if line.startswith("WHERE:"))
    assert where == "WHERE: <string>", where  # the script, not importlib or this library


def test_alone_nothing_is_said():
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c",
         "import pandas as pd, pandas_parallel; "
         "assert type(pd.Series([1]).parallel) is type(pd.Series([1]).pandas_parallel)"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
