"""Defenses: what a client can do to its update before it leaves, and what that buys in privacy.

Each defense maps a :class:`~gi_tutorial.fl.SharedUpdate` to a new one (the input is
never changed), draws its randomness from an explicit ``torch.Generator``, and appends a
:class:`DefenseRecord` to ``update.defense``: the protocol is public, so an attacker knows
the clip bound, the noise and the pruning masks, and can adapt to them.

- :func:`add_noise`: Gaussian noise on the shared gradient, absolute or relative to its norm.
- :func:`clip`, :func:`dp_fedavg`: client-level differential privacy (McMahan et al., 2018,
  "Learning Differentially Private Recurrent Language Models"): clip the whole update to
  L2 norm ``S``, add ``N(0, (zS)^2)`` to every entry.
- :func:`dp_sgd_update`: example-level DP-SGD (Abadi et al., 2016) as Opacus (Yousefpour
  et al., 2021) computes it: per-example gradients, each clipped to ``C``, summed, plus
  ``N(0, (zC)^2)``, divided by the batch size. It needs the images, so it is a client
  update, like :func:`~gi_tutorial.fl.client_update`.
- :func:`prune`: keep the largest fraction of each gradient tensor by magnitude (Zhu et al.,
  2019; Huang et al., 2021); :func:`adaptive_model` is the attacker who matches only the
  kept entries (the GIAS code's ``sim_cmpr``).
- :func:`epsilon`, :func:`noise_multiplier_for`: privacy accounting with Opacus's RDP
  (Mironov, 2017) and PRV (Gopi et al., 2021) accountants for an FL schedule.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fl import SharedUpdate, check_batch, checked_logits, trainable_parameters

Accountant = Literal["rdp", "prv"]


@dataclass(frozen=True)
class DefenseRecord:
    """What one defense did to an update: its name, its settings, and (pruning) the kept entries."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    masks: tuple[torch.Tensor, ...] | None = None  # per gradient tensor, True where the entry was kept


def _with(update: SharedUpdate, gradients: tuple[torch.Tensor, ...], record: DefenseRecord) -> SharedUpdate:
    return update.replace(gradients=gradients, defense=tuple(update.defense) + (record,))


