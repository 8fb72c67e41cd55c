"""Colab: the committed Colab copies are current, plain Markdown, readable, and run; badges and install cell.

A Colab copy runs the chapter's own code cells, in order, plus a cell that records the glued numbers
and small cells that show them. So it is not executed again here: the session's one execution of the
chapters (tests/conftest.py, ``executed_book``) stands for it, and the tests check that the copy's code
is the chapter's, that every number it shows is glued by a cell that runs before the cell showing it,
and that the recording cell shows the values.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

import colab_notebooks
import sync_notebooks
from gi_tutorial import viz

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")


def _tomllib():
    """tomllib (Python 3.11+) or its backport tomli, which the test extra installs on 3.9 and 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib


def test_colab_copies_are_current():
    """Regenerates every copy and compares: run `make notebooks` after editing a chapter."""
    assert colab_notebooks.main(["--check"]) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_copy_is_plain_markdown(path):
    copy = nbformat.read(ROOT / "colab" / path.name, as_version=4)
    nbformat.validate(copy)
    for cell in copy.cells:
        if cell.cell_type == "markdown":
            assert not colab_notebooks.leftover_myst(cell.source), (
                path.name,
                colab_notebooks.leftover_myst(cell.source),
            )
            assert not re.search(r"\{[a-z][\w:-]*\}`", cell.source), f"a MyST role left in {path.name}"
            assert not re.search(r"^\s*(```|~~~)\{", cell.source, flags=re.MULTILINE), (
                f"a directive left in {path.name}"
            )
            assert not re.search(r"^\s*:::", cell.source, flags=re.MULTILINE), f"a colon fence left in {path.name}"
        else:
            assert not cell.get("outputs"), f"{path.name}: the Colab copy has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_copy_shows_every_glued_number_and_hides_solutions(path):
    book = nbformat.read(path, as_version=4)
    copy = nbformat.read(ROOT / "colab" / path.name, as_version=4)
    glued = set(
        re.findall(r"\{glue(?::\w+)?\}`([^`:]+)", "\n".join(c.source for c in book.cells if c.cell_type == "markdown"))
    )
    markdown = "\n".join(c.source for c in copy.cells if c.cell_type == "markdown")
    shown = "\n".join(c.source for c in copy.cells if c.cell_type == "code" and "show_numbers(" in c.source)
    for name in glued:
        assert f"**[{name}]**" in markdown and repr(name) in shown, f"{path.name}: {name} is not shown"
    solutions = [c for c in copy.cells if c.cell_type == "code" and colab_notebooks.SOLUTION_PREFIX in c.source]
    gated = sum(
        c.source.count("{solution-start}") + c.source.count("```{solution}")
        for c in book.cells
        if c.cell_type == "markdown"
    )
    assert len(solutions) >= gated
    for cell in solutions:
        assert cell.source.startswith("#@title ") and cell.metadata.get("cellView") == "form"
    exercises = sum(c.source.count("```{exercise}") for c in book.cells if c.cell_type == "markdown")
    assert len(re.findall(r"^### Exercise \d+", markdown, flags=re.MULTILINE)) == exercises


def test_citations_read_author_year():
    bib = colab_notebooks.read_bib()
    assert colab_notebooks.format_citation("p", "zhu2019dlg", bib) == "(Zhu et al., 2019)"
    assert colab_notebooks.format_citation("t", "zhu2019dlg", bib) == "Zhu et al. (2019)"
    assert (
        colab_notebooks.format_citation("p", "zhu2019dlg,jeon2021gias", bib) == "(Zhu et al., 2019; Jeon et al., 2021)"
    )
    with pytest.raises(KeyError):
        colab_notebooks.format_citation("p", "nobody1900", bib)
    copy = (ROOT / "colab" / "ch00_federated_learning.ipynb").read_text()
    assert "(Zhu et al., 2019)" in copy


def test_converter_handles_the_myst_it_may_meet():
    bib = colab_notebooks.read_bib()
    context = {"exercise": 0, "blob": f"{REPO_URL}/blob/main"}
    text = colab_notebooks.convert_markdown(
        "(sec-x)=\n## A\n\n```{note}\nSee {ref}`the table <sec-x>` and {cite:t}`zhu2019dlg`.\n```\n\n"
        ":::{exercise} Try\n:label: e1\n\nDo {glue:text}`n:.1f` things.\n:::\n\n[page](notation.md)",
        bib,
        context,
    )
    assert not colab_notebooks.leftover_myst(text), text
    assert "### Exercise 1: Try" in text and "**[n]**" in text and "Zhu et al. (2019)" in text
    assert f"]({REPO_URL}/blob/main/book/notation.md)" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_open_in_colab_badge_at_the_top_of_every_chapter(path):
    url = (
        f"https://colab.research.google.com/github/{REPO_URL.split('github.com/')[1]}/blob/"
        f"{CONFIG['repository'].get('branch', 'main')}/colab/{path.name}"
    )
    book = nbformat.read(path, as_version=4)
    assert book.cells[1].cell_type == "markdown" and f"]({url})" in book.cells[1].source
    assert (ROOT / "book" / sync_notebooks.BADGE_IMAGE).exists()
    copy = nbformat.read(ROOT / "colab" / path.name, as_version=4)
    assert f"({colab_notebooks.COLAB_BADGE})]({url})" in copy.cells[1].source
    assert sync_notebooks.main(["--check"]) == 0


def test_install_cell_is_idempotent_and_never_reinstalls_torch():
    source = sync_notebooks.install_cell_source()
    assert '"google.colab" in sys.modules' in source
    command = re.search(r"\[sys\.executable, (.*?)\]", source, flags=re.DOTALL)[1]
    assert "--upgrade" not in command and "-U" not in command.split(",") and "--force-reinstall" not in command
    assert "torch" not in command.replace("gi-tutorial", "")


