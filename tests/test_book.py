"""The book as a whole: notebooks in sync and clean, packaging consistent, the build passes with -W."""
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

import student_notebooks  # noqa: E402
import sync_notebooks  # noqa: E402

NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


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
    expected = sum(c.source.count("{solution-start}") for c in nb.cells if c.cell_type == "markdown")
    assert expected >= 1, f"{path.name} has no exercise solution"
    student, removed = student_notebooks.strip_solutions(nb)
    assert removed == expected
    text = "\n".join(c.source for c in student.cells)
    assert "{solution-start}" not in text and "{solution-end}" not in text
    assert "{exercise}" in text
    student_code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "exercises.check_" not in student_code, "a solution's code leaked into the student copy"


def test_strip_solutions_rejects_unterminated_solution():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("```{solution-start} x\n```\ntext")]
    with pytest.raises(ValueError, match="never ended"):
        student_notebooks.strip_solutions(nb)


def _requirements_of_pyproject() -> set[str]:
    tomllib = pytest.importorskip("tomllib")

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


@pytest.mark.book
def test_book_builds_without_warnings(tmp_path):
    """The whole book, every chapter executed (quick mode, set by conftest), warnings as errors."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(tmp_path), "-W",
         "--keep-going"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    for nb in NOTEBOOKS:
        page = (html / "book" / f"{nb.stem}.html").read_text()
        assert "{glue" not in page, f"an unresolved glue reference in {nb.stem}"
        assert "<table" in page, f"no rendered table in {nb.stem}"
