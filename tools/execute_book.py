"""Execute the book's chapters in parallel into Jupyter Book's execution cache, then (optionally) build the book.

``jupyter-book build`` executes notebooks one after another. The chapters are independent,
and each runs on one torch thread, so on a machine with several cores they can run side
by side. This script adds every chapter of ``_toc.yml`` to the jupyter-cache project that
``jupyter-book build`` reads (``<build dir>/.jupyter_cache``) and runs the stale ones over a
pool of processes (one per core by default; the slowest chapters start first); the build
that follows finds every chapter cached and only renders. A chapter that fails here is
reported with its traceback, and the build then runs it again and shows the error in context.

``make book`` runs it at full settings into ``_build``. The tests (``make test``) run it once
per session, in the background (see ``tests/conftest.py``)::

    python tools/execute_book.py --quick --fresh-machine --build --build-dir DIR/_build --summary DIR

``--quick`` sets ``GI_TUTORIAL_QUICK=1``; ``--fresh-machine`` hides Debian's data package and
any downloaded data (``GI_TUTORIAL_DEBIAN_DIR`` and ``GI_TUTORIAL_DATA`` point at empty
folders), as on a clean clone without root; ``--build`` then runs ``jupyter-book build -W
--keep-going`` from the cache; ``--summary DIR`` writes ``executed.json`` (each chapter: ok,
seconds, traceback) once the chapters have run and ``built.json`` (return code, log, which
chapters the build took from the cache) once the build is done, for the tests to read.
Every run also writes ``<build dir>/execution_times.json`` (each chapter's seconds, the number
of workers, the commit), from which ``benchmarks/run.py --chapters --from-book`` writes the
README's table of chapter times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Scheduling hint only: in a pool of workers, the longest chapters should start first, or one of them
# starting last keeps a core busy alone at the end. Quick-mode order measured on our machines; chapters not
# named here start after these, in the order of _toc.yml.
LONGEST_FIRST = ("ch07", "ch02", "ch06", "ch04", "ch03", "ch05", "ch00", "ch01")


def chapters() -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def schedule(notebooks: list[Path]) -> list[Path]:
    """The notebooks in the order they should start: :data:`LONGEST_FIRST`, then the rest in their own order."""

    def rank(nb: Path) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if nb.stem.startswith(prefix)), len(LONGEST_FIRST))

    return sorted(notebooks, key=rank)  # sorted() is stable: ties keep the toc order


def strip_ansi(text: str) -> str:
    """A traceback as plain text (IPython colours its tracebacks)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def fresh_machine_env(folder: Path) -> dict[str, str]:
    """The data settings of a clean clone without root: Debian's package and the data folder hidden (empty folders)."""
    debian, data = folder / "no-debian-package", folder / "empty-data"
    debian.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    return {"GI_TUTORIAL_DEBIAN_DIR": str(debian), "GI_TUTORIAL_DATA": str(data)}


TIMES = "execution_times.json"  # in the build folder: what `benchmarks/run.py --chapters --from-book` reads


