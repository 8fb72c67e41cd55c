"""The book as a whole: notebooks in sync and clean, packaging consistent, the build passes with -W,
and the built pages render in a real browser (headless Chromium, when installed) with no network."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import browser_check  # noqa: E402
import student_notebooks  # noqa: E402
import sync_notebooks  # noqa: E402
import vendor_js  # noqa: E402

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
    assert "hide-cell" in setup.metadata.get("tags", []), "the first code cell must be the hidden setup cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_student_copy_has_no_solutions(path):
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
        body = [line for line in code.splitlines() if line.startswith("    ") and line.strip()
                and not line.strip().startswith(('"""', "raise NotImplementedError"))]
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
    assert re.search(r"^make test\b", ci, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The whole book, every chapter executed (quick mode, set by conftest), warnings as errors."""
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out), "-W",
         "--keep-going"],
        capture_output=True, text=True, cwd=ROOT,
    )
    return result, out / "_build" / "html"


@pytest.mark.book
def test_book_builds_without_warnings(built_book):
    result, html = built_book
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
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
@pytest.mark.skipif(browser_check.find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_built_book_renders_in_a_browser(built_book):
    """Headless Chromium, no network: math typeset, images loaded, widgets rendered, no JS error, on every page."""
    result, html = built_book
    assert result.returncode == 0, "the book did not build"
    shots = html.parent / "screenshots"
    assert browser_check.main([str(html), "--screenshots", str(shots)]) == 0
    assert {p.stem for p in shots.glob("*.png")} >= {nb.stem for nb in NOTEBOOKS}


def test_vendored_javascript_matches_its_manifest():
    assert vendor_js.check() == [], "run make vendor"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"] == {"sphinx_vendor": "tools"}
    assert not (ROOT / "_static").exists() or not list((ROOT / "_static").rglob("*.js")), \
        "every .js under _static/ is added to every page: vendored files belong in vendor/"


@pytest.mark.skipif(browser_check.find_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_check_catches_raw_math_broken_images_and_errors(tmp_path, capsys):
    """The check itself: a page whose math never typesets, with a missing image and a script error, fails."""
    page = tmp_path / "html" / "book" / "broken.html"
    page.parent.mkdir(parents=True)
    page.write_text('<html><head></head><body><p><span class="math">\\(x^2\\)</span></p>'
                    '<img src="missing.png"><script>undefinedFunction();</script></body></html>')
    assert browser_check.main([str(tmp_path / "html"), "--screenshots", str(tmp_path / "shots"),
                               "--budget-ms", "3000"]) == 1
    out = capsys.readouterr().out
    assert "FAIL book/broken.html" in out
    assert "raw LaTeX" in out and "image(s) did not load" in out and "JavaScript errors" in out
