"""Search spaces: where the attacker's unknowns live, and how they become images.

Gradient inversion is one optimisation, ``x = P(phi)``: the methods of this book differ
in the space ``phi`` lives in and in the priors added to the loss. A space holds the
variables ``phi`` and maps them to a batch of images; the loop in
:mod:`gi_tutorial.invert` optimises any space the same way.

A space implements:

- ``init(generator)``: create fresh variables (one restart) and return them;
- ``images()``: the current batch ``P(phi)``, ``(B, C, H, W)``, differentiable;
- ``project()``: put the variables back into their feasible set after a step;
- ``state()``: a detached copy of the variables, to keep or restart from.

:class:`PixelSpace` searches the pixels directly (DLG; Geiping et al., 2020).
:class:`LatentSpace` searches the latent code ``z`` of a generator, ``x = G(z)`` (as CSGM,
Bora et al., 2017, does for compressed sensing). :class:`GeneratorSpace` searches the
weights of one copy of the generator per image, ``x_b = G_{w_b}(z_b)``, with ``z`` fixed:
stage 2 of GIAS (Jeon et al., 2021); from a random ``z`` it is the GI-w ablation.
"""
from __future__ import annotations

import copy
from typing import Literal, Protocol

import torch
import torch.nn as nn


class Space(Protocol):
    batch_size: int

    def init(self, generator: torch.Generator) -> list[torch.Tensor]: ...

    def images(self) -> torch.Tensor: ...

    def project(self) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...


class PixelSpace:
    """The pixels themselves: ``x = phi``, kept inside the box ``[low, high]``.

    Args:
        shape: ``(B, C, H, W)`` of the batch to reconstruct.
        init: ``"randn"`` (standard normal, then projected, as DLG) or ``"rand"`` (uniform in the box).
        box: the valid pixel range, or None for no constraint (DLG's original L-BFGS run).
        device: where the variables live.
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        init: Literal["randn", "rand"] = "rand",
        box: tuple[float, float] | None = (0.0, 1.0),
        device: torch.device | str = "cpu",
    ):
        if len(shape) != 4:
            raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
        if init not in ("randn", "rand"):
            raise ValueError(f"init must be 'randn' or 'rand', got {init!r}")
        self.shape = tuple(shape)
        self.batch_size = shape[0]
        self.init_kind = init
        self.box = box
        self.device = torch.device(device)
        self.x: torch.Tensor | None = None

    def init(self, generator: torch.Generator) -> list[torch.Tensor]:
        if self.init_kind == "randn":
            x = torch.randn(self.shape, generator=generator)
        else:
            low, high = self.box or (0.0, 1.0)
            x = low + (high - low) * torch.rand(self.shape, generator=generator)
        self.x = x.to(self.device).requires_grad_(True)
        self.project()
        return [self.x]

    def images(self) -> torch.Tensor:
        return self.x

    @torch.no_grad()
    def project(self) -> None:
        if self.box is not None:
            self.x.clamp_(*self.box)

    def state(self) -> dict[str, torch.Tensor]:
        return {"x": self.x.detach().clone()}


class LatentSpace:
    """A generator's latent codes: ``x = G(z)``, one ``z`` per image; the generator is frozen.

    Args:
        generator: maps ``(B, z_dim)`` to images in [0, 1]; used in eval mode (train-mode
            BatchNorm would make each image depend on the rest of the batch).
        batch_size: images to reconstruct.
    """

    def __init__(self, generator: nn.Module, batch_size: int):
        self.generator = copy.deepcopy(generator).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.device = next(self.generator.parameters()).device
        self.z: torch.Tensor | None = None

    def init(self, generator: torch.Generator) -> list[torch.Tensor]:
        z = torch.randn(self.batch_size, self.generator.z_dim, generator=generator)
        self.z = z.to(self.device).requires_grad_(True)
        return [self.z]

    def images(self) -> torch.Tensor:
        return self.generator(self.z)

    def project(self) -> None:
        """Any ``z`` is feasible; the latent-norm prior (not a projection) keeps it typical."""

    def state(self) -> dict[str, torch.Tensor]:
        return {"z": self.z.detach().clone()}


class GeneratorSpace:
    """One copy of the generator's weights per image, ``x_b = G_{w_b}(z_b)``, with ``z`` fixed.

    Every copy starts from the given generator's weights (the prior) and is optimised on
    its own, so each image can leave the generator's range where the gradient asks it to.

    Args:
        generator: the starting weights; copies run in eval mode.
        batch_size: images to reconstruct.
        z: the fixed codes ``(batch_size, z_dim)`` (GIAS: the latent search's result);
            None draws them from N(0, I) at each restart (the GI-w ablation).
    """

    def __init__(self, generator: nn.Module, batch_size: int, z: torch.Tensor | None = None):
        if z is not None and tuple(z.shape) != (batch_size, generator.z_dim):
            raise ValueError(f"z must have shape ({batch_size}, {generator.z_dim}), got {tuple(z.shape)}")
        self.base = copy.deepcopy(generator).eval()
        self.batch_size = batch_size
        self.device = next(self.base.parameters()).device
        self.fixed_z = None if z is None else z.detach().to(self.device)
        self.z: torch.Tensor | None = None
        self.copies: nn.ModuleList | None = None

    def init(self, generator: torch.Generator) -> list[torch.Tensor]:
        if self.fixed_z is not None:
            self.z = self.fixed_z.clone()
        else:
            self.z = torch.randn(self.batch_size, self.base.z_dim, generator=generator).to(self.device)
        self.copies = nn.ModuleList(copy.deepcopy(self.base).requires_grad_(True) for _ in range(self.batch_size))
        return list(self.copies.parameters())

    def images(self) -> torch.Tensor:
        return torch.cat([g(self.z[b:b + 1]) for b, g in enumerate(self.copies)])  # (B, C, H, W)

    def project(self) -> None:
        """Any weights are feasible; the output layer's tanh keeps the images in [0, 1]."""

    def state(self) -> dict[str, torch.Tensor]:
        weights = {f"{b}.{name}": p.detach().clone() for b, g in enumerate(self.copies)
                   for name, p in g.state_dict().items()}
        return {"z": self.z.clone(), **weights}
