"""Check chapter 5's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch5.py     # exit status 1 when a verdict does not hold

Chapter 5 states, from its shipped table (``gi_tutorial/results/ch5_table.json``), how GIAS and
GI-z with the GIML prior compare with the untrained prior and with the non-meta baseline, on
both scores (identification and PSNR), where the problem is under-determined (victim S). This
script recomputes each of those verdicts (:func:`gi_tutorial.giml.compare`) on held-out
groups: Fashion-MNIST test images 5000-5999 and victim seeds 20-22 (the chapter and its table
use seeds 10-14 and images 3000-3999), with chapter 5's budget, and prints the chapter's verdict
and the held-out one side by side, with mean ± sd and n. A verdict holds when the held-out
comparison says the same thing: ahead, behind, or no clear winner. About 5 minutes on one core.
"""
from __future__ import annotations

import argparse
import sys
import time

from gi_tutorial import attacks, config, data, fl, giml, models, stats, storage, yardstick

CASES = (("S", 8), ("S", 16))  # where the problem is under-determined: the chapter's question
CLAIMS = (("GIAS (GIML)", "GIAS (untrained)"), ("GIAS (GIML)", "GIAS (non-meta)"), ("GI-z (GIML)", "GI-z (untrained)"))
PRIORS = ("untrained", "GIML", "non-meta")
SEEDS = (20, 21, 22)
FIRST_IMAGE = 5000  # chapter 5's held-out images: 5000-5999
TABLE = storage.RESULTS / "ch5_table.json"  # written by benchmarks/ch5_table.py


def attack_group(victim: str, batch: int, seed: int, first: int, recipes, priors, tally: stats.Tally, images,
                 labels) -> None:
    """One group, as benchmarks/ch5_table.py runs it: the victim's update on its images, every recipe."""
    x, y = images[first:first + batch], labels[first:first + batch]
    model = models.build_model(models.VICTIMS[victim], in_channels=1, seed=seed)
    update = fl.client_update(model, x, y, share_labels=True)
    attacks.run_battery(update, model, recipes, truth=x, truth_labels=y, yardstick=yardstick.fashion_mnist(exclude=x),
                        generators=priors, tally=tally, seed=seed, victim=victim, batch=batch, first_image=first)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    config.set_threads()
    shipped = stats.Tally.from_json(storage.load_results(TABLE)[0])
    images, labels = data.fashion_mnist("test")
    priors = giml.priors(PRIORS)
    recipes = giml.prior_battery(attacks.budget_for("ch5"), PRIORS, gi_x=False)
    held_out, start, cursor = stats.Tally(("victim", "batch", "seed", "method")), time.perf_counter(), FIRST_IMAGE
    for victim, batch in CASES:
        for seed in args.seeds:
            attack_group(victim, batch, seed, cursor, recipes, priors, held_out, images, labels)
            cursor += batch
    print(f"chapter 5, held out: victim seeds {args.seeds}, Fashion-MNIST test images {FIRST_IMAGE}-{cursor - 1}, "
          f"{time.perf_counter() - start:.0f} s")
    failed = 0
    for victim, batch in CASES:
        where = dict(victim=victim, batch=batch)
        floor = held_out.summary("identified", method="sample (GIML)", **where)
        print(f"victim {victim}, batch {batch} (a GIML sample, no gradient, is identified {floor.format('{:.0%}')})")
        for a, b in CLAIMS:
            chapter, check = giml.compare(shipped, a, b, **where), giml.compare(held_out, a, b, **where)
            for metric in giml.SCORES:
                expected, got = giml.outcome(chapter[metric][0]), giml.outcome(check[metric][0])
                _, unit, fmt = giml.SCORES[metric]
                sides = " | ".join(f"{m} {held_out.summary(metric, method=m, **where).format(fmt, unit)}" for m in (a, b))
                status = "holds" if expected == got else "DOES NOT HOLD"
                failed += expected != got
                print(f"  {metric:10s} {a} vs {b}: chapter says {expected}, held out {got}: {status}\n"
                      f"             held out: {sides}; {check[metric][1]}")
    print(f"chapter 5: {'every verdict holds' if not failed else f'{failed} verdicts do not hold'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
