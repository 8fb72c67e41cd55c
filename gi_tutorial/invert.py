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
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .analytic import recover_label
from .config import is_quick
from .fl import SharedUpdate, batch_gradients
from .objectives import Distance, gradient_distance
from .priors import Prior, PriorContext, TotalVariation
from .spaces import PixelSpace, Space


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


def reconstruct(
    update: SharedUpdate,
    model: nn.Module,
    space: Space | None = None,
    *,
    labels: torch.Tensor | None = None,
    image_shape: tuple[int, int, int] | None = None,
    priors: Sequence[Prior] = (),
    distance: Distance = "l2",
    layer_weights: Sequence[float] | None = None,
    optimizer: Literal["adam", "lbfgs"] = "adam",
    lr: float = 0.1,
    num_iters: int = 1000,
    signed: bool = False,
    lr_decay: bool = False,
    restarts: int = 1,
    lbfgs_max_iter: int = 20,
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
        space: where to search; default :class:`~gi_tutorial.spaces.PixelSpace` with
            ``image_shape`` and the update's batch size.
        labels: the labels to use; else the update's, else iDLG for one image.
        image_shape: ``(C, H, W)``, needed only for the default pixel space.
        priors: penalties added to the loss (each includes its weight).
        distance: ``"l2"`` (DLG) or ``"cosine"`` (Geiping et al.).
        layer_weights: per-tensor weights of the distance.
        optimizer: ``"adam"`` or ``"lbfgs"`` (one iteration = one L-BFGS step of up to
            ``lbfgs_max_iter`` function evaluations, as in DLG).
        lr: learning rate.
        num_iters: iterations per restart.
        signed: step on the sign of the gradient (Adam only), as in Geiping et al.
        lr_decay: multiply the learning rate by 0.1 at 3/8, 5/8 and 7/8 of the run.
        restarts: independent trials from different random starts; the one with the
            lowest final gradient distance is returned, and all are kept in ``trials``.
        history_every: keep a snapshot every this many iterations (default: 10 per trial).
        seed: seed of the random starts (trial ``k`` uses ``seed + k``).
        progress: show a tqdm bar (default: :func:`show_progress`).

    Raises:
        ValueError: the update does not match the model (or holds NaN or inf), a space whose
            batch size differs from the update's, images (``image_shape``) or labels that do not
            fit the model, a missing image shape or labels, or a bad option.
    """
    update.check_matches(model)
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if signed and optimizer != "adam":
        raise ValueError("signed gradients are only defined for the Adam optimizer")
    if num_iters < 1 or restarts < 1:
        raise ValueError(f"num_iters and restarts must be at least 1, got {num_iters} and {restarts}")
    device = next(model.parameters()).device
    if space is None:
        if image_shape is None or update.batch_size is None:
            raise ValueError("the default pixel space needs image_shape=(C, H, W) and a shared batch size")
        space = PixelSpace((update.batch_size, *image_shape), device=device)
    if getattr(space, "device", device) is None:  # a space left on "the model's device"
        space.device = device
    if update.batch_size is not None and space.batch_size != update.batch_size:
        raise ValueError(f"the space reconstructs {space.batch_size} images but the update comes from {update.batch_size}")
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
        grads, bn_statistics = batch_gradients(model, images, labels, create_graph=True, record_bn=record_bn,
                                               check=not checked)
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
            trials.append(_run_trial(space, loss_fn, optimizer, lr, num_iters, signed, lr_decay, lbfgs_max_iter,
                                     history_every, torch.Generator().manual_seed(seed + trial_index), bar))
    finally:
        bar.close()
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
    seconds = time.perf_counter() - start
    best = min(range(restarts), key=lambda k: (trials[k].diverged, trials[k].grad_loss))  # a finished trial first
    return Reconstruction(images=trials[best].images, labels=labels.detach().cpu(), grad_loss=trials[best].grad_loss,
                          best=best, trials=trials, seconds=seconds, iterations=restarts * num_iters)


def _run_trial(space, loss_fn, optimizer, lr, num_iters, signed, lr_decay, lbfgs_max_iter,
               history_every, rng, bar) -> Trial:
    variables = space.init(rng)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = _adam(variables, lr)
    else:
        opt = torch.optim.LBFGS(variables, lr=lr, max_iter=lbfgs_max_iter, history_size=100)
    scheduler = None
    if lr_decay:
        milestones = [round(num_iters * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)

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
        if optimizer == "adam":
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
    return Trial(images=images.cpu(), grad_loss=grad_loss if math.isfinite(grad_loss) else math.inf,
                 losses=losses, history=history, state=state, diverged=diverged)



def _adam(variables: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch build has it: on the CPU the per-tensor
    implementation costs more than the step itself once the variables are a generator's weights."""
    try:
        return torch.optim.Adam(variables, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # an older torch, or a device/dtype without the fused kernel
        return torch.optim.Adam(variables, lr=lr)


def inverting_gradients(
    update: SharedUpdate,
    model: nn.Module,
    *,
    image_shape: tuple[int, int, int],
    num_iters: int,
    tv: float = 1e-3,
    **kwargs,
) -> Reconstruction:
    """The book's pixel-space baseline, GI-x: Inverting Gradients (Geiping et al., 2020) in one call.

    :func:`reconstruct` in pixel space with the cosine distance, a total-variation prior of
    weight ``tv``, Adam at 0.1 on the sign of the gradient, and step decay. ``kwargs``
    (labels, restarts, seed, progress, ...) go to :func:`reconstruct`.
    """
    return reconstruct(update, model, image_shape=image_shape, distance="cosine", priors=[TotalVariation(tv)],
                       signed=True, lr=0.1, lr_decay=True, num_iters=num_iters, **kwargs)


@dataclass
class GIASResult:
    """Both stages of GIAS: the latent search and the per-image weight search that refines it."""

    latent: Reconstruction  # stage 1: x = G(z*)
    weights: Reconstruction  # stage 2: x_b = G_{w_b*}(z*_b)

    @property
    def images(self) -> torch.Tensor:
        return self.weights.images


def gias(
    update: SharedUpdate,
    model: nn.Module,
    generator: nn.Module,
    *,
    latent_iters: int = 300,
    weight_iters: int = 500,
    latent_lr: float = 0.1,
    weight_lr: float = 3e-4,
    restarts: int = 4,
    latent_priors: Sequence[Prior] = (),
    weight_priors: Sequence[Prior] = (),
    shared: bool = False,
    **kwargs,
) -> GIASResult:
    """Gradient Inversion in Alternative Spaces (Jeon et al., 2021): two calls of :func:`reconstruct`.

    Stage 1 searches the generator's latent space (``restarts`` random starts, the best
    kept). Stage 2 freezes the best ``z*``, gives each image its own copy of the generator's
    weights, and searches those with the same loss and a small learning rate, so each
    image can leave the generator's range where the gradient asks it to. Both stages use
    Adam with step decay; ``kwargs`` (labels, distance, ...) go to both. ``shared=True`` adapts
    one copy of the weights for the whole batch instead (GIML's inner loop,
    :func:`gi_tutorial.giml.inner_round`).

    Raises:
        ValueError: no shared batch size.
        DivergedError: every stage-1 restart diverged (the loss became NaN or inf): lower ``latent_lr``.
    """
    from .spaces import GeneratorSpace, LatentSpace

    batch_size = update.batch_size
    if batch_size is None:
        raise ValueError("GIAS needs the batch size: share it in the update")
    stage1 = reconstruct(update, model, LatentSpace(generator, batch_size), priors=latent_priors, lr=latent_lr,
                         num_iters=latent_iters, restarts=restarts, lr_decay=True, **kwargs)
    if stage1.trials[stage1.best].diverged:
        raise DivergedError(f"every one of the {restarts} latent-search restarts diverged (NaN or inf loss); "
                           f"try a smaller latent_lr than {latent_lr}")
    z_star = stage1.trials[stage1.best].state["z"]
    stage2 = reconstruct(update, model, GeneratorSpace(generator, batch_size, z=z_star, shared=shared), priors=weight_priors,
                         lr=weight_lr, num_iters=weight_iters, restarts=1, lr_decay=True, **kwargs)
    return GIASResult(latent=stage1, weights=stage2)