def global_norm(gradients) -> torch.Tensor:
    """The L2 norm of all gradient tensors concatenated.

    >>> float(global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]))
    5.0
    """
    return torch.sqrt(sum(g.double().pow(2).sum() for g in gradients)).float()


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _noise_like(g: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    # drawn on the generator's device (the CPU for a default generator), then moved: same draws on any device
    return std * torch.randn(g.shape, generator=generator, dtype=g.dtype, device=generator.device).to(g.device)


def add_noise(update: SharedUpdate, sigma: float, generator: torch.Generator, relative: bool = False) -> SharedUpdate:
    r"""Add Gaussian noise to every gradient entry: :math:`\tilde g = g + \mathcal N(0, s^2 I)`.

    With ``relative=False`` the standard deviation is ``s = sigma``. With ``relative=True``
    it is ``s = sigma * ||g|| / sqrt(d)`` (``d`` entries), so that the noise's norm is about
    ``sigma`` times the gradient's: ``sigma`` is a noise-to-signal ratio.

    Raises:
        ValueError: negative or non-finite ``sigma``.
    """
    _check_non_negative("sigma", sigma)
    std = float(sigma)
    if relative:
        std = sigma * float(global_norm(update.gradients)) / math.sqrt(update.num_values)
    noisy = tuple(g + _noise_like(g, std, generator) for g in update.gradients)
    return _with(update, noisy, DefenseRecord("noise", {"sigma": std, "relative": sigma if relative else None}))


def clip(update: SharedUpdate, max_norm: float) -> SharedUpdate:
    r"""Scale the whole update so that its global L2 norm is at most ``max_norm``: :math:`g \min(1, S/\lVert g\rVert)`.

    Raises:
        ValueError: negative or non-finite ``max_norm``.
    """
    _check_non_negative("clip bound", max_norm)
    norm = float(global_norm(update.gradients))
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return _with(update, tuple(g * factor for g in update.gradients),
                 DefenseRecord("clip", {"max_norm": float(max_norm), "norm_before": norm, "factor": factor}))


def dp_fedavg(update: SharedUpdate, clip_norm: float, noise_multiplier: float, generator: torch.Generator) -> SharedUpdate:
    r"""Client-level DP (DP-FedAvg, McMahan et al., 2018): clip to ``S``, add :math:`\mathcal N(0, (zS)^2)`.

    Clipping bounds what one client can change (its sensitivity is ``S``); the noise, ``z``
    times that bound, hides it. Here the client adds the noise itself, so the server never
    sees an unnoised update; :func:`epsilon` gives the guarantee for a schedule.

    Raises:
        ValueError: negative clip bound or noise multiplier.
    """
    _check_non_negative("noise multiplier", noise_multiplier)
    clipped = clip(update, clip_norm)
    noised = add_noise(clipped, noise_multiplier * clip_norm, generator)
    record = DefenseRecord("dp_fedavg", {"clip": float(clip_norm), "noise_multiplier": float(noise_multiplier),
                                         "sigma": float(noise_multiplier * clip_norm),
                                         "factor": clipped.defense[-1].settings["factor"]})
    return noised.replace(defense=tuple(update.defense) + (record,))


def prune(update: SharedUpdate, ratio: float) -> SharedUpdate:
    """Gradient pruning: in every tensor, zero the ``ratio`` of entries with the smallest magnitude.

    Each tensor keeps exactly ``round((1 - ratio) * n)`` of its ``n`` entries (at least one);
    the record holds the masks of the kept entries.

    Raises:
        ValueError: ``ratio`` outside [0, 1).
    """
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ValueError(f"prune ratio must lie in [0, 1), got {ratio!r}")
    pruned, masks = [], []
    for g in update.gradients:
        keep = max(1, round((1 - ratio) * g.numel()))
        mask = torch.zeros(g.numel(), dtype=torch.bool, device=g.device)
        mask[g.flatten().abs().topk(keep).indices] = True
        mask = mask.view_as(g)
        pruned.append(torch.where(mask, g, torch.zeros_like(g)))
        masks.append(mask)
    return _with(update, tuple(pruned), DefenseRecord("prune", {"ratio": float(ratio)}, masks=tuple(masks)))


def compose(*defenses: Callable[[SharedUpdate], SharedUpdate]) -> Callable[[SharedUpdate], SharedUpdate]:
    """Apply several defenses in order (e.g. prune, then add noise)."""
    def apply(update: SharedUpdate) -> SharedUpdate:
        for defense in defenses:
            update = defense(update)
        return update
    return apply


def kept_masks(update: SharedUpdate) -> tuple[torch.Tensor, ...] | None:
    """The entries every pruning step kept (their intersection), or None if the update was not pruned."""
    masks = None
    for record in update.defense:
        if record.masks is not None:
            masks = record.masks if masks is None else tuple(a & b for a, b in zip(masks, record.masks))
    return masks


class _MaskedGradients(nn.Module):
    """The victim with the same outputs, whose parameter gradients are zero outside ``masks``."""

    def __init__(self, model: nn.Module, masks: tuple[torch.Tensor, ...]):
        super().__init__()
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m.to(torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        masked = {}
        for i, name in enumerate(self.names):
            p, m = params[name], getattr(self, f"mask{i}")
            masked[name] = p * m + (p * (1 - m)).detach()  # value p; gradient m * dL/dp
        return torch.func.functional_call(self.model, masked, (x,))


def adaptive_model(model: nn.Module, update: SharedUpdate) -> nn.Module:
    """The model an attacker who knows the pruning masks inverts: its gradients are zero where the client's are.

    Against a pruned update the plain attacker compares its candidate's full gradient with
    a gradient whose pruned entries are zero; the adaptive attacker compares only the kept
    entries, as the GIAS authors' ``sim_cmpr`` does. Passing this model to
    :func:`~gi_tutorial.invert.reconstruct` (or :func:`~gi_tutorial.invert.gias`) does
    that with the unchanged loop: the forward pass is the victim's, and the gradient of
    every parameter is masked. Without pruning records it returns a copy of the model.
    """
    masks = kept_masks(update)
    local = copy.deepcopy(model)
    if masks is None:
        return local
    update.check_matches(model)
    return _MaskedGradients(local, masks).train(model.training)


def check_dp_compatible(model: nn.Module) -> None:
    """Raise ValueError, naming the layers, unless Opacus can compute per-example gradients for ``model``.

    BatchNorm does not qualify: in train mode it normalises each image with its batch's
    mean and variance, so one image's output, and its "per-example gradient", depends on the
    other images in the batch. Example-level clipping then no longer bounds what one
    example changes. (GroupNorm or LayerNorm normalise each image alone and qualify.)
    """
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # check leaves, so that each problem is reported under its own layer's name
        for error in ModuleValidator.validate(module, strict=False):
            problems.append(f"{name or type(module).__name__} ({type(module).__name__}): "
                            f"{str(error).split('. ')[0]}")
    if problems:
        raise ValueError("Opacus cannot compute per-example gradients for this model: " + "; ".join(problems))


def dp_sgd_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    share_batch_size: bool = True,
    share_labels: bool = False,
) -> SharedUpdate:
    r"""One client step of example-level DP-SGD (Abadi et al., 2016), computed by Opacus.

    .. math:: \tilde g = \frac{1}{B}\Big(\sum_{i=1}^{B} g_i \min\big(1, C/\lVert g_i\rVert\big) + \mathcal N(0, (zC)^2 I)\Big)

    Opacus's ``GradSampleModule`` computes the per-example gradients ``g_i`` and its
    ``DPOptimizer`` clips, sums, noises (with ``generator``) and scales them; the update is
    read from the optimizer before its step, so the server's model is not changed.

    Raises:
        ValueError: bad images or labels, a negative clip bound or noise multiplier, or a
            model Opacus cannot wrap (the offending layers are named; see
            :func:`check_dp_compatible`).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    _check_non_negative("clip bound", clip_norm)
    _check_non_negative("noise multiplier", noise_multiplier)
    check_batch(images, labels)
    check_dp_compatible(model)
    local = copy.deepcopy(model)
    params = trainable_parameters(local)
    wrapped = GradSampleModule(local, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=noise_multiplier,
                            max_grad_norm=clip_norm, expected_batch_size=images.shape[0], loss_reduction="mean",
                            generator=generator)
    optimizer.zero_grad()
    with warnings.catch_warnings():  # Opacus's hooks fire on module outputs when the images need no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        F.cross_entropy(checked_logits(wrapped, images, labels), labels).backward()
    optimizer.pre_step()  # clip, sum, noise, scale into p.grad; no step
    gradients = tuple(p.grad.detach().clone() for p in params)
    wrapped._close()
    record = DefenseRecord("dp_sgd", {"clip": float(clip_norm), "noise_multiplier": float(noise_multiplier),
                                      "sigma": float(noise_multiplier * clip_norm / images.shape[0])})
    return SharedUpdate(gradients=gradients, batch_size=images.shape[0] if share_batch_size else None,
                        labels=labels.detach().clone() if share_labels else None, defense=(record,))


@dataclass(frozen=True)
class FLSchedule:
    """A federated training schedule, for accounting: ``rounds`` rounds, each sampling clients with probability ``q``.

    Attributes:
        num_clients: ``N``, the population.
        clients_per_round: the expected number sampled per round (Poisson sampling with
            ``q = clients_per_round / num_clients``).
        rounds: ``T``.
        delta: the target ``delta`` of ``(epsilon, delta)``-DP, well below ``1 / N``.
    """

    num_clients: int
    clients_per_round: float
    rounds: int
    delta: float

    def __post_init__(self) -> None:
        if self.num_clients < 1 or self.rounds < 1:
            raise ValueError(f"need at least one client and one round, got {self.num_clients} and {self.rounds}")
        _check_sample_rate(self.sample_rate)
        _check_delta(self.delta)

    @property
    def sample_rate(self) -> float:
        """``q``, the probability that a client takes part in a round."""
        return self.clients_per_round / self.num_clients


def _check_sample_rate(q: float) -> None:
    if not 0 < q <= 1:
        raise ValueError(f"the sampling rate q must lie in (0, 1], got {q!r}")


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")


@contextlib.contextmanager
def _quiet_accountant():
    """At extreme noise the accountants warn about overflow and the edge of their Renyi orders: expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _accountant(name: Accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    raise ValueError(f"accountant must be 'rdp' or 'prv', got {name!r}")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: Accountant = "rdp") -> float:
    """The ``epsilon`` of ``steps`` subsampled Gaussian mechanisms, from an Opacus accountant.

    ``noise_multiplier`` is the noise's standard deviation over the sensitivity (the clip
    bound); ``sample_rate`` is the Poisson sampling probability. Zero noise gives ``inf``.
    The PRV accountant discretises the privacy-loss distribution and cannot do so for small
    noise (below about 0.3 it would need terabytes): use RDP there.

    Raises:
        ValueError: negative noise, ``sample_rate`` outside (0, 1], ``delta`` outside
            (0, 1), fewer than one step, an unknown accountant, or PRV at too small a noise.
    """
    _check_non_negative("noise multiplier", noise_multiplier)
    _check_sample_rate(sample_rate)
    _check_delta(delta)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps!r}")
    acc = _accountant(accountant)
    if noise_multiplier == 0:
        return math.inf
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    try:
        with _quiet_accountant():
            return float(acc.get_epsilon(delta=delta))
    except MemoryError as error:
        raise ValueError(f"the PRV accountant cannot discretise noise multiplier {noise_multiplier}: "
                         "use accountant='rdp'") from error


def schedule_epsilon(noise_multiplier: float, schedule: FLSchedule, accountant: Accountant = "rdp") -> float:
    """The client-level ``epsilon`` of DP-FedAvg with this noise multiplier over ``schedule``."""
    return epsilon(noise_multiplier, schedule.sample_rate, schedule.rounds, schedule.delta, accountant)


def noise_multiplier_for(target_epsilon: float, schedule: FLSchedule, accountant: Accountant = "rdp") -> float:
    """The smallest noise multiplier whose ``epsilon`` over ``schedule`` is at most ``target_epsilon`` (Opacus's search).

    Raises:
        ValueError: ``target_epsilon`` not positive, or an unknown accountant.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon!r}")
    _accountant(accountant)
    with _quiet_accountant():
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=schedule.delta,
                                          sample_rate=schedule.sample_rate, steps=schedule.rounds,
                                          accountant=accountant))
