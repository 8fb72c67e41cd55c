"""Check chapter 6's noise verdict on victims and images the chapter does not use.

    python benchmarks/defense_check.py [--seeds 1 2 3] [--first-image 100]

Chapter 6 finds that the attacks with a generative prior survive more DP-FedAvg noise than
pixel-space inversion. This script repeats its noise sweep (clip 1, noise multipliers 0.003,
0.01, 0.03; batch size 4; the chapter's budgets) on other seeds of victim A and other
held-out Fashion-MNIST test images, and prints mean ± std PSNR (capped at 40 dB) and the
paired wins of each generative attack over GI-x. Needs the full test split (``make data``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import config, data, defenses, fl, generators, giml, invert, metrics, models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--first-image", type=int, default=100)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    args = parser.parse_args()
    config.set_threads()
    images, labels = data.fashion_mnist("test", args.first_image + 4 * len(args.seeds))
    gens = {"GIAS": generators.load_generator(), "GIAS (GIML)": giml.load_snapshot()}
    scores: dict[tuple[float, str], list[float]] = {}
    start = time.perf_counter()
    for k, seed in enumerate(args.seeds):
        victim = models.build_model("convnet_fc", in_channels=1, seed=seed)
        index = list(range(args.first_image + 4 * k, args.first_image + 4 * k + 4))
        x, y = images[index], labels[index]
        for z in args.noise:
            rng = torch.Generator().manual_seed(1000 + k)
            update = fl.client_update(victim, x, y, share_labels=True,
                                      defense=lambda u: defenses.dp_fedavg(u, 1.0, z, rng))
            runs = {"GI-x": invert.inverting_gradients(update, victim, image_shape=(1, 32, 32), num_iters=150,
                                                       progress=False).images}
            for name, g in gens.items():
                run = invert.gias(update, victim, g, latent_iters=60, weight_iters=80, restarts=2, latent_lr=0.1,
                                  weight_lr=5e-4, distance="cosine", progress=False)
                runs[name] = run.images
                if name == "GIAS":
                    runs["GI-z"] = run.latent.images
            for name, rec in runs.items():
                scores.setdefault((z, name), []).append(metrics.summarize(metrics.evaluate(rec, x))["psnr_capped"])
    print(f"victim A seeds {args.seeds}, test images from {args.first_image}, batch 4, "
          f"{time.perf_counter() - start:.0f} s")
    for z in args.noise:
        cells = "  ".join(f"{n} {np.mean(scores[(z, n)]):5.1f} ± {np.std(scores[(z, n)]):3.1f}"
                          for n in ("GI-x", "GI-z", "GIAS", "GIAS (GIML)"))
        wins = "  ".join(f"{n} > GI-x in {sum(a > b for a, b in zip(scores[(z, n)], scores[(z, 'GI-x')]))} of "
                         f"{len(args.seeds)}" for n in ("GI-z", "GIAS", "GIAS (GIML)"))
        print(f"  z = {z:g}: {cells}\n           {wins}")


if __name__ == "__main__":
    main()
