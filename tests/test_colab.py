"""Colab: the committed Colab copies are current, plain Markdown, readable, and run; badges and install cell."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import colab_notebooks  # noqa: E402
import run_notebooks  # noqa: E402
import sync_notebooks  # noqa: E402

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
            assert not colab_notebooks.leftover_myst(cell.source), (path.name, colab_notebooks.leftover_myst(cell.source))
            assert not re.search(r"\{[a-z][\w:-]*\}`", cell.source), f"a MyST role left in {path.name}"
            assert not re.search(r"^\s*(```|~~~)\{", cell.source, flags=re.MULTILINE), f"a directive left in {path.name}"
            assert not re.search(r"^\s*:::", cell.source, flags=re.MULTILINE), f"a colon fence left in {path.name}"
        else:
            assert not cell.get("outputs"), f"{path.name}: the Colab copy has stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_colab_copy_shows_every_glued_number_and_hides_solutions(path):
    book = nbformat.read(path, as_version=4)
    copy = nbformat.read(ROOT / "colab" / path.name, as_version=4)
    glued = set(re.findall(r"\{glue(?::\w+)?\}`([^`:]+)", "\n".join(c.source for c in book.cells
                                                                    if c.cell_type == "markdown")))
    markdown = "\n".join(c.source for c in copy.cells if c.cell_type == "markdown")
    shown = "\n".join(c.source for c in copy.cells if c.cell_type == "code" and "show_numbers(" in c.source)
    for name in glued:
        assert f"**[{name}]**" in markdown and repr(name) in shown, f"{path.name}: {name} is not shown"
    solutions = [c for c in copy.cells if c.cell_type == "code" and colab_notebooks.SOLUTION_PREFIX in c.source]
    gated = sum(c.source.count("{solution-start}") + c.source.count("```{solution}")
                for c in book.cells if c.cell_type == "markdown")
    assert len(solutions) >= gated
    for cell in solutions:
        assert cell.source.startswith("#@title ") and cell.metadata.get("cellView") == "form"
    exercises = sum(c.source.count("```{exercise}") for c in book.cells if c.cell_type == "markdown")
    assert len(re.findall(r"^### Exercise \d+", markdown, flags=re.MULTILINE)) == exercises


def test_citations_read_author_year():
    bib = colab_notebooks.read_bib()
    assert colab_notebooks.format_citation("p", "zhu2019dlg", bib) == "(Zhu et al., 2019)"
    assert colab_notebooks.format_citation("t", "zhu2019dlg", bib) == "Zhu et al. (2019)"
    assert colab_notebooks.format_citation("p", "zhu2019dlg,jeon2021gias", bib) == "(Zhu et al., 2019; Jeon et al., 2021)"
    with pytest.raises(KeyError):
        colab_notebooks.format_citation("p", "nobody1900", bib)
    copy = (ROOT / "colab" / "ch00_federated_learning.ipynb").read_text()
    assert "(Zhu et al., 2019)" in copy


def test_converter_handles_the_myst_it_may_meet():
    bib = colab_notebooks.read_bib()
    context = {"exercise": 0, "blob": f"{REPO_URL}/blob/main"}
    text = colab_notebooks.convert_markdown(
        "(sec-x)=\n## A\n\n```{note}\nSee {ref}`the table <sec-x>` and {cite:t}`zhu2019dlg`.\n```\n\n"
        ":::{exercise} Try\n:label: e1\n\nDo {glue:text}`n:.1f` things.\n:::\n\n[page](notation.md)", bib, context)
    assert not colab_notebooks.leftover_myst(text), text
    assert "### Exercise 1: Try" in text and "**[n]**" in text and "Zhu et al. (2019)" in text
    assert f"]({REPO_URL}/blob/main/book/notation.md)" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_open_in_colab_badge_at_the_top_of_every_chapter(path):
    url = f"https://colab.research.google.com/github/{REPO_URL.split('github.com/')[1]}/blob/" \
          f"{CONFIG['repository'].get('branch', 'main')}/colab/{path.name}"
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


def test_colab_copy_runs_and_shows_its_numbers(tmp_path):
    """Chapter 0's Colab copy, run outside Colab in quick mode: every number cell shows a value."""
    path = ROOT / "colab" / "ch00_federated_learning.ipynb"
    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    run = run_notebooks.execute(copy, env={"GI_TUTORIAL_QUICK": "1", "GI_TUTORIAL_THREADS": "1",
                                           "GI_TUTORIAL_PROGRESS": "0"}, cwd=ROOT / "book")
    assert not run.errors, run.errors
    number_cells = [c for c in run.notebook.cells if c.cell_type == "code" and "show_numbers(" in c.source
                    and "def show_numbers" not in c.source]
    assert number_cells
    for cell in number_cells:
        text = "".join(o.get("data", {}).get("text/markdown", "") for o in cell.outputs)
        assert "** = " in text and "not computed yet" not in text, cell.source
