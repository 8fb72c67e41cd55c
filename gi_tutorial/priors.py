"""Image priors: penalties added to the gradient-matching loss.

A prior is a callable ``prior(images, context) -> scalar`` that already includes its
weight; the reconstruction loop adds the sum of its priors to the gradient distance.
``context`` (a :class:`PriorContext`) gives priors what the loop knows besides the
images: the space being searched, and the batch statistics of the model's BatchNorm
layers during the forward pass, for priors that need them.

- :class:`TotalVariation`: anisotropic total variation, as in Geiping et al. (2020).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class PriorContext:
    """What a prior may read besides the images."""

    space: Any = None
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class Prior(Protocol):
    needs_bn_statistics: bool

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

    def __call__(self, images: torch.Tensor, context: PriorContext) -> torch.Tensor:
        return self.weight * total_variation(images)
