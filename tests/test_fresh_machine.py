"""A fresh machine: the chapters run on what pip installs, and `make data` says what it needs.

The data half (what pip ships, what `make data` says) is tests/test_fresh_data.py. The chapters are
executed once per test session (tests/conftest.py, ``executed_book``), in quick
mode with Debian's Fashion-MNIST package hidden (``GI_TUTORIAL_DEBIAN_DIR`` pointed at an empty
folder) and an empty data folder (``GI_TUTORIAL_DATA``), offline: only the images inside the
foolbox wheel and the shipped generator remain, as on a clean clone without root. The same
execution feeds the book's build (tests/test_book.py) and the Colab checks (tests/test_colab.py).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

import execute_book

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = execute_book.chapters()


def test_make_book_fetches_data_before_building():
    """`make data` installs Debian's package where it can (tools/), then checks or downloads (the library)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "\nbook: $(STAMP) data\n" in makefile
    data_target = makefile.split("\ndata: ", 1)[1].split("\n\n", 1)[0]
    install = data_target.index("tools/debian_data.py $(BOOK_DATA)")
    assert install < data_target.index("-m gi_tutorial.data --ensure $(BOOK_DATA)")


def test_book_excludes_caches_and_build_folders():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = set(config["exclude_patterns"])
    for folder in (".pytest_cache", "_build", ".venv", "student", "colab", "node_modules", "vendor", "instructor"):
        assert folder in excluded, folder


def test_the_session_ran_the_chapters_as_a_fresh_machine(executed_book):
    assert executed_book["quick"] and executed_book["fresh_machine"]
    env = executed_book["env"]
    assert env["GI_TUTORIAL_QUICK"] == "1"
    for key in ("GI_TUTORIAL_DEBIAN_DIR", "GI_TUTORIAL_DATA"):
        folder = Path(env[key])
        assert folder.is_dir() and not any(folder.iterdir()), f"{key} = {folder} is not an empty folder"
    assert set(executed_book["chapters"]) == {nb.name for nb in CHAPTERS}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_on_a_fresh_machine(path, executed_book):
    """Quick mode, no Debian package, no data folder: every cell runs (else the failing cell's traceback shows)."""
    outcome = executed_book["chapters"][path.name]
    if not outcome["ok"]:
        pytest.fail(
            f"{path.name} failed on a fresh machine (quick mode, data hidden):\n"
            f"{execute_book.strip_ansi(outcome['traceback'])}",
            pytrace=False,
        )


def test_a_failing_chapter_reports_its_cell_and_traceback(tmp_path, monkeypatch):
    """What the chapters' tests show when a cell fails: the cell's code and the error, from the one execution."""
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nb.cells = [
        nbformat.v4.new_code_cell("x = 41"),
        nbformat.v4.new_code_cell("raise ValueError(f'boom {x + 1}')"),
        nbformat.v4.new_code_cell("never = True"),
    ]
    path = tmp_path / "chXX_broken.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(execute_book, "chapters", lambda: [path])
    outcome = execute_book.execute(tmp_path / "_build", timeout=120, workers=1)[path.name]
    assert not outcome["ok"] and outcome["executed_now"]
    traceback = execute_book.strip_ansi(outcome["traceback"])
    assert "raise ValueError(f'boom {x + 1}')" in traceback and "ValueError: boom 42" in traceback
