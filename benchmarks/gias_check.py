"""Check chapter 4's central verdict (GIAS against GI-x as the batch grows) on victims and images the chapter does not use.

    python benchmarks/gias_check.py [--seeds 3 4 5] [--first-image 200] [--batches 4 8 16 32]

The chapter's sweep attacks the small ConvNet (seeds 0-2) on Fashion-MNIST test images 20-115;
this runs the same sweep, with the chapter's budgets, on other victim seeds and on test images
from ``--first-image`` on. For each batch size it prints the capped PSNR (40 dB) of GI-x and of
GIAS (mean ± std over seeds), the unknowns/equations ratio, and the paired GIAS - GI-x margins.
Needs more than the 20 shipped test images (``make data``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import config, data, fl, generators, invert, metrics, models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--first-image", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    config.set_threads()
    stride = max(args.batches)
    images, labels = data.fashion_mnist("test", args.first_image + stride * len(args.seeds))
    generator = generators.load_generator()
    scores: dict[tuple[int, str], list[float]] = {}
    ratio = {}
    start = time.perf_counter()
    for k, seed in enumerate(args.seeds):
        torch.manual_seed(seed)
        small = models.ConvNet(1, 10, widths=(8, 16, 16), strides=(1, 2, 2), head="flatten")  # the chapter's victim
        first = args.first_image + k * stride
        for b in args.batches:
            x, y = images[first : first + b], labels[first : first + b]
            update = fl.client_update(small, x, y, share_labels=True)
            ratio[b] = b * 32 * 32 / update.num_values
            runs = {
                "GI-x": invert.inverting_gradients(
                    update, small, image_shape=(1, 32, 32), num_iters=250, progress=False
                ).images,
                "GIAS": invert.gias(
                    update,
                    small,
                    generator,
                    latent_iters=80,
                    weight_iters=120,
                    restarts=2,
                    latent_lr=0.1,
                    weight_lr=3e-4,
                    distance="cosine",
                    progress=False,
                ).images,
            }
            for method, rec in runs.items():
                scores.setdefault((b, method), []).append(metrics.summarize(metrics.evaluate(rec, x))["psnr_capped"])
    print(f"small ConvNet seeds {args.seeds}, test images from {args.first_image}, {time.perf_counter() - start:.0f} s")
    for b in args.batches:
        gx, gs = np.array(scores[(b, "GI-x")]), np.array(scores[(b, "GIAS")])
        margin = gs - gx
        print(
            f"  batch {b:2d} (unknowns/equations {ratio[b]:.2f}): GI-x {gx.mean():5.1f} ± {gx.std():4.1f} dB, "
            f"GIAS {gs.mean():5.1f} ± {gs.std():4.1f} dB, GIAS - GI-x {margin.mean():+5.1f} ± {margin.std():4.1f} dB, "
            f"more than 3 dB ahead in {int((margin > 3).sum())} of {len(margin)}"
        )


if __name__ == "__main__":
    main()
