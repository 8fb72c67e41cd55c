"""Chapter 6's DP-SGD audit: GI-x, GI-z and GIAS against one client's Opacus DP-SGD update, over the noise multiplier.

    python benchmarks/ch6_dp_sgd_attack.py [--out gi_tutorial/results/ch6_dp_sgd_attack.json]

The chapter's set-up (victim A, ``convnet_fc``, untrained; batches of 4 of chapter 6's own test
images from 1500, group ``k`` on victim seed ``k``, labels shared; the attack battery with
chapter 6's budget and the shipped DCGAN; the label-only and DCGAN-sample floors; the yardstick
that excludes test images 1500-1999). Each group's update is one step of example-level DP-SGD
(:func:`gi_tutorial.defenses.dp_sgd_update`: per-example clip ``C = 1``, noise ``N(0, (zC)^2)``
on the sum, divided by the batch), with the noise drawn from seed ``2000 + k``, as the chapter
draws it, so that the chapter's live slice reproduces these rows.

The noise multipliers: the issue's 0.3, 0.5, 1 and 2; 0.1 below them (where the attacks may still
leak, so that the noise that stops each attack is bracketed); and the ``z`` that gives
example-level epsilon 8 and 3 under the stated local schedule (:data:`SCHEDULE`: the client holds
400 images, Poisson-samples batches of 4, 50 noised steps in all, delta = 1e-5), so that the
attack can be set beside the utility of DP-SGD at the same epsilon. Each level's epsilon
(add/remove, amplified by the client's Poisson sampling, composed over the 50 steps: it binds
the server, which sees only noised steps) is stored with the results.

About 5 minutes on one thread (7 levels x 3 groups of battery runs). ``GI_TUTORIAL_QUICK=1``:
quick budgets on the 20 shipped images, two levels, two groups (writes nowhere unless ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from gi_tutorial import attacks, config, data, defenses, generators, models, stats, storage
from gi_tutorial import yardstick as yardsticks

DEFAULT_OUT = storage.RESULTS / "ch6_dp_sgd_attack.json"
BATCH, CLIP, FIRST, GROUPS = 4, 1.0, 1500, 3  # the chapter's: victim A, batch 4, C = 1, test images 1500+
SCHEDULE = defenses.SGDSchedule(num_examples=400, batch_size=BATCH, steps=50, delta=1e-5)
ISSUE_LEVELS = (0.3, 0.5, 1.0, 2.0)
METHODS = ("GI-x", "GI-z", "GIAS")


def levels(quick: bool) -> list[dict]:
    """The noise multipliers, ascending, each with why it is there and its example-level epsilon under SCHEDULE."""
    if quick:
        chosen = {0.3: "issue", 1.0: "issue"}
    else:
        chosen = dict.fromkeys(ISSUE_LEVELS, "issue") | {0.1: "below the issue's levels"}
        for target in (8.0, 3.0):
            z = defenses.noise_multiplier_for(
                target, SCHEDULE.sample_rate, SCHEDULE.steps, SCHEDULE.delta, adjacency="add_remove"
            )
            chosen[z] = f"epsilon {target:g}"
    return [{"z": z, "why": why, "epsilon": defenses.dp_sgd_epsilon(z, SCHEDULE)} for z, why in sorted(chosen.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT} (none in quick mode)")
    args = parser.parse_args(argv)
    threads = config.set_threads()
    quick = config.is_quick()
    out = args.out if args.out is not None else (None if quick else DEFAULT_OUT)
    first, groups = (2, 2) if quick else (FIRST, GROUPS)
    images, labels = data.fashion_mnist("test", data.NUM_SHIPPED if quick else FIRST + 500)
    targets = images[first : first + BATCH * groups]
    stick = yardsticks.fashion_mnist(exclude=targets if quick else images[FIRST : FIRST + 500], score="ssim")
    recipes = attacks.battery("ch6", methods=METHODS)
    G = generators.load_generator()
    tally = stats.Tally(keys=("z", "batch", "seed", "method"))
    plan = levels(quick)
    start, cpu_start = time.perf_counter(), time.process_time()
    for level in plan:
        for k in range(groups):
            x, y = targets[k * BATCH : (k + 1) * BATCH], labels[first + k * BATCH : first + (k + 1) * BATCH]
            victim = models.build_model("convnet_fc", in_channels=1, seed=k)
            update = defenses.dp_sgd_update(
                victim,
                x,
                y,
                clip_norm=CLIP,
                noise_multiplier=level["z"],
                generator=torch.Generator().manual_seed(2000 + k),
                share_labels=True,
            )
            attacks.run_battery(
                update,
                victim,
                recipes,
                truth=x,
                truth_labels=y,
                yardstick=stick,
                generators={"dcgan": G},
                tally=tally,
                seed=k,
                z=level["z"],
                batch=BATCH,
            )
        found = defenses.audit(tally, z=level["z"])
        print(
            f"z = {level['z']:.3g} ({defenses.describe_epsilon(level['epsilon'])}): {found.state}; "
            f"{found.sentences['identified']} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if out is not None:
        command = storage.command(__file__, argv)
        storage.save_results(
            out,
            {"tally": tally.to_json(), "levels": plan},
            command=command,
            seeds=list(range(groups)),
            images=f"Fashion-MNIST test images {first}-{first + BATCH * groups - 1}, batches of {BATCH}, group k on victim seed k",
            victim="convnet_fc (victim A), untrained",
            schedule={
                "num_examples": SCHEDULE.num_examples,
                "batch_size": SCHEDULE.batch_size,
                "steps": SCHEDULE.steps,
                "delta": SCHEDULE.delta,
            },
            clip_norm=CLIP,
            noise_seeds="2000 + k",
            budgets={"battery": "ch6", "methods": list(METHODS), **asdict(attacks.budget_for("ch6"))},
            seconds=round(seconds, 1),
            cpu_seconds=round(cpu_seconds, 1),
            threads=threads,
            torch=torch.__version__,
            quick=quick,
        )
        print(f"wrote {out}")
    print(f"{len(plan)} levels x {groups} groups in {seconds:.0f} s ({cpu_seconds:.0f} s CPU) on {threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
