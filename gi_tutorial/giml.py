"""GIML: learning a generative image prior from gradients alone (Jeon et al., 2021), with Reptile.

GIAS needs a generator trained on images like the clients'. An attacker who has no such
data still receives, round after round, the clients' updates. GIML turns that stream into
a prior: each received update is a *task*; the server inverts it with the current
generator (a latent search, then one shared copy of the generator adapted to the whole
batch, starting from the meta-parameters ``theta``), and the adapted weights ``theta'``
pull ``theta`` towards generators that explain the clients' gradients. The outer update is
first-order meta-learning, Reptile (Nichol, Achiam and Schulman, 2018)::

    theta <- theta + eps * mean_i(theta'_i - theta)

with ``eps`` annealed linearly to zero, as Nichol et al. do. The authors' code instead
feeds the pseudo-gradient ``theta - theta'`` to Adam; :func:`meta_train` offers both.

The threat model in code: the clients' images stay inside :func:`fl_rounds`, which
simulates FedSGD and yields what the server holds in each round (:class:`FLRound`: the
global model it sent and the :class:`~gi_tutorial.fl.SharedUpdate` s it received). The
meta-learner, :func:`meta_train`, takes only those rounds. As in the authors' code, the
victim keeps training while the attacker learns: every few rounds the server applies the
averaged update, so later gradients come from a partly trained model.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .fl import SharedUpdate, client_update, server_step
from .generators import CHECKPOINTS, Generator, load_generator, save_checkpoint, untrained_generator
from .invert import DivergedError, GIASResult, Stage, gias, show_progress
from .spaces import generator_from_state
from .threats import threat_model_for

SNAPSHOT_PREFIX = "fashion_mnist_giml_r"


@dataclass(frozen=True)
class FLRound:
    """What the server holds after one FedSGD round: the model it sent and the updates it received."""

    index: int
    model: nn.Module  # the global model of this round (a copy: later rounds do not change it)
    updates: tuple[SharedUpdate, ...]


def fl_rounds(
    images: torch.Tensor,
    labels: torch.Tensor,
    model: nn.Module,
    num_rounds: int,
    *,
    clients_per_round: int = 1,
    batch_size: int = 1,
    fedsgd_every: int = 5,
    server_lr: float = 0.05,
    seed: int = 0,
) -> Iterator[FLRound]:
    """Simulate FedSGD on private data and yield what the server sees, round by round.

    Each round, ``clients_per_round`` clients each draw a private batch of ``batch_size``
    images and share the gradient (with the batch size and labels). Every ``fedsgd_every``
    rounds the server averages the updates received since its last step and takes an SGD
    step, so the victim trains as federated learning goes on. The images never leave this
    function.

    Raises:
        ValueError: bad sizes, or images and labels that do not match.
    """
    if num_rounds < 1 or clients_per_round < 1 or batch_size < 1 or fedsgd_every < 1:
        raise ValueError("num_rounds, clients_per_round, batch_size and fedsgd_every must be at least 1, got "
                         f"{num_rounds}, {clients_per_round}, {batch_size}, {fedsgd_every}")
    if len(images) != len(labels) or len(images) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} images with one label each, "
                         f"got {len(images)} images and {len(labels)} labels")
    model = copy.deepcopy(model)
    rng = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    pending: list[SharedUpdate] = []  # the updates received since the server's last step
    for index in range(num_rounds):
        updates = []
        for _ in range(clients_per_round):
            pick = torch.randperm(len(images), generator=rng)[:batch_size]
            updates.append(client_update(model, images[pick].to(device), labels[pick].to(device), share_labels=True))
        yield FLRound(index, copy.deepcopy(model), tuple(updates))
        pending += updates
        if (index + 1) % fedsgd_every == 0:
            server_step(model, pending, server_lr)
            pending = []


@dataclass(frozen=True)
class InnerSettings:
    """One task's inversion: a latent search, then one shared copy of the generator adapted."""

    latent_iters: int = 60  # stage 1: Adam steps on z
    latent_lr: float = 0.05
    restarts: int = 1  # latent restarts (the best kept)
    weight_iters: int = 80  # stage 2: Adam steps on the shared copy of the weights
    weight_lr: float = 1e-3
    distance: Literal["l2", "cosine"] = "cosine"


