"""A fresh machine: the chapters run on what pip installs, and `make data` says what it needs.

The chapters are executed in quick mode with Debian's Fashion-MNIST package hidden
(``GI_TUTORIAL_DEBIAN_DIR`` pointed at an empty folder) and an empty data folder
(``GI_TUTORIAL_DATA``), offline: only the images inside the foolbox wheel and the shipped
generator remain, as on a clean clone without root.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gi_tutorial import data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import run_notebooks  # noqa: E402

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


@pytest.fixture
def hidden(tmp_path, monkeypatch):
    """Environment of a fresh machine: no Debian data package, an empty data folder."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"GI_TUTORIAL_DEBIAN_DIR": str(empty), "GI_TUTORIAL_DATA": str(empty / "data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_debian_folder_is_a_setting(hidden, tmp_path):
    assert data.debian_fashion_mnist_dir() == Path(hidden["GI_TUTORIAL_DEBIAN_DIR"])
    with pytest.raises(data.DataNotFoundError) as err:
        data.fashion_mnist("train", 10, allow_download=False)
    assert hidden["GI_TUTORIAL_DEBIAN_DIR"] in str(err.value)


def test_shipped_images_are_enough_for_quick_mode(hidden):
    images, labels = data.fashion_mnist("test", data.NUM_SHIPPED, allow_download=False)
    assert images.shape == (data.NUM_SHIPPED, 1, 32, 32) and labels.shape == (data.NUM_SHIPPED,)


def test_make_data_names_every_source_when_none_has_the_data(hidden):
    """`python -m gi_tutorial.data --ensure` (what `make data` runs) exits 1 and names every source tried."""
    done = subprocess.run([sys.executable, "-m", "gi_tutorial.data", "--no-install", "--ensure", "cifar10:test:20",
                           "fashion_mnist:train"], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, **hidden, "http_proxy": "http://127.0.0.1:9",
                               "https_proxy": "http://127.0.0.1:9"})
    if done.returncode == 0:  # a machine with internet: torchvision downloaded the train split
        assert "torchvision download" in done.stdout
        return
    assert done.returncode == 1
    assert "data: cifar10:test:20: already present" in done.stdout
    for source in ("torchvision files under", "Debian dataset-fashion-mnist", "foolbox", "torchvision download",
                   "installing Debian dataset-fashion-mnist: not attempted"):
        assert source in done.stderr, (source, done.stderr)


def test_ensure_parses_specs():
    assert data._parse_spec("cifar10:test:20") == ("cifar10", "test", 20)
    assert data._parse_spec("fashion_mnist:train") == ("fashion_mnist", "train", None)
    with pytest.raises(ValueError):
        data._parse_spec("cifar10")


def test_make_book_fetches_data_before_building():
    makefile = (ROOT / "Makefile").read_text()
    assert "\nbook: $(STAMP) data\n" in makefile
    assert "-m gi_tutorial.data --ensure $(BOOK_DATA)" in makefile


def test_book_excludes_caches_and_build_folders():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = set(config["exclude_patterns"])
    for folder in (".pytest_cache", "_build", ".venv", "student", "colab", "node_modules", "vendor", "instructor"):
        assert folder in excluded, folder


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_runs_on_a_fresh_machine(path, hidden):
    """Quick mode with no Debian package and no data folder: every cell runs."""
    run = run_notebooks.execute(path, env={**hidden, "GI_TUTORIAL_QUICK": "1", "GI_TUTORIAL_THREADS": "1",
                                           "GI_TUTORIAL_PROGRESS": "0"})
    assert not run.errors, f"{path.name}: {run.errors}"
