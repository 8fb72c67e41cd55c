"""Check chapter 1's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch1.py                 # exit status 1 when a claim of the book does not hold
    python benchmarks/verify_ch1.py --out gi_tutorial/results/ch1_verify.json   # also ship the runs

Chapter 1 attacks DLG's sigmoid LeNet with the battery's DLG (L-BFGS on the L2 distance, pixels
unboxed) on CIFAR-10 test images 0-11 with LeNet seeds 0-2. Offline only the first 20 CIFAR-10
test images exist, so this script uses the 8 the chapter does not use (12-19) and LeNet seeds
10-12, and re-checks, on both scores (PSNR and identification among the other shipped images):

- labels: the bias gradient gives every single image's label (8 images x 3 seeds);
- DLG at batch size 1 (the chapter's budget, 200 steps x 2 restarts), one image per seed, against
  the mean-image floor;
- DLG at batch sizes 1 and 8 (the chapter's sweep budget, 40 steps, 1 restart; the 8 images from
  image 12 + 2k, wrapping around within 12-19, for seed index k).

Each claim (:data:`CLAIMS`) is checked against the chapter's outcome (:data:`SAID`) by the rule of
:func:`gi_tutorial.claims.verify`; the chapter prints the shipped run (``--out``) beside its own
verdicts. About 2 minutes on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from gi_tutorial import analytic, attacks, claims, config, data, fl, models, stats, storage, yardstick

SEEDS = (10, 11, 12)
HELD_OUT = list(range(12, 20))  # the shipped CIFAR-10 test images chapter 1 does not use
BUDGET = attacks.Budget(x_iters=0, z_iters=0, z_restarts=1, w_iters=0, dlg_iters=200, dlg_restarts=2)  # chapter 1's
SWEEP_ITERS = 40  # chapter 1's sweep: one start of 40 L-BFGS steps
SHIPPED = storage.RESULTS / "ch1_verify.json"
CLAIMS = [
    claims.Claim("DLG", "mean image", metric, margin, name="DLG vs the mean image, batch 1", experiment="single")
    for metric, margin in (("psnr", 1.0), ("identified", 0.0))
] + [
    claims.Claim(
        1, 8, metric, margin, by="batch", where={"method": "DLG"}, name="DLG, batch 1 vs 8", experiment="sweep"
    )
    for metric, margin in (("psnr", 1.0), ("identified", 0.0))
]
# each claim's outcome, and the sign of its mean gap, in the chapter's last full run (book/ch01_gradient_inversion.ipynb)
SAID: dict[tuple[str, str], claims.Said] = {
    ("DLG vs the mean image, batch 1", "psnr"): ("ahead", 27.8),
    ("DLG vs the mean image, batch 1", "identified"): ("ahead", 1.0),
    ("DLG, batch 1 vs 8", "psnr"): ("no clear winner", 13.3),
    ("DLG, batch 1 vs 8", "identified"): ("no clear winner", 0.0),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=None, help="also ship the held-out runs, with provenance, here")
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    images, labels = data.cifar10_targets(data.NUM_SHIPPED)
    budget = attacks.budget_for(BUDGET)
    dlg = attacks.dlg(budget)
    failed = 0

    right = total = 0
    for seed in args.seeds:
        model = models.build_model("lenet", seed=seed)
        for i in HELD_OUT:
            update = fl.client_update(model, images[i : i + 1], labels[i : i + 1])
            right += int(analytic.recover_label(update, model) == labels[i])
            total += 1
    failed += right != total
    print(
        f"chapter 1, held out: LeNet seeds {args.seeds}, CIFAR-10 test images {HELD_OUT[0]}-{HELD_OUT[-1]}\n"
        f"labels from the bias gradient: {right} of {total} right (chapter: every label): "
        f"{'holds' if right == total else 'DOES NOT HOLD'}"
    )

    single = stats.Tally(keys=("case", "method"))
    for k, seed in enumerate(args.seeds):
        model = models.build_model("lenet", seed=seed)
        x, y = images[HELD_OUT[k] : HELD_OUT[k] + 1], labels[HELD_OUT[k] : HELD_OUT[k] + 1]
        stick = yardstick.cifar10(exclude=x)
        attacks.run_battery(
            fl.client_update(model, x, y),
            model,
            [dlg, attacks.Floor("mean image", "mean image")],
            truth=x,
            truth_labels=y,
            yardstick=stick,
            tally=single,
            seed=seed,
            case=k,
        )
    print(
        f"DLG at batch size 1 ({dlg.restarts} restarts x {dlg.num_iters} steps), images "
        f"{HELD_OUT[: len(args.seeds)]}, {time.perf_counter() - start:.0f} s"
    )

    sweep_recipe = attacks.with_budget(dlg, num_iters=dlg.num_iters if config.is_quick() else SWEEP_ITERS, restarts=1)
    sweep = stats.Tally(keys=("case", "batch", "method"))
    for k, seed in enumerate(args.seeds):
        model = models.build_model("lenet", seed=seed)
        for b in (1, 8):
            chosen = [HELD_OUT[(2 * k + j) % len(HELD_OUT)] for j in range(b)]
            x, y = images[chosen], labels[chosen]
            attacks.run_battery(
                fl.client_update(model, x, y, share_labels=True),
                model,
                [sweep_recipe],
                truth=x,
                truth_labels=y,
                yardstick=yardstick.cifar10(exclude=x),
                tally=sweep,
                seed=seed,
                case=k,
                batch=b,
            )
    print(f"DLG at batch sizes 1 and 8 ({sweep_recipe.num_iters} steps, 1 start), {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    tallies = {"single": single, "sweep": sweep}
    shipped = claims.shipped_runs(SHIPPED, args.out)
    if args.out:
        command = storage.command(__file__, argv)
        claims.save(
            args.out,
            CLAIMS,
            tallies,
            command=command,
            seeds=list(args.seeds),
            images=f"CIFAR-10 test images {HELD_OUT[0]}-{HELD_OUT[-1]}",
            labels_right=[right, total],
            budgets=dataclasses.asdict(budget),
            sweep_iters=sweep_recipe.num_iters,
            seconds=round(seconds, 1),
            torch=torch.__version__,
        )
    for experiment, title in (("single", "DLG at batch size 1"), ("sweep", "DLG at batch sizes 1 and 8")):
        print(title)
        chosen = [c for c in CLAIMS if c.experiment == experiment]
        lines, bad = claims.verify(chosen, SAID, tallies, shipped)
        print("\n".join(lines))
        failed += bad
    print(
        f"chapter 1: {'every claim of the book holds' if not failed else f'{failed} claims of the book do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
