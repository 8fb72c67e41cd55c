"""Write every chapter's first two cells (Colab install cell, "Open in Colab" badge) from _config.yml, or check them.

The repository URL lives in one place, ``_config.yml`` (``repository.url``). Each
notebook in ``book/`` starts with a cell that installs ``gi_tutorial`` from there, in
Colab only, without reinstalling torch (it is idempotent: pip skips what is installed),
then a Markdown cell with an "Open in Colab" badge that points at the chapter's Colab
copy, ``colab/<chapter>.ipynb`` (written by ``tools/colab_notebooks.py``). Run this after
changing the URL or adding a chapter; ``--check`` exits 1 when a notebook is out of date
(the tests call it).

    python tools/sync_notebooks.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
TAG = "colab-install"
BADGE_TAG = "colab-badge"
BADGE_IMAGE = "figures/open-in-colab.svg"  # relative to book/; the Colab copies use Colab's own badge
COLAB = "https://colab.research.google.com/github"

TEMPLATE = """# Colab only: install gi_tutorial (Colab's own torch is kept, never reinstalled).
import sys

if "google.colab" in sys.modules:
    import subprocess

    package = "gi-tutorial[{extras}] @ git+{url}@{branch}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)"""  # as ruff formats it


# the package's extras each chapter installs in Colab (default: the offline data); chapter 7 runs Flower
EXTRAS = {"ch07_flower": "offline,flower"}


def install_cell_source(config_path: Path = ROOT / "_config.yml", stem: str = "") -> str:
    repository = yaml.safe_load(config_path.read_text())["repository"]
    extras = EXTRAS.get(stem, "offline")
    return TEMPLATE.format(url=repository["url"], branch=repository.get("branch", "main"), extras=extras)


def repository(config_path: Path = ROOT / "_config.yml") -> dict:
    return yaml.safe_load(config_path.read_text())["repository"]


def colab_url(stem: str, config_path: Path = ROOT / "_config.yml") -> str:
    """Where Colab opens the chapter's Colab copy (``colab/<stem>.ipynb`` on GitHub)."""
    repo = repository(config_path)
    owner_name = repo["url"].rstrip("/").removesuffix(".git").split("github.com/", 1)[-1]
    return f"{COLAB}/{owner_name}/blob/{repo.get('branch', 'main')}/colab/{stem}.ipynb"


def badge_cell_source(stem: str, image: str = BADGE_IMAGE) -> str:
    return f"[![Open In Colab]({image})]({colab_url(stem)})"


def notebooks() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb"))


def sync(path: Path, source: str, check: bool) -> bool:
    """Make the notebook's first cells the install cell and the badge; return True if they were already right."""
    nb = nbformat.read(path, as_version=4)
    ok = True
    first = nb.cells[0] if nb.cells else None
    if first is not None and TAG in first.metadata.get("tags", []):
        if first.source != source:
            first.source, ok = source, False
    else:
        nb.cells.insert(0, nbformat.v4.new_code_cell(source, metadata={"tags": [TAG, "remove-cell"]}))
        ok = False
    badge = badge_cell_source(path.stem)
    second = nb.cells[1] if len(nb.cells) > 1 else None
    if second is not None and BADGE_TAG in second.metadata.get("tags", []):
        if second.source != badge:
            second.source, ok = badge, False
    else:
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(badge, metadata={"tags": [BADGE_TAG]}))
        ok = False
    if not ok and not check:
        nbformat.write(nb, path)
    return ok


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = [p.name for p in notebooks() if not sync(p, install_cell_source(stem=p.stem), check)]
    if stale and check:
        print("out of date (run python tools/sync_notebooks.py):", ", ".join(stale))
        return 1
    if stale:
        print("updated:", ", ".join(stale))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
