"""The README's tables of chapter times and of the peer benchmark are written by commands, never typed."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(benchmark_script):
    return benchmark_script("run")


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


# --- the peer benchmark's table (benchmarks/peer_table.py, from benchmarks/peer.py --json) -------


@pytest.fixture(scope="module")
def peer_table(benchmark_script):
    return benchmark_script("peer_table")


def _peer_run(tmp_path, name, rows, ratio=None, floors=None):
    floors = floors or dict(grey=13.7, mean=12.1, start=8.0, floor=13.7)
    record = dict(floors=floors, rows=rows, ratio=ratio, ratios=None if ratio is None else [ratio - 0.2, ratio, 1.1])
    path = tmp_path / name
    path.write_text(json.dumps(dict(argv=["--batches", "4", "--recipes", ""], first_image=8, batches={"4": record})))
    return path


def _row(label, final, seconds, held3=None, held6=None):
    return dict(label=label, final=final, seconds=seconds, held_floor3=held3, held_floor6=held6, curve=[[0, 0, 9, 0]])


def test_the_peer_table_reads_each_run_against_its_floor_and_merges_reruns(tmp_path, peer_table):
    first = _peer_run(
        tmp_path,
        "a.json",
        [
            _row("breaching invertinggradients (defaults)", 15.7, 691.0),
            _row("ours tv: 150 cosine + TV 0.1", 15.5, 99.0, held3=None),
            _row("ours tvsched: 800 cosine", 17.0, 446.0, held3=120.0),
            _row("ours fast: 150 l2", 16.9, 40.0, held3=80.0, held6=None),
        ],
        ratio=1.102,
    )
    rerun = _peer_run(tmp_path, "b.json", [_row("breaching invertinggradients (defaults)", 15.7, 691.0)], ratio=1.051)
    cases = peer_table.load([first, rerun])
    (row,) = [line for line in peer_table.table(cases).splitlines() if line.startswith("| 4,")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "4, images 8-11" and cells[1] == "13.70 dB (grey)"
    assert cells[2] == "15.70 dB (+2.00), 691 s; floor + 3 held from never"
    assert cells[3] == "17.00 dB (+3.30, `tvsched`, 446 s)"  # the best final, not the fastest
    assert cells[4] == "80 s (`fast`)" and cells[5] == "never"  # the earliest recipe to hold floor + 3
    assert cells[6] == "1.051x (rounds 0.85-1.10)"  # the re-run's ratio; the recipes kept from the first run
    stored = peer_table.store([first], tmp_path / "kept")
    assert "curve" not in stored[0].read_text() and peer_table.load(stored)[(4, 8)]["rows"].keys() == {
        r["label"] for r in json.loads(first.read_text())["batches"]["4"]["rows"]
    }


def test_the_peer_table_refuses_a_file_that_is_not_a_run(tmp_path, peer_table):
    bad = tmp_path / "x.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a results file of benchmarks/peer.py --json"):
        peer_table.load([bad])


def test_the_readmes_peer_table_is_the_generated_block(peer_table):
    """README.md's peer table is what peer_table.py writes from the stored runs (benchmarks/peer_runs)."""
    runs = sorted((ROOT / "benchmarks" / "peer_runs").glob("*.json"))
    assert runs, "benchmarks/peer_runs holds the runs behind the README's peer table"
    text = (ROOT / "README.md").read_text()
    assert text.count(peer_table.BEGIN) == text.count(peer_table.END) == 1
    block = text.split(peer_table.BEGIN)[1].split(peer_table.END)[0]
    assert block.lstrip().startswith("Written by `python benchmarks/peer_table.py")
    assert peer_table.table(peer_table.load(runs)) in block
