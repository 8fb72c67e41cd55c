"""The README's table of chapter times is written by `benchmarks/run.py --chapters`, never typed."""

from __future__ import annotations

import doctest
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run():
    """benchmarks/run.py as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_functions_hold_their_examples(run):
    result = doctest.testmod(run, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _times(tmp_path, chapters, **extra):
    path = tmp_path / "execution_times.json"
    setting = dict(seconds=700.0, workers=2, cores=2, quick=False, fresh_machine=False, commit="abc1234")
    path.write_text(json.dumps({"chapters": chapters, **setting, "date": "2026-11-29", **extra}))
    return path


def test_a_make_book_run_becomes_the_readmes_block(run, tmp_path):
    names = sorted(p.name for p in (ROOT / "book").glob("*.ipynb"))
    times = _times(tmp_path, {name: 10.0 + i for i, name in enumerate(names)} | {names[-1]: None})
    table, origin = run.from_book(times)
    rows = table.splitlines()
    assert len(rows) == 2 + len(names) + 1  # header, rule, one row per chapter, the total
    assert rows[2].endswith("| 10 s |") and rows[-2].endswith("| not run |") and "**700 s**" in rows[-1]
    assert run.chapter_title(ROOT / "book" / names[0]) in rows[2]  # the chapter's heading, not its file name
    assert "commit abc1234" in origin and "2 chapters at a time" in origin

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.BEGIN}\nold, typed by hand\n{run.END}\nafter\n")
    run.write_readme(readme, table, "python benchmarks/run.py --chapters --from-book X --readme", origin)
    text = readme.read_text()
    assert "typed by hand" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "Written by `python benchmarks/run.py --chapters --from-book X --readme` from" in text
    run.write_readme(readme, table, "again", origin)  # idempotent: one block, replaced
    assert readme.read_text().count(run.BEGIN) == 1 and "Written by `again`" in readme.read_text()


def test_a_readme_without_its_markers_is_refused(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"no block here\n{run.END}\n{run.BEGIN}\n")
    with pytest.raises(SystemExit, match="chapter-times: begin"):
        run.write_readme(readme, "| table |", "cmd", "origin")


def test_the_readmes_table_is_the_generated_block():
    text = (ROOT / "README.md").read_text()
    begin, end = "<!-- chapter-times: begin -->", "<!-- chapter-times: end -->"
    assert text.count(begin) == text.count(end) == 1
    block = text.split(begin)[1].split(end)[0]
    assert block.lstrip().startswith("Written by `python benchmarks/run.py --chapters")
    rows = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(rows) >= 1 + len(list((ROOT / "book").glob("*.ipynb"))) + 1
