#!/usr/bin/env python3
"""Why the attacks on breaching's ResNet-18 case plateau (issue 22): at batch 4 near the floor, at batch 1 below 30 dB.

    /tmp/gi-peer/venv/bin/python benchmarks/peer_plateau.py 12    # CIFAR-10 test images 12-15, about 5 minutes
    /tmp/gi-peer/venv/bin/python benchmarks/peer_plateau.py 17 --batch 1 --tv 0 --lr 0.01 --steps 300  # no prior
    /tmp/gi-peer/venv/bin/python benchmarks/peer_plateau.py 17 --batch 1 --tv 0 --lr 1 --steps 15 --lbfgs

Runs in the virtual environment that ``make peer-benchmark`` creates (breaching builds the case).
The same recipe as ``peer.py``'s ``tv`` (150 steps, cosine distance, TV 0.1, signed Adam with
step decay; the options change the batch, the TV weight and the step) starts three times: at random, and at the true images plus Gaussian noise of sd 0.05
and 0.15. For each it prints the PSNR where it starts and ends and the cosine distance between
the gradient of its final images and the shared one, beside that distance at the true images
(0), at the mean of the other shipped images and at flat grey. A run that starts near the truth
and leaves it says the objective's minimum is not at the truth (the prior pulls away); a run
from random that stops at a larger distance than the run from the truth reaches says the
optimiser stops in a local minimum.
"""

from __future__ import annotations

import argparse
import sys
import time

import peer  # benchmarks/peer.py, beside this script: breaching's case and the PSNR
import torch

from gi_tutorial import data, fl, invert, objectives, priors, spaces


def gradient_distance(model, images, labels, shared) -> float:
    """The cosine distance (``objectives.gradient_distance``, unweighted) of ``images``' gradient to the shared one."""
    candidate = fl.client_update(model, images, labels).gradients
    return float(objectives.gradient_distance(candidate, shared, kind="cosine"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first_image", type=int, help="the batch's first CIFAR-10 test image (8 or 12 in the README)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4, help="images in the batch (1: the batch-1 case of the README)")
    parser.add_argument("--tv", type=float, default=0.1, help="TV weight (0: no prior, the gradient distance alone)")
    parser.add_argument("--lr", type=float, default=0.1, help="signed Adam's step")
    parser.add_argument(
        "--lbfgs", action="store_true", help="L-BFGS with a strong-Wolfe line search instead (no box; --lr is its step)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batch, first = args.batch, args.first_image
    shipped, labels = data.cifar10_targets(data.NUM_SHIPPED, allow_download=False)
    case = peer.build_case(batch, "invertinggradients", 1, shipped[first:], labels[first:])
    model = peer.wrapped_model(case)
    truth = (case["true"]["data"] * case["std"] + case["mean"]).clamp(0, 1)
    true_labels = case["true"]["labels"]
    shared = tuple(g.detach() for g in case["shared"]["gradients"])
    update = fl.SharedUpdate(gradients=shared, batch_size=batch, labels=case["shared"]["metadata"]["labels"])
    keep = torch.ones(len(shipped), dtype=torch.bool)
    keep[first : first + batch] = False
    mean = shipped[keep].mean(0, keepdim=True).expand(batch, -1, -1, -1).clone()
    grey = torch.full_like(truth, 0.5)
    print(
        f"CIFAR-10 test images {first}-{first + batch - 1}: cosine gradient distance at the truth "
        f"{gradient_distance(model, truth, true_labels, shared):.4f}, at the mean image "
        f"{gradient_distance(model, mean, true_labels, shared):.4f} ({peer.psnr_of(mean, truth):.2f} dB), at grey "
        f"{gradient_distance(model, grey, true_labels, shared):.4f} ({peer.psnr_of(grey, truth):.2f} dB)",
        flush=True,
    )
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    for name, start in (
        ("random start", None),
        ("truth + noise 0.05", (truth + 0.05 * noise).clamp(0, 1)),
        ("truth + noise 0.15", (truth + 0.15 * noise).clamp(0, 1)),
    ):
        t = time.process_time()
        rec = invert.reconstruct(
            update,
            model,
            spaces.PixelSpace(
                tuple(truth.shape), init="rand" if start is None else start, box=None if args.lbfgs else (0.0, 1.0)
            ),
            optimizer=invert.LBFGS(args.lr, line_search=True)
            if args.lbfgs
            else invert.Adam(args.lr, signed=True, decay=True),
            num_iters=args.steps,
            distance="cosine",
            priors=[priors.TotalVariation(args.tv)] if args.tv else [],
            history_every=args.steps,
            progress=False,
        )
        began = "random" if start is None else f"{peer.psnr_of(start, truth):.2f} dB"
        print(
            f"{name:20s}: starts at {began} -> ends at {peer.psnr_of(rec.images, truth):.2f} dB; cosine gradient "
            f"distance there {gradient_distance(model, rec.images, true_labels, shared):.4f} "
            f"({time.process_time() - t:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
