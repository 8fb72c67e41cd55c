"""Check chapter 2's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch2.py     # exit status 1 when a verdict does not hold

Chapter 2 compares priors added to GI-x (none, total variation, BatchNorm statistics, both) on a
small BatchNorm ConvNet (``convnet_bn``, train mode) at batch sizes 1, 4 and 8, and source
separation (ICA) with GI-x on a one-hidden-layer MLP at batch sizes 4 and 8, on CIFAR-10 test
images 0-11 with model seeds 0-2. Offline only the first 20 CIFAR-10 test images exist, so this
script uses the 8 the chapter does not use (12-19) and model seeds 10-12, at batch sizes 4 and 8
(the batch of seed index k: consecutive images from 12 + 2k, wrapping around within 12-19), with
the chapter's budget (GI-x: 400 steps, total variation 1e-2; BatchNorm weight 1e-2), and re-checks
each verdict on both scores (PSNR and identification among the other shipped images), printing
mean ± sd and n.

A verdict is the outcome of a paired comparison (:func:`gi_tutorial.stats.compare`): "A wins" (A
ahead by more than the margin on average and in every pair), "B wins", or "no clear winner"; it
holds when the held-out comparison gives the outcome of the chapter's last full run
(:data:`CLAIMS`). About 2 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import attacks, config, data, fl, invert, models, priors, separation, stats, yardstick  # noqa: E402
from gi_tutorial.spaces import PixelSpace  # noqa: E402

SEEDS = (10, 11, 12)
HELD_OUT = list(range(12, 20))  # the shipped CIFAR-10 test images chapter 2 does not use
BATCHES = (4, 8)
BUDGET = attacks.Budget(x_iters=400, z_iters=0, z_restarts=1, w_iters=0, tv=1e-2)  # chapter 2's
BN_WEIGHT = 1e-2
MARGIN = {"psnr": 1.0, "identified": 0.0}
# (experiment, A, B, metric) -> the outcome in the chapter's last full run (book/ch02_priors.ipynb)
CLAIMS = {
    ("priors", "TV", "none", "psnr"): "no clear winner",
    ("priors", "TV", "none", "identified"): "no clear winner",
    ("priors", "BN", "none", "psnr"): "BN wins",
    ("priors", "BN", "none", "identified"): "no clear winner",
    ("priors", "TV+BN", "none", "psnr"): "TV+BN wins",
    ("priors", "TV+BN", "none", "identified"): "no clear winner",
    ("ICA", "ICA", "GI-x", "psnr"): "ICA wins",
    ("ICA", "ICA", "GI-x", "identified"): "ICA wins",
}


def outcome(a: str, b: str, paired: stats.Paired) -> str:
    return f"{a} wins" if paired.holds else f"{b} wins" if paired.reversed else "no clear winner"


def check(tally: stats.Tally, experiment: str, a: str, b: str, metric: str, **where) -> int:
    """Print one verdict of the chapter against the held-out outcome; 1 if it does not hold."""
    expected = CLAIMS[(experiment, a, b, metric)]
    paired = tally.paired(a, b, metric, margin=MARGIN[metric], **where)
    got = outcome(a, b, paired)
    fmt, unit = ("{:.1f}", " dB") if metric == "psnr" else ("{:.0%}", "")
    sides = " | ".join(f"{m} {tally.summary(metric, method=m, **where).format(fmt, unit)}" for m in (a, b))
    print(
        f"  {metric:10s} {a} vs {b}: chapter says {expected}, held out {got}: "
        f"{'holds' if got == expected else 'DOES NOT HOLD'}\n"
        f"             held out: {sides}; {stats.compare(a, b, paired, unit=unit, fmt=fmt)}"
    )
    return int(got != expected)


def with_bn(gi_x, update, model, tv: float, seed: int):
    """GI-x plus the BatchNorm prior, as chapter 2 runs it (threat model E: the update carries the statistics)."""
    chosen = [priors.BNStatistics(BN_WEIGHT, update.bn_statistics)] + ([priors.TotalVariation(tv)] if tv else [])
    return invert.reconstruct(
        update,
        model,
        PixelSpace((update.batch_size, 3, 32, 32)),
        optimizer=gi_x.optimizer,
        num_iters=gi_x.num_iters,
        distance=gi_x.distance,
        priors=chosen,
        seed=seed,
        progress=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    images, labels = data.cifar10_targets(data.NUM_SHIPPED)
    budget = attacks.budget_for(BUDGET)
    gi_x = attacks.gi_x(budget)
    mean_image = attacks.Floor("mean image", "mean image")
    tally = stats.Tally(keys=("batch", "group", "method"))
    ica = stats.Tally(keys=("batch", "group", "method"))
    for b in BATCHES:
        for k, seed in enumerate(args.seeds):
            chosen = [HELD_OUT[(2 * k + j) % len(HELD_OUT)] for j in range(b)]
            x, y = images[chosen], labels[chosen]
            stick = yardstick.cifar10(exclude=x)
            model = models.build_model("convnet_bn", seed=seed).train()
            update = fl.client_update(model, x, y, share_labels=True, share_bn_statistics=True)
            attacks.run_battery(
                update,
                model,
                [attacks.with_budget(gi_x, tv=0.0, name="none"), attacks.with_budget(gi_x, name="TV"), mean_image],
                truth=x,
                truth_labels=y,
                yardstick=stick,
                tally=tally,
                seed=seed,
                batch=b,
                group=k,
            )
            for name, tv in (("BN", 0.0), ("TV+BN", budget.tv)):
                run = with_bn(gi_x, update, model, tv, seed)
                row, _ = attacks.score(run.images, x, y, stick)
                tally.add(batch=b, group=k, method=name, **row, grad_loss=run.grad_loss, seconds=run.seconds)
            mlp = models.build_model("mlp", seed=seed)
            mlp_update = fl.client_update(mlp, x, y, share_labels=True)
            attacks.run_battery(
                mlp_update,
                mlp,
                [gi_x],
                truth=x,
                truth_labels=y,
                yardstick=stick,
                tally=ica,
                seed=seed,
                batch=b,
                group=k,
            )
            row, _ = attacks.score(separation.recover_batch(mlp_update, mlp, mlp.hidden, (3, 32, 32)), x, y, stick)
            ica.add(batch=b, group=k, method="ICA", **row)
    print(
        f"chapter 2, held out: model seeds {args.seeds}, CIFAR-10 test images {HELD_OUT[0]}-{HELD_OUT[-1]}, "
        f"batch sizes {BATCHES}, {time.perf_counter() - start:.0f} s"
    )
    floor = " | ".join(
        f"{metric} {tally.summary(metric, method='mean image').format(fmt)}"
        for metric, fmt in (("psnr", "{:.1f}"), ("identified", "{:.0%}"))
    )
    print(f"priors on GI-x, convnet_bn, paired over (batch, group); the mean-image floor, no gradient: {floor}")
    failed = 0
    for prior in ("TV", "BN", "TV+BN"):
        for metric in ("psnr", "identified"):
            failed += check(tally, "priors", prior, "none", metric)
    print(f"source separation against GI-x, MLP, batch size {BATCHES[-1]}, paired over groups")
    for metric in ("psnr", "identified"):
        failed += check(ica, "ICA", "ICA", "GI-x", metric, batch=BATCHES[-1])
    print(
        f"chapter 2: {'every verdict holds' if not failed else f'{failed} verdicts do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
