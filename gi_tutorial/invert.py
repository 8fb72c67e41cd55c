"""The one reconstruction loop: find images whose gradient matches a shared update.

Every attack in the book is a call to :func:`reconstruct` with a different search space
(pixels, a generator's latent code, its weights, both) and different priors:

.. math::
    \\phi^* = \\arg\\min_\\phi\\; d\\big(\\nabla_\\theta L(f_\\theta(P(\\phi)), y),\\; g^*\\big)
              + \\sum_k R_k(P(\\phi))

- DLG (Zhu et al., 2019): pixel space, L2 distance, L-BFGS.
- Inverting Gradients (Geiping et al., 2020): pixel space, cosine distance, total
  variation, Adam on the sign of the gradient, step decay, restarts.

The attacker reads only the :class:`~gi_tutorial.fl.SharedUpdate` and the model.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import threats
from .analytic import recover_label
from .config import is_quick
from .fl import SharedUpdate, batch_gradients
from .objectives import Distance, gradient_distance
from .priors import Prior, PriorContext
from .spaces import Space
from .threats import ThreatModel


class DivergedError(RuntimeError):
    """Every restart of a search diverged (its loss became NaN or inf), so there is no result to build on."""


@dataclass
class Snapshot:
    """The batch at one iteration of one trial, for history figures."""

    iteration: int
    images: torch.Tensor  # (B, C, H, W)
    grad_loss: float


@dataclass
class Trial:
    """One restart: where it ended and how it got there."""

    images: torch.Tensor  # (B, C, H, W), detached
    grad_loss: float  # gradient distance of the final images (priors excluded)
    losses: list[float]  # total loss at every iteration
    history: list[Snapshot]
    state: dict[str, torch.Tensor]  # the space's variables at the end
    diverged: bool = False  # the loss became NaN/inf; images are the last finite iterate


@dataclass
class Reconstruction:
    """The result of :func:`reconstruct`: the best trial (lowest gradient distance) and all trials."""

    images: torch.Tensor
    labels: torch.Tensor
    grad_loss: float
    best: int
    trials: list[Trial]
    seconds: float
    iterations: int

    @property
    def history(self) -> list[Snapshot]:
        return self.trials[self.best].history

    @property
    def ms_per_iteration(self) -> float:
        return 1000 * self.seconds / max(1, self.iterations)


def show_progress() -> bool:
    """Progress bars are on unless in quick mode or ``GI_TUTORIAL_PROGRESS=0``."""
    return not is_quick() and os.environ.get("GI_TUTORIAL_PROGRESS", "1") != "0"


def resolve_labels(update: SharedUpdate, model: nn.Module, labels: torch.Tensor | None) -> torch.Tensor:
    """The labels the attacker uses: given, shared in the update, or (one image) recovered by iDLG.

    Raises:
        ValueError: a batch of more than one image without labels.
    """
    if labels is not None:
        return labels
    if update.labels is not None:
        return update.labels
    if update.batch_size == 1:
        return recover_label(update, model)
    raise ValueError(
        "the attack needs labels for a batch of more than one image: share them in the update "
        "(client_update(..., share_labels=True)), pass labels=..., or recover them with "
        "gi_tutorial.analytic.recover_labels (exact when the labels are unique)"
    )


@dataclass(frozen=True)
class Adam:
    """Adam at learning rate ``lr``; ``signed``: step on the sign of the gradient (Geiping et al., 2020);
    ``decay``: multiply the learning rate by 0.1 at 3/8, 5/8 and 7/8 of the run."""

    lr: float = 0.1
    signed: bool = False
    decay: bool = False

    def __str__(self) -> str:
        return f"{'signed ' if self.signed else ''}Adam {self.lr:g}{', step decay' if self.decay else ''}"


@dataclass(frozen=True)
class LBFGS:
    """L-BFGS as in DLG (Zhu et al., 2019): one iteration is one step of up to ``max_iter`` evaluations.

    It needs an unconstrained search space: a projection after each step (the pixel box)
    corrupts the curvature pairs it keeps, so :func:`reconstruct` refuses a boxed pixel space.
    """

    lr: float = 1.0
    max_iter: int = 20
    history_size: int = 100
    line_search: bool = False  # True: torch's strong-Wolfe line search, so that every step lowers the loss

    def __str__(self) -> str:
        wolfe = ", strong-Wolfe line search" if self.line_search else ""
        return f"L-BFGS {self.lr:g} (up to {self.max_iter} evaluations a step{wolfe})"


def reconstruct(
    update: SharedUpdate,
    model: nn.Module,
    space: Space,
    *,
    optimizer: Adam | LBFGS = Adam(),
    num_iters: int = 1000,
    restarts: int = 1,
    distance: Distance = "l2",
    layer_weights: Sequence[float] | None = None,
    priors: Sequence[Prior] = (),
    labels: torch.Tensor | None = None,
    threat_model: ThreatModel | None = None,
    history_every: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> Reconstruction:
    """Invert a shared update: optimise a space so that its images' gradient matches the update.

    Args:
        update: what the client shared.
        model: the model the client computed the update on, in the same train/eval mode.
            It is attacked in place (a copy costs a few percent per step on ResNet-18), and its
            buffers (train-mode BatchNorm's running statistics) are put back afterwards, even
            after an error, so the caller's model is not changed.
        space: where to search (:mod:`gi_tutorial.spaces`): pixels, latent codes, generator weights.
        optimizer: :class:`Adam` (with its learning rate, signed steps, step decay) or :class:`LBFGS`.
        num_iters: iterations per restart.
        restarts: independent trials from different random starts; the one with the
            lowest final gradient distance is returned, and all are kept in ``trials``.
        distance: ``"l2"`` (DLG) or ``"cosine"`` (Geiping et al.).
        layer_weights: per-tensor weights of the distance.
        priors: penalties added to the loss (each includes its weight).
        labels: the labels to use; else the update's, else iDLG for one image.
        threat_model: what the attacker holds besides the update (:mod:`gi_tutorial.threats`);
            the space and the priors must not need more.
        history_every: keep a snapshot every this many iterations (default: 10 per trial).
        seed: seed of the random starts (trial ``k`` uses ``seed + k``).
        progress: show a tqdm bar (default: :func:`show_progress`).

    Raises:
        ValueError: the update does not match the model (or holds NaN or inf), a space whose
            batch size differs from the update's, labels that do not fit, images that do not fit
            the model, an attack that needs what the threat model does not give (named), L-BFGS
            on a boxed pixel space, or a bad option.
    """
    update.check_matches(model)
    if not isinstance(optimizer, (Adam, LBFGS)):
        raise ValueError(f"optimizer must be invert.Adam(...) or invert.LBFGS(...), got {optimizer!r}")
    if isinstance(optimizer, LBFGS) and getattr(space, "box", None) is not None:
        raise ValueError(
            "L-BFGS needs an unconstrained space: clamping the pixels after every step corrupts its "
            "curvature pairs (held-out DLG runs then stall at 4-6 dB). Use "
            "PixelSpace(shape, box=None) with L-BFGS, or Adam with the box"
        )
    if num_iters < 1 or restarts < 1:
        raise ValueError(f"num_iters and restarts must be at least 1, got {num_iters} and {restarts}")
    device = next(model.parameters()).device
    if getattr(space, "device", device) is None:  # a space left on "the model's device"
        space.device = device
    if update.batch_size is not None and space.batch_size != update.batch_size:
        raise ValueError(
            f"the space reconstructs {space.batch_size} images but the update comes from {update.batch_size}"
        )
    available = threats.shared_by(update) | (threat_model.knows if threat_model is not None else threats.Knowledge.NONE)
    threats.check(threats.requirements([space, *priors]), available, threat_model)
    labels = resolve_labels(update, model, labels).to(device)
    if labels.shape != (space.batch_size,):
        raise ValueError(f"labels must have shape ({space.batch_size},), got {tuple(labels.shape)}")

    target = [g.to(device) for g in update.gradients]
    record_bn = any(getattr(p, "needs_bn_statistics", False) for p in priors)
    history_every = history_every or max(1, num_iters // 10)
    progress = show_progress() if progress is None else progress

    checked = False  # the first evaluation checks that the images and labels fit the model (a clear ValueError)

    def loss_fn(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal checked
        grads, bn_statistics = batch_gradients(
            model, images, labels, create_graph=True, record_bn=record_bn, check=not checked
        )
        checked = True
        grad_loss = gradient_distance(grads, target, distance, layer_weights)
        total = grad_loss
        if priors:
            context = PriorContext(space=space, bn_statistics=bn_statistics)
            for prior in priors:
                total = total + prior(images, context)
        return total, grad_loss

    trials = []
    # Train-mode BatchNorm updates its running statistics at every forward: keep them to put back.
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    start = time.perf_counter()
    bar = tqdm(total=restarts * num_iters, disable=not progress, desc="reconstruct", leave=False)
    try:
        for trial_index in range(restarts):
            trials.append(
                _run_trial(
                    space,
                    loss_fn,
                    optimizer,
                    num_iters,
                    history_every,
                    torch.Generator().manual_seed(seed + trial_index),
                    bar,
                )
            )
    finally:
        bar.close()
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
    seconds = time.perf_counter() - start
    best = min(range(restarts), key=lambda k: (trials[k].diverged, trials[k].grad_loss))  # a finished trial first
    return Reconstruction(
        images=trials[best].images,
        labels=labels.detach().cpu(),
        grad_loss=trials[best].grad_loss,
        best=best,
        trials=trials,
        seconds=seconds,
        iterations=restarts * num_iters,
    )


def _run_trial(
    space: Space, loss_fn, optimizer: Adam | LBFGS, num_iters: int, history_every: int, rng: torch.Generator, bar
) -> Trial:
    variables = space.init(rng)
    if isinstance(optimizer, Adam):
        opt: torch.optim.Optimizer = _adam(variables, optimizer.lr)
    else:
        opt = torch.optim.LBFGS(
            variables,
            lr=optimizer.lr,
            max_iter=optimizer.max_iter,
            history_size=optimizer.history_size,
            line_search_fn="strong_wolfe" if optimizer.line_search else None,
        )
    scheduler = None
    if isinstance(optimizer, Adam) and optimizer.decay:
        milestones = [round(num_iters * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    signed = isinstance(optimizer, Adam) and optimizer.signed

    first: dict = {}  # the first evaluation of an iteration: the current (projected) iterate

    def closure() -> torch.Tensor:
        opt.zero_grad()
        images = space.images()
        total, grad_loss = loss_fn(images)
        total.backward(inputs=variables)  # only the space's variables need .grad, not the model's
        if not first:
            first.update(images=images.detach().clone(), grad_loss=grad_loss.item(), total=total.item())
        return total

    losses: list[float] = []
    history: list[Snapshot] = []
    diverged = False
    for it in range(num_iters):
        first.clear()
        if isinstance(optimizer, Adam):
            closure()
            if signed:
                for v in variables:
                    v.grad.sign_()
            opt.step()
        else:
            opt.step(closure)
        if not math.isfinite(first["total"]):
            diverged = True
            break
        losses.append(first["total"])
        if it % history_every == 0:
            history.append(Snapshot(it, first["images"].cpu(), first["grad_loss"]))
        last_good = first["images"], first["grad_loss"]
        space.project()
        if scheduler is not None:
            scheduler.step()
        bar.update(1)

    if not diverged:  # one more evaluation: the distance of the final iterate, to rank trials on equal terms
        with torch.no_grad():
            images = space.images().detach().clone()
        grad_loss = float(loss_fn(images)[1].detach())
        state = space.state()
        diverged = not (math.isfinite(grad_loss) and bool(torch.isfinite(images).all()))  # the last step failed
    if diverged:  # keep the last finite iterate (or the start, cleaned, if the first one failed); no state
        images, grad_loss = last_good if losses else (torch.nan_to_num(first["images"]), first["grad_loss"])
        state = {}
    history.append(Snapshot(len(losses), images.cpu(), grad_loss))
    return Trial(
        images=images.cpu(),
        grad_loss=grad_loss if math.isfinite(grad_loss) else math.inf,
        losses=losses,
        history=history,
        state=state,
        diverged=diverged,
    )


def _adam(variables: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch build has it: on the CPU the per-tensor
    implementation costs more than the step itself once the variables are a generator's weights."""
    try:
        return torch.optim.Adam(variables, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # an older torch, or a device/dtype without the fused kernel
        return torch.optim.Adam(variables, lr=lr)


@dataclass
class GIASResult:
    """Both stages of GIAS: the latent search and the per-image weight search that refines it."""

    latent: Reconstruction  # stage 1: x = G(z*)
    weights: Reconstruction  # stage 2: x_b = G_{w_b*}(z*_b)

    @property
    def images(self) -> torch.Tensor:
        return self.weights.images


@dataclass(frozen=True)
class Stage:
    """The settings of one stage of :func:`gias`: Adam with step decay for ``num_iters`` steps at ``lr``."""

    num_iters: int
    lr: float
    restarts: int = 1  # random starts, the best kept (stage 1; stage 2 starts from stage 1's result)
    priors: tuple[Prior, ...] = ()
    distance: Distance = "cosine"

    def __str__(self) -> str:
        starts = f"{self.restarts} restarts x " if self.restarts > 1 else ""
        priors = f", priors {', '.join(type(p).__name__ for p in self.priors)}" if self.priors else ""
        return f"{starts}{self.num_iters} steps of Adam {self.lr:g} with step decay, {self.distance} distance{priors}"


LATENT_STAGE = Stage(num_iters=150, lr=0.1, restarts=2)  # chapter 4's stage 1 (GI-z)
WEIGHT_STAGE = Stage(num_iters=250, lr=3e-4)  # chapter 4's stage 2: small steps keep each copy near the prior


def gias(
    update: SharedUpdate,
    model: nn.Module,
    generator: nn.Module,
    *,
    latent: Stage = LATENT_STAGE,
    weights: Stage = WEIGHT_STAGE,
    shared: bool = False,
    labels: torch.Tensor | None = None,
    threat_model: ThreatModel | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> GIASResult:
    """Gradient Inversion in Alternative Spaces (Jeon et al., 2021): two calls of :func:`reconstruct`.

    Stage 1 (``latent``) searches the generator's latent space from ``latent.restarts`` random
    starts and keeps the best. Stage 2 (``weights``) freezes the best ``z*``, gives each image
    its own copy of the generator's weights, and searches those with a small learning rate, so
    each image can leave the generator's range where the gradient asks it to. ``shared=True``
    adapts one copy of the weights for the whole batch instead (GIML's inner loop,
    :func:`gi_tutorial.giml.inner_round`).

    Raises:
        ValueError: no shared batch size, or a generator the threat model does not allow.
        DivergedError: every stage-1 restart diverged (the loss became NaN or inf): lower ``latent.lr``.
    """
    from .spaces import GeneratorSpace, LatentSpace

    batch_size = update.batch_size
    if batch_size is None:
        raise ValueError("GIAS needs the batch size: share it in the update")
    common = dict(labels=labels, threat_model=threat_model, progress=progress)
    stage1 = reconstruct(
        update,
        model,
        LatentSpace(generator, batch_size),
        optimizer=Adam(latent.lr, decay=True),
        num_iters=latent.num_iters,
        restarts=latent.restarts,
        distance=latent.distance,
        priors=latent.priors,
        seed=seed,
        **common,
    )
    if stage1.trials[stage1.best].diverged:
        raise DivergedError(
            f"every one of the {latent.restarts} latent-search restarts diverged (NaN or inf loss); "
            f"try a smaller latent learning rate than {latent.lr}"
        )
    z_star = stage1.trials[stage1.best].state["z"]
    stage2 = reconstruct(
        update,
        model,
        GeneratorSpace(generator, batch_size, z=z_star, shared=shared),
        optimizer=Adam(weights.lr, decay=True),
        num_iters=weights.num_iters,
        restarts=1,
        distance=weights.distance,
        priors=weights.priors,
        seed=seed,
        **common,
    )
    return GIASResult(latent=stage1, weights=stage2)
