"""Write student copies of the chapters: the same notebooks without the exercise solutions.

A solution is everything between a ``{solution-start}`` and a ``{solution-end}`` directive
(see CONTRIBUTING.md); in the student copy the solution's cells are replaced by one empty
code cell for the student's answer, and outputs are cleared.

    python tools/student_notebooks.py [--out student]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"```\{solution-(start|end)\}.*?```", re.DOTALL)


def strip_solutions(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """The notebook without solution cells, and how many solutions were removed.

    Raises:
        ValueError: a solution that is started but never ended (or ended but not started).
    """
    cells, inside, removed = [], False, 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            if not inside:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
                cells.append(cell)
            continue
        kept, position = [], 0
        for match in DIRECTIVE.finditer(cell.source):
            if not inside:
                kept.append(cell.source[position:match.start()])
            if match[1] == "start":
                if inside:
                    raise ValueError("a solution starts inside another solution")
                inside = True
                removed += 1
                kept.append("\x00")  # where the student's answer cell goes
            else:
                if not inside:
                    raise ValueError("a solution ends that was never started")
                inside = False
            position = match.end()
        if not inside:
            kept.append(cell.source[position:])
        for k, part in enumerate("".join(kept).split("\x00")):
            if k:
                cells.append(nbformat.v4.new_code_cell("# Your answer here\n"))
            if part.strip():
                cells.append(nbformat.v4.new_markdown_cell(part.strip("\n")))
    if inside:
        raise ValueError("a solution is never ended")
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    out.cells = cells
    return out, removed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "student"), help="output folder (default: student/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        nb, removed = strip_solutions(nbformat.read(path, as_version=4))
        nbformat.write(nb, out / path.name)
        print(f"{path.name}: {removed} solution(s) removed -> {out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
