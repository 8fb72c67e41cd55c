"""The federated-learning threat model in code: what a client shares, and nothing more.

In FedSGD (McMahan et al., 2017) each client computes the gradient of its loss on one
private batch and sends it to the server, which averages the updates and takes a step.
The attacker of this book is an honest-but-curious server: it follows the protocol, but
it reads each :class:`SharedUpdate` together with the model it sent out, and tries to
recover the client's images. It never sees the images themselves.

What else an update carries depends on the threat model of a chapter: the batch size,
the labels, the BatchNorm batch statistics (Yin et al., 2021). A defense is any function
that maps a SharedUpdate to a SharedUpdate (see :mod:`gi_tutorial.defenses`); it records
what it did in ``SharedUpdate.defense``, as a protocol would publish it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class DefenseRecord:
    """What one defense did to an update (see :mod:`gi_tutorial.defenses`): its name, its settings, and
    (pruning) the kept entries. Public, like the protocol, so an attacker can adapt to it."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    masks: tuple[torch.Tensor, ...] | None = None  # per gradient tensor, True where the entry was kept

    def __str__(self) -> str:
        settings = ", ".join(
            f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
            for k, v in self.settings.items()
            if v is not None
        )
        return f"{self.name} ({settings})" if settings else self.name


@dataclass(frozen=True)
class SharedUpdate:
    """What one client sends to the server in one FedSGD round.

    Attributes:
        gradients: the gradient of the client's mean loss, one tensor per trainable
            parameter, in the order of ``model.parameters()``.
        batch_size: number of images behind the gradient, if the protocol shares it.
        labels: the batch's labels ``(B,)``, if the threat model shares them.
        bn_statistics: per BatchNorm layer (in module order), the ``(mean, var)`` of its
            input over the batch, if the threat model shares them.
        defense: what the client applied before sending, in order (records of
            :mod:`gi_tutorial.defenses`: clip bound, noise, prune masks); public, like the
            protocol, so an attacker can adapt to it.
    """

    gradients: tuple[torch.Tensor, ...]
    batch_size: int | None = None
    labels: torch.Tensor | None = None
    bn_statistics: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    defense: tuple[DefenseRecord, ...] = ()

    @property
    def num_values(self) -> int:
        """How many numbers the update holds (the equations an attacker can use)."""
        return sum(g.numel() for g in self.gradients)

    def check_matches(self, model: nn.Module) -> None:
        """Raise ValueError unless there is one finite gradient per trainable parameter, of its shape."""
        params = trainable_parameters(model)
        if len(self.gradients) != len(params):
            raise ValueError(
                f"the update holds {len(self.gradients)} gradient tensors but the model has "
                f"{len(params)} trainable parameters: was it computed on a different model?"
            )
        for i, (g, (name, p)) in enumerate(zip(self.gradients, _named_trainable(model))):
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient {i} has shape {tuple(g.shape)} but parameter {name!r} has shape "
                    f"{tuple(p.shape)}: the update does not match the model"
                )
            if not torch.isfinite(g).all():
                raise ValueError(
                    f"gradient {i} (parameter {name!r}) holds NaN or inf values: the client's computation "
                    "diverged or the update was corrupted, and no attack or average can use it"
                )

    def replace(self, **changes) -> SharedUpdate:
        """A copy with some fields changed (defenses use this); it shares no tensor with ``self``."""
        copied = {
            "gradients": tuple(g.detach().clone() for g in self.gradients),
            "labels": None if self.labels is None else self.labels.detach().clone(),
            "bn_statistics": None
            if self.bn_statistics is None
            else tuple((m.detach().clone(), v.detach().clone()) for m, v in self.bn_statistics),
        }
        copied.update(changes)
        return replace(self, **copied)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a client computes gradients for, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def check_batch(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Raise ValueError unless ``images`` is a non-empty (B, C, H, W) floating-point batch and ``labels`` is (B,) integer."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"the batch is empty (shape {tuple(images.shape)}): a client update needs at least one image")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ValueError(
                f"labels must be an integer tensor of shape ({images.shape[0]},) to match the images, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )


def _expected_channels(model: nn.Module) -> int | None:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    return first.in_channels if isinstance(first, nn.Conv2d) else None


def checked_logits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``model(images)``, with a ValueError instead of a raw torch error when the batch does not fit.

    Checks what a client's data can get wrong: the channel count (a 1-channel batch for a
    3-channel model), an image size the model cannot take, and labels outside
    ``[0, num_classes)``, which ``cross_entropy`` would turn into an IndexError on the CPU
    and a device-side assert (a dead runtime) on CUDA.

    Raises:
        ValueError: the batch or its labels do not fit the model.
    """
    channels = _expected_channels(model)
    if channels is not None and images.shape[1] != channels:
        raise ValueError(
            f"the model's first convolution expects {channels}-channel images, "
            f"got a batch of shape {tuple(images.shape)}"
        )
    try:
        logits = model(images)
    except RuntimeError as error:
        raise ValueError(
            f"the model cannot take a batch of shape {tuple(images.shape)} "
            f"(expected (B, {channels or 'C'}, H, W) of the size it was built for): {error}"
        ) from error
    num_classes = logits.shape[-1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for this model's {num_classes} outputs, "
            f"got values from {int(labels.min())} to {int(labels.max())}"
        )
    return logits


def batch_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    create_graph: bool = False,
    record_bn: bool = False,
    check: bool = False,
) -> tuple[tuple[torch.Tensor, ...], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Gradient of the mean cross-entropy on a batch, w.r.t. every trainable parameter.

    This is the computation a client runs, and the one an attacker differentiates
    through (``create_graph=True``) to match a shared gradient.

    ``check=True`` (the client's side) runs :func:`checked_logits` first; the attack loop
    leaves it off, as its batches fit by construction.

    Returns:
        the gradients (one per trainable parameter) and, if ``record_bn``, the
        ``(mean, var)`` of each BatchNorm layer's input over the batch.
    """
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = []
    if record_bn:

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            dims = [0] + list(range(2, x.ndim))
            bn_statistics.append((x.mean(dims), x.var(dims, unbiased=False)))

        handles = [
            m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
    try:
        logits = checked_logits(model, images, labels) if check else model(images)
        loss = F.cross_entropy(logits, labels)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(loss, trainable_parameters(model), create_graph=create_graph)
    return grads, bn_statistics


def client_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    share_batch_size: bool = True,
    share_labels: bool = False,
    share_bn_statistics: bool = False,
    defense: Callable[[SharedUpdate], SharedUpdate] | None = None,
) -> SharedUpdate:
    """One FedSGD client step: the gradient of the mean loss on a private batch, as shared.

    The model is used in the mode it is in (train or eval), as the protocol says; a copy
    runs the batch, so the server's model (and its BatchNorm running statistics) is not
    changed.

    Args:
        model: the global model the server sent.
        images: the client's private batch, ``(B, C, H, W)``.
        labels: its labels, ``(B,)``.
        share_batch_size, share_labels, share_bn_statistics: what the threat model lets
            the server see besides the gradient.
        defense: applied to the update before it leaves the client.

    Raises:
        ValueError: images or labels of the wrong shape or type, a channel count or image
            size the model cannot take, or labels outside ``[0, num_classes)``.
    """
    check_batch(images, labels)
    local = copy.deepcopy(model)
    grads, bn_statistics = batch_gradients(local, images, labels, record_bn=share_bn_statistics, check=True)
    update = SharedUpdate(
        gradients=tuple(g.detach() for g in grads),
        batch_size=images.shape[0] if share_batch_size else None,
        labels=labels.detach().clone() if share_labels else None,
        bn_statistics=tuple((m.detach(), v.detach()) for m, v in bn_statistics) if share_bn_statistics else None,
    )
    return defense(update) if defense is not None else update


