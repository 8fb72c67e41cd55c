"""Chapter 4's central figure: leakage against unknowns per independent gradient entry, three victims, five seeds.

    python benchmarks/central_figure.py                 # the shipped results (about an hour on one idle CPU thread)
    python benchmarks/central_figure.py --quick --out /tmp/central_quick.json   # every code path, a few minutes

Chapter 4 asks whether the talk's explanation holds: a generative prior pays where the gradient
has fewer independent entries than the batch has pixels (Jeon et al., 2021). One victim cannot
test that, because its ratio of unknowns to equations is the batch size in disguise. So the sweep
attacks three victims of different widths (``models.VICTIMS``: S, M and A) at several batch
sizes, with the battery of :mod:`gi_tutorial.attacks`, and scores every run with the yardstick
(PSNR beside the no-gradient floors, and identification). It is too slow for a chapter's five
minutes: this command writes the per-run results with their provenance (command, seeds, images,
budgets, seconds, sha256) to ``gi_tutorial/results/central_figure.json``; the chapter draws them
and re-runs a slice.

Parts of the results (one :class:`~gi_tutorial.stats.Tally` row per run and method):

- ``central``: victims S, M, A; victim seeds 0-4; each (seed, batch size) on its own Fashion-MNIST
  test images from 2000 on (no batch holds another's images; the three victims of one seed and batch
  size see the same images); GI-x, GI-z (GIAS's first stage), GIAS and the floors (label only, a
  DCGAN sample) with the ``"central"`` budget; at batch sizes 8, 16 and 32 also ``GI-x 4x``: four
  times GI-x's steps, and at least as many seconds as GIAS took on the same case, with a
  total-variation weight tuned on public images (``tv_tuning``);
- ``ablation``: victim A, seeds 0-2, batch sizes 1 and 4, test images 200 on, the ``"ch4"`` budget:
  GI-x, GI-z, GI-w, GIAS and the floors;
- ``digits``: out-of-range targets (MNIST test digits 0-2, victim A, one at a time): GI-z, GIAS and a
  DCGAN sample, identified among the other shipped MNIST digits;
- ``heldout``: :data:`HELDOUT`, the same attacks on victim seeds 10-14 (victim S at batch 1 and 16,
  victim A for the ablation) and test images 4000 on
  (``benchmarks/verify_ch4.py`` runs exactly this), shipped so the chapter prints it beside its own.

Every row records its final gradient distance (cosine) and seconds, the first test image of its
batch, and the count of :func:`gi_tutorial.analytic.count` (unknowns, all gradient entries and the
independent ones), so the ratio can be recomputed when the count changes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from gi_tutorial import analytic, attacks, claims, config, data, fl, generators, models, stats, storage
from gi_tutorial import yardstick as yardsticks

ROOT = Path(__file__).resolve().parent.parent
OUT = storage.RESULTS / "central_figure.json"
KEYS = ("part", "victim", "batch", "seed", "method")
IMAGE_SHAPE = (1, 32, 32)
TV_GRID = (1e-3, 1e-2, 3e-2, 1e-1)  # GI-x's total variation, tried on public images (1e-3 is the chapters')
TUNE_SEED = 99  # the victim seed of the tuning runs (never a target run's)
FAIR_FACTOR = 4  # GI-x's fair budget: this many times its steps (and at least GIAS's seconds)


@dataclass(frozen=True)
class Plan:
    """Which victims, seeds, batch sizes and images one run of the sweep uses."""

    name: str
    seeds: tuple[int, ...]  # victim seeds of the central part
    first_image: int  # the central part's first Fashion-MNIST test image
    batches: dict[str, tuple[int, ...]]  # victim (S, M, A) -> batch sizes
    fair_batches: tuple[int, ...]  # where GI-x 4x runs too
    ablation_seeds: tuple[int, ...]
    ablation_first: int
    ablation_batches: tuple[int, ...]
    digits: tuple[int, ...]  # MNIST test images, one victim seed each (ablation_seeds[0] + k)
    budgets: dict[str, str] = field(default_factory=lambda: {"central": "central", "ablation": "ch4"})

    def central_images(self, seed_index: int, batch: int) -> tuple[int, int]:
        """The test images ``[first, first + batch)`` of one (seed, batch size): disjoint across both."""
        sizes = sorted({b for bs in self.batches.values() for b in bs})
        first = self.first_image + seed_index * sum(sizes) + sum(s for s in sizes if s < batch)
        return first, first + batch

    def ablation_images(self, seed_index: int, batch: int) -> tuple[int, int]:
        sizes = sorted(self.ablation_batches)
        first = self.ablation_first + seed_index * sum(sizes) + sum(s for s in sizes if s < batch)
        return first, first + batch

    def last_image(self) -> int:
        sizes = sorted({b for bs in self.batches.values() for b in bs})
        central = self.first_image + len(self.seeds) * sum(sizes)
        return max(central, self.ablation_first + len(self.ablation_seeds) * sum(self.ablation_batches))


CHAPTER = Plan(
    "chapter",
    seeds=(0, 1, 2, 3, 4),
    first_image=2000,
    batches={"S": (1, 4, 8, 16, 32), "M": (4, 8, 16, 32), "A": (4, 8, 16, 32)},
    fair_batches=(8, 16, 32),
    ablation_seeds=(0, 1, 2),
    ablation_first=200,
    ablation_batches=(1, 4),
    digits=(0, 1, 2),
)
HELDOUT = Plan(
    "held out",
    seeds=(10, 11, 12, 13, 14),
    first_image=4000,
    batches={"S": (1, 16)},
    fair_batches=(16,),
    ablation_seeds=(10, 11, 12),
    ablation_first=4500,
    ablation_batches=(4,),
    digits=(10, 11, 12),
)
QUICK = Plan(
    "quick",
    seeds=(0,),
    first_image=2000,
    batches={"S": (1, 4), "M": (4,), "A": (4,)},
    fair_batches=(4,),
    ablation_seeds=(0,),
    ablation_first=200,
    ablation_batches=(1, 2),
    digits=(0,),
)


@dataclass(frozen=True)
class Comparison:
    """One of chapter 4's verdicts: method ``a`` against ``b``, paired over seeds (and batch sizes), on both scores.

    Shipped as it is (``asdict``) in the results' ``claims``; :meth:`on` is the
    :class:`gi_tutorial.claims.Claim` on one score.
    """

    name: str
    a: str
    b: str
    where: dict  # part, victim, batch (a list: any of them)
    margins: dict = field(default_factory=lambda: {"psnr": 1.0, "identified": 0.05})

    def on(self, metric: str) -> claims.Claim:
        """The claim on ``metric``: ``"psnr"`` or an identification rate (``"identified"``, the yardstick's
        score, or ``"identified_psnr"`` / ``"identified_ssim"``: the battery records both)."""
        margin = self.margins["identified" if metric.startswith("identified") else metric]
        return claims.Claim(self.a, self.b, metric, margin, where=self.where, name=self.name)


UNDER = [16]  # victim S under-determined by the true count (ratio 1.28); batch 32 is drawn, not checked (time)
CLAIMS = (
    Comparison("ablation, victim A, batch 4: GIAS against GI-z", "GIAS", "GI-z", {"part": "ablation", "batch": 4}),
    Comparison("ablation, victim A, batch 4: GIAS against GI-x", "GIAS", "GI-x", {"part": "ablation", "batch": 4}),
    Comparison("ablation, victim A, batch 4: GIAS against GI-w", "GIAS", "GI-w", {"part": "ablation", "batch": 4}),
    Comparison(
        "victim S, batch 1 (determined): GI-x against GIAS",
        "GI-x",
        "GIAS",
        {"part": "central", "victim": "S", "batch": 1},
    ),
    Comparison(
        "victim S, batch 16 (under-determined): GIAS against GI-x",
        "GIAS",
        "GI-x",
        {"part": "central", "victim": "S", "batch": UNDER},
    ),
    Comparison(
        "victim S, batch 16: GIAS against GI-x with 4x the steps and tuned TV",
        "GIAS",
        "GI-x 4x",
        {"part": "central", "victim": "S", "batch": UNDER},
    ),
    Comparison(
        "victim S, batch 16: GIAS against the label-only floor",
        "GIAS",
        "label only",
        {"part": "central", "victim": "S", "batch": UNDER},
    ),
    Comparison(
        "victim S, batch 16: GIAS against a DCGAN sample",
        "GIAS",
        "prior sample",
        {"part": "central", "victim": "S", "batch": UNDER},
    ),
    Comparison("out-of-range digits, victim A: GIAS against GI-z", "GIAS", "GI-z", {"part": "digits"}),
)
TARGET = {"victim": "S", "batch": UNDER, "over_gi_x": 0.15, "over_floors": 0.30}  # issue 16's target, identification


def target_check(tally: stats.Tally, metric: str = "identified") -> dict:
    """Issue 16's target on identification: GIAS at least 15 points above GI-x and 30 above each floor, on average."""
    where = {"part": "central", "victim": TARGET["victim"], "batch": TARGET["batch"]}
    over_x = tally.paired("GIAS", "GI-x", metric, **where).gap
    over_floor = [tally.paired("GIAS", floor, metric, **where).gap for floor in ("label only", "prior sample")]
    worst = min(over_floor, key=lambda g: g.mean)
    return {
        "over_gi_x": asdict(over_x),
        "over_floors": asdict(worst),
        "holds": over_x.mean >= TARGET["over_gi_x"] and worst.mean >= TARGET["over_floors"],
    }