def write_times(path: Path, outcome: dict[str, dict], args: argparse.Namespace, seconds: float) -> None:
    """Each chapter's execution time in this run (None where it failed or came from the cache), with the setting."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    _write_json(
        path,
        {
            "chapters": {name: o["seconds"] if o["executed_now"] and o["ok"] else None for name, o in outcome.items()},
            "seconds": seconds,
            "workers": args.workers,
            "cores": os.cpu_count(),
            "quick": args.quick,
            "fresh_machine": args.fresh_machine,
            "commit": commit or "unknown",
            "date": time.strftime("%Y-%m-%d"),
        },
    )


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)  # atomic: a reader never sees half a file


def execute(build_dir: Path, timeout: int, workers: int, only: list[str] | None = None) -> dict[str, dict]:
    """Execute the stale chapters into ``build_dir/.jupyter_cache``; return each chapter's outcome by file name.

    ``only``: run just the chapters whose file name contains one of these strings (the others are reported
    as they stand in the cache).
    """
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor
    from jupyter_cache.executors.basic import ExecutionWorkerLocalMProc, ProcessData

    cache = get_cache(str(build_dir / ".jupyter_cache"))
    notebooks = chapters()
    for nb in notebooks:
        cache.add_nb_to_project(str(nb))
    # the stale chapters (no cached execution of their current code), their old tracebacks cleared
    executor = load_executor("local-parallel", cache=cache, logger=logging.getLogger("execute_book"))
    records = {r.uri: r for r in executor.get_records(filter_uris=[str(nb) for nb in notebooks], clear_tracebacks=True)}
    jobs = [
        ProcessData(records[str(nb)].pk, str(nb), cache, timeout, False)
        for nb in schedule(notebooks)
        if str(nb) in records and (not only or any(o in nb.name for o in only))
    ]
    stale = {job.uri for job in jobs}
    start = time.perf_counter()
    if jobs:
        # executor.map submits in order: with one job per chapter, the order above is the start order
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            list(pool.map(ExecutionWorkerLocalMProc(), jobs))
    outcome = {}
    for nb in notebooks:
        record = cache.get_project_record(str(nb))
        cached = cache.get_cached_project_nb(str(nb))
        outcome[nb.name] = {
            "uri": str(nb),
            "ok": cached is not None,
            "executed_now": str(nb) in stale,
            "seconds": cached.data.get("execution_seconds") if cached is not None else None,
            "traceback": None if cached is not None else (record.traceback or "not executed (no traceback recorded)"),
        }
    failed = [name for name, o in outcome.items() if o["executed_now"] and not o["ok"]]
    absent = [name for name, o in outcome.items() if not o["executed_now"] and not o["ok"]]
    print(
        f"executed {len(jobs)} chapter(s) in {time.perf_counter() - start:.0f} s on {workers} worker(s); "
        f"failed: {len(failed)} {' '.join(failed)}" + (f"; not run, not cached: {' '.join(absent)}" if absent else ""),
        flush=True,
    )
    for name, o in outcome.items():
        if o["ok"]:
            print(f"  {name:34s} {o['seconds']:7.1f} s{'' if o['executed_now'] else ' (from the cache)'}", flush=True)
        else:
            print(f"  {name:34s} {'failed' if o['executed_now'] else 'not run'}", flush=True)
    return outcome


def build(build_dir: Path, log: Path) -> dict:
    """``jupyter-book build -W --keep-going`` into ``build_dir`` (which must be named ``_build``), output in ``log``."""
    if build_dir.name != "_build":
        raise ValueError(
            f"jupyter-book builds into <path-output>/_build: --build-dir must end in _build, got {build_dir}"
        )
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "jupyter-book"),
                "build",
                str(ROOT),
                "--path-output",
                str(build_dir.parent),
                "-W",
                "--keep-going",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    text = log.read_text(errors="replace")
    return {
        "returncode": done.returncode,
        "log": str(log),
        "html": str(build_dir / "html"),
        "seconds": time.perf_counter() - start,
        "from_cache": text.count("Using cached notebook"),
        "executed_by_build": text.count("Executing notebook using"),
    }


def stop_with(pid: int, poll_s: float = 1.0) -> None:
    """End this process group (the pool, the kernels' parents, the build) as soon as process ``pid`` is gone.

    The tests start this script in the background in its own process group; if the test session is
    interrupted, nothing is left running. Kernels exit by themselves when their parent dies.
    """

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                if os.getpgrp() == os.getpid():  # our own group (started with start_new_session): all of it
                    os.killpg(os.getpgrp(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive, owned by someone else
                continue

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default=str(ROOT / "_build"))
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="chapters run at once (default: cores)"
    )
    parser.add_argument("--quick", action="store_true", help="quick mode (GI_TUTORIAL_QUICK=1): small budgets")
    parser.add_argument(
        "--fresh-machine",
        action="store_true",
        help="hide Debian's data package and the data folder (empty folders under the build dir)",
    )
    parser.add_argument("--build", action="store_true", help="then build the book from the cache (-W --keep-going)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="execute only the chapters whose file name contains NAME (e.g. ch03)",
    )
    parser.add_argument("--summary", default=None, help="a folder for executed.json and built.json (for the tests)")
    parser.add_argument(
        "--stop-with",
        type=int,
        default=None,
        metavar="PID",
        help="stop (the whole process group) when process PID ends (the tests' background run)",
    )
    args = parser.parse_args(argv)
    if args.stop_with is not None:
        stop_with(args.stop_with)
    build_dir = Path(args.build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    timeout = config.get("execute", {}).get("timeout", 30)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # the kernels and the build inherit this environment
    os.environ.setdefault("GI_TUTORIAL_PROGRESS", "0")
    if args.quick:
        os.environ.update(GI_TUTORIAL_QUICK="1", GI_TUTORIAL_THREADS="1")
    if args.fresh_machine:
        os.environ.update(fresh_machine_env(build_dir.parent / "fresh-machine"))
    summary = Path(args.summary) if args.summary else None
    started = time.perf_counter()
    outcome = execute(build_dir, timeout, args.workers, args.only)
    write_times(build_dir / TIMES, outcome, args, time.perf_counter() - started)
    if summary is not None:
        _write_json(
            summary / "executed.json",
            {
                "chapters": outcome,
                "cache": str(build_dir / ".jupyter_cache"),
                "quick": args.quick,
                "fresh_machine": args.fresh_machine,
                "env": {k: v for k, v in os.environ.items() if k.startswith("GI_TUTORIAL_")},
            },
        )
    failed = any(not o["ok"] for o in outcome.values())
    if args.build:
        result = build(build_dir, build_dir.parent / "build.log")
        print(
            f"built the book in {result['seconds']:.0f} s: return code {result['returncode']}, "
            f"{result['from_cache']} chapter(s) from the cache, {result['executed_by_build']} executed by the build",
            flush=True,
        )
        if summary is not None:
            _write_json(summary / "built.json", result)
        failed |= result["returncode"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
