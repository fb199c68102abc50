"""Every example in the package's docstrings runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import deepblur

MODULES = sorted(info.name for info in pkgutil.walk_packages(
    deepblur.__path__, "deepblur.") if not info.name.endswith("__main__"))


def test_modules_are_found():
    assert {"deepblur.features", "deepblur.estimators.regressor",
            "deepblur.datasets.images"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in doctest.DocTestFinder().find(module, name):
        if test.examples:
            runner.run(test, out=report.append, clear_globs=True)
    failed, _ = runner.summarize(verbose=False)
    assert not failed, "".join(report)
