"""Write student copies of the chapters: the same notebooks without the exercise solutions.

A solution is everything between a ``{solution-start}`` and a ``{solution-end}`` directive
(see CONTRIBUTING.md), or a ``{solution}`` directive in a Markdown cell. In the student
copy a gated solution's cells are replaced by one *answer cell*: the solution's imports and
a stub of each function it defines, with the same signature and docstring, whose body
raises ``NotImplementedError``. The checker cell that follows the solution
(``exercises.check_...(answer)``, outside the solution) stays, so the student runs it
after writing the answer; until then it raises ``NotImplementedError`` and nothing else.
A ``{solution}`` directive (a written answer) is removed. Cells tagged ``instructor`` are
removed, outputs are cleared.

Instructor notes for the open exercises (those without a checker) are in
``instructor/notes.md``, which the student copies do not include.

    python tools/student_notebooks.py [--out student]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"```\{solution-(start|end)\}.*?```", re.DOTALL)
WRITTEN_SOLUTION = re.compile(r"^```\{solution\}.*?^```[ \t]*$\n?", re.DOTALL | re.MULTILINE)
EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n:label: (\S+)\n(.*?)\n```", re.DOTALL)
ANSWER_TAG = "answer"
INSTRUCTOR_TAG = "instructor"


def answer_stub(codes: list[str], label: str | None) -> str:
    """The answer cell for a solution made of these code cells: imports, and each function as a stub."""
    which = f" (exercise {label})" if label else ""
    lines = [
        f"# Your answer{which}: replace each `raise NotImplementedError` with your code,",
        "# then run the checker cell below.",
    ]
    defined = False
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                lines.append(ast.get_source_segment(code, node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defined = True
                lines += ["", ""] if len(lines) > 2 else [""]
                lines.append(f"def {node.name}({ast.unparse(node.args)}):")
                doc = ast.get_docstring(node)
                if doc:
                    lines.append(f'    """{doc}"""')
                lines.append(f'    raise NotImplementedError("write {node.name}")')
    if not defined:
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _split_markdown(source: str):
    """Pieces of a Markdown cell: ("md", text) and ("start"/"end", label) in order."""
    position = 0
    for match in DIRECTIVE.finditer(source):
        yield "md", source[position : match.start()]
        label = re.search(r"\{solution-start\}\s*(\S+)", match[0])
        yield match[1], label[1] if label else None
        position = match.end()
    yield "md", source[position:]


def strip_solutions(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, int]:
    """The notebook without solutions, and how many solutions were removed.

    Raises:
        ValueError: a solution that is started but never ended (or ended but not started).
    """
    cells, inside, removed = [], False, 0
    label, solution_code = None, []
    pending_md = []

    def flush_md():
        text = "".join(pending_md)
        pending_md.clear()
        text, n = WRITTEN_SOLUTION.subn("", text)
        nonlocal removed
        removed += n
        if text.strip():
            cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))

    for cell in nb.cells:
        if INSTRUCTOR_TAG in cell.metadata.get("tags", []):
            continue
        if cell.cell_type != "markdown":
            if inside:
                if cell.cell_type == "code":
                    solution_code.append(cell.source)
                continue
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            cells.append(cell)
            continue
        for kind, payload in _split_markdown(cell.source):
            if kind == "md":
                if not inside:
                    pending_md.append(payload)
            elif kind == "start":
                if inside:
                    raise ValueError("a solution starts inside another solution")
                flush_md()
                inside, label, solution_code = True, payload, []
                removed += 1
            else:
                if not inside:
                    raise ValueError("a solution ends that was never started")
                inside = False
                stub = nbformat.v4.new_code_cell(answer_stub(solution_code, label))
                stub.metadata["tags"] = [ANSWER_TAG]
                cells.append(stub)
        if not inside:
            flush_md()
    if inside:
        raise ValueError("a solution is never ended")
    flush_md()
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    out.cells = cells
    return out, removed


def exercises(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """label -> {"solution": bool, "checker": str | None} for every exercise of a chapter."""
    found = {}
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for match in EXERCISE.finditer(text):
        checker = re.search(r"exercises\.(check_\w+)", match[2])
        found[match[1]] = {
            "checker": checker[1] if checker else None,
            "solution": bool(re.search(r"\{solution(-start)?\}\s*" + re.escape(match[1]) + r"\b", text)),
        }
    return found


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
