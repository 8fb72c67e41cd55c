"""Check chapter 7's verdicts on clients and victim seeds the chapter does not use (part of `make verify`).

    python benchmarks/verify_ch7.py            # exit status 1 when a verdict does not hold
    python benchmarks/verify_ch7.py --quick    # a smoke test of every code path (quick budgets; proves nothing)

Chapter 7 runs the book's FedSGD federation in Flower's simulation engine under each of Flower's
DP options (no DP, ``DifferentialPrivacyServerSideFixedClipping``,
``DifferentialPrivacyClientSideFixedClipping`` with ``fixedclipping_mod``, ``LocalDpMod``), each
set to about epsilon = 8 at delta = 1e-5, attacks what the curious server received with GI-x and
GIAS, and states per option whether the client's images leak to the server
(:data:`gi_tutorial.flower.CLAIMS`: the strongest attack beats the best no-gradient floor on
identification and PSNR, or stays at the floors; :func:`gi_tutorial.flower.protection`).

This script re-runs that on held-out data: the clients' shards are drawn from Fashion-MNIST
**test images 7000-7099** (chapter 7's held-out range is 7000-7999; the chapter's clients hold
test images 2900-2999, and the DCGAN was trained on the train split, so it never saw these), with
victim seeds 10-12 (the chapter uses 0-2). The federation and the DP options are the chapter's
(victim A, batch 4, lr 0.1, clip bound 0.05, options calibrated for its 3 rounds), with 3 clients
and one round: the verdicts are about the first round's replies, which do not depend on the rounds
that follow. It prints each option's verdict on both scores with mean ± sd and n, and returns 1
when one differs from the chapter's. ``--out`` also writes the held-out scores, with provenance, to a
results file (the chapter shows the shipped ``gi_tutorial/results/ch7_verify.json`` beside its verdicts).
About 4 to 6 minutes on one core, Ray's start included.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

from gi_tutorial import attacks, config, data, flower, generators, stats, storage, yardstick

SEEDS = (10, 11, 12)
CLIENT_IMAGES = range(7000, 7100)  # chapter 7's held-out range: test images 7000-7999
CLIP, LR, BATCH, CHAPTER_ROUNDS = 0.05, 0.1, 4, 3  # chapter 7's federation and DP settings
KINDS = ("none", "server_clip", "client_clip", "local")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument(
        "--quick", action="store_true", help="quick budgets: a smoke test of every code path (proves nothing)"
    )
    parser.add_argument(
        "--out", default="", help="also write the held-out scores, with provenance, to this results file"
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ[config.QUICK_ENV] = "1"
    config.set_threads()
    start = time.perf_counter()
    images, labels = data.fashion_mnist("test")
    chosen = list(CLIENT_IMAGES)
    train = images[chosen], labels[chosen]
    options = [flower.calibrate(kind, clipping_norm=CLIP, rounds=CHAPTER_ROUNDS) for kind in KINDS]
    num_clients = len(args.seeds)  # seed k attacks client k's first reply, as the chapter does
    simulation = flower.run_deployments(
        train, options=options, seeds=args.seeds, num_clients=num_clients, num_rounds=1, batch_size=BATCH, lr=LR
    )
    print(
        f"Flower {simulation.versions['flwr']}, Ray {simulation.versions['ray']}: {len(simulation.deployments)} "
        f"deployments in one simulation, {simulation.seconds:.0f} s "
        f"(first reply after {simulation.first_reply:.1f} s)",
        flush=True,
    )

    recipes = attacks.battery(flower.attack_budget(), generator="dcgan", methods=flower.ATTACKS)
    stick = yardstick.fashion_mnist(exclude=train[0])
    dcgan = generators.load_generator()
    scores = stats.Tally(("option", "seed", "method"))
    for index, d in enumerate(simulation.deployments):
        r = d.reply(client=args.seeds.index(d.seed), server_round=1)
        x, y = d.truth(r)
        attacks.run_battery(
            r.update,
            r.model(),
            recipes,
            truth=x,
            truth_labels=y,
            yardstick=stick,
            generators={"dcgan": dcgan},
            tally=scores,
            seed=d.seed,
            option=d.dp.kind,
        )
        print(
            f"  attacked {index + 1}/{len(simulation.deployments)} ({d.dp.kind}, seed {d.seed}): "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )

    print(
        f"\nHeld out: clients' shards from Fashion-MNIST test images {CLIENT_IMAGES.start}-{CLIENT_IMAGES.stop - 1}, "
        f"victim seeds {args.seeds}, one update per (option, seed); {stick.description}"
    )
    if args.out:
        command = " ".join(["python benchmarks/verify_ch7.py", *(argv if argv is not None else sys.argv[1:])])
        storage.save_results(
            args.out,
            scores.to_json(),
            command=command,
            seeds=list(args.seeds),
            images=f"Fashion-MNIST test images {CLIENT_IMAGES.start}-{CLIENT_IMAGES.stop - 1} (the clients' shards)",
            federation=dict(
                clients=num_clients, rounds=1, batch=BATCH, lr=LR, clip=CLIP, calibrated_for_rounds=CHAPTER_ROUNDS
            ),
            budgets=dataclasses.asdict(flower.attack_budget()) if not args.quick else "quick mode: a few steps each",
            seconds=round(time.perf_counter() - start, 1),
            flwr=simulation.versions["flwr"],
            ray=simulation.versions["ray"],
            torch=torch.__version__,
        )
    failed = []
    for kind in KINDS:
        verdict = flower.protection(scores, kind)
        claimed = flower.CLAIMS[kind]
        holds = verdict.verdict == claimed
        failed += [] if holds else [kind]
        print(f"\n{kind}: chapter: {claimed}; held out: {verdict.verdict} -> {'holds' if holds else 'DOES NOT HOLD'}")
        for metric, (unit, fmt) in flower.UNITS.items():
            attack = {m: scores.summary(metric, option=kind, method=m).format(fmt, unit) for m in flower.ATTACKS}
            floor = {m: scores.summary(metric, option=kind, method=m).format(fmt, unit) for m in flower.FLOORS}
            print(f"  {metric}: " + "; ".join(f"{m} {v}" for m, v in {**attack, **floor}.items()))
            print(f"    {verdict.sentences[metric]}")
    print(
        f"\n{len(KINDS) - len(failed)} of {len(KINDS)} verdicts hold on held-out clients and seeds"
        + (f"; not: {', '.join(failed)}" if failed else "")
        + f" ({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