def ratio_of(victim: str, batch: int) -> float:
    """Unknown pixels per independent gradient entry (:func:`gi_tutorial.analytic.count`)."""
    return analytic.count(models.build_model(models.VICTIMS[victim], in_channels=1), IMAGE_SHAPE, batch).ratio


class Runner:
    """Runs cases of the sweep with one generator, one yardstick and one test set."""

    def __init__(
        self,
        tally: stats.Tally,
        *,
        test: tuple[torch.Tensor, torch.Tensor],
        stick: yardsticks.Yardstick,
        generator: torch.nn.Module,
    ):
        self.tally, self.stick, self.generator = tally, stick, generator
        self.images, self.labels = test

    def case(
        self,
        part: str,
        victim: str,
        seed: int,
        first: int,
        last: int,
        budget: attacks.Budget,
        methods: tuple[str, ...],
        fair_tv: float | None = None,
        *,
        images=None,
        labels=None,
        stick=None,
        floors: list | None = None,
    ) -> dict[str, torch.Tensor]:
        """One update (victim, seed, images ``first..last-1``) attacked by the battery; rows into the tally."""
        x = (self.images if images is None else images)[first:last]
        y = (self.labels if labels is None else labels)[first:last]
        model = models.build_model(models.VICTIMS[victim], in_channels=1, seed=seed)
        update = fl.client_update(model, x, y, share_labels=True)
        count = analytic.count(model, IMAGE_SHAPE, len(x))
        key = dict(
            part=part,
            victim=victim,
            batch=len(x),
            first_image=first,
            unknowns=count.unknowns,
            entries=count.entries,
            equations=count.equations,
        )
        recipes = attacks.battery(budget, methods=methods, with_floors=floors is None) + (floors or [])
        common = dict(
            truth=x,
            truth_labels=y,
            yardstick=stick or self.stick,
            generators={"dcgan": self.generator},
            tally=self.tally,
            seed=seed,
        )
        shown = attacks.run_battery(update, model, recipes, **common, **key)
        if fair_tv is not None:
            # GI-x given 4x its steps and at least GIAS's seconds on this very case, with a tuned TV weight
            rows = {r["method"]: r for r in self.tally.select(seed=seed, **key).rows}
            per_step = rows["GI-x"]["seconds"] / budget.x_iters
            steps = max(FAIR_FACTOR * budget.x_iters, math.ceil(rows["GIAS"]["seconds"] / per_step))
            fair = attacks.gi_x(replace(budget, x_iters=steps, tv=fair_tv), name="GI-x 4x")
            shown.update(attacks.run_battery(update, model, [fair], **common, **key, steps=steps, tv=fair_tv))
        return shown


