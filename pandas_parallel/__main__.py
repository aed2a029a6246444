"""The ``pandas-parallel`` command (also ``python -m pandas_parallel``).

Exit codes: 0 success, 1 the user's function failed, 2 a usage or input
problem (one line names the option, file, column or directory), 3 the run
failed for another reason (a worker died, the disk filled up), 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

EXIT_OK, EXIT_FUNCTION_FAILED, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the command line: exit code 2."""


def load_function(spec: str) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function``."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"-f {spec!r}: expected module:function or path/to/file.py:function")
    try:
        if where.endswith(".py") or os.sep in where:
            if not os.path.isfile(where):
                raise UsageError(f"-f {spec!r}: no such file {where!r}")
            module_name = os.path.splitext(os.path.basename(where))[0]
            loader = importlib.util.spec_from_file_location(module_name, where)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            loader.loader.exec_module(module)
            # Workers cannot import a file by path: send its code by value.
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        else:
            _working_directory_importable()
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"-f {spec!r}: cannot import {where!r}: "
                         f"{type(exc).__name__}: {exc}{_file_form(where, name, exc)}") from exc
    func = getattr(module, name, None)
    if not callable(func):
        raise UsageError(f"-f {spec!r}: {where!r} has no function {name!r}")
    return func


def _working_directory_importable() -> None:
    """Modules in the working directory import, as under ``python -m``
    (the ``pandas-parallel`` script's own directory is first on its path
    instead)."""
    here = os.getcwd()
    if not any(entry in ("", here) or os.path.abspath(entry) == here for entry in sys.path):
        sys.path.insert(0, here)


def _file_form(where: str, name: str, exc: Exception) -> str:
    """For a module that was not found: the ``path/to/file.py:function``
    form, which needs no import path, as a suggestion."""
    missing = getattr(exc, "name", None) or ""
    if not isinstance(exc, ModuleNotFoundError) or not (
            where == missing or where.startswith(missing + ".")):
        return ""  # the module was found; something it imports was not
    path = os.path.join("path", "to", where.replace(".", os.sep) + ".py")
    return f"; to load a file by its path, use -f {path}:{name}"


def _common(parser: argparse.ArgumentParser, streaming: bool) -> None:
    parser.add_argument("input", help="Parquet file or dataset directory, CSV, or "
                                      "Arrow IPC/Feather file")
    parser.add_argument("-f", "--function", required=True, metavar="MODULE:FUNCTION",
                        help="the function: module:function or path/to/file.py:function")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (format from its extension), or a directory "
                             "ending in / for one file per batch")
    parser.add_argument("--format", choices=["parquet", "csv", "arrow"], default=None,
                        help="input format, when the extension does not say")
    parser.add_argument("--output-format", choices=["parquet", "csv", "arrow"],
                        default=None, help="output format (default: from the extension)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: all usable CPUs)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows (groups for groupby) per chunk (default: measured)")
    parser.add_argument("--backend", default=None,
                        help="loky (processes, default), threading, dask or ray")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="with --backend dask: the scheduler to connect to "
                             "(tcp://host:8786); with --backend ray: the cluster's "
                             "address (default: a local Ray runtime). On Parquet input "
                             "the cluster's workers read the input and write the "
                             "output's parts themselves")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over the rows (default: on a terminal)")
    parser.add_argument("--traceback", action="store_true",
                        help="when the function fails, print its whole traceback (your "
                             "source lines, in the worker that ran it)")
    parser.add_argument("--errors", choices=["raise", "coerce"], default=None,
                        help="raise (default): the first failing call stops the run; "
                             "coerce: its value becomes missing, and the failures are "
                             "listed in a warning")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="seconds one call of the function may take before it "
                             "fails with TimeoutError (missing with --errors coerce)")
    parser.add_argument("--retries", type=int, default=None,
                        help="try a call that raised again, up to this many times, "
                             "waiting 0.1 s, then twice as long each time")
    parser.add_argument("--csv-reader", choices=["pandas", "pyarrow"], default="pandas",
                        help="pandas (default): CSV values as pd.read_csv gives them for "
                             "the whole file (read twice: once for the types); pyarrow: "
                             "read once, faster, typed by Arrow from the first block")
    if streaming:
        parser.add_argument("--batch-rows", type=int, default=250_000,
                            help="rows read, processed and written at a time; peak "
                                 "memory grows with it (default: 250000)")
        parser.add_argument("--resume", action="store_true",
                            help="keep each finished batch beside the output (in "
                                 ".NAME.resume/) and continue after the last one a "
                                 "killed run with the same input, function and "
                                 "settings finished; removed once the output is "
                                 "complete")