def server_step(model: nn.Module, updates: Sequence[SharedUpdate], lr: float) -> None:
    """FedSGD's server: average the clients' gradients (weighted by batch size) and take an SGD step.

    Raises:
        ValueError: no updates, an update without a batch size, or one that does not match the model.
    """
    for u in updates:
        u.check_matches(model)
    with torch.no_grad():
        for p, g in zip(trainable_parameters(model), average_gradients(updates)):
            p -= lr * g


def average_gradients(updates: Sequence[SharedUpdate]) -> tuple[torch.Tensor, ...]:
    """The clients' gradients averaged with weights proportional to their batch sizes.

    This is the gradient of the mean loss over all the clients' images together.

    Raises:
        ValueError: no updates, an update without a batch size, updates that disagree in
            their number of tensors or their shapes, or NaN / inf gradients.
    """
    if not updates:
        raise ValueError("need at least one update to average")
    if any(u.batch_size is None for u in updates):
        raise ValueError("weighted averaging needs every update's batch size (share_batch_size=True)")
    reference = [g.shape for g in updates[0].gradients]
    for k, u in enumerate(updates[1:], start=1):
        shapes = [g.shape for g in u.gradients]
        if len(shapes) != len(reference):
            raise ValueError(
                f"update {k} holds {len(shapes)} gradient tensors but update 0 holds {len(reference)}: "
                "the updates come from different models"
            )
        for i, (a, b) in enumerate(zip(shapes, reference)):
            if a != b:
                raise ValueError(
                    f"gradient {i} of update {k} has shape {tuple(a)} but update 0's has shape "
                    f"{tuple(b)}: the updates come from different models"
                )
    for k, u in enumerate(updates):
        if not all(torch.isfinite(g).all() for g in u.gradients):
            raise ValueError(f"update {k} holds NaN or inf gradients: it cannot be averaged")
    total = sum(u.batch_size for u in updates)
    return tuple(sum(u.batch_size / total * u.gradients[i] for u in updates) for i in range(len(updates[0].gradients)))


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
    share_labels: bool = True,
    fedsgd_every: int | None = 5,
    server_lr: float = 0.05,
    seed: int = 0,
) -> Iterator[FLRound]:
    """Simulate FedSGD on private data and yield what the server sees, round by round.

    Each round, ``clients_per_round`` clients each draw a private batch of ``batch_size``
    images and share the gradient with the batch size (and the labels if ``share_labels``).
    Every ``fedsgd_every`` rounds the server averages the updates received since its last
    step and takes an SGD step, so the victim trains as federated learning goes on;
    ``fedsgd_every=None`` keeps it frozen. The images never leave this function, which runs
    lazily: each round's updates are computed when the round is drawn.

    Raises:
        ValueError: bad sizes, or images and labels that do not match.
    """
    if num_rounds < 1 or clients_per_round < 1 or batch_size < 1 or (fedsgd_every is not None and fedsgd_every < 1):
        raise ValueError(
            "num_rounds, clients_per_round, batch_size and fedsgd_every must be at least 1 "
            f"(fedsgd_every=None: a frozen victim), got {num_rounds}, {clients_per_round}, "
            f"{batch_size}, {fedsgd_every}"
        )
    if len(images) != len(labels) or len(images) < batch_size:
        raise ValueError(
            f"need at least batch_size={batch_size} images with one label each, "
            f"got {len(images)} images and {len(labels)} labels"
        )
    model = copy.deepcopy(model)
    rng = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    pending: list[SharedUpdate] = []  # the updates received since the server's last step
    for index in range(num_rounds):
        updates = []
        for _ in range(clients_per_round):
            pick = torch.randperm(len(images), generator=rng)[:batch_size]
            updates.append(
                client_update(model, images[pick].to(device), labels[pick].to(device), share_labels=share_labels)
            )
        yield FLRound(index, copy.deepcopy(model), tuple(updates))
        pending += updates
        if fedsgd_every is not None and (index + 1) % fedsgd_every == 0:
            server_step(model, pending, server_lr)
            pending = []
