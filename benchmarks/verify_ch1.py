"""Check chapter 1's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch1.py     # exit status 1 when a verdict does not hold

Chapter 1 attacks DLG's sigmoid LeNet with the battery's DLG (L-BFGS on the L2 distance, pixels
unboxed) on CIFAR-10 test images 0-11 with LeNet seeds 0-2. Offline only the first 20 CIFAR-10
test images exist, so this script uses the 8 the chapter does not use (12-19) and LeNet seeds
10-12, and re-checks, on both scores (PSNR and identification among the other shipped images):

- labels: the bias gradient gives every single image's label (8 images x 3 seeds);
- DLG at batch size 1 (the chapter's budget, 200 steps x 2 restarts), one image per seed, against
  the mean-image floor: identified in every case while the floor is not, and ahead of the floor
  on PSNR in every pair;
- DLG at batch sizes 1 and 8 (the chapter's sweep budget, 40 steps, 1 restart; the 8 images from
  image 12 + 2k, wrapping around within 12-19, for seed index k): the paired comparison of the
  identified share and of PSNR between batch 1 and batch 8 gives the chapter's outcome.

A verdict is the outcome of a paired comparison (:func:`gi_tutorial.stats.compare`): "A wins" (A
ahead by more than the margin on average and in every pair), "B wins", or "no clear winner"; it
holds when the held-out comparison gives the outcome of the chapter's last full run
(:data:`CLAIMS`). About 1.5 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import analytic, attacks, config, data, fl, models, stats, yardstick  # noqa: E402

SEEDS = (10, 11, 12)
HELD_OUT = list(range(12, 20))  # the shipped CIFAR-10 test images chapter 1 does not use
BUDGET = attacks.Budget(x_iters=0, z_iters=0, z_restarts=1, w_iters=0, dlg_iters=200, dlg_restarts=2)  # chapter 1's
SWEEP_ITERS = 40  # chapter 1's sweep: one start of 40 L-BFGS steps
MARGIN = {"psnr": 1.0, "identified": 0.0}
# (experiment, A, B, metric) -> the outcome in the chapter's last full run (book/ch01_gradient_inversion.ipynb)
CLAIMS = {
    ("batch 1", "DLG", "mean image", "psnr"): "DLG wins",
    ("batch 1", "DLG", "mean image", "identified"): "DLG wins",
    ("sweep", 1, 8, "psnr"): "1 wins",
    ("sweep", 1, 8, "identified"): "no clear winner",
}


def outcome(a, b, paired: stats.Paired) -> str:
    return f"{a} wins" if paired.holds else f"{b} wins" if paired.reversed else "no clear winner"


def check(tally: stats.Tally, experiment: str, a, b, metric: str, by: str = "method", **where) -> int:
    """Print one verdict of the chapter against the held-out outcome; 1 if it does not hold."""
    expected = CLAIMS[(experiment, a, b, metric)]
    paired = tally.paired(a, b, metric, by=by, margin=MARGIN[metric], **where)
    got = outcome(a, b, paired)
    fmt, unit = ("{:.1f}", " dB") if metric == "psnr" else ("{:.0%}", "")
    sides = " | ".join(f"{by} {v}: {tally.summary(metric, **{by: v}, **where).format(fmt, unit)}" for v in (a, b))
    print(
        f"  {metric:10s} {a} vs {b}: chapter says {expected}, held out {got}: "
        f"{'holds' if got == expected else 'DOES NOT HOLD'}\n"
        f"             held out: {sides}; {stats.compare(str(a), str(b), paired, unit=unit, fmt=fmt)}"
    )
    return int(got != expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    images, labels = data.cifar10_targets(data.NUM_SHIPPED)
    dlg = attacks.dlg(attacks.budget_for(BUDGET))
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
    for metric in ("psnr", "identified"):
        failed += check(single, "batch 1", "DLG", "mean image", metric)

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
    for metric in ("psnr", "identified"):
        failed += check(sweep, "sweep", 1, 8, metric, by="batch", method="DLG")
    print(
        f"chapter 1: {'every verdict holds' if not failed else f'{failed} verdicts do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
