"""Execute notebooks in a fresh kernel and report every error, cell by cell.

The tests use it to run the chapters as a fresh machine would (quick mode, Debian's data
package and the data folder hidden), and to run the student copies, where an unanswered
exercise may raise ``NotImplementedError`` and nothing else. Instructors can use it to run
a folder of submissions:

    GI_TUTORIAL_QUICK=1 python tools/run_notebooks.py student/*.ipynb --allow NotImplementedError
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat


@dataclass
class Run:
    """One executed notebook: the notebook with outputs, the errors (cell index, name, message), the time."""

    notebook: nbformat.NotebookNode
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    seconds: float = 0.0


def execute(path: Path, env: dict[str, str] | None = None, timeout: int = 600, cwd: Path | None = None) -> Run:
    """Run every cell (continuing after errors) in a python3 kernel started with ``env`` added."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    kernel_env = dict(os.environ, **(env or {}))
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    start = time.perf_counter()
    client.execute(env=kernel_env)
    run = Run(nb, seconds=time.perf_counter() - start)
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                run.errors.append((index, output.get("ename", ""), output.get("evalue", "")))
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--allow", action="append", default=[], help="an error name that is not a failure")
    args = parser.parse_args(argv)
    failed = False
    for path in args.notebooks:
        run = execute(path)
        bad = [e for e in run.errors if e[1] not in args.allow]
        failed |= bool(bad)
        print(f"{path}: {run.seconds:.0f} s, {len(run.errors)} error(s), {len(bad)} not allowed")
        for index, name, message in run.errors:
            print(f"  cell {index}: {name}: {message[:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
