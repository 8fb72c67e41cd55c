"""Chapter 6's utility curve: test accuracy under DP-SGD and DP-FedAvg on Fashion-MNIST, shipped with provenance.

    python benchmarks/dp_utility.py [--seeds 0 1 2] [--out gi_tutorial/results/dp_utility.json] [--only dp_sgd live dp_fedavg]
                                    [--fed-epsilon 3] [--fed-lr LR] [--merge]

``--merge`` re-runs only the experiments in ``--only`` and keeps the other experiments' runs from
the existing results file, with their own provenance (command, seconds, epochs, sha256) under
``merged``; ``commands`` then says which command produced each experiment.

Three experiments, each over the seeds (network initialisation, sampling and noise):

- ``dp_sgd``: example-level DP-SGD with Opacus (``private_training.PRESETS["dp_sgd"]``) at
  epsilon 1, 3 and 8, and the same network trained without privacy
  (``PRESETS["non_private"]``); delta = 1e-5, add/remove adjacency, Poisson sampling;
- ``live``: the chapter's short live run (``PRESETS["live"]``, DP-SGD at epsilon 3), so the
  chapter can check the number it computes against these;
- ``dp_fedavg``: user-level central DP-FedAvg (FedSGD, shards of the train split, one client
  each) with 10, 100 and 1000 expected clients per round, Poisson-sampled, at one fixed
  epsilon (``--fed-epsilon``), beside the same rounds without privacy.

Published anchors (delta = 1e-5) are stored with the results: Tramèr & Boneh (2021), an
end-to-end CNN on Fashion-MNIST, 86.0% at epsilon = 3. Needs both Fashion-MNIST splits
(``make data``). Runs on one thread; ``GI_TUTORIAL_QUICK=1`` runs every path on the 20
shipped images in seconds (and writes nowhere unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from gi_tutorial import config, storage
from gi_tutorial import private_training as pt

DEFAULT_OUT = storage.RESULTS / "dp_utility.json"
EXPERIMENTS = ("dp_sgd", "live", "dp_fedavg")
EPOCH_KEYS = {"dp_sgd": ("dp_sgd", "non_private"), "live": ("live",), "dp_fedavg": ("dp_fedavg_rounds",)}
ANCHORS = [
    {
        "source": "Tramèr & Boneh (2021), end-to-end CNN (tanh) on Fashion-MNIST",
        "epsilon": 3.0,
        "delta": 1e-5,
        "accuracy": 0.860,
    },
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument(
        "--clients-per-round",
        type=float,
        nargs="+",
        default=None,
        help="DP-FedAvg's expected clients per round (default 10 100 1000; quick mode: 1, half and all of its 6)",
    )
    parser.add_argument("--fed-epsilon", type=float, default=3.0)
    parser.add_argument("--fed-lr", type=float, default=None, help="server learning rate (default: the preset's)")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of the experiments not in --only from the existing --out file",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results file (default {DEFAULT_OUT}; none in quick mode)"
    )
    args = parser.parse_args(argv)
    threads = config.set_threads()
    quick = config.is_quick()
    out = args.out if args.out is not None else (None if quick else DEFAULT_OUT)
    train, test, source = pt.load_splits()
    sgd = {
        "private": pt.QUICK_SGD if quick else pt.PRESETS["dp_sgd"],
        "none": pt.QUICK_SGD if quick else pt.PRESETS["non_private"],
        "live": pt.QUICK_SGD if quick else pt.PRESETS["live"],
    }
    fed = pt.QUICK_FED if quick else pt.PRESETS["dp_fedavg"]
    if args.fed_lr is not None:
        fed = replace(fed, server_lr=args.fed_lr)
    num_clients = len(train[0]) // fed.shard_size
    per_round = args.clients_per_round or ([1, num_clients // 2, num_clients] if quick else [10, 100, 1000])
    start, cpu_start = time.perf_counter(), time.process_time()
    runs: list[dict] = []

    def record(experiment: str, settings, result: pt.TrainResult, **extra) -> None:
        runs.append({"experiment": experiment, **extra, "settings": asdict(settings), **result.to_dict()})
        print(
            f"{experiment:10s} {extra} seed {result.seed}: accuracy {result.accuracy:.4f}, "
            f"epsilon {result.epsilon:.3f}, z {result.noise_multiplier:.3f}, {result.cpu_seconds:.0f} s CPU",
            flush=True,
        )

    for seed in args.seeds:
        if "dp_sgd" in args.only:
            for eps in args.epsilons:
                settings = sgd["private"] if math.isfinite(eps) else sgd["none"]
                record(
                    "dp_sgd",
                    settings,
                    pt.train_dp_sgd(train, test, target_epsilon=eps, delta=args.delta, settings=settings, seed=seed),
                    target_epsilon=eps,
                )
        if "live" in args.only:
            record(
                "live",
                sgd["live"],
                pt.train_dp_sgd(train, test, target_epsilon=3.0, delta=args.delta, settings=sgd["live"], seed=seed),
                target_epsilon=3.0,
            )
        if "dp_fedavg" in args.only:
            for m in per_round:
                for eps in (args.fed_epsilon, math.inf):
                    record(
                        "dp_fedavg",
                        fed,
                        pt.train_dp_fedavg(
                            train,
                            test,
                            clients_per_round=m,
                            target_epsilon=eps,
                            delta=args.delta,
                            settings=fed,
                            seed=seed,
                        ),
                        target_epsilon=eps,
                        clients_per_round=m,
                        num_clients=num_clients,
                    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    ran = len(runs)  # this command's runs (a merge adds the kept ones below)
    command = storage.command(__file__, argv)
    epochs = {
        "dp_sgd": sgd["private"].epochs,
        "non_private": sgd["none"].epochs,
        "live": sgd["live"].epochs,
        "dp_fedavg_rounds": fed.rounds,
    }
    commands = dict.fromkeys(args.only, command)
    merged = None
    if args.merge and out is not None and out.exists():
        old, old_record = storage.load_results(out)  # hash-checked
        kept = [r for r in old["runs"] if r["experiment"] not in args.only]
        runs += kept
        runs.sort(key=lambda r: EXPERIMENTS.index(r["experiment"]))  # stable: seeds stay in order
        merged = {k: v for k, v in old_record.items() if k not in ("merged", "commands")}
        merged["experiments"] = sorted({r["experiment"] for r in kept}, key=EXPERIMENTS.index)
        for experiment in merged["experiments"]:
            commands[experiment] = old_record.get("commands", {}).get(experiment, old_record["command"])
            for key in EPOCH_KEYS[experiment]:
                epochs[key] = old_record["epochs"][key]
    results = {"runs": runs, "anchors": ANCHORS}
    for row in pt.summarize(results):
        print(row["label"], row["accuracy"].format("{:.2%}"), f"(epsilon spent {row['epsilon']:.3g})")
    print(f"{ran} runs in {seconds:.0f} s ({cpu_seconds:.0f} s CPU) on {threads} thread(s)")
    if out is not None:
        storage.save_results(
            out,
            results,
            command=command,
            commands=commands,
            seeds=args.seeds,
            data=source,
            epochs=epochs,
            seconds=round(seconds, 1),
            cpu_seconds=round(cpu_seconds, 1),
            threads=threads,
            delta=args.delta,
            quick=quick,
            **({"merged": merged} if merged is not None else {}),
        )
        print(
            f"wrote {out}"
            + (f" (kept {', '.join(merged['experiments'])} from {merged['command']!r})" if merged else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
