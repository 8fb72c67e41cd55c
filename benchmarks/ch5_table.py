"""Chapter 5's table: which learned prior helps GIAS where a prior matters, on both scores.

    python benchmarks/ch5_table.py     # writes gi_tutorial/results/ch5_table.json and ch5_snapshots.json

For victim S at batch 8 and 16 (under-determined: fewer gradient entries than unknown pixels at
16) and victim A at batch 8, five victim seeds (10-14), each (victim, batch, seed) attacks its
own Fashion-MNIST test images, consecutive from 3000 (chapter 5's table range; no two groups
share an image). Every group runs chapter 5's battery (:func:`gi_tutorial.giml.prior_battery`,
budget ``attacks.BUDGETS["ch5"]``): GI-x, then GI-z and GIAS through each prior of
:data:`gi_tutorial.giml.PRIORS`, and the floors (the label-only guess, a random sample of each
prior). Then the series of inversions: GI-z and GIAS through every shipped GIML snapshot on
victim S's batch-8 groups (step 0 is the table's "untrained" prior, of which the step-0 snapshot is
a float16 copy, and the last snapshot is its "GIML"). Labels and batch size
are shared, as in chapters 3 and 4. The per-run rows ship with their provenance; the chapter
draws them and re-runs a slice.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from gi_tutorial import attacks, config, data, fl, giml, models, stats, storage, yardstick

CASES = (("S", 8), ("S", 16), ("A", 8))
SEEDS = (10, 11, 12, 13, 14)
FIRST_IMAGE = 3000  # chapter 5's tables use Fashion-MNIST test images 3000-3999
TABLE = storage.RESULTS / "ch5_table.json"
SNAPSHOTS = storage.RESULTS / "ch5_snapshots.json"
KEYS = ("victim", "batch", "seed", "method")


def groups(cases=CASES, seeds=SEEDS, first: int = FIRST_IMAGE) -> list[tuple[str, int, int, int]]:
    """``(victim, batch, seed, first image)`` of every group, images allocated consecutively."""
    out, cursor = [], first
    for victim, batch in cases:
        for seed in seeds:
            out.append((victim, batch, seed, cursor))
            cursor += batch
    return out


def attack_group(
    victim: str,
    batch: int,
    seed: int,
    first: int,
    recipes,
    priors,
    tally: stats.Tally,
    images: torch.Tensor,
    labels: torch.Tensor,
    stick: yardstick.Yardstick | None = None,
) -> None:
    """One group: the victim's update on its images, every recipe, one row each in ``tally``.

    ``stick``: the yardstick (default: Fashion-MNIST's, without the group's images).
    """
    x, y = images[first : first + batch], labels[first : first + batch]
    model = models.build_model(models.VICTIMS[victim], in_channels=1, seed=seed)
    update = fl.client_update(model, x, y, share_labels=True)
    attacks.run_battery(
        update,
        model,
        recipes,
        truth=x,
        truth_labels=y,
        yardstick=stick or yardstick.fashion_mnist(exclude=x),
        generators=priors,
        tally=tally,
        seed=seed,
        victim=victim,
        batch=batch,
        first_image=first,
    )


def provenance(command: str, cases, seeds, budget: attacks.Budget, files: dict[str, str], seconds: float) -> dict:
    return dict(
        command=command,
        seeds=list(seeds),
        cases=[list(c) for c in cases],
        images=f"Fashion-MNIST test images from {FIRST_IMAGE}, consecutive per (victim, batch, seed)",
        identification="same-class candidates from test images 8000-9999 (yardstick.fashion_mnist)",
        budgets=dataclasses.asdict(budget),
        priors=files,
        seconds=round(seconds, 1),
        torch=torch.__version__,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--skip-table", action="store_true", help="only the snapshot curve")
    parser.add_argument("--skip-snapshots", action="store_true", help="only the table")
    args = parser.parse_args(argv)
    config.set_threads()
    command = storage.command(__file__, argv)
    budget = attacks.budget_for("ch5")  # the quick budget under GI_TUTORIAL_QUICK=1 (a smoke test)
    images, labels = data.fashion_mnist("test")
    if not args.skip_table:
        priors = giml.priors()
        recipes = giml.prior_battery(budget)
        tally, start = stats.Tally(KEYS), time.perf_counter()
        for victim, batch, seed, first in groups(seeds=args.seeds):
            attack_group(victim, batch, seed, first, recipes, priors, tally, images, labels)
            seconds = time.perf_counter() - start
            storage.save_results(
                TABLE, tally.to_json(), **provenance(command, CASES, args.seeds, budget, giml_files(), seconds)
            )
            print(f"victim {victim}, batch {batch}, seed {seed}: {seconds:.0f} s", flush=True)
    steps = giml.shipped_steps()[1:-1]  # step 0 is the untrained generator, the last is the table's GIML
    if not args.skip_snapshots:
        snapshots = {f"step {s}": giml.load_snapshot(s) for s in steps}
        recipes = [
            attacks.gias_attack(budget, name, name=f"GIAS ({name})", latent_name=f"GI-z ({name})") for name in snapshots
        ]
        tally, start = stats.Tally(KEYS), time.perf_counter()
        for victim, batch, seed, first in groups(seeds=args.seeds):
            if (victim, batch) == ("S", 8):
                attack_group(victim, batch, seed, first, recipes, snapshots, tally, images, labels)
        record = provenance(
            command,
            [("S", 8)],
            args.seeds,
            budget,
            {name: giml.snapshot_path(s).name for name, s in zip(snapshots, steps)},
            time.perf_counter() - start,
        )
        storage.save_results(SNAPSHOTS, tally.to_json(), **record, steps=steps)
        print(f"snapshots {steps}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


def giml_files() -> dict[str, str]:
    """The file and sha256 behind each of chapter 5's priors."""
    import json

    out = {"untrained": "generators.untrained_generator(0)"}
    for name, path in (
        ("GIML", giml.snapshot_path(giml.shipped_steps()[-1])),
        (
            "GIML, batch-4 stream",
            giml.snapshot_path(giml.shipped_steps(prefix=giml.HARDER_PREFIX)[-1], prefix=giml.HARDER_PREFIX),
        ),
        ("non-meta", giml.NONMETA_CHECKPOINT),
        ("DCGAN", giml.CHECKPOINTS / "fashion_mnist_dcgan.pt"),
    ):
        out[name] = f"{path.name} (sha256 {json.loads(path.with_suffix('.json').read_text())['sha256']})"
    return out


if __name__ == "__main__":
    sys.exit(main())
