"""The README's table of the peer benchmark, written from `benchmarks/peer.py --json` results, never typed.

One row per batch and group of CIFAR-10 test images, merged over the runs given: a recipe's row
comes from the last run that has it, and the per-step ratio from the last run that measured one
(a run with ``--recipes ""`` re-measures only the ratio). Every PSNR is read against its floor,
the higher of a flat grey image and the mean of the other shipped images (peer.py's floors), and
a time to a level counts from when the run stays at or above it to its final iterate.

    python benchmarks/peer_table.py benchmarks/peer_runs/*.json            # print the Markdown table
    python benchmarks/peer_table.py benchmarks/peer_runs/*.json --readme   # write it into README.md
    python benchmarks/peer_table.py RUN.json ... --store benchmarks/peer_runs  # keep runs, curves dropped

The stored copies keep every figure the table reads (finals, seconds, the times to floor + 3 and
floor + 6 dB, the floors, the ratios, peer.py's arguments) without the PSNR curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- peer-table: begin -->", "<!-- peer-table: end -->"
BREACHING = "breaching invertinggradients"


def load(paths: list[Path]) -> dict[tuple[int, int], dict]:
    """The runs merged by (batch, first image): floors, rows by label, the latest ratio, the commands."""
    cases: dict[tuple[int, int], dict] = {}
    for path in paths:
        try:
            run_record = json.loads(path.read_text())
            batches, first, argv = run_record["batches"], run_record["first_image"], run_record["argv"]
        except (OSError, ValueError, KeyError) as error:
            raise SystemExit(f"{path}: not a results file of benchmarks/peer.py --json ({error})") from None
        for batch, record in batches.items():
            case = cases.setdefault((int(batch), first), dict(rows={}, ratio=None, commands=[]))
            case["floors"] = record["floors"]
            case["rows"].update({row["label"]: row for row in record["rows"]})
            if record.get("ratio") is not None:
                case["ratio"], case["ratios"] = record["ratio"], record["ratios"]
            kept = [a for i, a in enumerate(argv) if a != "--json" and (i == 0 or argv[i - 1] != "--json")]
            case["commands"].append(" ".join(a if a and " " not in a else repr(a) for a in kept))
    return cases


def _held(seconds: float | None, recipe: str = "") -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f} s" + (f" (`{recipe}`)" if recipe else "")


def row_of(batch: int, first: int, case: dict) -> str:
    floors = case["floors"]
    floor = floors["floor"]
    kind = "grey" if floor == floors["grey"] else "mean"
    rows = case["rows"]
    theirs = next((r for label, r in rows.items() if label.startswith(BREACHING)), None)
    ours = {label.split(":")[0].removeprefix("ours "): r for label, r in rows.items() if label.startswith("ours")}
    images = f"image {first}" if batch == 1 else f"images {first}-{first + batch - 1}"
    cells = [f"{batch}, {images}", f"{floor:.2f} dB ({kind})"]
    if theirs is None:
        cells.append("not run")
    else:
        cells.append(
            f"{theirs['final']:.2f} dB ({theirs['final'] - floor:+.2f}), {theirs['seconds']:.0f} s; "
            f"floor + 3 held from {_held(theirs['held_floor3'])}"
        )
    if ours:
        name, best = max(ours.items(), key=lambda item: item[1]["final"])
        cells.append(f"{best['final']:.2f} dB ({best['final'] - floor:+.2f}, `{name}`, {best['seconds']:.0f} s)")
        for key in ("held_floor3", "held_floor6"):
            reached = [(r[key], name) for name, r in ours.items() if r[key] is not None]
            cells.append(_held(*min(reached)) if reached else "never")
    else:
        cells += ["not run"] * 3
    if case["ratio"] is None:
        cells.append("not measured")
    else:
        spread = f"{min(case['ratios']):.2f}-{max(case['ratios']):.2f}"
        cells.append(f"{case['ratio']:.3f}x (rounds {spread})")
    return "| " + " | ".join(cells) + " |"


def table(cases: dict[tuple[int, int], dict]) -> str:
    """The Markdown table, larger batches first, then by first image; the commands behind it above it."""
    order = sorted(cases, key=lambda key: (-key[0], key[1]))
    commands = [f"python benchmarks/peer.py {command}" for key in order for command in cases[key]["commands"]]
    head = (
        "| batch, CIFAR-10 test images | floor | breaching IG (1,000 steps), final | our best recipe, final "
        "| ours: floor + 3 dB held from | ours: floor + 6 dB held from | our step / a bare step |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head] + [row_of(batch, first, cases[(batch, first)]) for batch, first in order]
    return "```\n" + "\n".join(commands) + "\n```\n\n" + "\n".join(lines)


def store(paths: list[Path], folder: Path) -> list[Path]:
    """Copies of the runs without their PSNR curves (what the table reads, a few kB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        record = json.loads(path.read_text())
        for batch in record["batches"].values():
            for row in batch["rows"]:
                row.pop("curve", None)
        target = folder / path.name
        target.write_text(json.dumps(record, indent=1) + "\n")
        written.append(target)
    return written


def _shown(path: Path) -> str:
    """A path as the README shows it: relative to the repository where it lies inside it."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files of benchmarks/peer.py --json")
    parser.add_argument("--readme", action="store_true", help="write the table between the README's peer markers")
    parser.add_argument("--store", type=Path, default=None, help="also copy the runs here, curves dropped")
    args = parser.parse_args(argv)
    if args.store is not None:
        args.results = store(args.results, args.store)
        print(f"stored {len(args.results)} run(s) in {args.store}")
    markdown = table(load(args.results))
    print(markdown)
    if args.readme:
        import run  # benchmarks/run.py (beside this script), whose README block writer this shares

        folders = {p.resolve().parent for p in args.results}
        folder = next(iter(folders))
        if len(folders) == 1 and {p.resolve() for p in args.results} == {p.resolve() for p in folder.glob("*.json")}:
            named = f"{_shown(folder)}/*.json"
        else:
            named = " ".join(_shown(p) for p in args.results)
        run.write_readme(
            ROOT / "README.md",
            markdown,
            f"python benchmarks/peer_table.py {named} --readme",
            f"the runs of `{named}`",
            markers=(BEGIN, END),
        )
        print("(README.md's peer table rewritten)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
