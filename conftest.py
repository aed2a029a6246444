"""Doctest examples marked ``# doctest: +PANDAS3`` run on pandas 3 only
(the ``engine=`` interface does not exist in pandas 2.2). Loaded for the
doctests of ``pandas_parallel/`` and ``docs/``; the suite's own fixtures are in
``tests/conftest.py``."""

from __future__ import annotations

import doctest

import pandas as pd
import pytest

PANDAS3 = doctest.register_optionflag("PANDAS3")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if int(pd.__version__.split(".")[0]) >= 3:
        return
    for item in items:
        test = getattr(item, "dtest", None)
        for example in getattr(test, "examples", []):
            if example.options.get(PANDAS3):
                example.options[doctest.SKIP] = True
