"""The built pages read as intended: no raw Markdown tables, mangled --flags, object reprs, empty columns,
images without alt text, doubled words, literal backticks or control characters (tools/html_check.py on
the session's whole-book build).

The checker is tested first on small hand-written pages, one per defect, built the way myst-nb renders
a chapter (``cell_input`` / ``cell_output`` containers, ``pasted-text`` for glued values).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import html_check

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def page(body: str) -> str:
    return f"<html><body><nav><img src='logo.png'></nav><article class='bd-article'>{body}</article></body></html>"


def cell(source: str, output: str) -> str:
    return (
        f"<div class='cell docutils container'><div class='cell_input docutils container'>"
        f"<div class='highlight'><pre>{source}</pre></div></div>"
        f"<div class='cell_output docutils container'>{output}</div></div>"
    )


def text_output(text: str) -> str:
    return (
        f"<div class='output text_plain highlight-myst-ansi notranslate'><div class='highlight'><pre>{text}</pre></div>"
        "</div>"
    )


CLEAN = page(
    "<h1>Chapter</h1><p>Run <code class='docutils literal notranslate'>make test --quick</code>; threat models A–H, "
    "pages 3–5, and a dash – here. The defense is <span class='pasted-text'>noise (σ = 0.1)</span>.</p>"
    "<p>It had had its say. See Exercise <a href='#ch2-gap'><span>10</span></a>. The sweep ran "
    "<code class='docutils literal notranslate'><span class='pre'>python x.py --a 1</span></code>, sha256 ab12….</p>"
    "<table><thead><tr><th>method</th><th>PSNR</th><th>LPIPS</th></tr></thead>"
    "<tbody><tr><td>GI-x</td><td>18.2</td><td>not computed</td></tr>"
    "<tr><td>GIAS</td><td>24.0</td><td>0.31</td></tr></tbody></table>"
    + cell('print("|---|---|")  # code may hold anything\nrecord = DefenseRecord(name="noise")', text_output("done"))
    + "<div class='highlight'><pre>python tools/run.py --markdown | head\nAdam(lr=0.1)</pre></div>"
    + "<img alt='Reconstructions of four garments, one row per method' src='../_images/abc.png'>"
)


def test_a_clean_page_passes():
    assert html_check.find_defects(CLEAN) == []


@pytest.mark.parametrize(
    "body, expected",
    [
        ("<p>| method | PSNR |\n|---|---|\n| GI-x | 18.2 |</p>", "raw Markdown table"),
        (cell("viz.markdown_table(rows)", text_output("| a | b |\n|:---|---:|\n| 1 | 2 |")), "raw Markdown table"),
        ("<p>Run python benchmarks/run.py –chapters to time them.</p>", "en dash before a letter"),
        ("<p>Add (–quick) for a smoke test.</p>", "en dash before a letter"),
        (
            cell("update.defense", text_output("(DefenseRecord(name='noise', settings={'sigma': 0.1}),)")),
            "raw object repr",
        ),
        (
            "<p>The defense was <span class='pasted-text'>DefenseRecord(name='clip', settings={})</span>.</p>",
            "raw object repr",
        ),
        (
            "<table><thead><tr><th>method</th><th>LPIPS</th></tr></thead>"
            "<tbody><tr><td>GI-x</td><td>not computed</td></tr>"
            "<tr><td>GIAS</td><td>not computed (offline)</td></tr></tbody></table>",
            "every cell of column 'LPIPS' reads 'not computed'",
        ),
        ("<img alt='../_images/abc123.png' src='../_images/abc123.png'>", "alt text is its file path"),
        ("<img alt='figures/ch3/grid.svg' src='../_images/grid.svg'>", "alt text is its file path"),
        ("<img src='../_images/abc123.png'>", "image without alt text"),
        ("<p>Exercise Exercise 10 asks what the gap is.</p>", "doubled word 'Exercise Exercise'"),
        ("<p>See Exercise <a href='#ch2-gap'><span class='std std-ref'>Exercise 10</span></a>.</p>", "doubled word"),
        ("<li>the the floors</li>", "doubled word"),
        ("<p>It ran <span class='pasted-text'>`python x.py --a 1` (sha256 ab12…)</span>.</p>", "literal backticks"),
        ("<p>Type `make test` to run them.</p>", "literal backticks"),
        ("<p>at the same <span class='math notranslate'>\\( \x0barepsilon\\)</span></p>", "control character"),
        ("<img alt='  ' src='../_images/abc123.png'>", "image without alt text"),
    ],
)
def test_each_defect_is_caught(body, expected):
    defects = html_check.find_defects(page(body))
    assert len(defects) == 1 and expected in defects[0], defects


def test_defects_on_a_page_are_all_reported(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "clean.html").write_text(CLEAN)
    (tmp_path / "book" / "broken.html").write_text(
        page("<p>Use –flag.</p><img src='x.png' alt='x.png'><p>|---|---|</p>")
    )
    found = html_check.check(tmp_path)
    assert list(found) == ["book/broken.html"] and len(found["book/broken.html"]) == 3
    assert html_check.main([str(tmp_path)]) == 1


@pytest.mark.book
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_built_chapter_has_no_rendering_defects(path, built_book):
    """Every page the build wrote (it keeps going past a failing chapter: test_book.py reports the failure)."""
    html = Path(built_book["html"]) / "book" / f"{path.stem}.html"
    assert html.exists(), f"the build wrote no page for {path.stem} (see test_book.py)"
    defects = html_check.find_defects(html.read_text(encoding="utf-8"))
    assert not defects, f"{path.stem}:\n  " + "\n  ".join(defects)
