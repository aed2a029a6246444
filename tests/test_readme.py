"""The README's first code block runs as written, and each of its
``.parallel`` lines gives what the same line without ``.parallel`` gives."""

from __future__ import annotations

import ast
import pathlib
import re

import pandas as pd
import pytest

import pandas_parallel
from tests.conftest import recording_runs

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "the README has no python code block"
    return match.group(1)


class WithoutParallel(ast.NodeTransformer):
    """``x.parallel.f(...)`` and ``x.parallel(...).f(...)`` as ``x.f(...)``;
    ``x.parallel.map_partitions(step)`` as ``step(x)``, which it means for a
    step whose rows depend only on themselves."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "map_partitions":
            return ast.Call(node.args[0], [node.func.value], [])
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
                and value.func.attr == "parallel":
            value = value.func.value
        if isinstance(value, ast.Attribute) and value.attr == "parallel":
            value = value.value
        node.value = value
        return node


def _pandas_line(statement: ast.Expr) -> ast.Expression:
    plain = WithoutParallel().visit(ast.parse(ast.unparse(statement)).body[0])
    assert ".parallel" not in ast.unparse(plain)
    return ast.fix_missing_locations(ast.Expression(plain.value))


def _assert_same(got: object, expected: object) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        pd.testing.assert_series_equal(got, expected)


def test_the_first_code_block_runs_in_parallel_and_equals_pandas():
    tree = ast.parse(first_python_block())
    namespace: dict = {}
    compared = 0
    with pandas_parallel.config(serial_fallback=False, progress=False):
        for statement in tree.body:
            source = ast.unparse(statement)
            if not (isinstance(statement, ast.Expr) and ".parallel" in source):
                exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)
                continue
            with recording_runs() as recorded:
                got = eval(compile(ast.Expression(statement.value), "README.md", "eval"),
                           namespace)
            backends = [run.backend for run in recorded.runs]
            assert backends and "serial" not in backends, (source, backends)
            expected = eval(compile(_pandas_line(statement), "README.md", "eval"),
                            namespace)
            _assert_same(got, expected)
            compared += 1
    assert compared >= 8


@pytest.mark.parametrize("line, plain", [
    ("df.parallel.apply(f, axis=1)", "df.apply(f, axis=1)"),
    ("df.parallel(n_jobs=2).apply(f)", "df.apply(f)"),
    ('df.groupby("k")["v"].parallel.agg(f)', "df.groupby('k')['v'].agg(f)"),
    ("df.parallel.map_partitions(step)", "step(df)"),
])
def test_removing_parallel_from_a_line(line, plain):
    statement = ast.parse(line).body[0]
    assert isinstance(statement, ast.Expr)
    assert ast.unparse(_pandas_line(statement).body) == plain