def _requirement(text: str, name: str) -> str:
    return next(r.replace(" ", "") for r in text if re.match(rf"{name}\b", r.replace(" ", "")))


def test_ipywidgets_lower_bound_is_what_colab_has():
    tomllib = _tomllib()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _requirement(project["dependencies"], "ipywidgets") == "ipywidgets>=7.6"
    assert _requirement(pip, "ipywidgets") == "ipywidgets>=7.6"


SHOW = re.compile(r"show_numbers\((.*)\)\s*$", re.DOTALL)


def _is_added(cell) -> bool:
    """A cell the Colab copy adds to the chapter's code: the number recorder, a number cell, a written answer."""
    return (
        "def show_numbers" in cell.source
        or bool(SHOW.search(cell.source.split("\n", 1)[-1]))
        or cell.source.startswith(colab_notebooks.FORM_TITLE + colab_notebooks.ANSWER_TITLE)
    )


def _chapter_code_in_copy(book, copy) -> list[tuple[int, int]]:
    """``(index in the copy, index among the chapter's code cells)`` for each of the chapter's code cells."""
    book_code = [c.source for c in book.cells if c.cell_type == "code"]
    copy_code = [(i, c) for i, c in enumerate(copy.cells) if c.cell_type == "code" and not _is_added(c)]
    assert len(copy_code) == len(book_code), "the Colab copy does not hold the chapter's code cells"
    pairs = []
    for k, ((i, cell), source) in enumerate(zip(copy_code, book_code)):
        assert cell.source.endswith(source), f"code cell {k} of the chapter differs in its Colab copy"
        prefix = cell.source[: len(cell.source) - len(source)]
        # all the copy may add: a form title, and (for a solution) its explanation as comments
        assert all(not line.strip() or line.startswith("#") for line in prefix.splitlines()), prefix
        pairs.append((i, k))
    return pairs


def _glued_by_cell(executed) -> dict[str, int]:
    """name -> index (among code cells) of the cell whose execution glued it, from the executed chapter."""
    where = {}
    code = [c for c in executed.cells if c.cell_type == "code"]
    for k, cell in enumerate(code):
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                where[name] = k
    return where


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_copy_shows_numbers_its_code_computed(path, executed_book):
    """Every **[name]** the copy shows is glued, in the session's execution, by a cell that runs before it."""
    from jupyter_cache import get_cache

    outcome = executed_book["chapters"][path.name]
    if not outcome["ok"]:
        pytest.skip(f"{path.name} did not run (see test_fresh_machine.py)")
    cache = get_cache(executed_book["cache"])
    executed = cache.get_cache_bundle(cache.get_cached_project_nb(outcome["uri"]).pk).nb
    book = nbformat.read(path, as_version=4)
    copy = nbformat.read(ROOT / "colab" / path.name, as_version=4)
    position = {k: i for i, k in _chapter_code_in_copy(book, copy)}  # chapter code cell -> place in the copy
    glued = _glued_by_cell(executed)
    shown = 0
    for i, cell in enumerate(copy.cells):
        if cell.cell_type != "code" or "def show_numbers" in cell.source or not SHOW.search(cell.source):
            continue
        for name, _ in ast.literal_eval("[" + SHOW.search(cell.source)[1] + "]"):  # (name, format) pairs
            shown += 1
            assert name in glued, f"{path.name}: the copy shows [{name}], which the chapter never glued"
            assert position[glued[name]] < i, (
                f"{path.name}: [{name}] is shown (cell {i}) before the cell that computes it runs "
                f"(cell {position[glued[name]]}): Colab would print 'not computed yet'"
            )
    book_names = set(
        re.findall(r"\{glue(?::\w+)?\}`([^`:]+)", "\n".join(c.source for c in book.cells if c.cell_type == "markdown"))
    )
    assert shown >= len(book_names)


def test_chapters_glue_only_through_viz():
    """The Colab copy records numbers by replacing ``viz.glue``: no chapter or module may glue around it."""
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "myst_nb" not in code, f"{path.name} calls myst-nb directly"
        assert not re.search(r"from\s+gi_tutorial\.viz\s+import[^\n]*\bglue\b", code), path.name
    for module in (ROOT / "gi_tutorial").glob("*.py"):
        text = module.read_text()
        if module.name != "viz.py":
            assert "myst_nb" not in text and not re.search(r"from\s+\.?\w*\.?viz\s+import[^\n]*\bglue\b", text), (
                f"{module.name} glues around viz.glue"
            )


def test_number_recorder_shows_glued_values(monkeypatch):
    """The copy's recording cell: a glued value is shown formatted, a missing one says so."""
    monkeypatch.setattr(viz, "glue", viz.glue)  # restored after the test, with _book_glue below
    monkeypatch.setattr(viz, "_book_glue", lambda name, value, display=False, markdown=False: None, raising=False)
    namespace: dict = {}
    exec(colab_notebooks.GLUE_RECORDER, namespace)
    shown = []
    namespace["display"] = shown.append
    viz.glue("psnr", 23.456)
    viz.Clock().glue("runtime")  # the library's own glue calls are recorded too
    viz.glue("command", "`python x.py --a 1`", markdown=True)  # pasted with {glue:md} in the book: its text here
    namespace["show_numbers"](("psnr", ".1f"), ("runtime", ""), ("command", ""), ("never", ".1f"))
    text = shown[-1].data
    assert "**[psnr]** = 23.5" in text and "**[runtime]** = " in text
    assert "**[command]** = `python x.py --a 1`" in text
    assert "**[never]**: not computed yet" in text
