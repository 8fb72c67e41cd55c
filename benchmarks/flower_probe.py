"""What a curious Flower server receives under each of Flower's DP options, and what each costs the model.

For no DP, ``DifferentialPrivacyServerSideFixedClipping``, ``DifferentialPrivacyClientSideFixedClipping``
(with ``fixedclipping_mod``) and ``LocalDpMod``, each at about epsilon = 8 at delta = 1e-5, this
runs the deployment of :mod:`gi_tutorial.flower` in Flower's simulation engine (Ray), every option
with every seed in one simulation (:func:`gi_tutorial.flower.run_deployments`: Ray starts once):
10 FedSGD clients (victim A, batch 4, lr 0.1) on private Fashion-MNIST train shards, 5 rounds,
seeds 0-2. For every update the curious strategy kept, it compares the recovered gradient with
the client's true gradient on the same batch (:func:`gi_tutorial.flower.inspect`, from the
client's data, which the server never saw): its norm, the relative error against the true
gradient and against the true gradient clipped to the option's bound, and whether it was
clipped. Then the global model's accuracy on 1,000 held-out test images (test split 9000-9999)
after the rounds, each option's epsilon under both adjacencies, the time to the first reply
(Ray's start) and each deployment's time.

The clip bound ``S`` (on the parameter update ``lr * g``) is the median update norm of the
clients' first batches on the initial model, so about half the updates are clipped.

    python benchmarks/flower_probe.py [--seeds 0 1 2] [--clients 10] [--rounds 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

from gi_tutorial import data, defenses, fl, flower, models, stats, storage
from gi_tutorial.config import set_threads

OPTIONS = ("none", "server_clip", "client_clip", "local")
TARGET_EPSILON, DELTA = 8.0, 1e-5


def ray_start_seconds() -> float:
    """Ray's own start and stop with the cheap backend's init arguments (no Flower, no actor)."""
    import ray

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")  # as flower.simulate does
        ray.init(**flower.CHEAP_BACKEND["init_args"])
    ray.shutdown()
    return time.perf_counter() - start


def clip_bound(train, num_clients: int, batch_size: int, lr: float, seed: int) -> float:
    """The median norm of the clients' first parameter updates on the initial model."""
    model = models.build_model("convnet_fc", in_channels=1)
    shards = flower.make_shards(*train, num_clients, batch_size, seed=seed)
    norms = [
        lr * float(defenses.global_norm(fl.client_update(model, *flower.client_batch(s, 1, batch_size)).gradients))
        for s in shards
    ]
    return statistics.median(norms)


def noise_to_signal(deployment: flower.Deployment, lr: float, num_clients: int) -> float:
    """The expected norm of the DP noise on the averaged update over the norm of the averaged clipped
    update, mean over rounds: how much of the global model's step is noise."""
    dp = deployment.dp
    if dp.kind == "none":
        return 0.0
    d = sum(p.numel() for p in deployment.model.parameters())
    per_entry = (
        dp.noise_multiplier * dp.clipping_norm / num_clients
        if dp.kind != "local"
        else dp.local_sigma / num_clients**0.5
    )  # m independent local noises averaged
    ratios = []
    for server_round in sorted({r.server_round for r in deployment.received}):
        mine = [r for r in deployment.received if r.server_round == server_round]
        clipped = []
        for r in mine:
            g = torch.cat([t.flatten() for t in fl.client_update(r.model(), *deployment.truth(r)).gradients]) * lr
            clipped.append(g * min(1.0, dp.clipping_norm / float(g.norm())))
        ratios.append(per_entry * d**0.5 / float(torch.stack(clipped).mean(0).norm()))
    return statistics.fmean(ratios)


