"""The book as a whole: notebooks in sync and clean, packaging consistent, the build passes with -W,
and the built pages render in a real browser (headless Chromium, when installed) with no network.

The build is the session's one build (tests/conftest.py, ``built_book``): ``jupyter-book build -W``
from the jupyter-cache that the session's single execution of the chapters filled, so that no
chapter runs twice.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

import browser_check
import execute_book
import student_notebooks
import sync_notebooks
import vendor_js

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _tomllib():
    """tomllib (Python 3.11+) or its backport tomli, which the test extra installs on 3.9 and 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib


def test_every_chapter_in_toc_exists_and_every_notebook_is_in_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]} | {c["file"] for c in toc["chapters"]}
    for f in files:
        assert (ROOT / f).with_suffix(".ipynb").exists() or (ROOT / f).with_suffix(".md").exists(), f
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in files, f"{nb.name} is not in _toc.yml"


def test_colab_install_cell_is_in_sync_with_config():
    assert sync_notebooks.main(["--check"]) == 0
    source = sync_notebooks.install_cell_source()
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert url in source and "torch" not in source.split("pip")[-1].split("]")[-1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"
    first = nb.cells[0]
    assert sync_notebooks.TAG in first.metadata.get("tags", [])
    setup = next(c for c in nb.cells[1:] if c.cell_type == "code")
    # its code is folded in the book (hide-input shows the output, hide-cell hides both)
    assert {"hide-input", "hide-cell"} & set(setup.metadata.get("tags", [])), (
        "the first code cell must be the setup cell, its code folded (tag hide-input)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_student_copy_has_no_solutions(path):
    if not path.stem.startswith("ch"):
        pytest.skip(f"{path.name} is not a chapter: it has no exercises")
    nb = nbformat.read(path, as_version=4)
    solution_code = []
    inside = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for gate in re.finditer(r"\{solution-(start|end)\}", cell.source):
                inside = gate[1] == "start"
        elif inside:
            solution_code.append(cell.source)
    gated = sum(c.source.count("{solution-start}") for c in nb.cells if c.cell_type == "markdown")
    written = sum(c.source.count("```{solution}") for c in nb.cells if c.cell_type == "markdown")
    assert gated >= 1, f"{path.name} has no exercise solution"
    student, removed = student_notebooks.strip_solutions(nb)
    assert removed == gated + written
    text = "\n".join(c.source for c in student.cells)
    assert "{solution" not in text
    assert "{exercise}" in text
    for code in solution_code:
        body = [
            line
            for line in code.splitlines()
            if line.startswith("    ")
            and line.strip()
            and not line.strip().startswith(('"""', "raise NotImplementedError"))
            and any(ch.isalnum() for ch in line)  # a closing bracket alone (the formatter's) is no leak
        ]
        for line in body:
            assert line not in text, f"a solution's code leaked into the student copy: {line!r}"


def test_strip_solutions_rejects_unterminated_solution():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("```{solution-start} x\n```\ntext")]
    with pytest.raises(ValueError, match="never ended"):
        student_notebooks.strip_solutions(nb)


def _requirements_of_pyproject() -> set[str]:
    tomllib = _tomllib()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs |= set(extra)
    return {r.replace(" ", "") for r in reqs}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r.replace(" ", "") for r in pip_section if not r.startswith("-e")}
    assert listed == _requirements_of_pyproject()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)\s+#", readme, flags=re.MULTILINE)
    assert commands[:2] == ["make book", "make test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    test = re.search(r"^make test\b", ci, flags=re.MULTILINE)
    lint = re.search(r"^make lint\b", ci, flags=re.MULTILINE)
    assert test and lint and lint.start() < test.start(), "CI runs `make lint`, then `make test`"
    makefile = (ROOT / "Makefile").read_text()
    assert "\nlint: " in makefile, "the Makefile has no lint target"
    target = makefile.split("\nlint: ", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in target and "ruff format --check ." in target


@pytest.mark.book
def test_book_builds_without_warnings(built_book):
    log = Path(built_book["log"]).read_text(errors="replace")
    assert built_book["returncode"] == 0, execute_book.strip_ansi(log[-8000:])
    html = Path(built_book["html"])
    for nb in NOTEBOOKS:
        page = (html / "book" / f"{nb.stem}.html").read_text()
        assert "{glue" not in page, f"an unresolved glue reference in {nb.stem}"
        assert "<table" in page, f"no rendered table in {nb.stem}"
        assert "_static/mathjax/tex-chtml.js" in page, f"{nb.stem} does not load the vendored MathJax"
        assert "cdn.jsdelivr.net" not in page and "cdnjs.cloudflare.com" not in page, f"{nb.stem} loads from a CDN"
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert (html / "_static" / "jupyter-widgets" / "embed-amd.js").exists()
    assert not list(html.rglob("*pytest_cache*")), "a cache folder was built as a page"


@pytest.mark.book
@pytest.mark.skipif(
    browser_check.find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)"
)
def test_built_book_renders_in_a_browser(built_book):
    """Headless Chromium, no network: math typeset, images loaded, widgets rendered, no JS error, on every page.

    The screenshots are `make browser-check`'s, for a reader.
    """
    assert built_book["returncode"] == 0, "the book did not build"
    html = Path(built_book["html"])
    assert browser_check.main([str(html), "--no-screenshots"]) == 0


@pytest.mark.book
def test_the_build_executed_nothing(built_book, executed_book):
    """Every chapter came from the session's execution (jupyter-cache): none ran a second time in the build."""
    executed = [name for name, outcome in executed_book["chapters"].items() if outcome["ok"]]
    assert built_book["from_cache"] == len(executed), built_book
    if len(executed) == len(executed_book["chapters"]):  # a chapter that failed is run again by the build
        assert built_book["executed_by_build"] == 0, built_book


def test_vendored_javascript_matches_its_manifest():
    assert vendor_js.check() == [], "run make vendor"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"sphinx_vendor": "tools"}
    assert not (ROOT / "_static").exists() or not list((ROOT / "_static").rglob("*.js")), (
        "every .js under _static/ is added to every page: vendored files belong in vendor/"
    )