def inner_round(update: SharedUpdate, model: nn.Module, generator: nn.Module, settings: InnerSettings = InnerSettings(),
                seed: int = 0) -> tuple[nn.Module, GIASResult | None]:
    """Invert one update with the current generator; return the adapted generator ``theta'`` and the run.

    This is GIAS (:func:`~gi_tutorial.invert.gias`) with one copy of the weights shared by
    the batch, starting from the meta-parameters. If the search diverges, ``theta'`` is
    ``theta`` (the task moves nothing); the run is None when the latent search diverged.
    """
    try:
        run = gias(update, model, generator,
                   latent=Stage(settings.latent_iters, settings.latent_lr, restarts=settings.restarts,
                                distance=settings.distance),
                   weights=Stage(settings.weight_iters, settings.weight_lr, distance=settings.distance),
                   shared=True, threat_model=threat_model_for(generator), seed=seed, progress=False)
    except DivergedError:
        return copy.deepcopy(generator), None
    trial = run.weights.trials[run.weights.best]
    adapted = copy.deepcopy(generator) if trial.diverged else generator_from_state(generator, trial.state)
    return adapted, run


def reptile_step(generator: nn.Module, adapted: Sequence[nn.Module], epsilon: float,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
    """The outer update, in place: ``theta <- theta + epsilon * mean_i(theta'_i - theta)``.

    With an ``optimizer`` over ``generator.parameters()`` (the authors' variant), the
    pseudo-gradient ``theta - mean_i(theta'_i)`` is handed to it instead, at learning rate
    ``epsilon``. Only parameters move; buffers (BatchNorm statistics) stay.

    Raises:
        ValueError: no adapted generators, or epsilon outside (0, 1].
    """
    if not adapted:
        raise ValueError("need at least one adapted generator")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    with torch.no_grad():
        params = list(generator.parameters())
        means = [torch.stack([p_i for p_i in ps]).mean(0)
                 for ps in zip(*(list(a.parameters()) for a in adapted))]
        if optimizer is None:
            for p, mean in zip(params, means):
                p.add_(epsilon * (mean - p))
            return
        for group in optimizer.param_groups:
            group["lr"] = epsilon
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
    epsilon: float = 0.3,
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
    the meta-parameters towards their mean (:func:`reptile_step`). The step size is
    ``epsilon``, annealed linearly to 0 over ``num_steps`` when ``anneal`` is set.

    Args:
        rounds: what the server received (:func:`fl_rounds`); never the images.
        generator: the starting generator (for GIML, :func:`~gi_tutorial.generators.untrained_generator`);
            not changed: a copy is trained.
        num_steps: meta-steps to take.
        meta_batch: tasks (updates) per meta-step.
        epsilon: the outer step size (``"adam"``: Adam's learning rate).
        outer: ``"reptile"`` (Nichol et al.) or ``"adam"`` (the GIML authors' code).
        inner: settings of each task's inversion.
        snapshot_at: meta-steps after which to keep a copy of the weights (0 = the start).

    Raises:
        ValueError: zero steps, epsilon outside (0, 1], an unknown outer optimizer, a
            meta-batch larger than the stream, or an update that does not match its model.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
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
    optimizer = torch.optim.Adam(generator.parameters(), lr=epsilon) if outer == "adam" else None
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
            raise ValueError(f"the stream ran out after {step} meta-steps: a meta-batch of {meta_batch} "
                             f"needs {meta_batch * num_steps} updates")
        adapted = []
        for k, (model, update) in enumerate(batch):
            update.check_matches(model)
            theta_prime, run = inner_round(update, model, generator, inner, seed=seed + step * meta_batch + k)
            adapted.append(theta_prime)
            failed = run is None or run.weights.trials[run.weights.best].diverged
            latent_distance.append(math.inf if run is None else run.latent.grad_loss)
            adapted_distance.append(math.inf if failed else run.weights.grad_loss)
            diverged += failed
        step_size = epsilon * (1 - step / num_steps) if anneal else epsilon
        reptile_step(generator, adapted, step_size, optimizer)
        if step + 1 in snapshot_at:
            snapshots[step + 1] = _state_copy(generator)
    settings = dict(num_steps=num_steps, meta_batch=meta_batch, epsilon=epsilon, outer=outer, anneal=anneal,
                    inner=asdict(inner), seed=seed)
    return GIMLResult(generator, snapshots, latent_distance, adapted_distance, diverged,
                      time.perf_counter() - start, settings)


def _state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def snapshot_path(step: int, folder: Path = CHECKPOINTS) -> Path:
    """Where the shipped snapshot after ``step`` meta-steps lives."""
    return Path(folder) / f"{SNAPSHOT_PREFIX}{step:04d}.pt"


def shipped_steps(folder: Path = CHECKPOINTS) -> list[int]:
    """The meta-steps at which snapshots ship, in order (read from their records)."""
    return sorted(int(p.stem[len(SNAPSHOT_PREFIX):]) for p in Path(folder).glob(f"{SNAPSHOT_PREFIX}*.json"))


def load_snapshot(step: int | None = None, folder: Path = CHECKPOINTS) -> Generator:
    """The shipped GIML generator after ``step`` meta-steps (default: the last), hash-checked.

    Raises:
        FileNotFoundError: no snapshots, or none at ``step`` (the message lists those that exist).
    """
    steps = shipped_steps(folder)
    if not steps:
        raise FileNotFoundError(f"no GIML snapshots in {folder}: train them with `python -m gi_tutorial.giml`")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no GIML snapshot after {step} meta-steps in {folder}; shipped: {steps}")
    return load_generator(snapshot_path(step, folder))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Meta-learn the book's GIML generator from simulated FL updates.")
    parser.add_argument("--steps", type=int, default=600, help="meta-steps (one update each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the untrained generator, the clients and the tasks")
    parser.add_argument("--victim-seed", type=int, default=1, help="seed of the victim's initialisation")
    parser.add_argument("--epsilon", type=float, default=0.3)
    parser.add_argument("--outer", choices=("reptile", "adam"), default="reptile")
    parser.add_argument("--snapshots", default="0,25,50,100,200,400,600")
    parser.add_argument("--out-dir", default=str(CHECKPOINTS))
    args = parser.parse_args(argv)
    from . import config, data, models

    config.set_threads()
    images, labels = data.fashion_mnist("train")
    victim = models.build_model("convnet_fc", in_channels=1, seed=args.victim_seed)
    snapshot_at = sorted({int(s) for s in args.snapshots.split(",")} | {args.steps})
    stream = fl_rounds(images, labels, victim, args.steps, seed=args.seed)
    result = meta_train(stream, untrained_generator(args.seed), args.steps, epsilon=args.epsilon, outer=args.outer,
                        snapshot_at=snapshot_at, seed=args.seed, progress=True)
    command = (f"python -m gi_tutorial.giml --steps {args.steps} --seed {args.seed} --victim-seed {args.victim_seed} "
               f"--epsilon {args.epsilon} --outer {args.outer} --snapshots {args.snapshots}")
    for step, state in result.snapshots.items():
        snapshot = untrained_generator(args.seed)
        snapshot.load_state_dict(state)
        done = slice(0, step)
        record = save_checkpoint(
            snapshot, snapshot_path(step, Path(args.out_dir)), half=True, method="GIML (Reptile), from gradients only",
            data=(f"updates of FedSGD clients (batch 1, labels shared) holding Fashion-MNIST train images "
                  f"({len(images)} images, zero-padded to 32x32), drawn with seed {args.seed}; the victim: "
                  f"convnet_fc, seed {args.victim_seed}, trained by FedSGD as the rounds go (lr 0.05, every 5 rounds, "
                  f"on the updates received since the last step)"),
            meta_steps=step, start="untrained_generator(seed={})".format(args.seed), settings=result.settings,
            latent_distance_mean=_mean(result.latent_distance[done]),
            adapted_distance_mean=_mean(result.adapted_distance[done]),
            seconds_total=round(result.seconds, 1), torch=torch.__version__, command=command)
        print(json.dumps({k: record[k] for k in ("file", "sha256", "meta_steps")}))
    print(f"{args.steps} meta-steps in {result.seconds:.0f} s; diverged tasks: {result.diverged}")
    return 0


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 6) if finite else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