def inspect(deployment: flower.Deployment) -> list[dict]:
    """Per kept update: how what the server received relates to the client's true gradient."""
    rows = []
    for r in deployment.received:
        seen = flower.inspect(deployment, r)
        rows.append(
            {
                "norm": seen.norm,
                "true_norm": seen.true_norm,
                "rel_error_true": seen.distance,
                "rel_error_clipped": seen.clipped_distance,
                "cosine": seen.cosine,
                "clipped": seen.clipped and not seen.noised,
                "over_bound": seen.clipped,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", default=None, help="write the results (with provenance) to this JSON file")
    args = parser.parse_args(argv)
    set_threads(1)
    began = time.perf_counter()

    ray_starts = [ray_start_seconds() for _ in range(3)]
    train = data.fashion_mnist("train")
    test_images, test_labels = data.fashion_mnist("test")
    test = (test_images[9000:], test_labels[9000:])
    clip = clip_bound(train, args.clients, args.batch_size, args.lr, seed=0)

    options = [
        flower.calibrate(option, clipping_norm=clip, rounds=args.rounds, target_epsilon=TARGET_EPSILON, delta=DELTA)
        for option in OPTIONS
    ]
    simulation = flower.run_deployments(
        train,
        test,
        options=options,
        seeds=args.seeds,
        num_clients=args.clients,
        num_rounds=args.rounds,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    print(
        f"one simulation of {len(simulation.deployments)} deployments: {simulation.seconds:.0f} s, first reply "
        f"after {simulation.first_reply:.1f} s (Flower {simulation.versions['flwr']}, Ray "
        f"{simulation.versions['ray']})",
        flush=True,
    )
    runs = []
    for deployment in simulation.deployments:
        rows = inspect(deployment)
        runs.append(
            {
                "option": deployment.dp.kind,
                "seed": deployment.seed,
                "seconds": deployment.seconds,
                "noise_to_signal": noise_to_signal(deployment, args.lr, args.clients),
                "accuracy": deployment.accuracy[args.rounds],
                "accuracy_before": deployment.accuracy[0],
                "updates": len(rows),
                **{k: statistics.fmean(float(r[k]) for r in rows) for k in rows[0]},
            }
        )
        print(
            f"{deployment.dp.kind:12s} seed {deployment.seed}: {deployment.seconds:5.1f} s, accuracy "
            f"{runs[-1]['accuracy']:.3f}, rel. error vs true {runs[-1]['rel_error_true']:.3g}",
            flush=True,
        )

    table = []
    for option in OPTIONS:
        dp = flower.calibrate(
            option, clipping_norm=clip, rounds=args.rounds, target_epsilon=TARGET_EPSILON, delta=DELTA
        )
        mine = [r for r in runs if r["option"] == option]
        spread = {
            k: stats.mean_sd(r[k] for r in mine)
            for k in (
                "norm",
                "true_norm",
                "rel_error_true",
                "rel_error_clipped",
                "cosine",
                "clipped",
                "over_bound",
                "noise_to_signal",
                "accuracy",
                "seconds",
            )
        }
        default = flower.privacy(dp, args.rounds)
        other = flower.privacy(dp, args.rounds, "replace_one" if default.adjacency == "add_remove" else "add_remove")
        table.append(
            {
                "option": option,
                "noise_multiplier": dp.noise_multiplier if option.endswith("clip") else None,
                "local_epsilon_per_round": dp.epsilon,
                "local_sigma": dp.local_sigma if option == "local" else None,
                "flower_epsilon": flower_epsilon(dp, args.rounds, args.clients),
                "epsilon": {default.adjacency: default.epsilon, other.adjacency: other.epsilon},
                **{k: {"mean": v.mean, "sd": v.sd, "n": v.n} for k, v in spread.items()},
            }
        )

    print(
        f"\nclip bound S = {clip:.4g} (parameter update; {clip / args.lr:.4g} in gradient units), "
        f"{args.clients} clients x {args.rounds} rounds, batch {args.batch_size}, lr {args.lr}, "
        f"seeds {args.seeds}; Ray start alone: {stats.mean_sd(ray_starts)} s; first reply in the simulation "
        f"after {simulation.first_reply:.1f} s"
    )
    print(
        "sigma / S: the noise's standard deviation over the clip bound (central: on the sum of the updates; "
        "local: on each update). eps: over all rounds at delta = 1e-5 (Opacus RDP); eps Flower: its own, over all "
        "rounds from its accountant for the central wrappers (needs flwr[dp]), per round for LocalDpMod; "
        "clipped: share of updates the server got at exactly the bound (over S: share whose true norm exceeded "
        "it); noise/signal: noise norm on the averaged update over the averaged clipped update's norm"
    )
    print(
        f"{'option':12s} {'sigma/S':>8s} {'eps add/rm':>10s} {'eps repl.':>10s} {'eps Flower':>10s} "
        f"{'|g recv|':>14s} {'rel.err true':>16s} {'rel.err clipped':>16s} {'clipped':>8s} {'over S':>7s} "
        f"{'noise/signal':>13s} {'accuracy':>15s} {'seconds':>11s}"
    )
    for row in table:

        def f(k: str, p: int = 3, row: dict = row) -> str:
            return f"{row[k]['mean']:.{p}g} ± {row[k]['sd']:.1g}"

        knob = (
            row["noise_multiplier"]
            if row["noise_multiplier"] is not None
            else (row["local_sigma"] / clip if row["local_sigma"] is not None else 0.0)
        )
        own = f"{row['flower_epsilon']:10.3g}" if row["flower_epsilon"] is not None else f"{'-':>10s}"
        print(
            f"{row['option']:12s} {knob:8.4g} {row['epsilon']['add_remove']:10.3g} "
            f"{row['epsilon']['replace_one']:10.3g} {own} {f('norm'):>14s} {f('rel_error_true'):>16s} "
            f"{f('rel_error_clipped'):>16s} {row['clipped']['mean']:8.2f} {row['over_bound']['mean']:7.2f} "
            f"{f('noise_to_signal'):>13s} {f('accuracy'):>15s} {f('seconds', 3):>11s}"
        )
    total = time.perf_counter() - began
    print(
        f"total {total:.0f} s (n = {len(args.seeds)} seeds per option; accuracy before training "
        f"{runs[0]['accuracy_before']:.3f})"
    )
    if args.out:
        storage.save_results(
            args.out,
            {
                "table": table,
                "runs": runs,
                "ray_start_seconds": ray_starts,
                "first_reply_seconds": simulation.first_reply,
                "simulation_seconds": simulation.seconds,
                "clip_bound": clip,
            },
            command=" ".join([sys.executable.split("/")[-1]] + sys.argv),
            seeds=args.seeds,
            data="Fashion-MNIST train (shards), test 9000-9999 (accuracy)",
            seconds=total,
            versions=_versions(),
        )
    return 0


def flower_epsilon(dp: flower.DPConfig, rounds: int, num_clients: int) -> float | None:
    """Flower's own epsilon: ``LocalDpMod``'s per round; its accountant's for the central wrappers (if installed)."""
    if dp.kind == "local":
        return float(dp.epsilon)
    if dp.kind == "none":
        return None
    try:
        return flower.flower_epsilon(dp, rounds, num_clients)
    except ImportError:
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("flwr", "ray", "torch", "opacus")}


if __name__ == "__main__":
    sys.exit(main())
