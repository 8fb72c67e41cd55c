"""Which score should identification rank by, PSNR or SSIM? The one that separates floors from leaks.

Identification asks whether a reconstruction is closer to its own true image than to K other
images of its class. A good ranking score leaves the floors (guesses that use no gradient)
at their chance level and credits the attacks that do leak. This script runs the book's
attacks (GI-x, GIAS) and floors on held-out Fashion-MNIST test images (7000+, which no chapter
uses) for victims S and A, and ranks every matched reconstruction both ways.

    python benchmarks/identification_score.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

from gi_tutorial import attacks, config, data, fl, generators, models, stats, yardstick

SETTINGS = [("S", "convnet_s", 8), ("S", "convnet_s", 16), ("A", "convnet_fc", 4), ("A", "convnet_fc", 8)]
FIRST_IMAGE = 7000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny budgets, to check the script runs")
    args = parser.parse_args(argv)
    config.set_threads()
    os.environ["GI_TUTORIAL_PROGRESS"] = "0"
    start = time.perf_counter()
    budget = attacks.QUICK if args.quick else attacks.BUDGETS["ch4"]
    images, labels = data.fashion_mnist("test")
    stick = yardstick.fashion_mnist()
    dcgan = generators.load_generator()
    recipes = [
        attacks.gi_x(budget),
        attacks.gias_attack(budget, latent_name=None),
        *attacks.floors("dcgan", mean_image=True),
    ]
    tally = stats.Tally(keys=("victim", "batch", "seed", "method"))
    offset = FIRST_IMAGE
    for victim_name, model_name, batch in SETTINGS:
        for seed in args.seeds:
            x, y = images[offset : offset + batch], labels[offset : offset + batch]
            offset += batch
            victim = models.build_model(model_name, in_channels=1, seed=100 + seed)
            update = fl.client_update(victim, x, y, share_labels=True)
            shown = attacks.run_battery(
                update,
                victim,
                recipes,
                truth=x,
                truth_labels=y,
                yardstick=stick,
                generators={"dcgan": dcgan},
                seed=seed,
            )
            for method, matched in shown.items():
                by = {
                    score: yardstick.Yardstick(
                        stick.public_images, stick.public_labels, stick.pool_images, stick.pool_labels, score=score
                    )
                    .identify(matched, x, y)
                    .rate
                    for score in ("psnr", "ssim")
                }
                tally.add(
                    victim=victim_name, batch=batch, seed=seed, method=method, by_psnr=by["psnr"], by_ssim=by["ssim"]
                )
            print(
                f"victim {victim_name} batch {batch} seed {seed}: done ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print("\nidentified, mean ± sd over seeds (ddof = 1)")
    print(f"{'victim':>6} {'batch':>5} {'method':>14} {'by PSNR':>16} {'by SSIM':>16}")
    for victim_name, _, batch in SETTINGS:
        for method in tally.levels("method"):
            where = dict(victim=victim_name, batch=batch, method=method)
            print(
                f"{victim_name:>6} {batch:>5} {method:>14} {tally.summary('by_psnr', **where).format('{:.0%}', with_n=False):>16} "
                f"{tally.summary('by_ssim', **where).format('{:.0%}', with_n=False):>16}"
            )
    floors = ["label only", "prior sample", "mean image"]
    for score in ("by_psnr", "by_ssim"):
        worst_floor = max(tally.summary(score, method=f).mean for f in floors)
        leak = {m: tally.summary(score, method=m).mean for m in ("GI-x", "GIAS")}
        print(
            f"{score}: highest floor {worst_floor:.1%}; GI-x {leak['GI-x']:.1%}, GIAS {leak['GIAS']:.1%}; "
            f"margin of the better attack over the highest floor {max(leak.values()) - worst_floor:+.1%}"
        )
    print(f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
