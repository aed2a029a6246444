"""A real Jupyter kernel runs a notebook that defines functions in cells and
uses ``.parallel`` with the progress bar (a notebook widget there)."""

from __future__ import annotations

import os

import psutil
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

CELLS = [
    """import pandas as pd, numpy as np
import pandas_parallel
pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=500, progress=True)
df = pd.DataFrame({"store": np.arange(4000) % 37, "x": np.arange(4000) * 0.5})""",
    # Defined in the notebook: lambdas and functions in __main__ must travel.
    """score = lambda row: row["x"] ** 2 - row["store"]

def spread(group):
    return group["x"].max() - group["x"].min() + len(group)""",
    """rows = df.parallel.apply(score, axis=1)
pd.testing.assert_series_equal(rows, df.apply(score, axis=1))
groups = df.groupby("store")[["x"]].parallel.apply(spread)
pd.testing.assert_series_equal(groups, df.groupby("store")[["x"]].apply(spread))
print("RESULTS EQUAL")""",
    "pandas_parallel.shutdown_pool()",
]


def test_notebook_with_real_kernel(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    env_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(env_path)}})
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "RESULTS EQUAL" in text
    widgets = [o for o in outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 2, "the progress bar should be a notebook widget, one per call"
    # Saved as they ended (a widget's own text is what it was when drawn: 0%).
    assert all("100%" in o["data"]["text/plain"] for o in widgets), widgets
    assert not [o for o in outputs if o.get("name") == "stderr"]
    # The kernel and its workers are gone (this process's own pool may remain).
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"processes left by the notebook run: {alive}"


def _run_notebook(cells, tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    env_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(env_path)}})
    client.execute()
    saved = tmp_path / "saved.ipynb"
    nbformat.write(notebook, saved)  # what the user's file holds
    return nbformat.read(saved, as_version=4)


def test_without_ipywidgets_each_call_is_one_line_saved_at_100_percent(tmp_path):
    """tqdm without ipywidgets warns `IProgress not found` and writes its text
    bar to stderr, saved as one output per refresh: here, one output per
    call, updated in place, saved as it ended, and a hint (once) how to get
    the widget bar."""
    cells = ["import sys\nsys.modules['ipywidgets'] = None  # as if not installed",
             *CELLS]
    notebook = _run_notebook(cells, tmp_path)
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    assert not [o for o in outputs if o.get("name") == "stderr"], "nothing to stderr"
    bars = [o for o in outputs if o.get("output_type") in ("display_data", "update_display_data")
            and "text/plain" in o.get("data", {})]
    assert len(bars) == 2, bars  # one per call
    texts = [o["data"]["text/plain"] for o in bars]
    assert all("100%" in text for text in texts), texts
    assert "pip install ipywidgets" in texts[0] and "pip install ipywidgets" not in texts[1]
    assert "apply" in texts[0] and "groupby" in texts[1]


AUTORELOAD_CELLS = [
    """import os, sys, tempfile
sys.dont_write_bytecode = True
project = tempfile.mkdtemp()
sys.path.insert(0, project)
with open(os.path.join(project, "nb_helper.py"), "w") as file:
    file.write("def scale(x):\\n    return x * 3\\n")
%load_ext autoreload
%autoreload 2
import pandas as pd, pandas_parallel, nb_helper
pandas_parallel.config(n_jobs=2, serial_fallback=False, chunk_size=50, progress=False)
s = pd.Series(range(400))
from pandas_parallel.forkserver import SERVER
s.parallel.map(lambda x: x)  # the fork server starts: the calls below find workers warm
SERVER.wait_ready(60)
s.parallel.map(lambda x: x)""",
    """first = s.parallel.map(nb_helper.scale)
pd.testing.assert_series_equal(first, s.map(nb_helper.scale))
print("FIRST", first.iloc[1], pandas_parallel.last_run().backend,
      pandas_parallel.last_run().start)""",
    # The helper module edited, as in an editor, between two cells.
    """with open(os.path.join(project, "nb_helper.py"), "w") as file:
    file.write("def scale(x):\\n    return x * 300\\n")""",
    """second = s.parallel.map(nb_helper.scale)
pd.testing.assert_series_equal(second, s.map(nb_helper.scale))
print("SECOND", second.iloc[1], pandas_parallel.last_run().backend,
      pandas_parallel.last_run().start)""",
    "pandas_parallel.shutdown_pool()",
]


def test_autoreloaded_helper_module_reaches_the_kept_workers(tmp_path):
    """A real kernel (its threads rule out forking it: its calls run on the
    fork server's workers), ``%autoreload 2``, a helper module edited
    between cells: the kept workers run the edited code, as pandas does."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in AUTORELOAD_CELLS]
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    client.execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "FIRST 3 forkserver warm" in text
    assert "SECOND 300 forkserver warm" in text
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"processes left by the notebook run: {alive}"
