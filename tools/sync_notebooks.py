"""Write every chapter's first cell (the Colab install cell) from _config.yml, or check it.

The repository URL lives in one place, ``_config.yml`` (``repository.url``). Each
notebook in ``book/`` starts with a cell that installs ``gi_tutorial`` from there, in
Colab only, without reinstalling torch. Run this after changing the URL or adding a
chapter; ``--check`` exits 1 when a notebook is out of date (the tests call it).

    python tools/sync_notebooks.py [--check]
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "colab-install"

TEMPLATE = '''# Colab only: install gi_tutorial (Colab's own torch is kept, never reinstalled).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "gi-tutorial[offline] @ git+{url}@{branch}"], check=True)'''


def install_cell_source(config_path: Path = ROOT / "_config.yml") -> str:
    repository = yaml.safe_load(config_path.read_text())["repository"]
    return TEMPLATE.format(url=repository["url"], branch=repository.get("branch", "main"))


def notebooks() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def sync(path: Path, source: str, check: bool) -> bool:
    """Make the notebook's first cell the install cell; return True if it was already right."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0] if nb.cells else None
    if first is not None and TAG in first.metadata.get("tags", []):
        if first.source == source:
            return True
        first.source = source
    else:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": [TAG, "remove-cell"]}))
    if not check:
        nbformat.write(nb, path)
    return False


def main(argv: list[str]) -> int:
    check = "--check" in argv
    source = install_cell_source()
    stale = [p.name for p in notebooks() if not sync(p, source, check)]
    if stale and check:
        print("out of date (run python tools/sync_notebooks.py):", ", ".join(stale))
        return 1
    if stale:
        print("updated:", ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
