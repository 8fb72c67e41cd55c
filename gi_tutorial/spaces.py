"""Search spaces: where the attacker's unknowns live, and how they become images.

Gradient inversion is one optimisation, ``x = P(phi)``: the methods of this book differ
in the space ``phi`` lives in and in the priors added to the loss. A space holds the
variables ``phi`` and maps them to a batch of images; the loop in
:mod:`gi_tutorial.invert` optimises any space the same way.

A space implements:

- ``init(rng)``: create fresh variables (one restart) from the random number generator ``rng``
  and return them;
- ``images()``: the current batch ``P(phi)``, ``(B, C, H, W)``, differentiable;
- ``project()``: put the variables back into their feasible set after a step;
- ``state()``: a detached copy of the variables, to keep or restart from.

:class:`PixelSpace` searches the pixels directly (DLG; Geiping et al., 2020).
:class:`LatentSpace` searches the latent code ``z`` of a generator, ``x = G(z)`` (as CSGM,
Bora et al., 2017, does for compressed sensing). :class:`GeneratorSpace` searches the
weights of the generator, ``x_b = G_{w_b}(z_b)``, with ``z`` fixed: one copy per image is
stage 2 of GIAS (Jeon et al., 2021), and from a random ``z`` the GI-w ablation; one copy
shared by the batch is the inner loop of GIML (:mod:`gi_tutorial.giml`).
"""

from __future__ import annotations

import copy
from typing import Literal, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .threats import Knowledge, generator_requires


class Space(Protocol):
    batch_size: int
    requires: Knowledge  # what the attacker must know to search this space (gi_tutorial.threats)

    def init(self, rng: torch.Generator) -> list[torch.Tensor]: ...

    def images(self) -> torch.Tensor: ...

    def project(self) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...


class PixelSpace:
    """The pixels themselves: ``x = phi``, kept inside the box ``[low, high]``.

    Args:
        shape: ``(B, C, H, W)`` of the batch to reconstruct.
        init: ``"randn"`` (standard normal, then projected, as DLG), ``"rand"`` (uniform in the box),
            or a ``(B, C, H, W)`` tensor to start from (a guess, the mean image, a warm start),
            copied and projected into the box; every restart then starts from it.
        box: the valid pixel range, or None for no constraint (DLG's original L-BFGS run).
        device: where the variables live; None (default) puts them on the attacked model's
            device when :func:`~gi_tutorial.invert.reconstruct` runs (the CPU otherwise).
    """

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        init: Literal["randn", "rand"] | torch.Tensor = "rand",
        box: tuple[float, float] | None = (0.0, 1.0),
        device: torch.device | str | None = None,
    ):
        if len(shape) != 4:
            raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
        self._start = None  # a given starting batch (private: subclasses may have their own "start")
        if isinstance(init, torch.Tensor):
            if tuple(init.shape) != tuple(shape):
                raise ValueError(
                    f"a starting batch must have the space's shape {tuple(shape)}, got {tuple(init.shape)}"
                )
            self._start, init = init.detach().float().clone(), "given"
        elif init not in ("randn", "rand"):
            raise ValueError(f"init must be 'randn', 'rand' or a tensor of shape {tuple(shape)}, got {init!r}")
        self.shape = tuple(shape)
        self.batch_size = shape[0]
        self.init_kind = init
        self.box = box
        self.device = None if device is None else torch.device(device)
        self.x: torch.Tensor | None = None

    requires = Knowledge.NONE

    def init(self, rng: torch.Generator) -> list[torch.Tensor]:
        if self._start is not None:
            x = self._start.clone()
        elif self.init_kind == "randn":
            x = torch.randn(self.shape, generator=rng)
        else:
            low, high = self.box or (0.0, 1.0)
            x = low + (high - low) * torch.rand(self.shape, generator=rng)
        self.x = x.to(self.device or "cpu").requires_grad_(True)
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
        self.requires = generator_requires(generator)
        self.z: torch.Tensor | None = None

    def init(self, rng: torch.Generator) -> list[torch.Tensor]:
        z = torch.randn(self.batch_size, self.generator.z_dim, generator=rng)
        self.z = z.to(self.device).requires_grad_(True)
        return [self.z]

    def images(self) -> torch.Tensor:
        return self.generator(self.z)

    def project(self) -> None:
        """Any ``z`` is feasible; the latent-norm prior (not a projection) keeps it typical."""

    def state(self) -> dict[str, torch.Tensor]:
        return {"z": self.z.detach().clone()}


