"""The ``pandas-parallel`` command (also ``python -m pandas_parallel``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    import pandas_parallel

    parser = argparse.ArgumentParser(
        prog="pandas-parallel",
        description="Run pandas apply/map/groupby on all cores, identical to pandas.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {pandas_parallel.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="time a CPU-heavy apply serially and in parallel",
        description="Generate data, run a CPU-heavy row-wise apply with plain pandas "
                    "and with .parallel, and print both times, the speed-up and "
                    "whether the results are equal.")
    demo.add_argument("--rows", type=int, default=200_000,
                      help="rows of generated data (default: 200000)")
    demo.add_argument("--jobs", type=int, default=None,
                      help="worker processes (default: all usable CPUs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from pandas_parallel.demo import run

        if args.rows < 1:
            print("pandas-parallel demo: --rows must be at least 1", file=sys.stderr)
            return 2
        return run(args.rows, args.jobs)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
