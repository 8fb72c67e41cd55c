"""GIML: learning a generative image prior from gradients alone (Jeon et al., 2021), with Reptile.

GIAS needs a generator trained on images like the clients'. An attacker who has no such
data still receives, round after round, the clients' updates. GIML turns that stream into
a prior: each received update is a *task*; the server inverts it with the current
generator (a latent search, then one shared copy of the generator adapted to the whole
batch, starting from the meta-parameters ``w``, the generator's weights), and the adapted
weights ``w'`` pull ``w`` towards generators that explain the clients' gradients. The outer
update is first-order meta-learning, Reptile (Nichol, Achiam and Schulman, 2018)::

    w <- w + step_size * mean_i(w'_i - w)

with ``step_size`` (Nichol et al.'s epsilon; the book writes beta, keeping epsilon for
differential privacy and theta for the victim's weights) annealed linearly to zero, as
Nichol et al. do. The authors' code instead feeds the pseudo-gradient ``w - w'`` to Adam;
:func:`meta_train` offers both.

The threat model in code: the clients' images stay inside :func:`gi_tutorial.fl.fl_rounds`,
which simulates FedSGD and yields what the server holds in each round
(:class:`~gi_tutorial.fl.FLRound`: the global model it sent and the updates it received).
The meta-learner, :func:`meta_train`, takes only those rounds. As in the authors' code, the
victim keeps training while the attacker learns: every few rounds the server applies the
averaged update, so later gradients come from a partly trained model. Where the clients do
not share their labels, each task's labels come from the update itself
(:func:`gi_tutorial.analytic.recover_labels`, exact for a batch whose labels are all different).

The shipped snapshots (``checkpoints/fashion_mnist_giml_rNNNN.pt``) are produced by
``python -m gi_tutorial.giml`` (``make giml``); each has a record beside it (seed, data,
settings, seconds, sha256).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import attacks, claims, stats
from .analytic import recover_labels
from .fl import FLRound, SharedUpdate, fl_rounds
from .generators import CHECKPOINTS, Generator, load_generator, save_checkpoint, untrained_generator
from .invert import DivergedError, GIASResult, Stage, gias, show_progress
from .spaces import generator_from_state
from .threats import threat_model_for

SNAPSHOT_PREFIX = "fashion_mnist_giml_r"  # the shipped run: clients at batch 1, labels shared, meta-batch 1
HARDER_PREFIX = "fashion_mnist_giml_b4_r"  # the harder stream: batch 4, labels read off the updates, meta-batch 2
NONMETA_CHECKPOINT = CHECKPOINTS / "fashion_mnist_nonmeta.pt"  # GI-x on the same stream, then a GAN (no meta-learning)


@dataclass(frozen=True)
class InnerSettings:
    """One task's inversion: a latent search, then one shared copy of the generator adapted."""

    latent_iters: int = 60  # stage 1: Adam steps on z
    latent_lr: float = 0.05
    restarts: int = 1  # latent restarts (the best kept)
    weight_iters: int = 80  # stage 2: Adam steps on the shared copy of the weights
    weight_lr: float = 1e-3
    distance: Literal["l2", "cosine"] = "cosine"


def task_labels(update: SharedUpdate, model: nn.Module) -> torch.Tensor | None:
    """The labels a task is inverted with: shared in the update, else read off its gradient.

    One image: None (the inversion recovers its label exactly, iDLG-style). A batch:
    :func:`~gi_tutorial.analytic.recover_labels`, which is exact when the batch's labels are all
    different; a batch with a repeated label gets a wrong label, which the attacker cannot tell.
    """
    if update.labels is not None or update.batch_size == 1:
        return None
    return recover_labels(update, model)


