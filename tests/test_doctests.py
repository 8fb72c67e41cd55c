"""Run the examples in every gi_tutorial module's docstrings."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "config",
    "data",
    "models",
    "fl",
    "analytic",
    "objectives",
    "priors",
    "spaces",
    "invert",
    "metrics",
    "viz",
    "exercises",
    "separation",
    "generators",
    "giml",
    "defenses",
    "stats",
    "claims",
]
# modules whose docstrings hold examples: a doctest run that finds none there is a failure too
WITH_EXAMPLES = {"config", "objectives", "priors", "metrics", "separation", "stats", "claims"}


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(f"gi_tutorial.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in gi_tutorial.{name}"
    if name in WITH_EXAMPLES:
        assert result.attempted > 0
