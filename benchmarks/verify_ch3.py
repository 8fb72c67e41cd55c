"""Check chapter 3's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch3.py     # exit status 1 when a verdict does not hold

Chapter 3 attacks victims A (``convnet_fc``) and B (``convnet_gap``) at batch size 4 with the
battery's GI-x and GI-z (chapter 3's budget: 400 pixel steps; 3 restarts of 200 latent steps)
beside the floors (label only, a DCGAN sample), on Fashion-MNIST test images 0-11 with victim
seeds 0-2, then single targets against victim A seed 0: garments (test images 12-14), two MNIST
digits (test images 0-1) and a grey CIFAR-10 photograph (test image 0). This script re-runs the
same comparisons on held-out groups: Fashion-MNIST test images 4000-4014 (chapter 3's held-out
range is 4000-4499), victim seeds 10-12, MNIST test digits 2-3 and CIFAR-10 test image 19, and
checks each verdict on both scores (PSNR and identification), printing mean ± sd and n.

A verdict is the outcome of a paired comparison (:func:`gi_tutorial.stats.compare`): "A wins" (A
ahead by more than the margin on average and in every pair), "B wins", or "no clear winner". It
holds when the held-out comparison gives the outcome the chapter's own run gave (listed in
:data:`CLAIMS`, from the chapter's last full run). The range-limit claim is a comparison of
identified counts: GI-z is identified for fewer out-of-range targets than GI-x. About 3 minutes
on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import attacks, config, data, fl, generators, models, stats, yardstick  # noqa: E402

VICTIMS = {"A": "convnet_fc", "B": "convnet_gap"}
SEEDS = (10, 11, 12)
FIRST_IMAGE = 4000  # chapter 3's held-out images: Fashion-MNIST test 4000-4499
BATCH = 4
MARGIN = {"psnr": 1.0, "identified": 0.0}  # the chapter's margins: 1 dB; any gain in the identified share
BUDGET = attacks.Budget(x_iters=400, z_iters=200, z_restarts=3, w_iters=0)  # chapter 3's budget
# (victim, A, B, metric) -> the outcome in the chapter's last full run (book/ch03_latent_space.ipynb)
CLAIMS = {
    ("A", "GI-x", "GI-z", "psnr"): "GI-x wins",
    ("A", "GI-x", "GI-z", "identified"): "GI-x wins",
    ("B", "GI-x", "GI-z", "psnr"): "no clear winner",
    ("B", "GI-x", "GI-z", "identified"): "no clear winner",
}


def outcome(a: str, b: str, paired: stats.Paired) -> str:
    return f"{a} wins" if paired.holds else f"{b} wins" if paired.reversed else "no clear winner"


def others_of(pool: torch.Tensor, exclude: list[int]) -> yardstick.Yardstick:
    """Identification among other images of the same kind (any class), as chapter 3 ranks out-of-range targets."""
    rest = pool[[i for i in range(len(pool)) if i not in exclude]]
    return yardstick.Yardstick(
        rest, torch.zeros(len(rest)), rest, torch.zeros(len(rest)), k=len(rest), same_class=False
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    budget = attacks.budget_for(BUDGET)
    generator = generators.load_generator()
    images, labels = data.fashion_mnist("test", FIRST_IMAGE + 500)
    gi_x, gi_z = attacks.gi_x(budget), attacks.gi_z(budget)
    recipes = [gi_x, gi_z, *attacks.floors("dcgan")]
    tally = stats.Tally(keys=("victim", "group", "method"))
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
                recipes,
                truth=x,
                truth_labels=y,
                yardstick=stick,
                generators={"dcgan": generator},
                tally=tally,
                seed=seed,
                victim=v,
                group=k,
            )
    cursor = FIRST_IMAGE + BATCH * len(args.seeds)
    print(
        f"chapter 3, held out: victim seeds {args.seeds}, Fashion-MNIST test images {FIRST_IMAGE}-{cursor - 1} "
        f"(batches of {BATCH}), {time.perf_counter() - start:.0f} s"
    )
    failed = 0
    for v in VICTIMS:
        floors = " | ".join(
            f"{m} {tally.summary(metric, victim=v, method=m).format(fmt)}"
            for m in ("label only", "prior sample")
            for metric, fmt in (("psnr", "{:.1f}"), ("identified", "{:.0%}"))
        )
        print(f"victim {v}, batch {BATCH} (floors, no gradient: {floors})")
        for (victim, a, b, metric), expected in CLAIMS.items():
            if victim != v:
                continue
            paired = tally.paired(a, b, metric, margin=MARGIN[metric], victim=v)
            got = outcome(a, b, paired)
            fmt, unit = ("{:.1f}", " dB") if metric == "psnr" else ("{:.0%}", "")
            sides = " | ".join(f"{m} {tally.summary(metric, victim=v, method=m).format(fmt, unit)}" for m in (a, b))
            failed += got != expected
            print(
                f"  {metric:10s} {a} vs {b}: chapter says {expected}, held out {got}: "
                f"{'holds' if got == expected else 'DOES NOT HOLD'}\n"
                f"             held out: {sides}; {stats.compare(a, b, paired, unit=unit, fmt=fmt)}"
            )

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
    single = stats.Tally(keys=("target", "kind", "method"))
    sample = [f for f in attacks.floors("dcgan") if f.kind == "prior sample"]
    for i, (kind, x, y, stick) in enumerate(cases):
        update = fl.client_update(model, x, y)
        attacks.run_battery(
            update,
            model,
            [gi_x, gi_z, *sample],
            truth=x,
            truth_labels=y,
            yardstick=stick,
            generators={"dcgan": generator},
            tally=single,
            seed=args.seeds[0],
            target=i,
            kind=kind,
        )
    odd = ["digit", "grey photo"]
    found = {m: int(sum(single.values("identified", kind=odd, method=m))) for m in ("GI-x", "GI-z", "prior sample")}
    holds = found["GI-z"] < found["GI-x"]
    failed += not holds
    print(
        f"out of the generator's range (MNIST test digits 2-3, grey CIFAR-10 test image 19; victim A seed "
        f"{args.seeds[0]}): identified GI-x {found['GI-x']} of 3, GI-z {found['GI-z']} of 3, a DCGAN sample "
        f"{found['prior sample']} of 3"
    )
    for kind in ("garment", odd):
        where = dict(kind=kind)
        print(
            f"  {kind if isinstance(kind, str) else 'out of range'}: "
            + " | ".join(
                f"{m} {single.summary('psnr', method=m, **where).format(unit=' dB')}"
                for m in ("GI-x", "GI-z", "prior sample")
            )
        )
    print(
        f"  chapter says GI-z is identified for fewer out-of-range targets than GI-x: "
        f"{'holds' if holds else 'DOES NOT HOLD'}"
    )
    print(
        f"chapter 3: {'every verdict holds' if not failed else f'{failed} verdicts do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
