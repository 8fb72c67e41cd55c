"""Check chapter 3's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch3.py                 # exit status 1 when a claim of the book does not hold
    python benchmarks/verify_ch3.py --out gi_tutorial/results/ch3_verify.json   # also ship the runs

Chapter 3 attacks victims A (``convnet_fc``) and B (``convnet_gap``) at batch size 4 with the
battery's GI-x and GI-z (chapter 3's budget: 400 pixel steps; 3 restarts of 200 latent steps),
GI-z with the latent-norm penalty on victim A, beside the floors (label only, a DCGAN sample), on
Fashion-MNIST test images 0-11 with victim seeds 0-2, then single targets against victim A seed 0:
garments (test images 12-14), two MNIST digits (test images 0-1) and a grey CIFAR-10 photograph
(test image 0). This script re-runs the same comparisons on held-out groups: Fashion-MNIST test
images 4000-4014 (chapter 3's held-out range is 4000-4499), victim seeds 10-12, MNIST test digits
2-3 and CIFAR-10 test image 19, and re-checks each claim (:data:`CLAIMS`) on both scores (PSNR and
identification), with mean ± sd and n, against the chapter's outcome (:data:`SAID`), by the rule
of :func:`gi_tutorial.claims.verify`. The chapter prints the shipped run (``--out``) beside its own
verdicts. About 4 minutes on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from gi_tutorial import attacks, claims, config, data, fl, generators, models, priors, stats, storage, yardstick

VICTIMS = {"A": "convnet_fc", "B": "convnet_gap"}
SEEDS = (10, 11, 12)
FIRST_IMAGE = 4000  # chapter 3's held-out images: Fashion-MNIST test 4000-4499
BATCH = 4
BUDGET = attacks.Budget(x_iters=400, z_iters=200, z_restarts=3, w_iters=0)  # chapter 3's budget
Z_NORM = 1e-2  # the latent-norm penalty's weight (victim A only)
SHIPPED = storage.RESULTS / "ch3_verify.json"
ODD = ["digit", "grey photo"]  # the targets outside the generator's range
CLAIMS = [
    claims.Claim(a, b, metric, margin, where={"victim": v}, name=f"{a} vs {b}, victim {v}", experiment="groups")
    for v in VICTIMS
    for a, b, metric, margin in (
        ("GI-x", "GI-z", "psnr", 1.0),
        ("GI-x", "GI-z", "identified", 0.0),
        ("GI-z", "prior sample", "identified", 0.0),
    )
] + [
    claims.Claim(
        "GI-z + z-norm", "GI-z", "psnr", 1.0, where={"victim": "A"}, name="z-norm, victim A", experiment="groups"
    ),
    claims.Claim("GI-x", "GI-z", "psnr", 1.0, where={"kind": ODD}, name="out of range", experiment="range"),
    claims.Claim("GI-x", "GI-z", "identified", 0.0, where={"kind": ODD}, name="out of range", experiment="range"),
]
# each claim's outcome, and the sign of its mean gap, in the chapter's last full run (book/ch03_latent_space.ipynb)
SAID: dict[tuple[str, str], claims.Said] = {
    ("GI-x vs GI-z, victim A", "psnr"): ("ahead", 12.4),
    ("GI-x vs GI-z, victim A", "identified"): ("no clear winner", 0.08),
    ("GI-z vs prior sample, victim A", "identified"): ("ahead", 0.75),
    ("GI-x vs GI-z, victim B", "psnr"): ("no clear winner", -0.8),
    ("GI-x vs GI-z, victim B", "identified"): ("no clear winner", 0.25),
    ("GI-z vs prior sample, victim B", "identified"): ("no clear winner", 0.0),
    ("z-norm, victim A", "psnr"): ("no clear winner", 0.5),
    ("out of range", "psnr"): ("ahead", 26.5),
    ("out of range", "identified"): ("no clear winner", 0.33),
}


def others_of(pool: torch.Tensor, exclude: list[int]) -> yardstick.Yardstick:
    """Identification among other images of the same kind (any class), as chapter 3 ranks out-of-range targets."""
    rest = pool[[i for i in range(len(pool)) if i not in exclude]]
    return yardstick.Yardstick(
        rest, torch.zeros(len(rest)), rest, torch.zeros(len(rest)), k=len(rest), same_class=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=None, help="also ship the held-out runs, with provenance, here")
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    budget = attacks.budget_for(BUDGET)
    generator = generators.load_generator()
    images, labels = data.fashion_mnist("test", FIRST_IMAGE + 500)
    gi_x, gi_z = attacks.gi_x(budget), attacks.gi_z(budget)
    gi_z_norm = attacks.with_budget(
        gi_z, name="GI-z + z-norm", latent=attacks.with_budget(gi_z.latent, priors=(priors.LatentNorm(Z_NORM),))
    )
    recipes = {"A": [gi_x, gi_z, gi_z_norm, *attacks.floors("dcgan")], "B": [gi_x, gi_z, *attacks.floors("dcgan")]}
    tallies = {"groups": stats.Tally(keys=("victim", "group", "method"))}
    for k, seed in enumerate(args.seeds):
        first = FIRST_IMAGE + BATCH * k
        x, y = images[first : first + BATCH], labels[first : first + BATCH]
        stick = yardstick.fashion_mnist(exclude=x)
        for v, name in VICTIMS.items():
            model = models.build_model(name, in_channels=1, seed=seed)
            update = fl.client_update(model, x, y, share_labels=True)
            attacks.run_battery(
                update,
                model,
                recipes[v],
                truth=x,
                truth_labels=y,
                yardstick=stick,
                generators={"dcgan": generator},
                tally=tallies["groups"],
                seed=seed,
                victim=v,
                group=k,
            )
    cursor = FIRST_IMAGE + BATCH * len(args.seeds)

    # the range limit: single targets against victim A (seed of the first held-out group)
    model = models.build_model("convnet_fc", in_channels=1, seed=args.seeds[0])
    digits, digit_labels = data.load_dataset("mnist", "test", data.NUM_SHIPPED)
    photos = data.cifar10_targets(data.NUM_SHIPPED)[0].mean(dim=1, keepdim=True)
    cases = [
        ("garment", images[i : i + 1], labels[i : i + 1], yardstick.fashion_mnist(exclude=images[i : i + 1]))
        for i in range(cursor, cursor + 3)
    ]
    cases += [("digit", digits[i : i + 1], digit_labels[i : i + 1], others_of(digits, [i])) for i in (2, 3)]
    cases += [("grey photo", photos[19:20], torch.tensor([0]), others_of(photos, [19]))]
    tallies["range"] = stats.Tally(keys=("target", "kind", "method"))
    sample = [f for f in attacks.floors("dcgan") if f.kind == "prior sample"]
    for i, (kind, x, y, stick) in enumerate(cases):
        attacks.run_battery(
            fl.client_update(model, x, y),
            model,
            [gi_x, gi_z, *sample],
            truth=x,
            truth_labels=y,
            yardstick=stick,
            generators={"dcgan": generator},
            tally=tallies["range"],
            seed=args.seeds[0],
            target=i,
            kind=kind,
        )
    seconds = time.perf_counter() - start
    print(
        f"chapter 3, held out: victim seeds {args.seeds}, Fashion-MNIST test images {FIRST_IMAGE}-{cursor + 2} "
        f"(batches of {BATCH}, then 3 single garments), MNIST test digits 2-3, grey CIFAR-10 test image 19, "
        f"{seconds:.0f} s"
    )
    shipped = claims.shipped_runs(SHIPPED, args.out)
    if args.out:
        command = storage.command(__file__, argv)
        claims.save(
            args.out,
            CLAIMS,
            tallies,
            command=command,
            seeds=list(args.seeds),
            images=f"Fashion-MNIST test images {FIRST_IMAGE}-{cursor + 2}; MNIST test digits 2-3; CIFAR-10 test image 19",
            budgets=dataclasses.asdict(budget),
            z_norm=Z_NORM,
            seconds=round(seconds, 1),
            torch=torch.__version__,
        )
    failed = 0
    for v in VICTIMS:
        floors = " | ".join(
            f"{m} {tallies['groups'].summary('psnr', victim=v, method=m).format(unit=' dB')}, identified "
            f"{tallies['groups'].summary('identified', victim=v, method=m).format('{:.0%}', with_n=False)}"
            for m in ("label only", "prior sample")
        )
        print(f"victim {v}, batch {BATCH} (floors, no gradient: {floors})")
        chosen = [c for c in CLAIMS if c.experiment == "groups" and c.where["victim"] == v]
        lines, bad = claims.verify(chosen, SAID, tallies, shipped)
        print("\n".join(lines))
        failed += bad
    print("out of the generator's range (victim A, one target at a time):")
    for kind in ("garment", ODD):
        print(
            f"  {kind if isinstance(kind, str) else 'out of range'}: "
            + " | ".join(
                f"{m} {tallies['range'].summary('psnr', method=m, kind=kind).format(unit=' dB')}, identified "
                f"{int(sum(tallies['range'].values('identified', method=m, kind=kind)))}"
                for m in ("GI-x", "GI-z", "prior sample")
            )
        )
    chosen = [c for c in CLAIMS if c.experiment == "range"]
    lines, bad = claims.verify(chosen, SAID, tallies, shipped)
    print("\n".join(lines))
    failed += bad
    print(
        f"chapter 3: {'every claim of the book holds' if not failed else f'{failed} claims of the book do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
