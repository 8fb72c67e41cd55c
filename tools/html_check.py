"""Find rendering defects in the built book's HTML pages, the kind a reader sees and a build does not warn about.

- a raw Markdown table: ``|---|`` text outside a ``<table>`` (a table printed as text, not rendered);
- an en dash glued to a letter, as in "–flag": Sphinx's smart quotes turned a ``--flag`` typed outside
  code font into an en dash, so the command no longer works when copied;
- a raw dataclass repr such as ``DefenseRecord(name='noise', ...)`` in a cell's output or a glued value:
  an object printed where a sentence or a table was meant;
- a table column in which every cell reads "not computed": a column that should have been left out;
- an image in the page's content whose alt text is empty or is its own file path (myst-nb's default
  when a figure cell has no alt text);
- a doubled word in the text, as in "Exercise Exercise 10" (a word typed before a reference that
  writes it too);
- literal backticks in the text or a glued value, as in "`python x.py --a 1`": Markdown glued as
  plain text (``{glue:text}``), which shows its backticks instead of code font (glue a ``Markdown``
  object and paste it with ``{glue:md}``);
- a control character in the text, as in "$\x0barepsilon$": a backslash escape (``\v``) eaten by a
  Python string that was meant to hold LaTeX.

The code a cell shows (its input) and code blocks in the prose are not checked for the first three:
code may legitimately contain ``|---|``, ``--`` or a constructor call.

    python tools/html_check.py _build/html        # exit 1 and list the defects, page by page
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bs4 import BeautifulSoup
from bs4.element import NavigableString, Tag

MARKDOWN_RULE = re.compile(r"\|\s*:?-{3,}:?\s*\|")
MANGLED_FLAG = re.compile(r"(?<!\w)\u2013[A-Za-z]")  # "–flag"; "A–H" and "1–3" are ranges, " – " a dash
DATACLASS_REPR = re.compile(r"\b[A-Z][A-Za-z0-9]*\((?:[a-z_][a-z0-9_]*)=")
NOT_COMPUTED = re.compile(r"^\s*not computed\b", re.IGNORECASE)
IMAGE_FILE = re.compile(r"\.(png|jpe?g|svg|gif|webp)$", re.IGNORECASE)
DOUBLED_WORD = re.compile(r"\b([A-Za-z]{2,})\s+\1\b", re.IGNORECASE)
DOUBLES_ALLOWED = {"had", "that"}  # English allows "had had" and "that that"
LITERAL_BACKTICKS = re.compile(r"`[^`\s][^`]*`")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
PROSE_BLOCKS = ["p", "li", "dd", "dt", "td", "th", "caption", "h1", "h2", "h3", "h4", "h5", "h6"]


def _content(soup: BeautifulSoup) -> Tag:
    """The page's own content (the article), without the theme's navigation, header and footer."""
    return soup.select_one("article") or soup.select_one("main") or soup.body or soup


def _inside(node, predicate) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, Tag) and predicate(parent):
            return True
        parent = parent.parent
    return False


def _classes(tag: Tag) -> list[str]:
    return tag.get("class") or []


def _is_cell_input(tag: Tag) -> bool:
    return "cell_input" in _classes(tag)


def _is_output(tag: Tag) -> bool:
    return "cell_output" in _classes(tag) or "pasted-text" in _classes(tag) or "pasted-inline" in _classes(tag)


def _is_code(tag: Tag) -> bool:
    return tag.name in ("pre", "code", "kbd", "samp") or "highlight" in _classes(tag)


def _texts(content: Tag):
    """``(text, in_output, in_code, in_table)`` for every text node of the content."""
    for node in content.find_all(string=True):
        if not isinstance(node, NavigableString) or type(node).__name__ in ("Comment", "Script", "Stylesheet"):
            continue
        if node.parent is not None and node.parent.name in ("script", "style"):
            continue
        yield (
            str(node),
            _inside(node, _is_output),
            _inside(node, _is_code) or _inside(node, _is_cell_input),
            _inside(node, lambda t: t.name == "table"),
        )


def find_defects(html: str) -> list[str]:
    """The defects of one page, each as a line of text saying what and where (an empty list for a clean page)."""
    soup = BeautifulSoup(html, "html.parser")
    content = _content(soup)
    defects = []
    for text, in_output, in_code, in_table in _texts(content):
        snippet = " ".join(text.split())[:80]
        if MARKDOWN_RULE.search(text) and not in_table and (in_output or not in_code):
            defects.append(f"raw Markdown table (not rendered): {snippet!r}")
        if MANGLED_FLAG.search(text) and not (in_code and not in_output):
            defects.append(f"en dash before a letter (a --flag outside code font?): {snippet!r}")
        if DATACLASS_REPR.search(text) and (in_output or not in_code):
            defects.append(f"raw object repr in an output or the text: {snippet!r}")
        if in_code:
            continue  # the rules below are about prose and glued values: code may hold anything
        if LITERAL_BACKTICKS.search(text):
            defects.append(f"literal backticks (Markdown glued as text? use {{glue:md}}): {snippet!r}")
        if CONTROL.search(text):
            defects.append(f"control character (a backslash escape eaten?): {snippet!r}")
    for block in content.find_all(PROSE_BLOCKS):  # a doubled word may span two nodes: "Exercise " + a reference
        if block.find(PROSE_BLOCKS) or _inside(block, _is_code) or _inside(block, _is_cell_input):
            continue  # the innermost blocks only, each once
        text = block.get_text()
        doubled = [m[0] for m in DOUBLED_WORD.finditer(text) if m[1].lower() not in DOUBLES_ALLOWED]
        if doubled:
            defects.append(f"doubled word {doubled[0]!r}: {' '.join(text.split())[:80]!r}")
    for number, table in enumerate(content.find_all("table")):
        rows = [row for row in table.find_all("tr") if row.find("td")]
        if not rows:
            continue
        header = [" ".join(th.get_text().split()) for th in table.find_all("th")]
        width = max(len(row.find_all(["td", "th"])) for row in rows)
        for column in range(width):
            cells = [
                row.find_all(["td", "th"])[column].get_text()
                for row in rows
                if len(row.find_all(["td", "th"])) > column
            ]
            if cells and all(NOT_COMPUTED.match(cell) for cell in cells):
                name = header[column] if column < len(header) else f"column {column + 1}"
                defects.append(f"table {number + 1}: every cell of column {name!r} reads 'not computed'")
    for image in content.find_all("img"):
        alt, src = (image.get("alt") or "").strip(), (image.get("src") or "").strip()
        if not alt:
            defects.append(f"image without alt text: {src}")
        elif alt == src or IMAGE_FILE.search(alt) or Path(alt).name == Path(src).name:
            defects.append(f"image whose alt text is its file path: {alt}")
    return defects


def check(html_dir: Path, pages: str = "book/*.html") -> dict[str, list[str]]:
    """Page (relative path) -> its defects, for every page matching ``pages`` that has any."""
    found = {}
    for page in sorted(html_dir.glob(pages)):
        defects = find_defects(page.read_text(encoding="utf-8", errors="replace"))
        if defects:
            found[str(page.relative_to(html_dir))] = defects
    return found


def main(argv: list[str]) -> int:
    html_dir = Path(argv[0]) if argv else Path("_build/html")
    found = check(html_dir)
    for page, defects in found.items():
        print(f"FAIL {page}")
        for defect in defects:
            print(f"  {defect}")
    print(f"{len(found)} page(s) with defects" if found else "no rendering defects")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
