"""Check chapter 5's verdicts on images and victims the chapter does not use.

    python benchmarks/giml_check.py [--seeds 2 3 4] [--first-image 20]

For each victim seed (victim A, ``convnet_fc``, untrained) it attacks held-out Fashion-MNIST
test images (from ``--first-image`` on: the chapter uses images 0-19) at batch sizes 1 and 4
with GI-x + TV and with GI-z and GIAS under three priors (the untrained generator, the shipped
GIML generator, the data-trained DCGAN), with the chapter's budgets. It prints mean ± std
PSNR (capped at 40 dB) and the paired wins of GIML over the untrained generator. Needs more
than the 20 shipped test images (``make data``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gi_tutorial import config, data, fl, generators, giml, invert, metrics, models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--first-image", type=int, default=20)
    parser.add_argument("--singles", type=int, default=2, help="single images per seed")
    parser.add_argument("--batches", type=int, default=1, help="batches of 4 per seed")
    args = parser.parse_args()
    config.set_threads()
    need = args.first_image + len(args.seeds) * (args.singles + 4 * args.batches)
    images, labels = data.fashion_mnist("test", need)
    generators_by_name = {"untrained": generators.untrained_generator(0), "GIML": giml.load_snapshot(),
                          "DCGAN": generators.load_generator()}
    scores: dict[tuple[int, str], list[float]] = {}
    cursor = args.first_image
    start = time.perf_counter()
    for seed in args.seeds:
        victim = models.build_model("convnet_fc", in_channels=1, seed=seed)
        groups = [[cursor + i] for i in range(args.singles)]
        cursor += args.singles
        groups += [list(range(cursor + 4 * k, cursor + 4 * k + 4)) for k in range(args.batches)]
        cursor += 4 * args.batches
        for group in groups:
            x, y = images[group], labels[group]
            update = fl.client_update(victim, x, y, share_labels=True)
            runs = {"GI-x + TV": invert.inverting_gradients(update, victim, image_shape=(1, 32, 32), num_iters=400,
                                                            progress=False).images}
            for name, g in generators_by_name.items():
                run = invert.gias(update, victim, g, latent_iters=150, weight_iters=200, restarts=2, latent_lr=0.1,
                                  weight_lr=3e-4, distance="cosine", progress=False)
                runs[f"GI-z, {name}"], runs[f"GIAS, {name}"] = run.latent.images, run.images
            for method, rec in runs.items():
                psnr = metrics.summarize(metrics.evaluate(rec, x))["psnr_capped"]
                scores.setdefault((len(group), method), []).append(psnr)
    print(f"victim seeds {args.seeds}, test images from {args.first_image}, {time.perf_counter() - start:.0f} s")
    for (b, method), values in sorted(scores.items()):
        print(f"  batch {b}  {method:20s} {np.mean(values):5.1f} ± {np.std(values):4.1f} dB  (n = {len(values)})")
    for b in sorted({b for b, _ in scores}):
        for space in ("GI-z", "GIAS"):
            ours, base = scores[(b, f"{space}, GIML")], scores[(b, f"{space}, untrained")]
            wins = sum(p > q for p, q in zip(ours, base))
            print(f"  batch {b}: {space} GIML vs untrained: {np.mean(ours) - np.mean(base):+.1f} dB, "
                  f"{wins} of {len(ours)} groups better")


if __name__ == "__main__":
    main()
