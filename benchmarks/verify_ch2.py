"""Check chapter 2's verdicts on victim seeds and images the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch2.py                 # exit status 1 when a claim of the book does not hold
    python benchmarks/verify_ch2.py --out gi_tutorial/results/ch2_verify.json   # also ship the runs

Chapter 2 compares priors added to GI-x (none, total variation, BatchNorm statistics) on a small
BatchNorm ConvNet (``convnet_bn``, train mode) at batch sizes 1, 4 and 8, and source separation
(ICA) with GI-x on a one-hidden-layer MLP at batch size 8, on CIFAR-10 test images 0-11 with model
seeds 0-2. Offline only the first 20 CIFAR-10 test images exist, so this script uses the 8 the
chapter does not use (12-19) and model seeds 10-12, at the same batch sizes (the batch of seed
index k: consecutive images from 12 + 2k, wrapping around within 12-19), with the chapter's budget
(GI-x: 400 steps, total variation 1e-2; BatchNorm weight 1e-2), and re-checks each claim
(:data:`CLAIMS`) on both scores (PSNR and identification among the other shipped images), with
mean ± sd and n, against the chapter's outcome (:data:`SAID`), by the rule of
:func:`gi_tutorial.claims.verify`. The chapter prints the shipped run (``--out``) beside its own
verdicts. About 3 minutes on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from gi_tutorial import attacks, claims, config, data, fl, invert, models, priors, separation, stats, storage, yardstick
from gi_tutorial.spaces import PixelSpace

SEEDS = (10, 11, 12)
HELD_OUT = list(range(12, 20))  # the shipped CIFAR-10 test images chapter 2 does not use
BATCHES = (1, 4, 8)
ICA_BATCH = 8
BUDGET = attacks.Budget(x_iters=400, z_iters=0, z_restarts=1, w_iters=0, tv=1e-2)  # chapter 2's
BN_WEIGHT = 1e-2
SHIPPED = storage.RESULTS / "ch2_verify.json"
CLAIMS = [
    claims.Claim(prior, "none", metric, margin, name=f"{prior} vs no prior", experiment="priors")
    for prior in ("TV", "BN")
    for metric, margin in (("psnr", 1.0), ("identified", 0.0))
] + [
    claims.Claim("ICA", "GI-x", metric, margin, where={"batch": ICA_BATCH}, name="ICA vs GI-x", experiment="ICA")
    for metric, margin in (("psnr", 1.0), ("identified", 0.0))
]
# each claim's outcome, and the sign of its mean gap, in the chapter's last full run (book/ch02_priors.ipynb)
SAID: dict[tuple[str, str], claims.Said] = {
    ("TV vs no prior", "psnr"): ("no clear winner", 1.3),
    ("TV vs no prior", "identified"): ("no clear winner", 0.0),
    ("BN vs no prior", "psnr"): ("ahead", 7.0),
    ("BN vs no prior", "identified"): ("no clear winner", 0.01),
    ("ICA vs GI-x", "psnr"): ("ahead", 13.9),
    ("ICA vs GI-x", "identified"): ("no clear winner", 0.0),
}


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
    parser.add_argument("--out", type=Path, default=None, help="also ship the held-out runs, with provenance, here")
    args = parser.parse_args(argv)
    config.set_threads()
    start = time.perf_counter()
    images, labels = data.cifar10_targets(data.NUM_SHIPPED)
    budget = attacks.budget_for(BUDGET)
    gi_x = attacks.gi_x(budget)
    mean_image = attacks.Floor("mean image", "mean image")
    tallies = {name: stats.Tally(keys=("batch", "group", "method")) for name in ("priors", "ICA")}
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
                tally=tallies["priors"],
                seed=seed,
                batch=b,
                group=k,
            )
            run = with_bn(gi_x, update, model, 0.0, seed)
            row, _ = attacks.score(run.images, x, y, stick)
            tallies["priors"].add(batch=b, group=k, method="BN", **row, grad_loss=run.grad_loss, seconds=run.seconds)
            if b != ICA_BATCH:
                continue
            mlp = models.build_model("mlp", seed=seed)
            mlp_update = fl.client_update(mlp, x, y, share_labels=True)
            attacks.run_battery(
                mlp_update,
                mlp,
                [gi_x],
                truth=x,
                truth_labels=y,
                yardstick=stick,
                tally=tallies["ICA"],
                seed=seed,
                batch=b,
                group=k,
            )
            row, _ = attacks.score(separation.recover_batch(mlp_update, mlp, mlp.hidden, (3, 32, 32)), x, y, stick)
            tallies["ICA"].add(batch=b, group=k, method="ICA", **row)
    seconds = time.perf_counter() - start
    print(
        f"chapter 2, held out: model seeds {args.seeds}, CIFAR-10 test images {HELD_OUT[0]}-{HELD_OUT[-1]}, "
        f"batch sizes {BATCHES}, {seconds:.0f} s"
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
            batches=list(BATCHES),
            images=f"CIFAR-10 test images {HELD_OUT[0]}-{HELD_OUT[-1]}",
            budgets=dataclasses.asdict(budget),
            bn_weight=BN_WEIGHT,
            seconds=round(seconds, 1),
            torch=torch.__version__,
        )
    floor = " | ".join(
        f"{metric} {tallies['priors'].summary(metric, method='mean image').format(fmt)}"
        for metric, fmt in (("psnr", "{:.1f}"), ("identified", "{:.0%}"))
    )
    print(f"priors on GI-x, convnet_bn, paired over (batch, group); the mean-image floor, no gradient: {floor}")
    failed = 0
    for experiment, title in (
        ("priors", None),
        ("ICA", f"source separation against GI-x, MLP, batch size {ICA_BATCH}"),
    ):
        if title:
            print(title)
        chosen = [c for c in CLAIMS if c.experiment == experiment]
        lines, bad = claims.verify(chosen, SAID, tallies, shipped)
        print("\n".join(lines))
        failed += bad
    print(
        f"chapter 2: {'every claim of the book holds' if not failed else f'{failed} claims of the book do not hold'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