_STREAMS = "Works on files larger than memory."
# The subcommands that run a function over a file: (help, description,
# whether it streams in batches, its own arguments).
_FILE_COMMANDS: dict[str, tuple[str, str, bool, list[tuple[tuple[str, ...], dict[str, Any]]]]] = {
    "apply": (
        "fn(row) for every row, like df.apply(fn, axis=1)",
        "Stream the input in batches through df.parallel.apply(fn, axis=1) and write "
        f"the results in row order. {_STREAMS}", True,
        [(("--axis",), {"type": int, "choices": [1], "default": 1,
                        "help": "1: the function gets each row (the only axis that streams)"})]),
    "map": (
        "fn(value) for every value of one column",
        "Stream the input in batches, map one column with fn, and write all columns "
        f"(the mapped one replaced, or added with --into). {_STREAMS}", True,
        [(("--column",), {"required": True, "help": "the column to map"}),
         (("--into",), {"default": None,
                        "help": "write the result to this column (default: replace --column)"})]),
    "groupby": (
        "fn(group) for every group, like df.groupby(by).apply(fn)",
        "Read the whole input, run df.groupby(by).parallel.apply(fn) and write the result "
        "with the keys as columns. Groups must be whole, so the input must fit in memory; "
        "for larger files, partition it by key first and run each part.", False,
        [(("--by",), {"required": True, "help": "key column(s), comma-separated"})]),
    "partitions": (
        "fn(DataFrame) -> DataFrame for batches of rows",
        "Stream the input in batches; each chunk of rows is passed to fn(DataFrame) -> "
        "DataFrame and the results are written in order. For vectorized steps whose rows "
        f"depend only on themselves. {_STREAMS}", True, []),
}


