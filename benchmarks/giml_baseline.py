"""Chapter 5's non-meta baseline: invert every update of GIML's stream with GI-x, then train a GAN on the results.

Is meta-learning needed to learn a prior from gradients? The obvious alternative needs no
Reptile at all: the server inverts each update it receives in pixel space (GI-x, Geiping et
al., 2020), keeps the reconstructions, and trains the same generator architecture on them as
a GAN (``generators.train_gan``, Radford et al., 2016), as if they were a dataset. A GAN is the
choice because it is how the book's data-trained prior was made: the two generators then
differ only in their data (real images against reconstructions), and GI-z searches both the
same way.

The baseline gets what GIML got: the same stream (by default that of the shipped GIML run:
FedSGD clients at batch 1 with their labels shared, victim A with seed 1 training every 5
rounds, seed 0; ``--batch-size 4 --clients-per-round 2 --labels recovered`` gives the harder
stream) and the same CPU seconds (``--seconds``, default: the ``seconds_total`` of the GIML run's
record). ``--invert-share`` of them go to inverting, in stream order, as many of the first
``--updates`` updates as fit; the rest to the GAN, whose number of steps is set from a timed
start. The result ships as ``gi_tutorial/checkpoints/fashion_mnist_nonmeta.pt`` with its record::

    python benchmarks/giml_baseline.py
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gi_tutorial import attacks, config, data, fl, generators, giml, models

DEFAULT_OUT = generators.CHECKPOINTS / "fashion_mnist_nonmeta.pt"


def invert_stream(rounds, recipe: attacks.PixelAttack, max_updates: int, seconds: float) -> tuple[torch.Tensor, int]:
    """GI-x on the stream's updates, in order, until ``max_updates`` are done or ``seconds`` have passed.

    The attacker sees each update and its round's model only; where the update carries no labels they
    are read off it (:func:`gi_tutorial.giml.task_labels`). Returns the reconstructions and how many
    updates were inverted.
    """
    images, done, start = [], 0, time.perf_counter()
    for r in rounds:
        for update in r.updates:
            if done == max_updates or time.perf_counter() - start > seconds:
                return torch.cat(images), done
            labels = giml.task_labels(update, r.model)
            if labels is not None:
                update = update.replace(labels=labels)
            out = recipe.run(update, r.model, image_shape=(1, 32, 32), generators={}, yardstick=None, seed=done)
            images.append(out[recipe.name].images.clamp(0, 1))
            done += 1
    return torch.cat(images), done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="CPU budget (default: the GIML run's)")
    parser.add_argument("--giml-prefix", default=giml.SNAPSHOT_PREFIX, help="the GIML run whose budget is matched")
    parser.add_argument("--invert-share", type=float, default=0.5, help="share of the budget spent inverting")
    parser.add_argument("--updates", type=int, default=600, help="invert at most this many updates of the stream")
    parser.add_argument("--x-iters", type=int, default=100, help="GI-x steps per update")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--clients-per-round", type=int, default=1)
    parser.add_argument("--labels", choices=("shared", "recovered"), default="shared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victim-seed", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    config.set_threads()
    record = giml.snapshot_record(prefix=args.giml_prefix)
    budget = args.seconds if args.seconds is not None else record["seconds_total"]
    train_images, train_labels = data.fashion_mnist("train")
    victim = models.build_model("convnet_fc", in_channels=1, seed=args.victim_seed)
    num_rounds = -(-args.updates // args.clients_per_round)
    stream = fl.fl_rounds(
        train_images,
        train_labels,
        victim,
        num_rounds,
        clients_per_round=args.clients_per_round,
        batch_size=args.batch_size,
        share_labels=args.labels == "shared",
        seed=args.seed,
    )
    recipe = attacks.gi_x(attacks.Budget(x_iters=args.x_iters, z_iters=0, z_restarts=0, w_iters=0))
    start = time.perf_counter()
    recon, inverted = invert_stream(stream, recipe, args.updates, args.invert_share * budget)
    seconds_invert = time.perf_counter() - start
    print(
        f"inverted {inverted} updates ({len(recon)} images) with {recipe.num_iters} GI-x steps in "
        f"{seconds_invert:.0f} s",
        flush=True,
    )
    calibration = time.perf_counter()
    generators.train_gan(recon, 10, seed=args.seed)  # a timed start: seconds per GAN step on this machine
    per_step = (time.perf_counter() - calibration) / 10
    gan_steps = max(1, int((budget - (time.perf_counter() - start)) / per_step))
    generator = generators.train_gan(recon, gan_steps, seed=args.seed, log_every=500)
    seconds_total = time.perf_counter() - start
    generator.trained_on = "gradients"  # learned from reconstructions of the updates: no client image, no public data
    command = " ".join(["python benchmarks/giml_baseline.py", *(argv if argv is not None else sys.argv[1:])])
    saved = generators.save_checkpoint(
        generator,
        args.out,
        half=True,
        method="non-meta baseline: GI-x on each update of the stream, then a DCGAN trained on the reconstructions",
        data=record["data"]
        if (args.batch_size, args.labels) == (1, "shared")
        else f"the stream of `python -m gi_tutorial.giml --batch-size {args.batch_size} --clients-per-round "
        f"{args.clients_per_round} --labels {args.labels}` (seed {args.seed}, victim seed {args.victim_seed})",
        updates_inverted=inverted,
        images=len(recon),
        x_iters=recipe.num_iters,
        gan_steps=gan_steps,
        gan_batch_size=64,
        seconds_invert=round(seconds_invert, 1),
        seconds_total=round(seconds_total, 1),
        budget_seconds=budget,
        budget_of=record["file"],
        seed=args.seed,
        torch=torch.__version__,
        command=command,
    )
    print(
        f"{saved['file']}: sha256 {saved['sha256']}, {gan_steps} GAN steps, {seconds_total:.0f} s in all "
        f"(budget {budget:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
