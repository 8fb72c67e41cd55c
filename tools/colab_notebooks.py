"""Write the Colab copies of the chapters: ``colab/<chapter>.ipynb``, plain Jupyter Markdown, no MyST.

Colab renders Markdown and math, but none of the MyST syntax the book uses. Each chapter
``book/<chapter>.ipynb`` becomes a copy in which

- every glued number (``{glue:text}`name:fmt```) reads **[name]** in the text, and a small
  cell placed after the code that computes it shows ``[name] = value`` at run time (a cell
  near the top records what the chapter glues);
- citations read "(Zhu et al., 2019)" or "Zhu et al. (2019)", from ``references.bib``;
- exercises are plain headings ("Exercise 2: ..."); solutions are collapsed form cells
  (``#@title`` and ``cellView: form``), explanation as comments, code hidden until opened;
- the "Open in Colab" badge uses Colab's own image, relative links point at GitHub;
- any MyST role or directive left over is an error (the tests also check the files).

The copies are committed; ``--check`` exits 1 when one is out of date (a test runs it).
Run this after editing a chapter:

    python tools/colab_notebooks.py [--check] [--out colab]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import nbformat
import yaml

import sync_notebooks  # tools/ is on the path: the script's own folder, or pytest's pythonpath

ROOT = Path(__file__).resolve().parent.parent

COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
OUT = ROOT / "colab"

ROLE = re.compile(r"\{([a-zA-Z][\w:-]*)\}`([^`]*)`")
GLUE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)(?::([^`]*))?`")
CITE = re.compile(r"\{cite(?::(\w+))?\}`([^`]+)`")
FENCE_DIRECTIVE = re.compile(r"^(`{3,}|~{3,}|:{3,})\{([\w:-]+)\}[ \t]*(.*?)\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
SOLUTION_GATE = re.compile(r"```\{solution-(start|end)\}.*?```", re.DOTALL)
TARGET = re.compile(r"^\([\w-]+\)=[ \t]*\n", re.MULTILINE)
RELATIVE_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)")
LEFTOVER = re.compile(r"\{[a-zA-Z][\w:-]*\}`|^\s*(```|~~~)\{|^\s*:::", re.MULTILINE)

FORM_TITLE = "#@title "
SOLUTION_PREFIX = "Solution (double-click to show"
SOLUTION_TITLE = SOLUTION_PREFIX + " the code)"
ANSWER_TITLE = SOLUTION_PREFIX + " the answer)"  # a written solution, no code

GLUE_RECORDER = """#@title Numbers in the text: each **[name]** is shown by the cell after the code that computes it
# The book typesets these numbers inside its prose (myst-nb's glue); here the chapter's
# viz.glue calls are recorded, and show_numbers displays the ones the next paragraph uses.
from IPython.display import Markdown, display

from gi_tutorial import viz

GLUED = {}
viz._book_glue = getattr(viz, "_book_glue", viz.glue)


def _record_glue(name, value, display=False, markdown=False):
    GLUED[name] = value  # a glued command (markdown=True): its text, shown in code font
    return viz._book_glue(name, value, display=display, markdown=markdown)


viz.glue = _record_glue