def tune_tv(
    victims: dict[str, tuple[int, ...]], batches: tuple[int, ...], budget: attacks.Budget, score: str
) -> tuple[dict[str, dict[int, float]], list[dict]]:
    """GI-x's TV weight per victim and batch size, chosen on Fashion-MNIST train images (public, never targets).

    Each weight of :data:`TV_GRID` attacks one batch of train images ``[0, b)`` on the victim built
    with seed :data:`TUNE_SEED`, with the chapter's GI-x budget; the weight with the best mean score
    (``score``: the yardstick's, PSNR capped at 40 dB or SSIM) is kept.
    """
    public, public_labels = data.fashion_mnist("train", max(batches))
    tally = stats.Tally(keys=("victim", "batch", "tv"))
    best: dict[str, dict[int, float]] = {}
    for victim in victims:
        model = models.build_model(models.VICTIMS[victim], in_channels=1, seed=TUNE_SEED)
        for b in (b for b in batches if b in victims[victim]):
            update = fl.client_update(model, public[:b], public_labels[:b], share_labels=True)
            for tv in TV_GRID:
                recipe = attacks.gi_x(replace(budget, tv=tv))
                attacks.run_battery(
                    update,
                    model,
                    [recipe],
                    truth=public[:b],
                    truth_labels=public_labels[:b],
                    yardstick=None,
                    tally=tally,
                    seed=TUNE_SEED,
                    victim=victim,
                    batch=b,
                    tv=tv,
                )
            scored = {tv: tally.values(score, victim=victim, batch=b, tv=tv)[0] for tv in TV_GRID}
            best.setdefault(victim, {})[b] = max(scored, key=scored.get)
            print(
                f"  TV on public images, victim {victim}, batch {b}: "
                + ", ".join(f"{tv:g} -> {s:.3f}" for tv, s in scored.items())
                + f"; kept {best[victim][b]:g}",
                flush=True,
            )
    return best, tally.rows