def inner_round(
    update: SharedUpdate,
    model: nn.Module,
    generator: nn.Module,
    settings: InnerSettings = InnerSettings(),
    seed: int = 0,
) -> tuple[nn.Module, GIASResult | None]:
    """Invert one update with the current generator; return the adapted generator ``w'`` and the run.

    This is GIAS (:func:`~gi_tutorial.invert.gias`) with one copy of the weights shared by
    the batch, starting from the meta-parameters ``w``, with the update's labels or, where it
    has none, those of :func:`task_labels`. If the search diverges, ``w'`` is ``w`` (the task
    moves nothing); the run is None when the latent search diverged.
    """
    try:
        run = gias(
            update,
            model,
            generator,
            latent=Stage(
                settings.latent_iters, settings.latent_lr, restarts=settings.restarts, distance=settings.distance
            ),
            weights=Stage(settings.weight_iters, settings.weight_lr, distance=settings.distance),
            shared=True,
            labels=task_labels(update, model),
            threat_model=threat_model_for(generator),
            seed=seed,
            progress=False,
        )
    except DivergedError:
        return copy.deepcopy(generator), None
    trial = run.weights.trials[run.weights.best]
    adapted = copy.deepcopy(generator) if trial.diverged else generator_from_state(generator, trial.state)
    return adapted, run


