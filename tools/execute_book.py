"""Execute the book's chapters in parallel into Jupyter Book's execution cache.

``jupyter-book build`` executes notebooks one after another. The chapters are independent,
and each runs on one torch thread, so on a machine with several cores they can run side
by side. This script adds every chapter of ``_toc.yml`` to the jupyter-cache project that
``jupyter-book build`` reads (``<build dir>/.jupyter_cache``) and runs the stale ones over a
pool of processes, one per core; the build that follows finds every chapter cached and only
renders. A chapter that fails here is reported, and the build then runs it again and shows
the error in context.

    python tools/execute_book.py [--build-dir _build]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml
from jupyter_cache import get_cache
from jupyter_cache.executors import load_executor

ROOT = Path(__file__).resolve().parent.parent


def chapters() -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default=str(ROOT / "_build"))
    args = parser.parse_args(argv)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    timeout = config.get("execute", {}).get("timeout", 30)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = get_cache(str(Path(args.build_dir) / ".jupyter_cache"))
    notebooks = chapters()
    for nb in notebooks:
        cache.add_nb_to_project(str(nb))
    os.environ.setdefault("GI_TUTORIAL_PROGRESS", "0")
    start = time.perf_counter()
    result = load_executor("local-parallel", cache=cache, logger=logging.getLogger("execute_book")).run_and_cache(
        filter_uris=[str(nb) for nb in notebooks], timeout=timeout, allow_errors=False)
    print(f"executed {len(result.succeeded)} chapter(s) in {time.perf_counter() - start:.0f} s on {os.cpu_count()} "
          f"cores; failed: {len(result.excepted) + len(result.errored)}")
    for record in cache.list_project_records(filter_uris=[str(nb) for nb in notebooks]):
        cached = cache.get_cached_project_nb(record.uri)
        if cached is not None:
            print(f"  {Path(record.uri).name:34s} {cached.data.get('execution_seconds', float('nan')):7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
