"""`make verify`: every chapter's verdicts, re-checked on victim seeds and images the chapter does not use.

Each chapter with a claim has a check script, ``benchmarks/verify_chN.py``, whose ``main()``
runs the attack battery on held-out seeds and images (see /work notes in each script), prints
each verdict on both scores (PSNR and identification) with mean ± sd and n, and returns 1 when
a verdict of the chapter does not hold there. This runs them all, two at a time (one per
core, one torch thread each; the longest first), prints their output in chapter order, and exits 1 if any check failed.
It is not part of ``make test``: it takes up to about 30 minutes on two cores.

    python benchmarks/verify.py [--jobs 2] [--only ch4 ch5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
# seconds each check took at full settings on one thread (last measured): the longest start first, so that two
# workers finish together
EXPECTED_SECONDS = {"ch5": 600, "ch6": 520, "ch4": 270, "ch3": 300, "ch7": 200, "ch2": 190, "ch1": 120}


def checks(only: list[str] | None) -> list[Path]:
    found = sorted(HERE.glob("verify_ch*.py"))
    if only:
        found = [p for p in found if p.stem.removeprefix("verify_") in only]
    return sorted(found, key=lambda p: -EXPECTED_SECONDS.get(p.stem.removeprefix("verify_"), 0))


def run(path: Path, quick: bool) -> tuple[Path, int, str, float]:
    env = dict(os.environ, GI_TUTORIAL_THREADS="1", GI_TUTORIAL_PROGRESS="0")
    if quick:
        env["GI_TUTORIAL_QUICK"] = "1"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True)
    return path, done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="checks run side by side (one per core)")
    parser.add_argument("--only", nargs="+", metavar="chN", help="run only these chapters' checks")
    parser.add_argument("--quick", action="store_true", help="quick mode: checks that the scripts run, proves nothing")
    args = parser.parse_args(argv)
    scripts = checks(args.only)
    if not scripts:
        print("no check scripts found (benchmarks/verify_ch*.py)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda p: run(p, args.quick), scripts))
    failed = []
    for path, code, output, seconds in sorted(results, key=lambda r: r[0].stem):
        status = "holds" if code == 0 else "DOES NOT HOLD" if code == 1 else f"ERROR (exit code {code})"
        print(f"===== {path.stem}: {status} ({seconds:.0f} s)")
        print(output.rstrip())
        if code != 0:
            failed.append(path.stem)
    print(
        f"\n{len(results) - len(failed)} of {len(results)} chapters' verdicts hold on held-out seeds and images"
        + (f"; not: {', '.join(failed)}" if failed else "")
        + f" ({(time.perf_counter() - start) / 60:.1f} minutes)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
