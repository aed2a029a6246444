"""Run pandas' own tests through ``.parallel`` and count what differs.

    python tests/pandas_suite/run.py                  # the per-push set, forked
    python tests/pandas_suite/run.py --full           # every module, every local backend

pandas ships its tests in its wheel. Each selected module runs once with
the routing plugin (``routing.py``) in ``identity`` mode, the reference, and
once per backend with pandas' methods routed through ``.parallel`` (forced
parallel, one-row chunks). A routed test that does not end as it ended on
the reference is a difference. Differences listed in
``expected_differences.txt`` (each with its reason) are expected; any other
makes this script exit 1. It prints the table that ``docs/verified.md``
reports, for the installed pandas.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# Modules of pandas' tests for the routed methods, relative to pandas.tests.
PER_PUSH = ["apply", "groupby.test_apply", "groupby.transform.test_transform",
            "groupby.test_filters", "window.test_apply"]
FULL = [*PER_PUSH, "groupby.aggregate.test_aggregate", "groupby.aggregate.test_other",
        "groupby.test_apply_mutate", "window.test_expanding", "window.test_groupby"]
BACKENDS = ("forked", "pool", "threads")


@dataclasses.dataclass
class Expected:
    """One line of the expected differences: which tests, where, and why."""

    pattern: str
    backends: str
    pandas: str
    reason: str

    def covers(self, nodeid: str, backend: str) -> bool:
        return (_matches(self.pattern, nodeid)
                and (self.backends == "*" or backend in self.backends.split(","))
                and _matches(self.pandas, pd.__version__))


def _matches(pattern: str, text: str) -> bool:
    """``*`` matches anything; every other character itself (test ids hold
    brackets, which fnmatch would read as character classes)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text) is not None


def read_expected(path: pathlib.Path) -> list[Expected]:
    """``pattern | backends | pandas versions | reason`` lines (backends: ``*``
    or a comma-separated list); ``#`` comments."""
    expected = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != 4 or not fields[3]:
            raise SystemExit(f"{path}:{number}: expected 'pattern | backends | pandas | "
                             f"reason', got {line!r}")
        expected.append(Expected(*fields))
    return expected


def run_pytest(route: str, backend: str, modules: list[str], out: pathlib.Path) -> dict:
    """One run of pandas' tests under the routing plugin; its JSON record."""
    site = pathlib.Path(pd.__file__).parent.parent
    env = {**os.environ, "PANDAS_SUITE_ROUTE": route, "PANDAS_SUITE_BACKEND": backend,
           "PANDAS_SUITE_OUT": str(out), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"),
               "--rootdir", str(site), "-p", "tests.pandas_suite.routing",
               "-p", "no:logging", "-p", "no:cacheprovider", "-q", "--no-header",
               "-o", "console_output_style=classic", "--tb=no", "-W", "ignore",
               "--pyargs", *[f"pandas.tests.{m}" for m in modules]]
    began = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    # pytest: 0 all passed, 1 some failed; anything else (no tests, a usage or
    # collection error, an interruption) means the count would be wrong.
    if done.returncode not in (0, 1) or not out.exists():
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"pandas' tests did not run ({route}, {backend}): pytest exited "
                         f"{done.returncode}")
    record = json.loads(out.read_text())
    if not record["tests"]:
        raise SystemExit(f"no tests ran ({route}, {backend})")
    record["seconds"] = time.monotonic() - began
    return record


def _installed(module: str) -> bool:
    """Whether this pandas has the test module (some exist in one version only)."""
    try:
        found = importlib.util.find_spec(f"pandas.tests.{module}") is not None
    except ModuleNotFoundError:  # its package is missing too
        found = False
    if not found:
        print(f"pandas {pd.__version__} has no pandas.tests.{module}: left out",
              file=sys.stderr)
    return found


@dataclasses.dataclass
class Count:
    """One backend's row of the table."""

    backend: str
    seconds: float
    routed: int = 0
    parallel: int = 0
    reference_passed: int = 0
    routed_passed: int = 0
    differ: int = 0
    expected: int = 0
    unexpected: list[str] = dataclasses.field(default_factory=list)


def compare(reference: dict, routed: dict, backend: str,
            expected: list[Expected]) -> Count:
    count = Count(backend, routed["seconds"])
    for nodeid, ref in reference["tests"].items():
        got = routed["tests"].get(nodeid)
        if got is None or not ref["calls"]:
            continue
        count.routed += 1
        count.parallel += bool(got["backends"])
        count.reference_passed += ref["outcome"] in ("passed", "xfailed")
        count.routed_passed += ref["outcome"] in ("passed", "xfailed") \
            and got["outcome"] == ref["outcome"]
        if got["outcome"] == ref["outcome"]:
            continue
        count.differ += 1
        if any(e.covers(nodeid, backend) for e in expected):
            count.expected += 1
        else:
            count.unexpected.append(f"{nodeid}: {ref['outcome']} -> {got['outcome']}"
                                    f" {got.get('error', '')}")
    return count


def table(counts: list[Count], tests: int) -> str:
    lines = [f"pandas {pd.__version__}: {tests} tests in the selected modules",
             "| backend | routed tests | ran in parallel | pass on reference "
             "| pass routed | differ | expected (listed) | unexpected | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in counts:
        lines.append(f"| {c.backend} | {c.routed} | {c.parallel} | {c.reference_passed} "
                     f"| {c.routed_passed} | {c.differ} ({c.differ / max(c.routed, 1):.1%}) "
                     f"| {c.expected} | {len(c.unexpected)} | {c.seconds:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="every module on every local backend (the release job)")
    parser.add_argument("--backends", nargs="*", default=None)
    parser.add_argument("--modules", nargs="*", default=None)
    parser.add_argument("--expected", type=pathlib.Path,
                        default=HERE / "expected_differences.txt")
    parser.add_argument("--keep", type=pathlib.Path, default=None,
                        help="write each run's JSON record into this directory")
    args = parser.parse_args()
    modules = [m for m in args.modules or (FULL if args.full else PER_PUSH)
               if _installed(m)]
    if not modules:
        raise SystemExit("none of the test modules exists in this pandas")
    backends = args.backends or (list(BACKENDS) if args.full else ["forked"])
    expected = read_expected(args.expected)
    with tempfile.TemporaryDirectory() as scratch:
        where = args.keep or pathlib.Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        reference = run_pytest("identity", "forked", modules, where / "reference.json")
        counts = [compare(reference, run_pytest("parallel", b, modules, where / f"{b}.json"),
                          b, expected) for b in backends]
    print(table(counts, len(reference["tests"])))
    unexpected = [line for c in counts for line in (f"[{c.backend}] {u}"
                                                     for u in c.unexpected)]
    if unexpected:
        print(f"\n{len(unexpected)} differences not in {args.expected.name}:")
        print("\n".join(unexpected))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
