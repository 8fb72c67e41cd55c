"""The classroom: student copies keep every checker after its answer cell, match the chapters, and fail only
where an answer is missing.

A student copy is the chapter with each solution replaced by an answer stub: its other code cells are
the chapter's (checked here cell by cell), and the session runs the chapter once (tests/conftest.py).
So only what differs is run here: each answer stub, then its checker cell, which must raise
NotImplementedError (from the stub) and nothing else. Instructor notes cover every open exercise, and
the student copies omit them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import student_notebooks

ROOT = Path(__file__).resolve().parent.parent

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
GATE = re.compile(r"```\{solution-(start|end)\}.*?```", re.DOTALL)
WRITTEN = re.compile(r"^```\{solution\}.*?^```[ \t]*$\n?", re.DOTALL | re.MULTILINE)
CHECK_CALL = re.compile(r"exercises\.check_\w+\(\s*\w+\s*\)")


def chapter_outside_solutions(nb) -> tuple[list[str], str]:
    """The chapter's code cells outside solutions, and its Markdown outside solutions (read independently)."""
    code, markdown, inside = [], [], False
    for cell in nb.cells:
        if "instructor" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code":
            if not inside:
                code.append(cell.source)
            continue
        if cell.cell_type != "markdown":
            continue
        position = 0
        for gate in GATE.finditer(cell.source):
            if not inside:
                markdown.append(cell.source[position : gate.start()])
            inside = gate[1] == "start"
            position = gate.end()
        if not inside:
            markdown.append(cell.source[position:])
    text = WRITTEN.sub("", "\n".join(markdown))
    return code, re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_matches_the_chapter_outside_solutions(path):
    chapter = nbformat.read(path, as_version=4)
    student, removed = student_notebooks.strip_solutions(nbformat.read(path, as_version=4))
    code, markdown = chapter_outside_solutions(chapter)
    student_code = [
        c.source
        for c in student.cells
        if c.cell_type == "code" and student_notebooks.ANSWER_TAG not in c.metadata.get("tags", [])
    ]
    assert student_code == code, "the student copy's code cells differ from the chapter's outside solutions"
    student_markdown = re.sub(
        r"\s+", " ", "\n".join(c.source for c in student.cells if c.cell_type == "markdown")
    ).strip()
    assert student_markdown == markdown
    answers = [c for c in student.cells if student_notebooks.ANSWER_TAG in c.metadata.get("tags", [])]
    gated = sum(c.source.count("{solution-start}") for c in chapter.cells if c.cell_type == "markdown")
    assert len(answers) == gated
    assert "{solution" not in "\n".join(c.source for c in student.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_checker_sits_in_its_own_cell_after_the_answer_and_is_named_in_the_exercise(path):
    chapter = nbformat.read(path, as_version=4)
    student, _ = student_notebooks.strip_solutions(nbformat.read(path, as_version=4))
    exercises = student_notebooks.exercises(chapter)
    for label, info in exercises.items():
        if info["checker"] is None:
            continue
        call = next(c for c in student.cells if c.cell_type == "code" and f"exercises.{info['checker']}(" in c.source)
        assert CHECK_CALL.fullmatch(call.source.strip().rstrip(";")), (
            f"{label}: the checker cell holds more than the call"
        )
        index = student.cells.index(call)
        before = student.cells[index - 1]
        assert student_notebooks.ANSWER_TAG in before.metadata.get("tags", []), (
            f"{label}: no answer cell before the checker"
        )
        function = re.search(r"\((\w+)\)", call.source)[1]
        assert f"def {function}(" in before.source, f"{label}: the answer cell does not define {function}"
    # every exercise whose solution defines a function has a checker named in its text
    code_solutions = _solutions_with_functions(chapter)
    for label in code_solutions:
        assert exercises[label]["checker"], f"{path.name}: exercise {label} has code but its text names no checker"


def _solutions_with_functions(nb) -> set[str]:
    labels, inside = set(), None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for gate in re.finditer(r"```\{solution-(start|end)\}\s*(\S*)", cell.source):
                inside = gate[2] if gate[1] == "start" else None
        elif cell.cell_type == "code" and inside and re.search(r"^def \w+\(", cell.source, re.MULTILINE):
            labels.add(inside)
    return labels


def test_open_exercises_have_instructor_notes_that_students_do_not_get(tmp_path):
    notes = (ROOT / "instructor" / "notes.md").read_text()
    sections = set(re.findall(r"^## (\S+)", notes, flags=re.MULTILINE))
    missing = []
    for path in NOTEBOOKS:
        for label, info in student_notebooks.exercises(nbformat.read(path, as_version=4)).items():
            if info["checker"] is None and not info["solution"] and label not in sections:
                missing.append(f"{path.stem}: {label}")
    assert not missing, "open exercises without instructor notes in instructor/notes.md: " + ", ".join(missing)
    assert student_notebooks.main(["--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [p.name for p in NOTEBOOKS]
    text = "\n".join(p.read_text() for p in tmp_path.iterdir())
    assert "Instructor notes" not in text and '"instructor"' not in text


def test_instructor_tagged_cells_are_removed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_markdown_cell("expected: blobs", metadata={"tags": ["instructor"]}),
    ]
    student, _ = student_notebooks.strip_solutions(nb)
    assert [c.source for c in student.cells] == ["text"]


def test_answer_stub_keeps_signature_docstring_and_imports():
    stub = student_notebooks.answer_stub(
        [
            'import copy\n\n\ndef f(a, b=2, *args, c, **kw):\n    """Doc."""\n'
            "    return copy.copy(a)\n\n\nprint(f(1, c=3))"
        ],
        "ch9-x",
    )
    namespace = {}
    exec(stub, namespace)
    assert "import copy" in stub and '"""Doc."""' in stub and "print" not in stub
    with pytest.raises(NotImplementedError):
        namespace["f"](1, c=3)


def _defined_functions(source: str) -> set[str]:
    return {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_copy_fails_only_where_an_answer_is_missing(path):
    """Each answer stub runs, and its checker then raises NotImplementedError, and nothing else.

    Every other cell of the copy is the chapter's own (test above) and runs in the session's execution of
    the chapter; none of them may call an answer's function, which the student copy leaves unwritten.
    """
    student, _ = student_notebooks.strip_solutions(nbformat.read(path, as_version=4))
    namespace: dict = {}
    stubs: set[str] = set()
    checked = 0
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        if student_notebooks.ANSWER_TAG in cell.metadata.get("tags", []):
            exec(compile(cell.source, f"{path.stem}, answer cell {index}", "exec"), namespace)  # imports, stubs
            stubs |= _defined_functions(cell.source)
        elif CHECK_CALL.fullmatch(cell.source.strip().rstrip(";")):
            exec("from gi_tutorial import exercises", namespace)
            with pytest.raises(NotImplementedError):  # not a pass, not a CheckFailed, not another error
                exec(compile(cell.source, f"{path.stem}, checker cell {index}", "exec"), namespace)
            checked += 1
        else:
            used = {
                node.id
                for node in ast.walk(ast.parse(cell.source))
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
            }
            assert not used & stubs, f"{path.name}, cell {index} calls an unanswered exercise: {used & stubs}"
    checkers = sum(
        1 for info in student_notebooks.exercises(nbformat.read(path, as_version=4)).values() if info["checker"]
    )
    assert checked == checkers, f"{path.name}: {checkers} exercises name a checker, {checked} checker cells ran"