class _TransposedConvolutions(torch.autograd.Function):
    """B transposed convolutions at once, input ``b`` with weight ``b``: batched matrix products and ``fold``.

    The forward is what autograd would record: the kernel windows ``x_b^T W_b`` of every copy in one
    batched product, summed into the output by ``fold``. The backward is written out: the output
    gradient's windows (``fold``'s adjoint, what ``F.unfold`` computes) come from one strided copy of
    the padded gradient, which costs no more than ``F.unfold`` on the CPU (0.45 ms against 0.87 ms
    at the DCGAN's 8x8 -> 16x16 layer with 8 copies, timed alone, median of 40 calls), and both
    gradients come out of one batched product each, in their own layouts (no transposed copy for
    autograd to make). It is made of differentiable operations, so it can itself be differentiated
    (tests/test_spaces_speed.py). Stage 2's images are bitwise those of the autograd version.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, size: list[int], geometry: tuple) -> torch.Tensor:
        copies, c_in, h, w = x.shape
        c_out, kh, kw = weight.shape[2:]
        stride, padding, dilation = geometry
        flat = weight.reshape(copies, c_in, c_out * kh * kw)
        # x^T W rather than W^T x: 2.2 against 2.7 ms (DCGAN's 192 -> 96 layer, 8 copies, cold cache)
        columns = torch.bmm(x.reshape(copies, c_in, h * w).transpose(1, 2), flat).transpose(1, 2)
        ctx.save_for_backward(x, weight)
        ctx.geometry = geometry
        return F.fold(columns, size, (kh, kw), dilation=dilation, padding=padding, stride=stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        copies, c_in, h, w = x.shape
        c_out, kh, kw = weight.shape[2:]
        padded = F.pad(grad, (padding[1], padding[1], padding[0], padding[0])).contiguous()
        hp, wp = padded.shape[-2:]
        windows = padded.as_strided(
            (copies, c_out, kh, kw, h, w),
            (c_out * hp * wp, hp * wp, dilation[0] * wp, dilation[1], stride[0] * wp, stride[1]),
            padded.storage_offset(),
        ).reshape(copies, c_out * kh * kw, h * w)  # = F.unfold(grad, ...): every window the forward summed
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(weight.reshape(copies, c_in, c_out * kh * kw), windows).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(x.reshape(copies, c_in, h * w), windows.transpose(1, 2)).reshape(weight.shape)
        return grad_x, grad_weight, None, None


class _CopiesConvTranspose2d(nn.Module):
    """A ConvTranspose2d whose weight is ``(B, C_in, C_out, kh, kw)``: input ``b`` meets copy ``b``.

    One batched matrix product (then ``fold``, which sums the overlapping kernel windows) does
    the work of B transposed convolutions (:class:`_TransposedConvolutions`); on the CPU this
    costs about a third of the grouped convolution that ``vmap`` turns the per-copy layer into
    (benchmarks/run.py --generator).
    """

    def __init__(self, layer: nn.ConvTranspose2d):
        super().__init__()
        self.weight, self.bias = _unbound(layer.weight), _unbound(layer.bias)
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.output_padding = layer.output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies, c_in, h, w = x.shape
        c_out, kh, kw = self.weight.shape[2:]
        if (h, w) == (1, 1) and self.padding == (0, 0) and self.output_padding == (0, 0) and self.dilation == (1, 1):
            flat = self.weight.reshape(copies, c_in, c_out * kh * kw)
            y = torch.bmm(x.reshape(copies, 1, c_in), flat).reshape(copies, c_out, kh, kw)  # a 1x1 input: no overlap
        else:
            size = [
                (n - 1) * s - 2 * p + d * (k - 1) + o + 1
                for n, s, p, d, k, o in zip(
                    (h, w), self.stride, self.padding, self.dilation, (kh, kw), self.output_padding
                )
            ]
            y = _TransposedConvolutions.apply(x, self.weight, size, (self.stride, self.padding, self.dilation))
        return y if self.bias is None else y + self.bias[:, :, None, None]


class _CopiesConv2d(nn.Module):
    """A Conv2d whose weight is ``(B, C_out, C_in / groups, kh, kw)``, as one grouped convolution."""

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = _unbound(layer.weight), _unbound(layer.bias)
        self.stride, self.padding, self.dilation, self.groups = (
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = x.shape[0]
        weight = self.weight.reshape(-1, *self.weight.shape[2:])
        y = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]), weight, None, self.stride, self.padding, self.dilation, self.groups * copies
        )
        y = y.reshape(copies, -1, *y.shape[2:])
        return y if self.bias is None else y + self.bias[:, :, None, None]


class _CopiesLinear(nn.Module):
    """A Linear layer whose weight is ``(B, out, in)``."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight, self.bias = _unbound(layer.weight), _unbound(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies = x.shape[0]
        y = torch.bmm(x.reshape(copies, -1, x.shape[-1]), self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(*x.shape[:-1], -1)


class _CopiesBatchNorm(nn.Module):
    """Eval-mode BatchNorm (running statistics, shared by the copies) with per-copy scale and shift ``(B, C)``."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight, self.bias, self.eps = _unbound(layer.weight), _unbound(layer.bias), layer.eps
        self.register_buffer("running_mean", layer.running_mean)
        self.register_buffer("running_var", layer.running_var)
        self.register_buffer("num_batches_tracked", layer.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = (1,) * (x.ndim - 2)
        y = (x - self.running_mean.reshape(-1, *extra)) * torch.rsqrt(self.running_var + self.eps).reshape(-1, *extra)
        if self.weight is not None:
            y = y * self.weight.reshape(*self.weight.shape, *extra)
        if self.bias is not None:
            y = y + self.bias.reshape(*self.bias.shape, *extra)
        return y


def _unbound(weight: nn.Parameter | None) -> torch.Tensor | None:
    """A plain-tensor placeholder for a per-copy layer's weight: :meth:`GeneratorSpace.init` binds the
    stacked copies in its place (a plain attribute, not a registered parameter, so that the copies run
    as a direct call rather than through ``functional_call``, which costs about 0.3 ms a step)."""
    return None if weight is None else weight.detach()


def _copies_module(generator: nn.Module) -> nn.Module | None:
    """``generator`` with each layer that holds weights swapped for its per-copy version, or None.

    The result, once :func:`_bind` has given its layers weights stacked along a leading copy
    dimension, maps a batch of B codes to B images, image ``b`` through copy ``b``. Layers
    without weights are kept (they act on each image alone in eval mode: activations,
    upsampling, pooling). None when a layer with weights has no per-copy version here
    (the caller then vectorises with ``vmap``, slower but general).
    """
    kinds = {
        nn.ConvTranspose2d: _CopiesConvTranspose2d,
        nn.Conv2d: _CopiesConv2d,
        nn.Linear: _CopiesLinear,
        nn.BatchNorm1d: _CopiesBatchNorm,
        nn.BatchNorm2d: _CopiesBatchNorm,
    }
    copies = copy.deepcopy(generator).eval()
    for name, module in list(copies.named_modules()):
        if not (
            any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        ):
            continue
        kind = kinds.get(type(module))
        supported = kind is not None and not (
            isinstance(module, nn.ConvTranspose2d)
            and module.groups != 1
            or isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
            and module.padding_mode != "zeros"
            or isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.running_mean is None
        )
        if not supported or not name:
            return None
        parent_name, _, child = name.rpartition(".")
        setattr(copies.get_submodule(parent_name) if parent_name else copies, child, kind(module))
    return copies


def _bind(copies: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Point each per-copy layer of ``copies`` (from :func:`_copies_module`) at its stacked weights."""
    for name, w in weights.items():
        owner, _, attribute = name.rpartition(".")
        setattr(copies.get_submodule(owner) if owner else copies, attribute, w)


class GeneratorSpace:
    """The generator's weights, with the codes ``z`` fixed: ``x_b = G_{w_b}(z_b)``.

    Every copy starts from the given generator's weights (the prior) and is optimised with
    the same gradient-matching loss, so the images can leave the generator's range where
    the gradient asks them to.

    - ``shared=False`` (GIAS stage 2, Jeon et al., 2021): one copy of the weights per image,
      so each image leaves the range on its own. The copies are stacked along a leading
      batch dimension and run in one call, not a Python loop over modules: each layer with
      weights becomes its per-copy version (one batched matrix product for a transposed
      convolution, a grouped convolution, ...; see ``_copies_module``), and a generator with
      a layer that has none is vectorised by ``torch.func.vmap`` over ``functional_call``.
    - ``shared=True`` (GIML's inner loop): one copy for the whole batch; its adapted
      weights are what the meta-learner keeps (:func:`generator_from_state`).

    Args:
        generator: the starting weights; copies run in eval mode (BatchNorm uses its
            running statistics, so each image depends on its own code only).
        batch_size: images to reconstruct.
        z: the fixed codes ``(batch_size, z_dim)`` (GIAS: the latent search's result);
            None draws them from N(0, I) at each restart (the GI-w ablation).
        shared: one copy of the weights for the whole batch instead of one per image.
        vectorise: how per-image copies run: ``"layers"`` (per-copy layers, where every layer
            with weights has one, else ``vmap``) or ``"vmap"``; both give the same images.
    """

    def __init__(
        self,
        generator: nn.Module,
        batch_size: int,
        z: torch.Tensor | None = None,
        shared: bool = False,
        vectorise: Literal["layers", "vmap"] = "layers",
    ):
        if vectorise not in ("layers", "vmap"):
            raise ValueError(f"vectorise must be 'layers' or 'vmap', got {vectorise!r}")
        if z is not None and tuple(z.shape) != (batch_size, generator.z_dim):
            raise ValueError(f"z must have shape ({batch_size}, {generator.z_dim}), got {tuple(z.shape)}")
        self.base = copy.deepcopy(generator).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.shared = shared
        self.requires = generator_requires(generator)
        self.device = next(self.base.parameters()).device
        self.fixed_z = None if z is None else z.detach().to(self.device)
        self.buffers = dict(self.base.named_buffers())  # BatchNorm running statistics
        self.copies = None if shared or vectorise == "vmap" else _copies_module(self.base)
        self.z: torch.Tensor | None = None
        self.weights: dict[str, torch.Tensor] | None = None  # name -> (B, *shape), or (*shape) when shared

    def init(self, rng: torch.Generator) -> list[torch.Tensor]:
        if self.fixed_z is not None:
            self.z = self.fixed_z.clone()
        else:
            self.z = torch.randn(self.batch_size, self.base.z_dim, generator=rng).to(self.device)
        copies = 1 if self.shared else self.batch_size
        self.weights = {
            name: p.detach().clone() if self.shared else p.detach().repeat(copies, *[1] * p.ndim)
            for name, p in self.base.named_parameters()
        }
        for w in self.weights.values():
            w.requires_grad_(True)
        if self.copies is not None:
            _bind(self.copies, self.weights)
        return list(self.weights.values())

    def images(self) -> torch.Tensor:
        if self.shared:
            return functional_call(self.base, ({**self.weights, **self.buffers},), (self.z,))
        if self.copies is not None:
            return self.copies(self.z)

        def one_image(weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, ({**weights, **self.buffers},), (z[None],))[0]

        return torch.func.vmap(one_image)(self.weights, self.z)  # (B, C, H, W)

    def project(self) -> None:
        """Any weights are feasible; the output layer's tanh keeps the images in [0, 1]."""

    def state(self) -> dict[str, torch.Tensor]:
        return {"z": self.z.clone(), **{f"w.{name}": w.detach().clone() for name, w in self.weights.items()}}


def generator_from_state(generator: nn.Module, state: dict[str, torch.Tensor], index: int | None = None) -> nn.Module:
    """A copy of ``generator`` holding the weights that a :class:`GeneratorSpace` trial ended with.

    Args:
        generator: the architecture (and BatchNorm statistics) the space was built from.
        state: ``Trial.state`` of a GeneratorSpace run.
        index: for per-image copies, which image's weights; None for a shared copy.

    Raises:
        ValueError: a state that holds no generator weights (another space, or a diverged
            trial), or an index that does not fit the state.
    """
    weights = {name[2:]: w for name, w in state.items() if name.startswith("w.")}
    if not weights:
        raise ValueError(
            "the state holds no generator weights: pass Trial.state of a GeneratorSpace run that did not diverge"
        )
    names = {name for name, _ in generator.named_parameters()}
    if set(weights) != names:
        raise ValueError(f"the state's weights {sorted(weights)[:3]}... do not match the generator's parameters")
    shapes = {name: p.shape for name, p in generator.named_parameters()}
    per_image = next(iter(weights.values())).shape != shapes[next(iter(weights))]
    if per_image != (index is not None):
        raise ValueError("pass index=b for a state of per-image copies, and no index for a shared copy")
    if per_image:
        copies = next(iter(weights.values())).shape[0]
        if not 0 <= index < copies:
            raise ValueError(f"index must be in [0, {copies}), got {index}")
        weights = {name: w[index] for name, w in weights.items()}
    adapted = copy.deepcopy(generator)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            p.copy_(weights[name])
    return adapted
