"""The demo (the README's main job): what it prints about the machine, and
how it explains a low speed-up from what it measured."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pandas_parallel import demo
from pandas_parallel.demo import Timed, explain_slow

# A process that is not ours: the child forks and exits at once, and the
# grandchild, adopted by init, burns half a CPU-second and exits. Reading the
# pipe to its end waits for that.
STRANGER = textwrap.dedent("""
    import os, sys, time
    if os.fork():
        os._exit(0)
    while time.process_time() < 0.5:
        pass
    sys.stdout.write("done")
""")


def _stranger_burns_half_a_cpu_second() -> bytes:
    process = subprocess.Popen([sys.executable, "-c", STRANGER], stdout=subprocess.PIPE)
    assert process.stdout is not None
    output = process.stdout.read()
    process.wait(timeout=30)
    return output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_used_by_other_processes_is_measured():
    output, timed = demo._timed(_stranger_burns_half_a_cpu_second)
    assert output == b"done"
    assert timed.others_cpu is not None and timed.others_cpu >= 0.4


BURN_THEN_WAIT = textwrap.dedent("""
    import sys, time
    while time.process_time() < 0.5:
        pass
    print("burnt", flush=True)
    sys.stdin.read()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("when", ["still running", "reaped"])
def test_cpu_used_by_our_own_children_counts_as_ours(when):
    """Pool workers are live children, forked workers reaped ones: both are
    ours, not the machine's other load."""
    before = demo._own_seconds()
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "burnt\n"
        if when == "reaped":
            child.stdin.close()
            child.wait(timeout=30)
        assert demo._own_seconds() - before >= 0.45
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.parametrize("speed_up, cpus, backend, others, expected", [
    (1.7, 2, "forked", 3.0, None),
    (1.0, 1, "forked", 0.0, "only 1 CPU"),
    (1.0, 2, "serial", 0.0, "ran serially"),
    (1.1, 2, "pool", 1.5, "the machine is busy: other processes used 1.5 CPU-seconds"),
    (1.1, 2, "pool", 0.1, "start-up"),
    (1.1, 2, "pool", None, "start-up"),
])
def test_a_low_speed_up_is_explained_by_what_was_measured(speed_up, cpus, backend, others,
                                                          expected):
    why = explain_slow(speed_up, cpus, backend, serial_seconds=2.0,
                       call=Timed(seconds=1.8, others_cpu=others))
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "no-fork"])
def test_the_demo_prints_the_machine_the_workers_and_how_each_call_ran(capsys, fork):
    assert demo.run(rows=3000, n_jobs=2, fork=fork) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith("this machine: ") and "usable CPUs" in lines[1]
    assert "2 workers; the " in lines[1] and " path (workers " in lines[1]
    if not fork:
        assert "the no-fork path" in lines[1]
    assert lines[2] == "running serially first (plain pandas, no progress bar)..."
    assert "(first call: " in lines[4] and "(later call: " in lines[5]
    assert "results equal: True" in lines[6]
    if len(lines) > 7:
        assert lines[7].startswith("why below 1.2x: ")
