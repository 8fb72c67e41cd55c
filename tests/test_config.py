"""gi_tutorial.config: quick mode, budgets, seeding, device and threads."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gi_tutorial import config


@pytest.mark.parametrize("value", ["1", "yes", "true", "TRUE", " on ", "anything"])
def test_is_quick_true(monkeypatch, value):
    monkeypatch.setenv(config.QUICK_ENV, value)
    assert config.is_quick() is True
    assert config.budget(full=300, quick=5) == 5


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", " NO "])
def test_is_quick_false(monkeypatch, value):
    monkeypatch.setenv(config.QUICK_ENV, value)
    assert config.is_quick() is False
    assert config.budget(full=300, quick=5) == 300


def test_is_quick_unset(monkeypatch):
    monkeypatch.delenv(config.QUICK_ENV, raising=False)
    assert config.is_quick() is False
    assert config.budget(full=[1, 2], quick=[1]) == [1, 2]


def test_quick_mode_is_on_in_the_tests():
    # conftest.py sets it at import; the rest of the suite relies on it.
    assert config.is_quick()


def test_seed_everything_makes_all_generators_reproducible():
    g1 = config.seed_everything(1234)
    a = (torch.rand(5), np.random.rand(3), random.random(), torch.rand(4, generator=g1))
    g2 = config.seed_everything(1234)
    b = (torch.rand(5), np.random.rand(3), random.random(), torch.rand(4, generator=g2))
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert torch.equal(a[3], b[3])
    # the returned generator is seeded like torch's global one
    assert torch.equal(
        torch.rand(4, generator=config.seed_everything(1234)),
        torch.rand(4, generator=torch.Generator().manual_seed(1234)),
    )
    config.seed_everything(1235)
    assert not torch.equal(torch.rand(5), a[0])


def test_seed_everything_accepts_seeds_beyond_numpy_range():
    # NumPy only takes seeds below 2**32; the function reduces them.
    g = config.seed_everything(2**40 + 7)
    assert isinstance(g, torch.Generator)


def test_get_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.get_device().type == expected
    assert config.get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():  # this machine
        assert config.get_device() == torch.device("cpu")


def test_set_threads(monkeypatch):
    old = torch.get_num_threads()
    try:
        assert config.set_threads(2) == 2
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("GI_TUTORIAL_THREADS", "3")
        assert config.set_threads() == 3
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("GI_TUTORIAL_THREADS")
        assert config.set_threads() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
