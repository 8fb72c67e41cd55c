"""Defenses: what a client (or a trusted server) does to updates, and what that buys in privacy.

Each client-side defense maps a :class:`~gi_tutorial.fl.SharedUpdate` to a new one (the
input is never changed), draws its randomness from an explicit ``torch.Generator``, and
appends a :class:`~gi_tutorial.fl.DefenseRecord` to ``update.defense``: the protocol is
public, so an attacker knows the clip bound, the noise and the pruning masks, and can adapt
to them.

The differential-privacy mechanisms are named by **who adds the noise**, because that
decides whom they protect against (the server of this book sees every update it receives):

- :func:`local_gaussian`: the client clips its update to L2 norm ``S`` and adds
  ``N(0, (zS)^2)`` itself; the server only ever sees the noised update. Against the server
  its guarantee is per update, unamplified, replace-one (sensitivity ``2S``):
  :func:`local_epsilon`.
- :func:`dp_fedavg`: central DP-FedAvg (McMahan et al., 2018, "Learning Differentially
  Private Recurrent Language Models"): clients clip, a trusted server sums the clipped
  updates and adds ``N(0, (zS)^2)`` **once** to the sum. The server held every clipped
  update before its own noise, so this protects the released model, not the client from
  the server; its client-level guarantee (add/remove, Poisson sampling, amplified) is
  :func:`central_epsilon`. :func:`dp_fedavg_stacked` is the same aggregate for updates
  computed together (the training code of :mod:`gi_tutorial.private_training`).
- :func:`dp_sgd_update`: example-level DP-SGD (Abadi et al., 2016) as Opacus (Yousefpour
  et al., 2021) computes it, on the client: per-example gradients, each clipped to ``C``,
  summed, plus ``N(0, (zC)^2)``, divided by the batch size; its example-level guarantee for
  a stated local-training schedule (:class:`SGDSchedule`) is :func:`dp_sgd_epsilon`.

Besides: :func:`add_noise` and :func:`clip` (the two halves, with no formal promise alone),
:func:`prune` (its masks, :func:`kept_masks`, are public: :func:`gi_tutorial.attacks.adaptive_model`
matches only the kept entries),
and the accounting: :func:`epsilon` and :func:`noise_multiplier_for` run Opacus's RDP
(Mironov, 2017; Mironov, Talwar and Zhang, 2019) or PRV (Gopi et al., 2021) accountant and
always state their adjacency (``"add_remove"`` or ``"replace_one"``) and their Poisson
sampling rate (:class:`FLSchedule` and :class:`SGDSchedule` state a schedule once);
:func:`poisson_sample` is the sampling those accountants assume, used by the training code;
:func:`describe_epsilon` prints an epsilon honestly.

Auditing: :func:`audit` says whether a defense stopped the attacks, from a
:class:`~gi_tutorial.stats.Tally` of battery rows (:func:`gi_tutorial.attacks.run_battery`):
the strongest attack against the best no-gradient floor, update by update, on the
identification score and on PSNR, with chapter 7's margins; :func:`stopping_level` is the
smallest tested noise from which on an attack stays stopped, and :func:`stopping_factor` how much more
noise one attack needs than another (the talk's "x10", measured). :func:`load_dp_sgd_audit` reads the
shipped audit of DP-SGD over the noise multiplier (``benchmarks/ch6_dp_sgd_attack.py``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import stats, storage
from .fl import DefenseRecord, SharedUpdate, check_batch, checked_logits, trainable_parameters

Accountant = Literal["rdp", "prv"]
Adjacency = Literal["add_remove", "replace_one"]
ADJACENCIES = ("add_remove", "replace_one")
VACUOUS_EPSILON = 10.0  # above this, describe_epsilon calls a guarantee vacuous (e^10 ≈ 22,000)


def _with(update: SharedUpdate, gradients: tuple[torch.Tensor, ...], record: DefenseRecord) -> SharedUpdate:
    return update.replace(gradients=gradients, defense=tuple(update.defense) + (record,))


def global_norm(gradients) -> torch.Tensor:
    """The L2 norm of all gradient tensors concatenated.

    >>> float(global_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]))
    5.0
    """
    return torch.sqrt(sum(g.double().pow(2).sum() for g in gradients)).float()


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
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
    return _with(
        update,
        tuple(g * factor for g in update.gradients),
        DefenseRecord("clip", {"max_norm": float(max_norm), "norm_before": norm, "factor": factor}),
    )


def local_gaussian(
    update: SharedUpdate, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> SharedUpdate:
    r"""Local noise: the client clips its update to ``S`` and adds :math:`\mathcal N(0, (zS)^2)` to every entry itself.

    .. math:: \tilde g = g \min\big(1, S/\lVert g\rVert\big) + \mathcal N\big(0, (zS)^2 I\big)

    The server only ever sees ``\tilde g``. Two datasets of this client can give clipped
    updates up to ``2S`` apart (one replaced by another: replace-one adjacency), and the
    server knows that the client took part, so one update is an unamplified Gaussian
    mechanism with sensitivity ``2S``: its epsilon against the server is
    :func:`local_epsilon`. Averaging ``m`` such updates leaves noise of standard deviation
    ``zS / sqrt(m)`` on the average (each client's noise is independent), against
    ``zS / m`` for central :func:`dp_fedavg`.

    Raises:
        ValueError: negative clip bound or noise multiplier.
    """
    _check_non_negative("noise multiplier", noise_multiplier)
    clipped = clip(update, clip_norm)
    noised = add_noise(clipped, noise_multiplier * clip_norm, generator)
    record = DefenseRecord(
        "local_gaussian",
        {
            "clip": float(clip_norm),
            "noise_multiplier": float(noise_multiplier),
            "sigma": float(noise_multiplier * clip_norm),
            "factor": clipped.defense[-1].settings["factor"],
        },
    )
    return noised.replace(defense=tuple(update.defense) + (record,))


@dataclass(frozen=True)
class CentralRound:
    """One round of central DP-FedAvg, as the trusted server runs it (returned by :func:`dp_fedavg`).

    Attributes:
        received: each client's update clipped to ``S``, exactly as the server held it
            before adding any noise (what a curious server can invert).
        aggregate: what the server releases: the sum of ``received`` plus one draw of
            ``N(0, (zS)^2)`` per entry, divided by ``expected_clients``; its record says so.
        noise_std: the noise's standard deviation per entry of ``aggregate``:
            ``z S / expected_clients``.
    """

    received: tuple[SharedUpdate, ...]
    aggregate: SharedUpdate
    noise_std: float


def _check_same_shapes(updates: Sequence[SharedUpdate]) -> None:
    reference = [g.shape for g in updates[0].gradients]
    for k, u in enumerate(updates):
        shapes = [g.shape for g in u.gradients]
        if shapes != reference:
            raise ValueError(
                f"update {k} has gradient shapes {[tuple(s) for s in shapes]}, but update 0 has "
                f"{[tuple(s) for s in reference]}: the clients used different models"
            )
        if not all(torch.isfinite(g).all() for g in u.gradients):
            raise ValueError(f"update {k} holds NaN or inf values: no sum can use it")


def dp_fedavg(
    updates: Sequence[SharedUpdate],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    *,
    expected_clients: float | None = None,
) -> CentralRound:
    r"""Central DP-FedAvg (McMahan et al., 2018): clip every update to ``S``, sum, add noise once, divide.

    .. math:: \bar g = \frac{1}{\hat m}\Big(\sum_{k} g_k \min\big(1, S/\lVert g_k\rVert\big) + \mathcal N\big(0, (zS)^2 I\big)\Big)

    Clipping bounds what one client can change in the sum (sensitivity ``S`` when a client
    is added or removed); one draw of noise, ``z`` times that bound, hides it. The noise on
    the average therefore has standard deviation ``zS / m̂``: it falls as ``1/m``, not as
    ``1/sqrt(m)`` as with :func:`local_gaussian` on every client. The server does the
    noising, so it holds each clipped update first: ``CentralRound.received`` is what a
    curious server can invert. The guarantee covers the released aggregate (and the
    models built from it): :func:`central_epsilon`, amplified by Poisson sampling of the
    clients.

    Args:
        updates: the updates of the clients sampled this round (at least one).
        clip_norm: ``S``.
        noise_multiplier: ``z``.
        generator: the server's source of noise.
        expected_clients: ``m̂``, the denominator. Under Poisson sampling with rate ``q`` from
            ``N`` clients pass ``q * N`` (McMahan et al.'s fixed-denominator estimate): dividing
            by the number actually sampled would reveal it, and the accountant's sensitivity
            ``S / m̂`` assumes a fixed ``m̂``. Default: ``len(updates)`` (a fixed set of clients).

    Returns:
        the clipped updates the server received and the noised average it releases.

    Raises:
        ValueError: no updates, updates of different shapes or with NaN, a negative clip
            bound or noise multiplier, or ``expected_clients`` not positive.
    """
    if isinstance(updates, SharedUpdate):
        raise ValueError(
            "dp_fedavg takes a sequence of the round's updates (the server noises their sum); "
            "for noise that one client adds to its own update, use local_gaussian"
        )
    if not updates:
        raise ValueError("dp_fedavg needs at least one client update")
    _check_non_negative("clip bound", clip_norm)
    _check_non_negative("noise multiplier", noise_multiplier)
    expected = float(len(updates) if expected_clients is None else expected_clients)
    if not (math.isfinite(expected) and expected > 0):
        raise ValueError(f"expected_clients must be a positive number, got {expected_clients!r}")
    _check_same_shapes(updates)
    received = tuple(clip(u, clip_norm) for u in updates)
    stacked = tuple(torch.stack(parts) for parts in zip(*(u.gradients for u in updates)))  # (m, *shape) each
    aggregate = dp_fedavg_stacked(stacked, clip_norm, noise_multiplier, generator, expected)
    sigma = noise_multiplier * clip_norm
    sizes = [u.batch_size for u in updates]
    record = DefenseRecord(
        "dp_fedavg",
        {
            "clip": float(clip_norm),
            "noise_multiplier": float(noise_multiplier),
            "sigma": float(sigma),
            "clients": len(updates),
            "expected_clients": expected,
        },
    )
    released = SharedUpdate(gradients=aggregate, batch_size=None if None in sizes else sum(sizes), defense=(record,))
    return CentralRound(received=received, aggregate=released, noise_std=sigma / expected)


def dp_fedavg_stacked(
    per_client: Sequence[torch.Tensor],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    expected_clients: float,
) -> tuple[torch.Tensor, ...]:
    """:func:`dp_fedavg`'s aggregate, for client updates stacked on dim 0 (training code; no records).

    ``per_client`` holds one tensor per parameter, ``(m, *shape)``, row ``k`` client ``k``'s
    update. Each client's update (all its tensors together) is scaled to L2 norm at most
    ``clip_norm``; the scaled updates are summed; one draw of ``N(0, (zS)^2)`` per entry is
    added, tensor by tensor from ``generator``; the sum is divided by ``expected_clients``.
    With ``m = 0`` (an empty Poisson draw) the server releases noise alone.
    """
    norms = torch.sqrt(sum(g.flatten(1).double().pow(2).sum(1) for g in per_client))  # (m,), as global_norm
    factors = torch.where(norms > 0, (clip_norm / norms).clamp(max=1.0), torch.ones_like(norms)).float()
    summed = [torch.einsum("k,k...->...", factors.to(g.device, g.dtype), g) for g in per_client]
    sigma = noise_multiplier * clip_norm
    return tuple((s + _noise_like(s, sigma, generator)) / expected_clients for s in summed)  # one draw, on the sum


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
            problems.append(f"{name or type(module).__name__} ({type(module).__name__}): {str(error).split('. ')[0]}")
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
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm,
        expected_batch_size=images.shape[0],
        loss_reduction="mean",
        generator=generator,
    )
    optimizer.zero_grad()
    with warnings.catch_warnings():  # Opacus's hooks fire on module outputs when the images need no gradient
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        F.cross_entropy(checked_logits(wrapped, images, labels), labels).backward()
    optimizer.pre_step()  # clip, sum, noise, scale into p.grad; no step
    gradients = tuple(p.grad.detach().clone() for p in params)
    wrapped._close()
    record = DefenseRecord(
        "dp_sgd",
        {
            "clip": float(clip_norm),
            "noise_multiplier": float(noise_multiplier),
            "sigma": float(noise_multiplier * clip_norm / images.shape[0]),
        },
    )
    return SharedUpdate(
        gradients=gradients,
        batch_size=images.shape[0] if share_batch_size else None,
        labels=labels.detach().clone() if share_labels else None,
        defense=(record,),
    )


# --- accounting -------------------------------------------------------------------------


def _check_sample_rate(q: float) -> None:
    if isinstance(q, bool) or not (isinstance(q, (int, float)) and 0 < q <= 1):
        raise ValueError(f"the sampling rate q must lie in (0, 1], got {q!r}")


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _check_adjacency(adjacency: str, sample_rate: float) -> None:
    if adjacency not in ADJACENCIES:
        raise ValueError(f"adjacency must be 'add_remove' or 'replace_one', got {adjacency!r}")
    if adjacency == "replace_one" and sample_rate != 1:
        raise ValueError(
            f"replace-one adjacency is accounted here only without sampling (sample_rate = 1), got {sample_rate!r}: "
            "Opacus's accountants analyse Poisson sampling under add/remove adjacency. Use adjacency='add_remove' "
            "for a sampled mechanism, or sample_rate=1 for an update the observer knows was sent"
        )


def poisson_sample(population: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson sampling, as the accountants assume it: each of ``population`` members joins independently with probability ``q``.

    The number sampled is Binomial(``population``, ``q``), not fixed, and may be zero. A
    simulation that draws a fixed number per round (``randperm(N)[:m]``) runs a different
    mechanism from the one :func:`epsilon` accounts for.

    Returns:
        the sampled members' indices, ascending, as an int64 tensor.

    Raises:
        ValueError: ``population`` < 1 or ``sample_rate`` outside (0, 1].

    >>> poisson_sample(5, 1.0, torch.Generator()).tolist()
    [0, 1, 2, 3, 4]
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ValueError(f"population must be a positive integer, got {population!r}")
    _check_sample_rate(sample_rate)
    draws = torch.rand(population, generator=generator, device=generator.device)
    return torch.nonzero(draws < sample_rate).flatten().cpu()


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


def epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    adjacency: Adjacency,
    accountant: Accountant = "rdp",
) -> float:
    r"""The ``epsilon`` of ``steps`` Poisson-subsampled Gaussian mechanisms, from an Opacus accountant.

    ``noise_multiplier`` ``z`` is the noise's standard deviation over the clip bound ``S``;
    ``sample_rate`` ``q`` is the Poisson sampling probability (1: no sampling, no
    amplification); ``adjacency`` says which neighbouring inputs the guarantee compares:

    - ``"add_remove"``: one unit (a client, an example) is added or removed. The sum of
      clipped contributions moves by at most ``S``: sensitivity ``S``. This is what Opacus's
      accountants analyse, with amplification by Poisson sampling.
    - ``"replace_one"``: one unit is replaced by another. Two clipped contributions can be
      ``2S`` apart: sensitivity ``2S``, i.e. the add/remove accountant at noise multiplier
      ``z / 2``. Only without sampling (``q = 1``): an observer who knows that the unit took
      part (the server that received its update) gets no amplification anyway.

    Zero noise gives ``inf``. The PRV accountant discretises the privacy-loss distribution
    and cannot do so for small noise (below about 0.3 it would need terabytes): use RDP there.

    >>> round(epsilon(1.0, 1.0, 1, 1e-5, adjacency="add_remove"), 2), round(epsilon(1.0, 1.0, 1, 1e-5, adjacency="replace_one"), 1)
    (4.73, 10.7)
    >>> round(epsilon(1.0, 0.01, 40, 1e-5, adjacency="add_remove"), 2)
    1.12

    Raises:
        ValueError: negative noise, ``sample_rate`` outside (0, 1], ``delta`` outside
            (0, 1), fewer than one step, an unknown adjacency or accountant, replace-one
            with sampling, or PRV at too small a noise.
    """
    _check_non_negative("noise multiplier", noise_multiplier)
    _check_sample_rate(sample_rate)
    _check_delta(delta)
    _check_steps(steps)
    _check_adjacency(adjacency, sample_rate)
    acc = _accountant(accountant)
    if noise_multiplier == 0:
        return math.inf
    z = noise_multiplier / 2 if adjacency == "replace_one" else noise_multiplier
    acc.history = [(float(z), float(sample_rate), int(steps))]
    try:
        with _quiet_accountant():
            return float(acc.get_epsilon(delta=delta))
    except MemoryError as error:
        raise ValueError(f"the PRV accountant cannot discretise noise multiplier {z}: use accountant='rdp'") from error


def noise_multiplier_for(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    adjacency: Adjacency,
    accountant: Accountant = "rdp",
) -> float:
    """The smallest noise multiplier whose :func:`epsilon` is at most ``target_epsilon``, to 0.01 in epsilon.

    It spends between ``target_epsilon - 0.01`` and ``target_epsilon``, as Opacus's
    ``get_noise_multiplier`` does, with the same accountant, in a third to a half of its
    evaluations (Brent's method instead of bisection).

    The arguments mean what they mean for :func:`epsilon`; for ``"replace_one"`` the answer
    is twice the add/remove one (sensitivity ``2S``).

    Raises:
        ValueError: ``target_epsilon`` not positive, or any input :func:`epsilon` rejects.
    """
    if isinstance(target_epsilon, bool) or not (isinstance(target_epsilon, (int, float)) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be positive, got {target_epsilon!r}")
    _check_sample_rate(sample_rate)
    _check_delta(delta)
    _check_steps(steps)
    _check_adjacency(adjacency, sample_rate)
    _accountant(accountant)
    z = _searched_noise_multiplier(float(target_epsilon), float(sample_rate), int(steps), float(delta), accountant)
    return 2 * z if adjacency == "replace_one" else z


EPSILON_TOLERANCE = 0.01  # the search's answer spends between target - this and target (Opacus's default)
MAX_NOISE_MULTIPLIER = 1e6  # where the search gives up, as Opacus's does


class _Found(Exception):
    """Raised inside the root finder as soon as a noise multiplier lands in the tolerance window."""

    def __init__(self, noise_multiplier: float):
        self.noise_multiplier = noise_multiplier


@functools.lru_cache(maxsize=256)
def _searched_noise_multiplier(target_epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str):
    """The smallest noise multiplier whose epsilon lies in ``(target - 0.01, target]``, once per setting in a process.

    Opacus's ``get_noise_multiplier`` answers the same question by bisection on ``[0, 20]``:
    14-20 evaluations of the accountant, each 0.02-0.14 s (the RDP orders below 2 are
    fractional, and each sums a slowly converging series). Here ``log epsilon`` is nearly
    linear in ``log z``, so Brent's method (scipy's ``brentq``) on that curve lands in the
    window in 4-8 evaluations of the same Opacus accountant (:func:`epsilon`); with the PRV
    accountant, whose epsilon is a discretised estimate, in 11-20 where bisection takes 24-51.
    """
    from scipy.optimize import brentq

    aim = math.log(max(target_epsilon - EPSILON_TOLERANCE / 2, target_epsilon / 2))
    seen: dict[float, float] = {}

    def spent(z: float) -> float:
        if z not in seen:
            seen[z] = epsilon(z, sample_rate, steps, delta, adjacency="add_remove", accountant=accountant)
        return seen[z]

    def miss(log_z: float) -> float:
        """log epsilon - log aim, or the answer itself, raised, once it is inside the window."""
        z = math.exp(log_z)
        eps = spent(z)
        if target_epsilon - EPSILON_TOLERANCE < eps <= target_epsilon:
            raise _Found(z)
        return math.log(min(eps, 1e300)) - aim  # epsilon(0+) is inf: kept finite for the interpolation

    with _quiet_accountant():
        try:
            # bracket from z = 1: 4x more noise while epsilon is too large, 2x less while it is small (never
            # below half the answer: the PRV accountant grows costly at small noise; bisection probes as low)
            low = high = 0.0  # log z
            if miss(0.0) > 0:
                while miss(high) > 0:
                    low, high = high, high + math.log(4)
                    if math.exp(high) > MAX_NOISE_MULTIPLIER:
                        raise ValueError(
                            f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches epsilon {target_epsilon!r} "
                            f"with delta {delta!r}, q = {sample_rate!r} over {steps} steps: ask for a larger epsilon or delta"
                        )
            else:
                while miss(low) <= 0:
                    low, high = low - math.log(2), low
            brentq(miss, low, high, xtol=1e-12, maxiter=200)
        except _Found as found:
            return found.noise_multiplier
    # converged without landing inside the window (a jump in epsilon): the least noise that spends at most the target
    return min(z for z, eps in seen.items() if eps <= target_epsilon)


@dataclass(frozen=True)
class FLSchedule:
    """A federated training schedule, for client-level accounting: ``rounds`` rounds of Poisson-sampled clients.

    Attributes:
        num_clients: ``N``, the population.
        clients_per_round: ``m``, the expected number sampled per round (Poisson sampling
            with ``q = m / N``: see :func:`poisson_sample`).
        rounds: ``T``.
        delta: the target ``delta`` of ``(epsilon, delta)``-DP, well below ``1 / N`` (see
            :func:`describe_epsilon`).
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


@dataclass(frozen=True)
class SGDSchedule:
    """DP-SGD on one data holder's examples, for example-level accounting.

    Attributes:
        num_examples: ``n``, the examples the batches are Poisson-sampled from (a client's
            local data in FL; the whole training set in central training).
        batch_size: the expected batch size ``B`` (sampling rate ``q = B / n``; ``B = n``: every
            example in every step, no amplification).
        steps: the number of noised steps in all, e.g. local steps per round times the rounds
            the client joins.
        delta: the target ``delta``, well below ``1 / n``.
    """

    num_examples: int
    batch_size: float
    steps: int
    delta: float

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError(f"need at least one example, got {self.num_examples}")
        _check_steps(self.steps)
        _check_sample_rate(self.sample_rate)
        _check_delta(self.delta)

    @property
    def sample_rate(self) -> float:
        """``q = B / n``, the probability that an example is in a step's batch."""
        return self.batch_size / self.num_examples

    @property
    def epochs(self) -> float:
        """Passes over the data: ``steps * q``."""
        return self.steps * self.sample_rate


def local_epsilon(noise_multiplier: float, rounds: int, delta: float, *, accountant: Accountant = "rdp") -> float:
    """The epsilon of :func:`local_gaussian` against the server that receives the updates.

    Per update, **unamplified** (the server knows who sent what, so sampling hides nothing
    from it), **replace-one** (sensitivity ``2S``), composed over the ``rounds`` in which this
    client sends an update. It is the guarantee that binds the curious server of this book.

    >>> round(local_epsilon(1.0, 1, 1e-5), 1), round(local_epsilon(0.1, 1, 1e-5))
    (10.7, 295)
    """
    return epsilon(noise_multiplier, 1.0, rounds, delta, adjacency="replace_one", accountant=accountant)


def central_epsilon(noise_multiplier: float, schedule: FLSchedule, *, accountant: Accountant = "rdp") -> float:
    """The client-level epsilon of central :func:`dp_fedavg` over ``schedule``, for whoever sees only the released models.

    **Add/remove** adjacency (one client's whole data in or out), **Poisson sampling** of
    clients with rate ``schedule.sample_rate``, **amplified**, composed over
    ``schedule.rounds``. It does not bind the server that adds the noise: that server held
    each clipped update before noising it.
    """
    return epsilon(
        noise_multiplier,
        schedule.sample_rate,
        schedule.rounds,
        schedule.delta,
        adjacency="add_remove",
        accountant=accountant,
    )


def dp_sgd_epsilon(noise_multiplier: float, schedule: SGDSchedule, *, accountant: Accountant = "rdp") -> float:
    """The example-level epsilon of DP-SGD (:func:`dp_sgd_update`, Opacus) over ``schedule``.

    **Add/remove** of one example, **Poisson sampling** of each batch from
    ``schedule.num_examples`` examples (amplified when ``batch_size < num_examples``: the
    client samples with randomness the server never sees), composed over
    ``schedule.steps`` noised steps. The server learns at most these steps (or a function
    of them), so the guarantee binds it too.
    """
    return epsilon(
        noise_multiplier,
        schedule.sample_rate,
        schedule.steps,
        schedule.delta,
        adjacency="add_remove",
        accountant=accountant,
    )


def describe_epsilon(eps: float, vacuous_above: float = VACUOUS_EPSILON) -> str:
    r"""An epsilon as text: ``"ε = 4.73"``, ``"vacuous (ε = 2.2e+07)"`` above ``vacuous_above``, ``"no guarantee (ε = ∞)"``.

    Why ``ε > 10`` is vacuous: DP bounds how much one unit's data can change the odds of
    any conclusion about it, by a factor :math:`e^\varepsilon`; at ``ε = 10`` that factor is
    22,000, so a prior of one in a thousand may become near certainty. Why ``δ`` must lie
    well below ``1/N`` (``N`` units: clients or examples): ``δ`` is the probability with
    which the guarantee may fail outright. The mechanism that publishes each unit's data in
    the clear with probability ``δ`` is ``(0, δ)``-DP, yet it exposes ``Nδ`` units on
    average; with ``δ ≥ 1/N`` someone's data is expected to be published. Hence
    ``δ = 1e-5`` for the 60,000 examples of Fashion-MNIST, or for 10,000 clients.

    >>> describe_epsilon(4.7312), describe_epsilon(2.2e7), describe_epsilon(math.inf)
    ('ε = 4.73', 'vacuous (ε = 2.2e+07)', 'no guarantee (ε = ∞)')
    """
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"epsilon must be a number >= 0, got {eps!r}")
    if math.isinf(eps):
        return "no guarantee (ε = ∞)"
    return f"vacuous (ε = {eps:.3g})" if eps > vacuous_above else f"ε = {eps:.3g}"


# --- auditing a defense with the attack battery ---------------------------------------------

AUDIT_MARGINS = {"identified": 0.05, "psnr": 1.0}  # "ahead" means by more than 5 points / 1 dB (as chapter 7)
AUDIT_UNITS = {"identified": ("", "{:.0%}"), "psnr": (" dB", "{:.1f}")}


@dataclass(frozen=True)
class Audit:
    """Whether the strongest attack got more than the floors, on one defense setting (returned by :func:`audit`).

    Attributes:
        stopped: on the identification score, the strongest attack is not ahead of the best
            floor by more than the margin on average: the defense stopped the attacks (the
            book's criterion; PSNR is reported beside it, not used for it).
        paired: per score (``"identified"``, ``"psnr"``), the strongest attack against the best
            floor, update by update (:func:`gi_tutorial.stats.paired`).
        sentences: per score, that comparison in words, with its computed verdict.
    """

    stopped: bool
    paired: dict
    sentences: dict

    @property
    def state(self) -> str:
        """On identification: ``"at the floor"`` (stopped), ``"leaks"`` (the strongest attack wins the paired
        comparison: ahead by more than the margin on average and in every update) or ``"unclear"`` (between)."""
        if self.stopped:
            return "at the floor"
        return "leaks" if self.paired["identified"].holds else "unclear"


def audit(
    tally: stats.Tally,
    attacks: Sequence[str] = ("GI-x", "GIAS"),
    floors: Sequence[str] = ("label only", "prior sample"),
    **where,
) -> Audit:
    """Did the defense in ``where`` stop ``attacks``? The strongest of them against the best of ``floors``, per update.

    An update is a distinct value of the tally's keys other than ``method`` and those in
    ``where`` (e.g. a victim seed and its images). Per update and score, the best attack's
    score is paired with the best floor's (a defender judges a defense by the strongest
    attack, and by the better of the guesses that use no gradient).

    Raises:
        ValueError: no rows match ``where``, or an update lacks one of the methods.
    """
    mine = tally.select(**where)
    others = [k for k in tally.keys if k != "method" and k not in where]
    updates: dict[tuple, dict] = {}
    for row in mine.rows:
        updates.setdefault(tuple(row[k] for k in others), {})[row["method"]] = row
    missing = [u for u, rows in updates.items() if not set(attacks) | set(floors) <= set(rows)]
    if not updates or missing:
        raise ValueError(
            f"audit {where}: every update needs rows of {list(attacks) + list(floors)}; "
            f"{'no rows match' if not updates else f'missing for {missing[:3]}'}"
        )
    paired, sentences = {}, {}
    for metric, margin in AUDIT_MARGINS.items():
        best = [max(rows[m][metric] for m in attacks) for rows in updates.values()]
        floor = [max(rows[m][metric] for m in floors) for rows in updates.values()]
        paired[metric] = stats.paired(best, floor, margin=margin)
        unit, fmt = AUDIT_UNITS[metric]
        name = attacks[0] if len(attacks) == 1 else "the strongest attack"
        sentences[metric] = stats.compare(name, "the best floor", paired[metric], unit=unit, fmt=fmt)
    gap = paired["identified"]
    return Audit(stopped=gap.gap.mean <= gap.margin, paired=paired, sentences=sentences)


def stopping_level(
    tally: stats.Tally,
    attack: str | Sequence[str],
    levels: Sequence[float],
    *,
    key: str = "z",
    floors: Sequence[str] = ("label only", "prior sample"),
    **where,
) -> float | None:
    """The smallest of ``levels`` (ascending) from which on :func:`audit` finds ``attack`` stopped at every larger level.

    None when the attack is not stopped at the largest level tested.
    """
    names = (attack,) if isinstance(attack, str) else tuple(attack)
    found = None
    for level in sorted(levels, reverse=True):
        if not audit(tally, names, floors, **{key: level}, **where).stopped:
            break
        found = level
    return found


@dataclass(frozen=True)
class StoppingFactor:
    """How much more noise GIAS needs than GI-x before identification falls to the floors (from :func:`stopping_factor`).

    Attributes:
        stop: per attack, the smallest tested level from which on it stays stopped (:func:`stopping_level`),
            None when the largest level tried does not stop it.
        factor: ``stop[slow] / stop[fast]`` on the grid tried, None when either is None.
        low, high: the bounds the grid allows: each attack's true stopping noise lies between the level below
            its ``stop`` (0 when ``stop`` is the smallest level tried) and ``stop``; ``high`` is ``inf`` when the
            faster attack is stopped at the smallest level tried.
        sentence: all of it in words.
    """

    stop: dict
    factor: float | None
    low: float | None
    high: float | None
    sentence: str


def stopping_factor(
    tally: stats.Tally,
    levels: Sequence[float],
    *,
    key: str,
    attacks: tuple[str, str] = ("GI-x", "GIAS"),
    describe: Callable[[float], str] | None = None,
    **where,
) -> StoppingFactor:
    """The noise from which on each of two attacks stays stopped on identification, and their ratio, with the grid's bounds.

    ``levels`` are the noise levels tried (values of ``key`` in ``tally``); ``describe`` turns a level into
    text for the sentence (e.g. its epsilon). The factor is ``stop[attacks[1]] / stop[attacks[0]]``.
    """
    levels = sorted(levels)
    fast, slow = attacks
    stop = {m: stopping_level(tally, m, levels, key=key, **where) for m in attacks}

    def below(level: float) -> float:
        i = levels.index(level)
        return levels[i - 1] if i > 0 else 0.0

    def said(m: str) -> str:
        z = stop[m]
        if z is None:
            return f"{m} is not stopped by z = {levels[-1]:.3g}, the largest level tried"
        extra = f" ({describe(z)})" if describe is not None else ""
        return f"{m} from z = {z:.3g} on{extra}"

    text = "; ".join(said(m) for m in attacks) + "."
    if None in stop.values():
        return StoppingFactor(stop, None, None, None, text + " The factor between them is not measured on this grid.")
    factor = stop[slow] / stop[fast]
    low = below(stop[slow]) / stop[fast]
    high = math.inf if below(stop[fast]) == 0 else stop[slow] / below(stop[fast])
    bounds = f"between {low:.3g} and {'∞' if math.isinf(high) else f'{high:.3g}'}"
    text += (
        f" On identification, the noise that stops {slow} is {factor:.3g} times the noise that stops {fast} on this "
        f"grid; the grid's steps allow any factor {bounds}"
        + (f" ({fast} is stopped already at the smallest level tried)." if math.isinf(high) else ".")
    )
    return StoppingFactor(stop, factor, low, high, text)


DP_SGD_AUDIT = storage.RESULTS / "ch6_dp_sgd_attack.json"


def load_dp_sgd_audit(path=DP_SGD_AUDIT) -> tuple[stats.Tally, list[dict], dict]:
    """The shipped battery runs on DP-SGD updates (``python benchmarks/ch6_dp_sgd_attack.py``), hash-checked.

    Returns:
        the tally (keys ``z``, ``batch``, ``seed``, ``method``), the noise levels (each a dict with ``z``,
        ``epsilon`` under the stated schedule, and ``why`` it was run) and the provenance record.
    """
    results, record = storage.load_results(path)
    return stats.Tally.from_json(results["tally"]), results["levels"], record


def states_sentence(audits: dict, describe: Callable[[float], str], one_image: float) -> str:
    """The audits of one mechanism over its noise levels in words: where the strongest attack leaks, is at the
    floor, or is unclear, and from which level on it is ahead of the floors by at most ``one_image`` (one image of
    the set, as a rate) on average, the smallest gap the set can show."""
    levels = sorted(audits)
    by_state = {s: [z for z in levels if audits[z].state == s] for s in ("leaks", "at the floor", "unclear")}

    def listed(zs: list) -> str:
        return ", ".join(f"z = {z:.3g}" for z in zs) if zs else "no level"

    text = (
        f"the strongest attack leaks at {listed(by_state['leaks'])}, is at the floor at "
        f"{listed(by_state['at the floor'])} and is unclear at {listed(by_state['unclear'])}"
    )
    within = None
    for z in reversed(levels):
        if audits[z].paired["identified"].gap.mean > one_image + 1e-9:
            break
        within = z
    if within is not None:
        gap = audits[within].paired["identified"].gap
        text += (
            f"; from z = {within:.3g} on ({describe(within)}) it is ahead of the best floor by at most one image of "
            f"the set on average (at z = {within:.3g}: {gap.format('{:.0%}')})"
        )
    return text + "."