def build_parser() -> argparse.ArgumentParser:
    import pandas_parallel

    parser = argparse.ArgumentParser(
        prog="pandas-parallel",
        description="Run pandas apply/map/groupby on all cores, identical to pandas. "
                    "Exit codes: 0 success, 1 the function failed, 2 usage or input "
                    "error, 3 the run failed otherwise, 130 interrupted.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {pandas_parallel.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, (help_text, description, streaming, own) in _FILE_COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=description)
        _common(command, streaming=streaming)
        for flags, settings in own:
            command.add_argument(*flags, **settings)

    demo = commands.add_parser(
        "demo", help="time a CPU-heavy apply serially and in parallel",
        description="Generate data, run a CPU-heavy row-wise apply with plain pandas "
                    "and with .parallel, and print both times, the speed-up and "
                    "whether the results are equal.")
    demo.add_argument("--rows", type=int, default=200_000,
                      help="rows of generated data (default: 200000)")
    demo.add_argument("--jobs", type=int, default=None,
                      help="worker processes (default: all usable CPUs)")
    demo.add_argument("--no-fork", action="store_true",
                      help="never fork this process (the path a notebook, a threaded "
                           "program or macOS takes): workers fork from a fork server")
    return parser


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from pandas_parallel.options import validate

    options = {"n_jobs": args.jobs, "chunk_size": args.chunk_size, "backend": args.backend,
               "errors": args.errors, "timeout": args.timeout, "retries": args.retries}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        validate(options)
    except (TypeError, ValueError, ImportError) as exc:
        raise UsageError(str(exc)) from exc
    return options


def _raised_by(func: Callable[..., Any], exc: BaseException) -> bool:
    """Whether ``exc`` came from the user's function (in a worker or here)."""
    notes = getattr(exc, "__notes__", [])
    if any(note.startswith("pandas_parallel:") for note in notes):
        return True
    code = getattr(func, "__code__", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return True
        tb = tb.tb_next
    return False


def _run_files(args: argparse.Namespace) -> int:
    from pandas_parallel import io

    func = load_function(args.function)
    options = _options(args)
    io.detect_format(args.input, args.format)
    io.detect_format(args.output, args.output_format)
    if not os.path.exists(args.input):
        raise UsageError(f"no such input: {args.input!r}")
    try:
        with warnings.catch_warnings(record=True) as caught, _cluster(args):
            warnings.simplefilter("default")
            summary = _run_command(args, func, options)
    except KeyboardInterrupt:
        print("pandas-parallel: interrupted; the output was not written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, io.InputError):
        raise
    except Exception as exc:
        return _report_failure(args, func, exc)
    _report_warnings(args, caught)
    print(f"pandas-parallel {args.command}: {summary}", file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[None]:
    """Connected to ``--scheduler`` for the run, with ``--backend``."""
    if args.scheduler is None:
        yield
        return
    from pandas_parallel.backends.clusters import connected

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(connected(args.backend, args.scheduler))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        except OSError as exc:
            raise UsageError(f"--scheduler {args.scheduler!r}: cannot connect: {exc}"
                             ) from exc
        yield


def _run_command(args: argparse.Namespace, func: Callable[..., Any],
                 options: dict[str, Any]) -> Any:
    from pandas_parallel import io

    if args.command == "groupby":
        return _groupby(args, func, options)
    if args.batch_rows < 1:
        raise UsageError("--batch-rows must be at least 1")
    return io.process_file(
        args.input, func, args.output, operation=args.command,
        column=getattr(args, "column", None), into=getattr(args, "into", None),
        input_format=args.format, output_format=args.output_format,
        batch_rows=args.batch_rows, progress=args.progress, resume=args.resume,
        csv_reader=args.csv_reader, **options)


def _report_warnings(args: argparse.Namespace,
                     caught: list[warnings.WarningMessage]) -> None:
    """One line per warning; the rows that failed under --errors coerce
    said plainly."""
    from pandas_parallel.errors import RowErrorsWarning

    for message in caught:
        warning = message.message
        if isinstance(warning, RowErrorsWarning):
            label, first = warning.failures[0]
            print(f"pandas-parallel {args.command}: {len(warning.failures)} rows failed "
                  f"and are missing in the output (--errors coerce); the first, row "
                  f"{label!r}: {type(first).__name__}: {first}", file=sys.stderr)
        else:
            print(f"pandas-parallel {args.command}: warning: {message.category.__name__}: "
                  f"{warning}", file=sys.stderr)


def _report_failure(args: argparse.Namespace, func: Callable[..., Any],
                    exc: Exception) -> int:
    """Exit 1 when the user's function raised, 3 for any other failure."""
    if _raised_by(func, exc):
        what, code = "the function failed", EXIT_FUNCTION_FAILED
    else:
        what, code = "the run failed", EXIT_RUN_FAILED
    if args.traceback:
        traceback.print_exception(exc, file=sys.stderr)
    else:
        print(f"pandas-parallel {args.command}: {what}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        for note in getattr(exc, "__notes__", []):
            print(note, file=sys.stderr)
    print(f"the output {args.output!r} was not written"
          + ("" if args.traceback or code != EXIT_FUNCTION_FAILED
             else "; --traceback shows where the function failed"), file=sys.stderr)
    return code


def _groupby(args: argparse.Namespace, func: Callable[..., Any],
             options: dict[str, Any]) -> Any:
    import time

    from pandas_parallel import io, reading, writing

    began = time.perf_counter()
    fmt = io.detect_format(args.input, args.format)
    writer = io.AtomicWriter(args.output, io.detect_format(args.output, args.output_format))
    try:
        data = reading.read_whole(args.input, fmt, args.csv_reader)
        if len(data) == 0:
            raise io.InputError(f"{args.input!r} has no rows")
        keys = [k.strip() for k in args.by.split(",") if k.strip()]
        missing = [k for k in keys if k not in data.columns]
        if missing:
            raise io.InputError(f"--by: no column {', '.join(map(repr, missing))} in "
                                f"{args.input!r}")
        progress = {} if args.progress is None else {"progress": args.progress}
        result = data.groupby(keys if len(keys) > 1 else keys[0]).parallel(
            **options, **progress).apply(func)
        table = writing.to_arrow(result, None)
        writer.write(table)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        writer.release()
    return io.Summary(len(data), table.num_rows, time.perf_counter() - began, args.output)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from pandas_parallel.demo import run

        if args.rows < 1:
            print("pandas-parallel demo: --rows must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        return run(args.rows, args.jobs, fork=not args.no_fork)
    logging.basicConfig(level=logging.WARNING, format="pandas-parallel: %(message)s")
    from pandas_parallel.io import InputError

    try:
        return _run_files(args)
    except (UsageError, InputError) as exc:
        print(f"pandas-parallel {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
