"""Image priors: penalties added to the gradient-matching loss.

A prior is a callable ``prior(images, context) -> scalar`` that already includes its
weight; the reconstruction loop adds the sum of its priors to the gradient distance.
``context`` (a :class:`PriorContext`) gives priors what the loop knows besides the
images: the space being searched, and the batch statistics of the model's BatchNorm
layers during the forward pass, for priors that need them.

- :class:`TotalVariation`: anisotropic total variation, as in Geiping et al. (2020).
- :class:`BNStatistics`: match the BatchNorm batch statistics the client shared, as in
  Yin et al. (2021), "See through Gradients".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .threats import Knowledge


@dataclass
class PriorContext:
    """What a prior may read besides the images."""

    space: Any = None
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class Prior(Protocol):
    needs_bn_statistics: bool
    requires: Knowledge  # what the attacker must know to use this prior (gi_tutorial.threats)

    def __call__(self, images: torch.Tensor, context: PriorContext) -> torch.Tensor: ...


def total_variation(images: torch.Tensor) -> torch.Tensor:
    r"""Anisotropic total variation: mean absolute difference of neighbouring pixels.

    .. math:: \mathrm{TV}(x) = \operatorname{mean}|x_{i,j+1} - x_{i,j}| + \operatorname{mean}|x_{i+1,j} - x_{i,j}|

    >>> total_variation(torch.zeros(1, 1, 4, 4)).item()
    0.0
    >>> total_variation(torch.tensor([[[[0., 1.], [0., 1.]]]])).item()
    1.0
    """
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


@dataclass
class TotalVariation:
    """``weight * total_variation(images)``: favours piecewise-smooth images."""

    weight: float
    needs_bn_statistics: bool = False
    requires: Knowledge = Knowledge.NONE

    def __call__(self, images: torch.Tensor, context: PriorContext) -> torch.Tensor:
        return self.weight * total_variation(images)


def bn_statistics_distance(
    batch_statistics: Sequence[tuple[torch.Tensor, torch.Tensor]],
    target: Sequence[tuple[torch.Tensor, torch.Tensor]],
    first_layer_weight: float = 10.0,
) -> torch.Tensor:
    r"""Distance between two lists of per-layer BatchNorm statistics ``(mean, var)``.

    .. math:: R_{\mathrm{BN}}(x) = \sum_l m_l \big(\lVert \mu_l(x) - \mu_l \rVert_2
              + \lVert \sigma^2_l(x) - \sigma^2_l \rVert_2\big),
              \qquad m_1 = \texttt{first\_layer\_weight},\; m_{l>1} = 1

    The norms are Euclidean norms, not squared, as in Yin et al. (2021).

    Args:
        batch_statistics: per BatchNorm layer, the candidate batch's ``(mean, var)``, each ``(C_l,)``.
        target: the client's statistics, same layers in the same order.
        first_layer_weight: ``m_1``, the weight of the first layer (Yin et al. use 10).

    Raises:
        ValueError: the two lists have different lengths, or a layer's shapes differ.

    >>> s = [(torch.zeros(2), torch.ones(2)), (torch.zeros(3), torch.ones(3))]
    >>> t = [(torch.tensor([3., 4.]), torch.ones(2)), (torch.zeros(3), torch.ones(3) + 2)]
    >>> round(bn_statistics_distance(s, t).item(), 4)  # 10 * (5 + 0) + 1 * (0 + sqrt(12))
    53.4641
    """
    if len(batch_statistics) != len(target):
        raise ValueError(
            f"{len(batch_statistics)} BatchNorm layers recorded but the target has statistics of {len(target)}: "
            "they must come from the same model (one (mean, var) pair per BatchNorm layer, in module order)"
        )
    terms = []
    for layer, ((mean, var), (target_mean, target_var)) in enumerate(zip(batch_statistics, target)):
        if mean.shape != target_mean.shape or var.shape != target_var.shape:
            raise ValueError(
                f"BatchNorm layer {layer}: statistics of shape {tuple(mean.shape)} but the target's are "
                f"{tuple(target_mean.shape)}: they must come from the same model"
            )
        m = first_layer_weight if layer == 0 else 1.0
        terms.append(m * ((mean - target_mean.to(mean.device)).norm() + (var - target_var.to(var.device)).norm()))
    return torch.stack(terms).sum() if terms else torch.zeros(())


@dataclass
class BNStatistics:
    r"""``weight * bn_statistics_distance(stats(images), target)``: Yin et al.'s BatchNorm prior.

    A BatchNorm layer in train mode normalises with the batch's own mean and variance;
    under the threat model of Yin et al. (2021) the server knows them (the client shares
    them, e.g. to update the running statistics). The prior pulls the candidate batch's
    statistics, recorded by :func:`~gi_tutorial.invert.reconstruct` during its forward
    pass, towards the client's:

    .. math:: R(x) = w \sum_l m_l \big(\lVert \mu_l(x) - \mu_l \rVert_2 + \lVert \sigma^2_l(x) - \sigma^2_l \rVert_2\big)

    with ``m_1 = first_layer_weight`` and ``m_l = 1`` for the later layers.

    Args:
        weight: ``w``, the prior's weight in the loss.
        target: the client's statistics, ``update.bn_statistics`` (from
            ``client_update(..., share_bn_statistics=True)``).
        first_layer_weight: ``m_1`` (10 in Yin et al.).

    Raises:
        ValueError: (at construction) no target statistics; (when called) the model's
            BatchNorm layers do not match the target's, e.g. the model has none.

    Reference: H. Yin, A. Mallya, A. Vahdat, J. M. Alvarez, J. Kautz, P. Molchanov,
    "See through Gradients: Image Batch Recovery via GradInversion", CVPR 2021.
    """

    weight: float
    target: Sequence[tuple[torch.Tensor, torch.Tensor]]
    first_layer_weight: float = 10.0
    needs_bn_statistics: bool = True
    requires: Knowledge = Knowledge.BN_STATISTICS

    def __post_init__(self) -> None:
        if self.target is None or len(self.target) == 0:
            raise ValueError(
                "BNStatistics needs the client's BatchNorm statistics as target: share them with "
                "client_update(..., share_bn_statistics=True) and pass update.bn_statistics "
                "(the victim model must have BatchNorm layers)"
            )
        self.target = tuple((m.detach(), v.detach()) for m, v in self.target)

    def __call__(self, images: torch.Tensor, context: PriorContext) -> torch.Tensor:
        recorded = context.bn_statistics
        if len(recorded) != len(self.target):
            raise ValueError(
                f"BNStatistics: the forward pass recorded {len(recorded)} BatchNorm layers but the target has "
                f"{len(self.target)}. The model must be the client's (with its BatchNorm layers), the target "
                "must be update.bn_statistics from client_update(..., share_bn_statistics=True), and the loop "
                "must record statistics (it does when a prior has needs_bn_statistics=True)"
            )
        return self.weight * bn_statistics_distance(recorded, self.target, self.first_layer_weight)


@dataclass
class LatentNorm:
    r"""``weight * mean_b (||z_b||^2 / d - 1)^2``: keeps latent codes where N(0, I) puts them.

    A standard normal code in ``d`` dimensions has ``||z||^2 / d`` close to 1; codes far from
    that shell give atypical images. Reads the codes of a :class:`~gi_tutorial.spaces.LatentSpace`.
    """

    weight: float
    needs_bn_statistics: bool = False
    requires: Knowledge = Knowledge.NONE

    def __call__(self, images: torch.Tensor, context: PriorContext) -> torch.Tensor:
        z = getattr(context.space, "z", None)
        if z is None:
            raise ValueError("LatentNorm needs a space with latent codes z (a LatentSpace)")
        return self.weight * (z.pow(2).mean(dim=1) - 1).pow(2).mean()