def show_numbers(*names_and_formats):
    lines = []
    for name, spec in names_and_formats:
        if name not in GLUED:
            lines.append(f"**[{name}]**: not computed yet (run the cells above)")
            continue
        value = GLUED[name]
        try:
            text = format(value, spec)
        except (TypeError, ValueError):
            text = str(value)
        lines.append(f"**[{name}]** = {text}")
    display(Markdown("  \\n".join(lines)))"""


# ---------------------------------------------------------------- citations

_ACCENTS = {
    '\\"o': "ö",
    '\\"u': "ü",
    '\\"a': "ä",
    "\\'e": "é",
    "\\`e": "è",
    "\\'a": "á",
    "\\'i": "í",
    "\\~n": "ñ",
    "\\c{c}": "ç",
    "\\o": "ø",
    "\\'o": "ó",
    '\\"O': "Ö",
    '\\"U': "Ü",
    "\\ss": "ß",
}


def _detex(text: str) -> str:
    for tex, char in _ACCENTS.items():
        text = text.replace("{" + tex + "}", char).replace(tex, char)
    return re.sub(r"[{}\\]", "", text).strip()


def read_bib(path: Path = ROOT / "references.bib") -> dict[str, dict[str, str]]:
    """Entries of a BibTeX file: key -> {field: value} (enough of BibTeX for author and year)."""
    entries = {}
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,", text):
        key, position, fields = match[1], match.end(), {}
        depth, start = 1, position
        for i in range(position, len(text)):  # the entry ends at its matching brace
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                body = text[start:i]
                break
        else:
            raise ValueError(f"unterminated BibTeX entry {key}")
        for field in re.finditer(r"(\w+)\s*=\s*", body):
            rest = body[field.end() :]
            if rest.startswith("{"):
                level = 0
                for j, ch in enumerate(rest):
                    level += {"{": 1, "}": -1}.get(ch, 0)
                    if level == 0:
                        fields[field[1].lower()] = rest[1:j]
                        break
            elif rest.startswith('"'):
                fields[field[1].lower()] = rest[1 : rest.index('"', 1)]
            else:
                fields[field[1].lower()] = re.match(r"[^,\n]*", rest)[0].strip()
        entries[key] = fields
    return entries


def _surname(author: str) -> str:
    author = author.strip()
    if author.startswith("{") and author.endswith("}"):
        return _detex(author)
    if "," in author:
        return _detex(author.split(",", 1)[0])
    return _detex(author.split()[-1])


def cite_label(entry: dict[str, str]) -> tuple[str, str]:
    """``("Zhu et al.", "2019")`` for an entry."""
    authors = [a for a in re.split(r"\s+and\s+", entry.get("author", "Anonymous")) if a.strip()]
    names = [_surname(a) for a in authors]
    if len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return who, entry.get("year", "n.d.")


def format_citation(kind: str | None, keys: str, bib: dict) -> str:
    labels = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in bib:
            raise KeyError(f"citation key {key!r} is not in references.bib")
        labels.append(cite_label(bib[key]))
    if kind == "t":
        return "; ".join(f"{who} ({year})" for who, year in labels)
    return "(" + "; ".join(f"{who}, {year}" for who, year in labels) + ")"


# ---------------------------------------------------------------- Markdown


def _comment(text: str) -> str:
    return "\n".join(("# " + line).rstrip() for line in text.strip("\n").splitlines())


def convert_markdown(source: str, bib: dict, context: dict) -> str:
    """MyST Markdown -> plain Markdown (exercises become headings; other directives quotes)."""
    source = TARGET.sub("", source)
    source = GLUE.sub(lambda m: f"**[{m[1]}]**", source)
    source = CITE.sub(lambda m: format_citation(m[1], m[2], bib), source)

    def directive(m: re.Match) -> str:
        name, argument, body = m[2], m[3].strip(), m[4]
        lines = body.split("\n")
        while lines and re.match(r"^:[\w-]+:", lines[0]):  # directive options
            lines.pop(0)
        body = "\n".join(lines).strip("\n")
        body = FENCE_DIRECTIVE.sub(directive, body)
        if name == "exercise":
            context["exercise"] += 1
            title = f"Exercise {context['exercise']}" + (f": {argument}" if argument else "")
            return f"### {title}\n\n{body}"
        if name in ("math",):
            return f"$$\n{body}\n$$"
        if name in ("code-block", "code", "sourcecode"):
            return f"```{argument}\n{body}\n```"
        heading = argument or name.replace("-", " ").capitalize()
        quoted = "\n".join(("> " + line).rstrip() for line in body.splitlines())
        return f"> **{heading}**\n>\n{quoted}"

    source = FENCE_DIRECTIVE.sub(directive, source)

    def role(m: re.Match) -> str:
        text = m[2]
        target = re.match(r"(.*?)\s*<([^>]*)>$", text)
        return target[1] if target else text

    source = ROLE.sub(role, source)

    def link(m: re.Match) -> str:
        target = m[1]
        if target.endswith((".svg", ".png", ".jpg")):
            return m[0]
        path, _, anchor = target.partition("#")
        if not Path(path).suffix:
            path += ".ipynb" if (ROOT / "book" / (path + ".ipynb")).exists() else ".md"
        url = f"{context['blob']}/book/{path}" + (f"#{anchor}" if anchor else "")
        return f"]({url})"

    return RELATIVE_LINK.sub(link, source)


def leftover_myst(markdown: str) -> list[str]:
    """MyST roles or directives left in a Markdown text (an empty list when it is plain Markdown)."""
    return [m[0] for m in LEFTOVER.finditer(markdown)]


# ---------------------------------------------------------------- notebook


class _GlueIndex:
    """Which code cell glues each name, read from the chapter's code (it is not run here).

    A cell glues ``name`` if it calls ``glue("name", ...)``, or ``glue(f"rms_{db}", ...)`` with an
    f-string that can spell it, or ``glue(variable, ...)`` while spelling ``"name"`` in a string
    (``for name, value in {"cs_n": n}.items(): viz.glue(name, value)``). The last such cell wins.
    """

    LITERAL = re.compile(r"glue\(\s*([\"'])([^\"'{}]+)\1")
    F_STRING = re.compile(r"glue\(\s*f([\"'])(.*?)\1")
    VARIABLE = re.compile(r"glue\(\s*[A-Za-z_]\w*\s*,")
    STRING = re.compile(r"([\"'])([\w.-]+)\1")

    def __init__(self, cells) -> None:
        self.cells = []
        for i, cell in enumerate(cells):
            if cell.cell_type != "code":
                continue
            literals = {m[2] for m in self.LITERAL.finditer(cell.source)}
            patterns = [
                re.compile(".+".join(re.escape(part) for part in re.split(r"\{[^{}]*\}", m[2])))
                for m in self.F_STRING.finditer(cell.source)
            ]
            strings = {m[2] for m in self.STRING.finditer(cell.source)} if self.VARIABLE.search(cell.source) else set()
            if literals or patterns or strings:
                self.cells.append((i, literals, patterns, strings))

    def get(self, name: str, default: int = -1) -> int:
        """The index of the last code cell that glues ``name`` (``default`` if none does)."""
        found = default
        for i, literals, patterns, strings in self.cells:
            if name in literals or name in strings or any(p.fullmatch(name) for p in patterns):
                found = i
        return found


def _glue_cells(cells) -> _GlueIndex:
    return _GlueIndex(cells)


def _form_cell(title: str, body: str, cell_id: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(f"{FORM_TITLE}{title}\n{body}".rstrip("\n"))
    cell.metadata = {"cellView": "form"}
    cell.id = cell_id
    return cell


def convert(nb: nbformat.NotebookNode, stem: str, bib: dict, config: dict) -> nbformat.NotebookNode:
    """The Colab copy of one chapter."""
    repo = config["repository"]
    context = {"exercise": 0, "blob": f"{repo['url'].rstrip('/')}/blob/{repo.get('branch', 'main')}"}
    cells = [copy.deepcopy(c) for c in nb.cells]
    glued_in = _glue_cells(cells)
    uses_glue = any(c.cell_type == "markdown" and GLUE.search(c.source) for c in cells)

    # 1. split markdown cells at solution gates, so that every piece is inside or outside one solution
    pieces = []  # (kind, payload, original index): kind is "md", "code", "start" or "end"
    for i, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            pieces.append(("code" if cell.cell_type == "code" else "raw", cell, i))
            continue
        position = 0
        for m in SOLUTION_GATE.finditer(cell.source):
            if cell.source[position : m.start()].strip():
                pieces.append(("md", cell.source[position : m.start()].strip("\n"), i))
            pieces.append((m[1], None, i))
            position = m.end()
        if cell.source[position:].strip():
            pieces.append(("md", cell.source[position:].strip("\n"), i))

    # 2. where each Markdown piece's numbers are shown: after the last cell that glues them
    out: list[tuple[float, int, nbformat.NotebookNode]] = []  # (position, order, cell)
    counter = iter(range(10**6))
    n_id = iter(range(10**6))

    def new_id(prefix: str) -> str:
        return f"{prefix}-{next(n_id):03d}"

    def emit(position: float, cell):
        out.append((position, next(counter), cell))

    inside, solution_text, solution_code, solution_at = False, [], [], 0.0

    def flush_solution(at: float):
        text = "\n\n".join(solution_text)
        bodies = [c.source for c in solution_code] or [""]
        for k, body in enumerate(bodies):
            header = _comment(text) + "\n\n" if (k == 0 and text.strip()) else ""
            title = (SOLUTION_TITLE if solution_code else ANSWER_TITLE) if k == 0 else "Solution, continued"
            emit(at, _form_cell(title, header + body, new_id("solution")))

    for kind, payload, index in pieces:
        if kind == "start":
            inside, solution_text, solution_code, solution_at = True, [], [], float(index)
            continue
        if kind == "end":
            flush_solution(solution_at)
            inside = False
            continue
        if inside:
            if kind == "md":
                solution_text.append(convert_markdown(payload, bib, context))
            elif kind == "code":
                solution_code.append(payload)
            continue
        if kind == "md":
            md = payload
            solution_blocks = []

            def take_solution(m: re.Match, blocks: list = solution_blocks) -> str:  # a ```{solution}: written answer
                if m[2] != "solution":
                    return m[0]
                lines = m[4].split("\n")
                while lines and re.match(r"^:[\w-]+:", lines[0]):
                    lines.pop(0)
                blocks.append(convert_markdown("\n".join(lines), bib, context))
                return ""

            md = FENCE_DIRECTIVE.sub(take_solution, md).strip("\n")
            names = [(m[1], m[2] or "") for m in GLUE.finditer(md)]
            groups: dict[float, list] = {}  # where to show them -> (name, format) pairs
            for name, spec in dict.fromkeys(names):
                glued_at = glued_in.get(name, -1)
                at = glued_at + 0.5 if glued_at > index else index - 0.25  # after the code that computes it
                groups.setdefault(at, []).append((name, spec))
            for at, group in sorted(groups.items()):
                args = ", ".join(f"({name!r}, {spec!r})" for name, spec in group)
                title = "Numbers for the text below" if at < index else "Numbers for the text above"
                emit(at, _form_cell(title, f"show_numbers({args})", new_id("numbers")))
            if md:
                cell = nbformat.v4.new_markdown_cell(convert_markdown(md, bib, context))
                cell.id = new_id("md")
                emit(index, cell)
            for block in solution_blocks:
                emit(index, _form_cell(ANSWER_TITLE, _comment(block), new_id("solution")))
            continue
        cell = copy.deepcopy(payload)
        tags = cell.metadata.get("tags", [])
        cell.metadata = {}
        if kind == "code":
            cell.outputs, cell.execution_count = [], None
            if sync_notebooks.TAG in tags:
                cell.source = f"{FORM_TITLE}Install gi_tutorial (Colab only; keeps Colab's torch)\n{cell.source}"
                cell.metadata = {"cellView": "form"}
            elif "hide-cell" in tags or "hide-input" in tags:  # set-up, tables, figures and verdict sentences
                title = "Setup" if "hide-cell" in tags else "Hidden in the book"
                cell.source = f"{FORM_TITLE}{title} (double-click to show the code)\n{cell.source}"
                cell.metadata = {"cellView": "form"}
        cell.id = new_id(kind)
        emit(index, cell)
        if kind == "code" and sync_notebooks.TAG in tags:
            note = nbformat.v4.new_markdown_cell(
                f"[![Open In Colab]({COLAB_BADGE})]({sync_notebooks.colab_url(stem)})\n\n"
                f"*This is the Colab copy of a chapter of the book "
                f"[{config.get('title', 'gi-tutorial')}]({repo['url']}), generated from `book/{stem}.ipynb` by "
                "`tools/colab_notebooks.py` (edit the book's notebook, not this file). Run the cells in order. "
                "Where the book shows a computed number inside the text, this copy shows **[its name]**, "
                "and the small cell after the code that computes it displays the value.*"
            )
            note.id = new_id("md")
            emit(index + 0.1, note)
            if uses_glue:
                emit(
                    index + 0.2,
                    _form_cell(
                        GLUE_RECORDER.split("\n", 1)[0][len(FORM_TITLE) :],
                        GLUE_RECORDER.split("\n", 1)[1],
                        new_id("glue"),
                    ),
                )
    if inside:
        raise ValueError(f"{stem}: a solution is never ended")

    result = nbformat.v4.new_notebook()
    result.metadata = {
        "kernelspec": dict(nb.metadata.get("kernelspec", {})),
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    result.cells = [cell for _, _, cell in sorted(out, key=lambda t: (t[0], t[1]))]
    # drop the book's own badge cell (its image path is relative to book/): the note above replaces it
    result.cells = [
        c for c in result.cells if not (c.cell_type == "markdown" and sync_notebooks.BADGE_IMAGE in c.source)
    ]
    for cell in result.cells:
        if cell.cell_type == "markdown" and leftover_myst(cell.source):
            raise ValueError(f"{stem}: MyST left in the Colab copy: {leftover_myst(cell.source)}")
    nbformat.validate(result)
    return result


def render(path: Path, bib: dict | None = None, config: dict | None = None) -> str:
    """The Colab copy of ``path`` as the exact text written to ``colab/``."""
    bib = read_bib() if bib is None else bib
    config = yaml.safe_load((ROOT / "_config.yml").read_text()) if config is None else config
    nb = convert(nbformat.read(path, as_version=4), path.stem, bib, config)
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed copy is out of date")
    parser.add_argument("--out", default=str(OUT), help="output folder (default: colab/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    bib, config = read_bib(), yaml.safe_load((ROOT / "_config.yml").read_text())
    stale = []
    chapters = sync_notebooks.notebooks()
    for path in chapters:
        try:
            text = render(path, bib, config)
        except (KeyError, ValueError) as err:
            print(f"{path.name}: cannot write its Colab copy: {err}", file=sys.stderr)
            return 1
        target = out / path.name
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.name)
        if not args.check:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    extra = (
        sorted(p.name for p in out.glob("*.ipynb") if p.name not in {c.name for c in chapters}) if out.exists() else []
    )
    if args.check:
        if stale or extra:
            print("Colab copies out of date (run python tools/colab_notebooks.py):", ", ".join(stale + extra))
            return 1
        return 0
    for name in extra:
        (out / name).unlink()
    if stale or extra:
        print("written:", ", ".join(stale) or "-", "| removed:", ", ".join(extra) or "-")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