def run_plan(
    plan: Plan,
    tally: stats.Tally,
    tuned_tv: dict[str, dict[int, float]],
    *,
    generator: torch.nn.Module,
    log=print,
    checkpoint=None,
) -> None:
    """Every case of ``plan`` into ``tally``, skipping the cases it already holds (a resumed run).

    ``checkpoint()`` is called after each case (the sweep saves its partial results there).
    """
    test = data.fashion_mnist("test", plan.last_image())
    stick = yardsticks.fashion_mnist()
    runner = Runner(tally, test=test, stick=stick, generator=generator)
    central, ablation = attacks.budget_for(plan.budgets["central"]), attacks.budget_for(plan.budgets["ablation"])

    def run(part: str, victim: str, seed: int, first: int, last: int, *args, **kwargs) -> None:
        where = dict(part=part, victim=victim, batch=last - first, seed=seed)
        if tally.select(**where).rows:
            return  # done before a restart
        start = time.perf_counter()
        runner.case(part, victim, seed, first, last, *args, **kwargs)
        log(
            f"  [{plan.name}] {part} {victim} b{last - first:<2d} seed {seed}: {time.perf_counter() - start:5.1f} s  "
            + "  ".join(f"{r['method']} {r['psnr']:.1f} dB {r['identified']:.0%}" for r in tally.select(**where).rows)
        )
        if checkpoint is not None:
            checkpoint()

    for k, seed in enumerate(plan.seeds):
        for victim, batches in plan.batches.items():
            for b in batches:
                tv = tuned_tv[victim][b] if b in plan.fair_batches else None
                run("central", victim, seed, *plan.central_images(k, b), central, ("GI-x", "GI-z", "GIAS"), tv)
    for k, seed in enumerate(plan.ablation_seeds):
        for b in plan.ablation_batches:
            run("ablation", "A", seed, *plan.ablation_images(k, b), ablation, ("GI-x", "GI-z", "GI-w", "GIAS"))
    digits, digit_labels = data.load_dataset("mnist", "test", data.NUM_SHIPPED)
    others = torch.tensor([i for i in range(len(digits)) if i not in plan.digits])
    digit_stick = yardsticks.Yardstick(
        digits[others],
        digit_labels[others],
        digits[others],
        digit_labels[others],
        k=len(others),
        same_class=False,
        score=stick.score,
        description="the other shipped MNIST test digits, of any class",
    )
    for k, index in enumerate(plan.digits):
        run(
            "digits",
            "A",
            plan.ablation_seeds[0] + k,
            index,
            index + 1,
            ablation,
            ("GI-z", "GIAS"),
            images=digits,
            labels=digit_labels,
            stick=digit_stick,
            floors=[attacks.Floor("prior sample", "prior sample", "dcgan")],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick-mode budgets and a tiny plan (a smoke test)")
    parser.add_argument(
        "--full-plan",
        action="store_true",
        help="with --quick: quick budgets on the full plans (every case, a few steps each)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--no-heldout", action="store_true", help="skip the held-out part (verify_ch4's check)")
    parser.add_argument("--fresh", action="store_true", help="ignore the partial results of an interrupted run")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ[config.QUICK_ENV] = "1"
        if args.out is None:
            parser.error("--quick needs --out (the shipped results are never overwritten by a smoke test)")
    out = args.out or OUT
    partial = out.with_name(out.stem + ".partial.json")  # written after every case, so a stopped run resumes
    config.set_threads()
    plan = QUICK if args.quick and not args.full_plan else CHAPTER
    held_plan = QUICK if args.quick and not args.full_plan else HELDOUT
    generator = generators.load_generator()
    stick_score = yardsticks.fashion_mnist().score

    saved = json.loads(partial.read_text()) if partial.exists() and not args.fresh else {}
    runs = stats.Tally(keys=KEYS, rows=saved.get("runs", []))
    heldout = stats.Tally(keys=KEYS, rows=saved.get("heldout", []))
    spent = saved.get("spent", {"wall": 0.0, "cpu": 0.0})
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if saved:
        print(f"resuming from {partial.name}: {len(runs.rows)} + {len(heldout.rows)} rows", flush=True)

    def checkpoint() -> None:
        spent_now = {
            "wall": spent["wall"] + time.perf_counter() - wall0,
            "cpu": spent["cpu"] + time.process_time() - cpu0,
        }
        partial.write_text(
            json.dumps(
                {
                    "runs": runs.rows,
                    "heldout": heldout.rows,
                    "tuned_tv": saved.get("tuned_tv"),
                    "tv_tuning": saved.get("tv_tuning"),
                    "spent": spent_now,
                }
            )
        )

    if saved.get("tuned_tv"):
        tuned_tv = {v: {int(b): tv for b, tv in bs.items()} for v, bs in saved["tuned_tv"].items()}
        tuning = saved["tv_tuning"]
    else:
        fair_batches = tuple(sorted(set(plan.fair_batches)))
        tuned_tv, tuning = tune_tv(
            plan.batches,
            fair_batches,
            attacks.budget_for(plan.budgets["central"]),
            "psnr" if stick_score == "psnr" else "ssim",
        )
        saved.update(tuned_tv=tuned_tv, tv_tuning=tuning)
        checkpoint()

    run_plan(plan, runs, tuned_tv, generator=generator, checkpoint=checkpoint)
    if not args.no_heldout:
        held_tv = {v: {b: tuned_tv[v][b] for b in held_plan.fair_batches} for v in held_plan.batches}
        run_plan(replace(held_plan, name="held out"), heldout, held_tv, generator=generator, checkpoint=checkpoint)
    total = {"wall": spent["wall"] + time.perf_counter() - wall0, "cpu": spent["cpu"] + time.process_time() - cpu0}

    results = {
        "runs": runs.to_json(),
        "heldout": heldout.to_json(),
        "tuned_tv": {v: {str(b): tv for b, tv in bs.items()} for v, bs in tuned_tv.items()},
        "tv_tuning": tuning,
        "claims": [asdict(c) for c in CLAIMS],
        "target": TARGET,
    }
    given = sys.argv[1:] if argv is None else argv
    attack_seconds = {
        part: sum(r["seconds"] for r in runs.select(part=part).rows) for part in ("central", "ablation", "digits")
    }
    attack_seconds["heldout"] = sum(r["seconds"] for r in heldout.rows)
    record = storage.save_results(
        out,
        results,
        command=" ".join(["python benchmarks/central_figure.py", *given]),
        torch=torch.__version__,
        quick=args.quick,
        resumed=bool(saved.get("runs")),
        seeds={
            "central": list(plan.seeds),
            "ablation": list(plan.ablation_seeds),
            "tv_tuning": TUNE_SEED,
            "heldout": [] if args.no_heldout else list(held_plan.seeds),
        },
        images={
            "plan": asdict(plan),
            "heldout": None if args.no_heldout else asdict(held_plan),
            "tv_tuning": "Fashion-MNIST train images from 0",
            "digits": "MNIST test images (foolbox wheel)",
            "identification": yardsticks.fashion_mnist().description,
        },
        budgets={name: asdict(attacks.budget_for(name)) for name in ("central", "ch4")}
        | {
            "GI-x 4x": f"{FAIR_FACTOR}x GI-x's steps, and at least GIAS's seconds on the case; TV from tv_tuning",
            "tv_grid": list(TV_GRID),
        },
        identification_score=stick_score,
        generator=storage.sha256_of(generators.DEFAULT_CHECKPOINT),
        seconds={
            "total_wall": round(total["wall"], 1),
            "total_cpu": round(total["cpu"], 1),
            **{f"attacks_{k}": round(v, 1) for k, v in attack_seconds.items()},
        },
        threads=torch.get_num_threads(),
    )
    partial.unlink(missing_ok=True)
    print(f"wrote {out} ({record['sha256'][:12]}...): {total['wall']:.0f} s wall, {total['cpu']:.0f} s CPU")
    for claim in CLAIMS:
        for metric in ("psnr", "identified"):
            print(f"  {claim.name} [{metric}]: {claim.on(metric).sentence(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
