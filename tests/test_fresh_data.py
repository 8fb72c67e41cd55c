"""A fresh machine's data: the images that pip ships are enough for quick mode, and `make data` says what it needs.

The tests that execute the chapters under the same conditions (Debian's package hidden, an
empty data folder, offline) are in tests/test_fresh_machine.py; these need no book run, so they
run while it executes (tests/conftest.py sends the files that read the book last).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import execute_book
from gi_tutorial import data


@pytest.fixture
def hidden(tmp_path, monkeypatch):
    """Environment of a fresh machine: no Debian data package, an empty data folder."""
    env = execute_book.fresh_machine_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_debian_folder_is_a_setting(hidden):
    assert data.debian_fashion_mnist_dir() == Path(hidden["GI_TUTORIAL_DEBIAN_DIR"])
    with pytest.raises(data.DataNotFoundError) as err:
        data.fashion_mnist("train", 10, allow_download=False)
    assert hidden["GI_TUTORIAL_DEBIAN_DIR"] in str(err.value)


def test_shipped_images_are_enough_for_quick_mode(hidden):
    images, labels = data.fashion_mnist("test", data.NUM_SHIPPED, allow_download=False)
    assert images.shape == (data.NUM_SHIPPED, 1, 32, 32) and labels.shape == (data.NUM_SHIPPED,)


def test_make_data_names_every_source_when_none_has_the_data(hidden):
    """`python -m gi_tutorial.data --ensure` (what `make data` runs) exits 1 and names every source tried."""
    done = subprocess.run(
        [sys.executable, "-m", "gi_tutorial.data", "--ensure", "cifar10:test:20", "fashion_mnist:train"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **hidden, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"},
    )
    if done.returncode == 0:  # a machine with internet: torchvision downloaded the train split
        assert "torchvision download" in done.stdout
        return
    assert done.returncode == 1
    assert "data: cifar10:test:20: already present" in done.stdout
    for source in (
        "torchvision files under",
        "Debian dataset-fashion-mnist",
        "foolbox",
        "torchvision download",
        "apt-get install dataset-fashion-mnist",
    ):
        assert source in done.stderr, (source, done.stderr)


def test_ensure_parses_specs():
    assert data._parse_spec("cifar10:test:20") == ("cifar10", "test", 20)
    assert data._parse_spec("fashion_mnist:train") == ("fashion_mnist", "train", None)
    with pytest.raises(ValueError):
        data._parse_spec("cifar10")
