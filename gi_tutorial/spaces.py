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
"""
from __future__ import annotations

from typing import Literal, Protocol

import torch


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