def reptile_step(
    generator: nn.Module, adapted: Sequence[nn.Module], step_size: float, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """The outer update, in place: ``w <- w + step_size * mean_i(w'_i - w)``.

    With an ``optimizer`` over ``generator.parameters()`` (the authors' variant), the
    pseudo-gradient ``w - mean_i(w'_i)`` is handed to it instead, at learning rate
    ``step_size``. Only parameters move; buffers (BatchNorm statistics) stay.

    Raises:
        ValueError: no adapted generators, or step_size outside (0, 1].
    """
    if not adapted:
        raise ValueError("need at least one adapted generator")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    with torch.no_grad():
        params = list(generator.parameters())
        means = [torch.stack(list(ps)).mean(0) for ps in zip(*(list(a.parameters()) for a in adapted))]
        if optimizer is None:
            for p, mean in zip(params, means):
                p.add_(step_size * (mean - p))
            return
        for group in optimizer.param_groups:
            group["lr"] = step_size
        for p, mean in zip(params, means):
            p.grad = p - mean
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@dataclass
class GIMLResult:
    """The meta-learned generator, its snapshots, and the per-task record of the run."""

    generator: nn.Module
    snapshots: dict[int, dict[str, torch.Tensor]]  # meta-step -> generator state dict (copies)
    latent_distance: list[float]  # each task's best latent-search gradient distance, before adaptation
    adapted_distance: list[float]  # ... and after adapting the shared copy
    diverged: int  # tasks whose search diverged (they moved nothing; their distances are inf)
    seconds: float
    settings: dict = field(default_factory=dict)


def meta_train(
    rounds: Iterable[FLRound],
    generator: nn.Module,
    num_steps: int,
    *,
    meta_batch: int = 1,
    step_size: float = 0.3,
    outer: Literal["reptile", "adam"] = "reptile",
    anneal: bool = True,
    inner: InnerSettings = InnerSettings(),
    snapshot_at: Sequence[int] = (),
    seed: int = 0,
    progress: bool | None = None,
) -> GIMLResult:
    """Meta-learn ``generator`` from the updates of a stream of FL rounds (GIML), without any image.

    Each meta-step takes the next ``meta_batch`` updates of the stream (each with the model
    of its round), adapts a copy of the generator to each (:func:`inner_round`) and moves
    the meta-parameters towards their mean (:func:`reptile_step`), by ``step_size``
    annealed linearly to 0 over ``num_steps`` when ``anneal`` is set.

    Args:
        rounds: what the server received (:func:`~gi_tutorial.fl.fl_rounds`); never the images.
        generator: the starting generator (for GIML, :func:`~gi_tutorial.generators.untrained_generator`);
            not changed: a copy is trained.
        num_steps: meta-steps to take.
        meta_batch: tasks (updates) per meta-step.
        step_size: the outer step size, Reptile's epsilon (``"adam"``: Adam's learning rate).
        outer: ``"reptile"`` (Nichol et al.) or ``"adam"`` (the GIML authors' code).
        inner: settings of each task's inversion.
        snapshot_at: meta-steps after which to keep a copy of the weights (0 = the start).

    Raises:
        ValueError: zero steps, step_size outside (0, 1], an unknown outer optimizer, a
            meta-batch larger than the stream, or an update that does not match its model.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if outer not in ("reptile", "adam"):
        raise ValueError(f"outer must be 'reptile' or 'adam', got {outer!r}")
    if meta_batch < 1:
        raise ValueError(f"meta_batch must be at least 1, got {meta_batch}")
    if isinstance(rounds, Sequence):
        available = sum(len(r.updates) for r in rounds)
        if meta_batch > available:
            raise ValueError(f"a meta-batch of {meta_batch} updates is larger than the stream's {available}")
    generator = copy.deepcopy(generator).eval()
    generator.trained_on = "gradients"  # what the meta-parameters are learned from: no image, ever
    optimizer = torch.optim.Adam(generator.parameters(), lr=step_size) if outer == "adam" else None
    tasks = ((r.model, u) for r in rounds for u in r.updates)
    snapshots = {0: _state_copy(generator)} if 0 in snapshot_at else {}
    latent_distance: list[float] = []
    adapted_distance: list[float] = []
    diverged = 0
    progress = show_progress() if progress is None else progress
    start = time.perf_counter()
    for step in tqdm(range(num_steps), disable=not progress, desc="GIML", leave=False):
        batch = [task for _, task in zip(range(meta_batch), tasks)]
        if len(batch) < meta_batch:
            raise ValueError(
                f"the stream ran out after {step} meta-steps: a meta-batch of {meta_batch} "
                f"needs {meta_batch * num_steps} updates"
            )
        adapted = []
        for k, (model, update) in enumerate(batch):
            update.check_matches(model)
            w_prime, run = inner_round(update, model, generator, inner, seed=seed + step * meta_batch + k)
            adapted.append(w_prime)
            failed = run is None or run.weights.trials[run.weights.best].diverged
            latent_distance.append(math.inf if run is None else run.latent.grad_loss)
            adapted_distance.append(math.inf if failed else run.weights.grad_loss)
            diverged += failed
        annealed = step_size * (1 - step / num_steps) if anneal else step_size
        reptile_step(generator, adapted, annealed, optimizer)
        if step + 1 in snapshot_at:
            snapshots[step + 1] = _state_copy(generator)
    settings = dict(
        num_steps=num_steps,
        meta_batch=meta_batch,
        step_size=step_size,
        outer=outer,
        anneal=anneal,
        inner=asdict(inner),
        seed=seed,
    )
    return GIMLResult(
        generator, snapshots, latent_distance, adapted_distance, diverged, time.perf_counter() - start, settings
    )


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def snapshot_path(step: int, folder: Path = CHECKPOINTS, prefix: str = SNAPSHOT_PREFIX) -> Path:
    """Where the shipped snapshot after ``step`` meta-steps lives (``prefix``: which run's series)."""
    return Path(folder) / f"{prefix}{step:04d}.pt"


def shipped_steps(folder: Path = CHECKPOINTS, prefix: str = SNAPSHOT_PREFIX) -> list[int]:
    """The meta-steps at which a run's snapshots ship, in order (read from their records)."""
    return sorted(
        int(p.stem[len(prefix) :]) for p in Path(folder).glob(f"{prefix}*.json") if p.stem[len(prefix) :].isdigit()
    )


def _step_or_last(step: int | None, folder: Path, prefix: str) -> int:
    steps = shipped_steps(folder, prefix)
    if not steps:
        raise FileNotFoundError(
            f"no GIML snapshots {prefix}NNNN in {folder}: train them with `python -m gi_tutorial.giml` (make giml)"
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no GIML snapshot {prefix}NNNN after {step} meta-steps in {folder}; shipped: {steps}")
    return step


def load_snapshot(step: int | None = None, folder: Path = CHECKPOINTS, prefix: str = SNAPSHOT_PREFIX) -> Generator:
    """The shipped GIML generator after ``step`` meta-steps (default: the last), hash-checked.

    Raises:
        FileNotFoundError: no snapshots, or none at ``step`` (the message lists those that exist).
    """
    return load_generator(snapshot_path(_step_or_last(step, folder, prefix), folder, prefix))


def snapshot_record(step: int | None = None, folder: Path = CHECKPOINTS, prefix: str = SNAPSHOT_PREFIX) -> dict:
    """The provenance record of a shipped snapshot (command, data, settings, seconds, sha256).

    Records written before Reptile's step size was renamed call it ``epsilon``; the returned
    settings call it ``step_size`` either way.

    Raises:
        FileNotFoundError: as :func:`load_snapshot`.
    """
    step = _step_or_last(step, folder, prefix)
    record = json.loads(snapshot_path(step, folder, prefix).with_suffix(".json").read_text())
    settings = record.get("settings", {})
    if "epsilon" in settings:
        settings["step_size"] = settings.pop("epsilon")
    return record


PRIORS = ("untrained", "GIML", "GIML, batch-4 stream", "non-meta", "DCGAN")  # chapter 5's priors, in its order


def priors(names: Sequence[str] = PRIORS, device: torch.device | str = "cpu") -> dict[str, nn.Module]:
    """Chapter 5's generative priors by name, each loaded hash-checked:

    - ``"untrained"``: DCGAN's initialisation, where GIML starts (it draws flat grey);
    - ``"GIML"``: the shipped GIML run (:data:`SNAPSHOT_PREFIX`), learned from gradients only;
    - ``"GIML, batch-4 stream"``: the harder stream's run (:data:`HARDER_PREFIX`);
    - ``"non-meta"``: GI-x on every update of GIML's stream, then a GAN on the reconstructions
      (``benchmarks/giml_baseline.py``), with GIML's CPU seconds;
    - ``"DCGAN"``: chapter 3's generator, trained on real train images.

    Raises:
        ValueError: an unknown name.
    """
    loaders = {
        "untrained": lambda: untrained_generator(0),
        "GIML": load_snapshot,
        "GIML, batch-4 stream": lambda: load_snapshot(prefix=HARDER_PREFIX),
        "non-meta": lambda: load_generator(NONMETA_CHECKPOINT),
        "DCGAN": load_generator,
    }
    unknown = [n for n in names if n not in loaders]
    if unknown:
        raise ValueError(f"unknown priors {unknown}; expected some of {', '.join(loaders)}")
    return {name: loaders[name]().to(device) for name in names}


def prior_battery(budget: attacks.Budget, names: Sequence[str] = PRIORS, *, gi_x: bool = True) -> list:
    """Chapter 5's recipes: GI-x, then GIAS through each prior (its stage 1 recorded as GI-z), and the floors:
    the label-only guess and a random sample of each prior (no gradient)."""
    recipes: list = [attacks.gi_x(budget)] if gi_x else []
    for name in names:
        recipes.append(attacks.gias_attack(budget, name, name=f"GIAS ({name})", latent_name=f"GI-z ({name})"))
    recipes += [attacks.Floor(f"sample ({name})", "prior sample", name) for name in names]
    return recipes + [attacks.Floor("label only", "label only")]


MARGINS = {"identified": 0.05, "psnr": 1.0}  # ahead by more than 5 points (one image at batch 8 is 12.5), or 1 dB
CASES = ({"victim": "S", "batch": 8}, {"victim": "S", "batch": 16})  # where a prior matters: the verdicts' settings
COMPARISONS = (  # chapter 5's verdicts, each checked on held-out seeds and images by benchmarks/verify_ch5.py
    ("GIAS (GIML)", "GIAS (untrained)"),  # does the learned prior help the attack?
    ("GI-z (GIML)", "GI-z (untrained)"),  # ... the prior itself?
    ("GIAS (GIML)", "GIAS (non-meta)"),  # is meta-learning needed?
)


def chapter_claims(
    cases: Iterable[dict] = CASES, comparisons: Iterable[tuple[str, str]] = COMPARISONS
) -> tuple[claims.Claim, ...]:
    """Chapter 5's verdicts as :class:`~gi_tutorial.claims.Claim` s: each comparison in each case, on
    identification then PSNR (margins :data:`MARGINS`), paired over the seeds of a tally keyed by victim,
    batch, seed and method."""
    return tuple(
        claims.Claim(
            a,
            b,
            metric,
            margin,
            where=dict(case),
            name=f"victim {case['victim']}, batch {case['batch']}: {a} against {b}",
        )
        for case in cases
        for a, b in comparisons
        for metric, margin in MARGINS.items()
    )


CLAIMS = chapter_claims()


def target_met(tally: stats.Tally, **where) -> tuple[bool, float, float]:
    """Chapter 5's target where a prior matters: GIAS with the GIML prior identifies at least 15 points more
    images than with the untrained prior, and at least as many as with the non-meta baseline (mean paired
    gaps). Returns whether it is met and the two gaps."""
    more = tally.paired("GIAS (GIML)", "GIAS (untrained)", "identified", **where).gap.mean
    versus = tally.paired("GIAS (GIML)", "GIAS (non-meta)", "identified", **where).gap.mean
    return more >= 0.15 and versus >= 0, more, versus


@dataclass(frozen=True)
class Trend:
    """A run's latent distance over the first and the last quarter of its tasks, and which way it went."""

    first: stats.MeanSD
    last: stats.MeanSD
    word: Literal["rises", "falls", "stays level"]


def distance_trend(values: Sequence[float | None]) -> Trend:
    """Whether a run's latent distances rise, fall or stay level from its first quarter of tasks to its last.

    Diverged tasks (``None``) are skipped. A trend counts when the two means differ by more than twice
    the standard error of their difference.

    >>> distance_trend([0.10, 0.11, 0.09, 0.10, 0.30, 0.31, 0.29, 0.30]).word
    'rises'
    """
    finite = [v for v in values if v is not None]
    if not finite:
        raise ValueError("distance_trend needs at least one finite distance; every task diverged")
    q = max(1, len(finite) // 4)
    first, last = stats.mean_sd(finite[:q]), stats.mean_sd(finite[-q:])
    se = (first.sd**2 / first.n + last.sd**2 / last.n) ** 0.5  # the standard error of the difference
    word = "rises" if last.mean > first.mean + 2 * se else "falls" if last.mean < first.mean - 2 * se else "stays level"
    return Trend(first, last, word)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Meta-learn the book's GIML generator from simulated FL updates.")
    parser.add_argument("--steps", type=int, default=600, help="meta-steps")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the untrained generator, the clients and the tasks"
    )
    parser.add_argument("--victim-seed", type=int, default=1, help="seed of the victim's initialisation")
    parser.add_argument("--step-size", type=float, default=0.3, help="Reptile's outer step size (annealed to 0)")
    parser.add_argument("--outer", choices=("reptile", "adam"), default="reptile")
    parser.add_argument("--batch-size", type=int, default=1, help="images per client update")
    parser.add_argument("--clients-per-round", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=1, help="updates per meta-step")
    parser.add_argument(
        "--labels",
        choices=("shared", "recovered"),
        default="shared",
        help="clients share their labels, or the server reads them off each update",
    )
    parser.add_argument("--frozen-victim", action="store_true", help="the server never steps: the victim stays as sent")
    parser.add_argument("--snapshots", default="0,25,50,100,200,400,600", help="meta-steps to save ('' for none)")
    parser.add_argument("--prefix", default=SNAPSHOT_PREFIX, help="file name of the snapshots, before the step")
    parser.add_argument("--out-dir", default=str(CHECKPOINTS))
    parser.add_argument("--trace", default="", help="also write each task's gradient distances to this results file")
    args = parser.parse_args(argv)
    from . import config, data, models
    from .storage import save_results

    config.set_threads()
    images, labels = data.fashion_mnist("train")
    victim = models.build_model("convnet_fc", in_channels=1, seed=args.victim_seed)
    wanted = {int(s) for s in args.snapshots.split(",") if s.strip()}
    snapshot_at = sorted(wanted | {args.steps}) if wanted else []
    rounds_needed = math.ceil(args.steps * args.meta_batch / args.clients_per_round)
    stream = fl_rounds(
        images,
        labels,
        victim,
        rounds_needed,
        clients_per_round=args.clients_per_round,
        batch_size=args.batch_size,
        share_labels=args.labels == "shared",
        fedsgd_every=None if args.frozen_victim else 5,
        seed=args.seed,
    )
    result = meta_train(
        stream,
        untrained_generator(args.seed),
        args.steps,
        meta_batch=args.meta_batch,
        step_size=args.step_size,
        outer=args.outer,
        snapshot_at=snapshot_at,
        seed=args.seed,
        progress=True,
    )
    command = " ".join(["python -m gi_tutorial.giml", *(argv if argv is not None else sys.argv[1:])])
    victim_text = (
        "frozen at its initialisation (the server never steps)"
        if args.frozen_victim
        else "trained by FedSGD as the rounds go (lr 0.05, every 5 rounds, on the updates received since the last step)"
    )
    data_text = (
        f"updates of FedSGD clients (batch {args.batch_size}, {args.clients_per_round} per round, labels "
        f"{'shared' if args.labels == 'shared' else 'not shared: read off each update'}) holding "
        f"Fashion-MNIST train images ({len(images)} images, zero-padded to 32x32), drawn with seed "
        f"{args.seed}; the victim: convnet_fc, seed {args.victim_seed}, {victim_text}"
    )
    per_task = args.meta_batch
    for step, state in result.snapshots.items():
        snapshot = untrained_generator(args.seed)
        snapshot.load_state_dict(state)
        snapshot.trained_on = "gradients"
        done = slice(0, step * per_task)
        record = save_checkpoint(
            snapshot,
            snapshot_path(step, Path(args.out_dir), args.prefix),
            half=True,
            method="GIML (Reptile), from gradients only",
            data=data_text,
            meta_steps=step,
            start=f"untrained_generator(seed={args.seed})",
            settings=result.settings,
            latent_distance_mean=_mean(result.latent_distance[done]),
            adapted_distance_mean=_mean(result.adapted_distance[done]),
            seconds_total=round(result.seconds, 1),
            torch=torch.__version__,
            command=command,
        )
        print(json.dumps({k: record[k] for k in ("file", "sha256", "meta_steps")}))
    if args.trace:
        save_results(
            args.trace,
            {
                "latent_distance": _finite(result.latent_distance),
                "adapted_distance": _finite(result.adapted_distance),
                "tasks_per_step": per_task,
            },
            command=command,
            data=data_text,
            settings=result.settings,
            seconds=round(result.seconds, 1),
            diverged=result.diverged,
            torch=torch.__version__,
        )
    print(f"{args.steps} meta-steps in {result.seconds:.0f} s; diverged tasks: {result.diverged}")
    return 0


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 6) if finite else None


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no infinity: a diverged task's distance is written as None."""
    return [v if math.isfinite(v) else None for v in values]


if __name__ == "__main__":
    sys.exit(main())