@pytest.mark.skipif(
    browser_check.find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)"
)
def test_browser_check_catches_raw_math_broken_images_and_errors(tmp_path, capsys):
    """The check itself: a page whose math never typesets, with a missing image and a script error, fails."""
    page = tmp_path / "html" / "book" / "broken.html"
    page.parent.mkdir(parents=True)
    page.write_text(
        '<html><head></head><body><p><span class="math">\\(x^2\\)</span></p>'
        '<img src="missing.png"><script>undefinedFunction();</script></body></html>'
    )
    assert (
        browser_check.main([str(tmp_path / "html"), "--screenshots", str(tmp_path / "shots"), "--budget-ms", "3000"])
        == 1
    )
    out = capsys.readouterr().out
    assert "FAIL book/broken.html" in out
    assert "raw LaTeX" in out and "image(s) did not load" in out and "JavaScript errors" in out


def test_license_and_citation_agree_with_the_package():
    """LICENSE is MIT, as pyproject says; CITATION.cff names the package's version, licence and repository."""
    project = _tomllib().loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"} or project["license"] == "MIT"
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "The gi-tutorial authors" in license_text
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"] and citation["license"] == "MIT"
    assert citation["repository-code"] == config["repository"]["url"]
    assert citation["title"].startswith(config["title"])
    assert citation["authors"] == [{"name": "The gi-tutorial authors"}]
    gias = next(r for r in citation["references"] if r["title"] == "Gradient Inversion with Generative Image Prior")
    assert gias["year"] == 2021 and gias["authors"][0]["family-names"] == "Jeon"
